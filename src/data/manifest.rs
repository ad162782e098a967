//! Generic manifests: a new corpus without code.
//!
//! A manifest is a CSV file with a header row, or a JSONL file with one object per line, chosen
//! by extension (`.csv`; `.jsonl` or `.json-lines`). Every row names one utterance:
//!
//! - required: `id`, `path`, `speaker`, `label`;
//! - optional: `text`, `session`, `gender` (`F`/`M`/`female`/`male`), `split` (a predefined
//!   partition, e.g. `train`/`test`).
//!
//! ```text
//! id,path,speaker,label,text
//! utt1,wav/utt1.wav,spk1,angry,"Well, no."
//! ```
//!
//! Audio paths are relative to the manifest's directory (absolute paths are kept). The label
//! vocabulary is open: with a label map in the spec, `data::check` treats the map's keys (and
//! `ignore`) as the vocabulary. Unknown CSV columns fail the load at once, because a misspelt
//! header (`speker`) would otherwise silently drop a whole column; in JSONL each row carries its own
//! keys, so an unknown key is a problem of that row.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{AdapterOutput, Gender, Origin, Problem, RawRow, Utterance, malformed, read_text};
use crate::error::{Error, Result};

/// Columns every row must have.
const REQUIRED: &[&str] = &["id", "path", "speaker", "label"];
/// Columns a row may have.
const OPTIONAL: &[&str] = &["text", "session", "gender", "split"];

/// The file formats a manifest or transcript file can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Csv,
    Jsonl,
}

/// The format of `path`, from its extension; `what` names the file's role in the error.
pub(crate) fn format_of(path: &Path, what: &str) -> Result<Format> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "csv" => Ok(Format::Csv),
        "jsonl" | "json-lines" => Ok(Format::Jsonl),
        _ => Err(Error::config(
            path,
            format!(
                "cannot tell the format of this {what} from its extension; use .csv (with a header row) or .jsonl / .json-lines (one JSON object per line)"
            ),
        )),
    }
}

/// A CSV file read whole: its header and its data records, each with the 1-based line on which it
/// starts.
pub(crate) struct CsvTable {
    /// Column names, trimmed.
    pub headers: Vec<String>,
    /// Data records (fields trimmed) and their line numbers.
    pub records: Vec<(usize, csv::StringRecord)>,
}

impl CsvTable {
    /// Index of column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.headers.iter().position(|h| h == name)
    }
}

/// Reads a CSV file with a header row. Quoted fields may contain commas and newlines.
pub(crate) fn read_csv(path: &Path) -> Result<CsvTable> {
    // Decoded up front (with read_text's Latin-1 fallback) so that a stray non-UTF-8 byte does
    // not lose the row, and so that line numbers can be counted in the same buffer.
    let text = read_text(path)?;
    let bytes = text.as_bytes();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true) // rows of the wrong length are reported per row, with their line
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| Error::config(path, format!("cannot read the CSV header: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut lines = LineCounter::new(bytes);
    let mut records = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let at = e.position().map(|p| lines.line_at(p.byte() as usize)).unwrap_or(0);
            Error::config(path, format!("line {at}: cannot parse CSV: {e}"))
        })?;
        // csv's own `position().line()` is where the previous record ended: it is off by the
        // blank lines before the record and by one in CRLF files. The byte offset is exact, so
        // count lines from the first byte of the record's content instead.
        let line = record.position().map(|p| lines.line_at(p.byte() as usize)).unwrap_or(0);
        records.push((line, record));
    }
    Ok(CsvTable { headers, records })
}

/// Turns byte offsets (in increasing order) into 1-based line numbers, counting `\n`, `\r\n` and
/// a lone `\r` as one line break each.
struct LineCounter<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        LineCounter { bytes, pos: 0, line: 1 }
    }

    /// The line of the first byte at or after `offset` that is not a line break.
    fn line_at(&mut self, offset: usize) -> usize {
        let mut start = offset.min(self.bytes.len());
        while start < self.bytes.len() && matches!(self.bytes[start], b'\r' | b'\n') {
            start += 1;
        }
        if start < self.pos {
            // Offsets come in order; a step back would only happen on a reader bug. Recount.
            self.pos = 0;
            self.line = 1;
        }
        for i in self.pos..start {
            let b = self.bytes[i];
            if b == b'\n' || (b == b'\r' && self.bytes.get(i + 1) != Some(&b'\n')) {
                self.line += 1;
            }
        }
        self.pos = start;
        self.line
    }
}

/// The fields of one manifest row, as read.
#[derive(Debug, Default)]
struct Fields {
    id: Option<String>,
    path: Option<String>,
    speaker: Option<String>,
    label: Option<String>,
    text: Option<String>,
    session: Option<String>,
    gender: Option<String>,
    split: Option<String>,
}

impl Fields {
    /// The slot of column `name`, or None for a column the manifest does not know.
    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "id" => &mut self.id,
            "path" => &mut self.path,
            "speaker" => &mut self.speaker,
            "label" => &mut self.label,
            "text" => &mut self.text,
            "session" => &mut self.session,
            "gender" => &mut self.gender,
            "split" => &mut self.split,
            _ => return None,
        })
    }

    /// Builds the row, or says what is wrong with it.
    fn into_row(self, file: &Path, line: usize, base: &Path) -> std::result::Result<RawRow, Problem> {
        let id = self.id.clone();
        let fail = |message: String| {
            let mut p = malformed(file, line, message);
            p.id = id.clone();
            p
        };
        let nonempty = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let mut missing = Vec::new();
        let mut required = |name: &'static str, v: Option<String>| {
            let v = nonempty(v);
            if v.is_none() {
                missing.push(name);
            }
            v.unwrap_or_default()
        };
        let utt_id = required("id", self.id);
        let path = required("path", self.path);
        let speaker = required("speaker", self.speaker);
        let label = required("label", self.label);
        if !missing.is_empty() {
            return Err(fail(format!(
                "row has no {}; every row needs {}",
                missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
                REQUIRED.join(", ")
            )));
        }
        let gender = match nonempty(self.gender) {
            None => None,
            Some(g) => match Gender::parse(&g) {
                Some(g) => Some(g),
                None => {
                    return Err(fail(format!("gender '{g}' is not F, M, female or male (leave it empty if unknown)")));
                }
            },
        };
        Ok(RawRow {
            utt: Utterance {
                id: utt_id,
                // Path::join keeps an absolute path as it is.
                audio: base.join(path),
                speaker,
                session: nonempty(self.session),
                gender,
                label,
                text: nonempty(self.text),
                partition: nonempty(self.split),
            },
            origin: Origin::line(file, line),
        })
    }
}

/// Reads the manifest at `path`.
pub fn read(path: &Path) -> Result<AdapterOutput> {
    let format = format_of(path, "manifest")?;
    if !path.is_file() {
        return Err(Error::config(
            path,
            "manifest not found; check `manifest` in the dataset spec (relative paths are relative to the spec file)",
        ));
    }
    let base: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut out = AdapterOutput::default(); // vocabulary None: open, see the module doc
    let rows = match format {
        Format::Csv => read_csv_rows(path)?,
        Format::Jsonl => read_jsonl_rows(path)?,
    };
    for (line, fields) in rows {
        match fields.and_then(|f| f.into_row(path, line, &base)) {
            Ok(row) => out.rows.push(row),
            Err(problem) => out.problems.push(problem),
        }
    }
    Ok(out)
}

type Parsed = Vec<(usize, std::result::Result<Fields, Problem>)>;

fn accepted() -> String {
    REQUIRED.iter().chain(OPTIONAL).copied().collect::<Vec<_>>().join(", ")
}

fn read_csv_rows(path: &Path) -> Result<Parsed> {
    let table = read_csv(path)?;
    let mut seen = std::collections::BTreeSet::new();
    for h in &table.headers {
        if h.is_empty() {
            return Err(Error::config(
                path,
                format!("the header has an empty column name (a trailing comma?); accepted columns: {}", accepted()),
            ));
        }
        if Fields::default().slot(h).is_none() {
            return Err(Error::config(
                path,
                format!("unknown column '{h}' in the header; accepted columns: {}", accepted()),
            ));
        }
        if !seen.insert(h.as_str()) {
            return Err(Error::config(path, format!("column '{h}' appears twice in the header")));
        }
    }
    for r in REQUIRED {
        if table.column(r).is_none() {
            return Err(Error::config(
                path,
                format!(
                    "missing required column '{r}'; the header must name {} (optional: {})",
                    REQUIRED.join(", "),
                    OPTIONAL.join(", ")
                ),
            ));
        }
    }
    let width = table.headers.len();
    let mut rows = Vec::with_capacity(table.records.len());
    for (line, record) in &table.records {
        if record.len() != width {
            rows.push((
                *line,
                Err(malformed(
                    path,
                    *line,
                    format!(
                        "row has {} field(s) but the header has {width}; quote fields that contain commas",
                        record.len()
                    ),
                )),
            ));
            continue;
        }
        let mut fields = Fields::default();
        for (name, value) in table.headers.iter().zip(record.iter()) {
            if let Some(slot) = fields.slot(name) {
                *slot = Some(value.to_string());
            }
        }
        rows.push((*line, Ok(fields)));
    }
    Ok(rows)
}

fn read_jsonl_rows(path: &Path) -> Result<Parsed> {
    let text = read_text(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        rows.push((line_no, jsonl_fields(path, line_no, line)));
    }
    Ok(rows)
}

/// Parses one JSONL line into fields.
fn jsonl_fields(path: &Path, line_no: usize, line: &str) -> std::result::Result<Fields, Problem> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| malformed(path, line_no, format!("not valid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(malformed(
            path,
            line_no,
            format!("expected a JSON object with {}, got {}", REQUIRED.join(", "), kind(&value)),
        ));
    };
    let mut fields = Fields::default();
    let mut errors = Vec::new();
    for (key, value) in object {
        let Some(slot) = fields.slot(&key) else {
            errors.push(format!("unknown key '{key}' (accepted: {})", accepted()));
            continue;
        };
        match value {
            Value::String(s) => *slot = Some(s),
            // Numeric ids and speakers are common in JSON writers; they mean the same as strings.
            Value::Number(n) if n.is_i64() || n.is_u64() => *slot = Some(n.to_string()),
            Value::Null => *slot = None,
            other => errors.push(format!("`{key}` must be a string, got {}", kind(&other))),
        }
    }
    if !errors.is_empty() {
        let mut p = malformed(path, line_no, errors.join("; "));
        p.id = fields.id;
        return Err(p);
    }
    Ok(fields)
}

/// A JSON value's type, for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
