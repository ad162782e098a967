//! User-supplied transcripts, e.g. from ASR, for corpora whose release has none (MSP-IMPROV) or
//! to replace the corpus' own.
//!
//! The file is CSV with a header naming `id` and `text` (other columns, such as an ASR
//! confidence, are ignored), or JSONL with one `{"id": …, "text": …}` object per line; the
//! extension decides. A listed transcript replaces the row's text; an empty one clears it, so
//! `require_text` then reports the row.
//!
//! Ids the file lists but the corpus lacks are fine (the rows may have been filtered out, e.g. by
//! `types`), but a file of which *no* id matches is almost certainly for another corpus or uses
//! another id scheme, and fails the load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::manifest::{Format, format_of, kind, read_csv};
use super::{Origin, RawRow, read_text};
use crate::error::{Error, Result};

/// One transcript as read: its text (None when empty) and line.
struct Entry {
    text: Option<String>,
    line: usize,
}

/// Sets the text of every row whose id the transcript file at `path` lists.
pub(crate) fn apply(path: &Path, rows: &mut [RawRow]) -> Result<()> {
    let format = format_of(path, "transcript file")?;
    if !path.is_file() {
        return Err(Error::config(
            path,
            "transcript file not found; check `transcripts` in the dataset spec (relative paths are relative to the spec file)",
        ));
    }
    let entries = match format {
        Format::Csv => read_csv_entries(path)?,
        Format::Jsonl => read_jsonl_entries(path)?,
    };
    let Some((first_id, _)) = entries.first() else {
        return Err(Error::config(path, "the transcript file lists no transcripts"));
    };
    let first_id = first_id.clone();
    let mut by_id: HashMap<String, Entry> = HashMap::with_capacity(entries.len());
    for (id, entry) in entries {
        if let Some(first) = by_id.get(&id) {
            return Err(at(
                path,
                entry.line,
                format!("id '{id}' is listed twice (first at line {}); keep one transcript per id", first.line),
            ));
        }
        by_id.insert(id, entry);
    }
    let mut matched = 0usize;
    for row in rows.iter_mut() {
        if let Some(entry) = by_id.get(&row.utt.id) {
            row.utt.text = entry.text.clone();
            matched += 1;
        }
    }
    if matched == 0
        && let Some(row) = rows.first()
    {
        return Err(Error::config(
            path,
            format!(
                "none of the {} transcript id(s) matches an utterance id of the corpus (the file has e.g. '{first_id}', \
                 the corpus e.g. '{}'); the file must use the corpus' utterance ids",
                by_id.len(),
                row.utt.id
            ),
        ));
    }
    Ok(())
}

/// A configuration error at `file:line`.
fn at(file: &Path, line: usize, message: String) -> Error {
    Error::config(PathBuf::from(Origin::line(file, line).to_string()), message)
}

fn read_csv_entries(path: &Path) -> Result<Vec<(String, Entry)>> {
    let table = read_csv(path)?;
    let column = |name: &str| {
        table.column(name).ok_or_else(|| {
            Error::config(
                path,
                format!("the header has no '{name}' column; a transcript CSV needs a header with `id,text`"),
            )
        })
    };
    let (id_col, text_col) = (column("id")?, column("text")?);
    let mut entries = Vec::with_capacity(table.records.len());
    for (line, record) in &table.records {
        let (Some(id), Some(text)) = (record.get(id_col), record.get(text_col)) else {
            return Err(at(
                path,
                *line,
                format!(
                    "row has {} field(s) but the header has {}; quote texts that contain commas",
                    record.len(),
                    table.headers.len()
                ),
            ));
        };
        if id.is_empty() {
            return Err(at(path, *line, "row has no id".into()));
        }
        entries.push((id.to_string(), Entry { text: nonempty(text), line: *line }));
    }
    Ok(entries)
}

fn read_jsonl_entries(path: &Path) -> Result<Vec<(String, Entry)>> {
    let text = read_text(path)?;
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| at(path, line_no, format!("not valid JSON: {e}")))?;
        let id = match value.get("id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(other) => {
                return Err(at(path, line_no, format!("`id` must be a non-empty string, got {}", kind(other))));
            }
            None => return Err(at(path, line_no, "expected an object with `id` and `text`".into())),
        };
        let text = match value.get("text") {
            Some(Value::String(s)) => nonempty(s),
            Some(Value::Null) => None,
            Some(other) => return Err(at(path, line_no, format!("`text` must be a string, got {}", kind(other)))),
            None => return Err(at(path, line_no, format!("the object for '{id}' has no `text`"))),
        };
        entries.push((id, Entry { text, line: line_no }));
    }
    Ok(entries)
}

fn nonempty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}
