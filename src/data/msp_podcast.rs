//! MSP-Podcast in its release layout.
//!
//! - `Labels/labels_consensus.csv` with columns `FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID,
//!   Gender, Split_Set` (others are allowed and ignored). One release spells it
//!   `labels_concensus.csv`; newer ones also ship `labels_consensus.json`, an object keyed by
//!   file name, `{"MSP-PODCAST_0001_0008.wav": {"EmoClass": "N", "SpkrID": "127", …}}`. A list of
//!   objects with a `FileName` field is accepted too.
//! - `Audios/<FileName>`; `Transcripts/<stem>.txt` (not every segment has one).
//!
//! EmoClass codes: N neutral, H happy, S sad, A angry, U surprise, F fear, D disgust, C contempt,
//! O other, X no agreement. `SpkrID` can be `Unknown`, which is kept as the speaker `Unknown`
//! (partitioned protocols do not need speakers). `Split_Set` is kept as written (`Train`,
//! `Development` or, in older releases, `Validation`, `Test1`, `Test2`, `Test3`).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::manifest::{kind, read_csv};
use super::{AdapterOutput, Gender, Origin, Problem, ProblemKind, RawRow, Utterance, read_text};
use crate::error::{Error, Result};

/// The EmoClass codes.
pub const VOCABULARY: &[&str] = &["N", "H", "S", "A", "U", "F", "D", "C", "O", "X"];

/// Label files, in the order they are looked for under `Labels/`.
const LABEL_FILES: &[&str] =
    &["labels_consensus.csv", "labels_concensus.csv", "labels_consensus.json", "labels_concensus.json"];

/// Columns the label CSV must have.
const REQUIRED: &[&str] = &["FileName", "EmoClass", "SpkrID", "Split_Set"];

/// One row of the label file, as read.
#[derive(Debug, Default)]
struct LabelRow {
    file_name: Option<String>,
    class: Option<String>,
    speaker: Option<String>,
    gender: Option<String>,
    split: Option<String>,
}

/// Reads the corpus under `root`.
pub fn read(root: &Path) -> Result<AdapterOutput> {
    let labels_dir = root.join("Labels");
    let tried: Vec<PathBuf> = LABEL_FILES.iter().map(|f| labels_dir.join(f)).collect();
    let Some(labels) = tried.iter().find(|p| p.is_file()) else {
        let names: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::config(
            &labels_dir,
            format!(
                "no MSP-Podcast label file found (tried {}); point `root` at the MSP-Podcast release",
                names.join(", ")
            ),
        ));
    };
    let is_json = labels.extension().is_some_and(|e| e == "json");
    let parsed = if is_json { read_json(labels)? } else { read_label_csv(labels)? };
    let transcripts = Transcripts::index(&root.join("Transcripts"))?;
    let mut out = AdapterOutput {
        vocabulary: Some(VOCABULARY.iter().map(|s| s.to_string()).collect()),
        ..AdapterOutput::default()
    };
    for (origin, row) in parsed {
        match row.and_then(|r| build(root, &transcripts, r, &origin)) {
            Ok(row) => out.rows.push(row),
            Err(problem) => out.problems.push(problem),
        }
    }
    Ok(out)
}

type Parsed = Vec<(Origin, std::result::Result<LabelRow, Problem>)>;

/// A malformed-row problem at `origin`.
fn problem(origin: &Origin, id: Option<String>, message: String) -> Problem {
    Problem { kind: ProblemKind::MalformedLine, origin: origin.clone(), id, message }
}

/// Builds the utterance of one label row, or says what is wrong with it.
fn build(
    root: &Path,
    transcripts: &Transcripts,
    row: LabelRow,
    origin: &Origin,
) -> std::result::Result<RawRow, Problem> {
    let nonempty = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let Some(file_name) = nonempty(row.file_name) else {
        return Err(problem(origin, None, "row has no FileName".into()));
    };
    let id = Path::new(&file_name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let fail = |message: String| Err(problem(origin, Some(id.clone()), message));
    let Some(label) = nonempty(row.class) else {
        return fail(format!("'{file_name}' has no EmoClass"));
    };
    let Some(speaker) = nonempty(row.speaker) else {
        return fail(format!("'{file_name}' has no SpkrID (the release writes `Unknown` when it is not known)"));
    };
    let Some(partition) = nonempty(row.split) else {
        return fail(format!("'{file_name}' has no Split_Set"));
    };
    let gender = match nonempty(row.gender) {
        None => None,
        Some(g) if g.eq_ignore_ascii_case("unknown") => None,
        Some(g) => match Gender::parse(&g) {
            Some(g) => Some(g),
            None => return fail(format!("'{file_name}' has Gender '{g}' (expected Female, Male or Unknown)")),
        },
    };
    let text = transcripts.read(&id)?;
    Ok(RawRow {
        utt: Utterance {
            audio: root.join("Audios").join(&file_name),
            id,
            speaker,
            session: None,
            gender,
            label,
            text,
            partition: Some(partition),
        },
        origin: origin.clone(),
    })
}

fn read_label_csv(path: &Path) -> Result<Parsed> {
    let table = read_csv(path)?;
    let mut cols = Vec::new();
    for name in REQUIRED {
        cols.push(table.column(name).ok_or_else(|| {
            Error::config(
                path,
                format!(
                    "missing column '{name}'; an MSP-Podcast label file has {} (found: {})",
                    REQUIRED.join(", "),
                    table.headers.join(", ")
                ),
            )
        })?);
    }
    let gender_col = table.column("Gender");
    let width = table.headers.len();
    let mut rows = Vec::with_capacity(table.records.len());
    for (line, record) in &table.records {
        let origin = Origin::line(path, *line);
        if record.len() != width {
            let message = format!("row has {} field(s) but the header has {width}", record.len());
            rows.push((origin.clone(), Err(problem(&origin, None, message))));
            continue;
        }
        let get = |col: usize| record.get(col).map(str::to_string);
        let row = LabelRow {
            file_name: get(cols[0]),
            class: get(cols[1]),
            speaker: get(cols[2]),
            split: get(cols[3]),
            gender: gender_col.and_then(get),
        };
        rows.push((origin, Ok(row)));
    }
    Ok(rows)
}

/// The JSON label file, in file order (a map would lose the order, and repeated keys).
enum LabelsJson {
    /// `{"<FileName>": {…}, …}`.
    Dict(Vec<(String, Value)>),
    /// `[{"FileName": …, …}, …]`.
    List(Vec<Value>),
}

impl<'de> Deserialize<'de> for LabelsJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LabelsJson;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object keyed by FileName, or an array of objects with a FileName field")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<LabelsJson, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(LabelsJson::Dict(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<LabelsJson, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element::<Value>()? {
                    items.push(item);
                }
                Ok(LabelsJson::List(items))
            }
        }
        d.deserialize_any(V)
    }
}

fn read_json(path: &Path) -> Result<Parsed> {
    let text = read_text(path)?;
    let json: LabelsJson = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .map_err(|e| Error::config(path, format!("not a valid label file: {e}")))?;
    let mut finder = LineFinder::new(&text);
    let mut rows = Vec::new();
    match json {
        LabelsJson::Dict(entries) => {
            for (key, value) in entries {
                let origin = finder.origin(path, &key);
                rows.push((origin.clone(), json_row(&origin, Some(key), value)));
            }
        }
        LabelsJson::List(items) => {
            for (i, value) in items.into_iter().enumerate() {
                let name = value.get("FileName").and_then(Value::as_str).map(str::to_string);
                let origin = match &name {
                    Some(n) => finder.origin(path, n),
                    None => Origin::file(path),
                };
                let row = match name {
                    Some(_) => json_row(&origin, None, value),
                    None => Err(problem(&origin, None, format!("entry #{} has no FileName string", i + 1))),
                };
                rows.push((origin, row));
            }
        }
    }
    Ok(rows)
}

/// Reads the fields of one JSON entry; `key` is its FileName in the dict form.
fn json_row(origin: &Origin, key: Option<String>, value: Value) -> std::result::Result<LabelRow, Problem> {
    let Value::Object(object) = value else {
        return Err(problem(origin, key, format!("expected an object of labels, got {}", kind(&value))));
    };
    let mut errors = Vec::new();
    let mut field = |name: &str| match object.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        // Speaker ids are numbers in some exports; a numeric label would be a different scheme.
        Some(Value::Number(n)) if name == "SpkrID" && (n.is_i64() || n.is_u64()) => Some(n.to_string()),
        Some(other) => {
            errors.push(format!("{name} must be a string, got {}", kind(other)));
            None
        }
    };
    let row = LabelRow {
        file_name: key.clone().or_else(|| field("FileName")),
        class: field("EmoClass"),
        speaker: field("SpkrID"),
        gender: field("Gender"),
        split: field("Split_Set"),
    };
    if !errors.is_empty() {
        let id = row
            .file_name
            .as_deref()
            .map(|f| Path::new(f).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
        return Err(problem(origin, id, errors.join("; ")));
    }
    Ok(row)
}

/// Finds the line of each entry of a JSON file, in file order, by looking for the entry's quoted
/// file name after the previous one. serde_json does not report positions of values, and a label
/// file of 150k entries is worth a line number per problem.
struct LineFinder<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> LineFinder<'a> {
    fn new(text: &'a str) -> Self {
        LineFinder { text, pos: 0, line: 1 }
    }

    /// The origin of the entry named `name`: its line, or the whole file if it cannot be found
    /// (a name written with escapes the serializer would not use).
    fn origin(&mut self, file: &Path, name: &str) -> Origin {
        let Ok(needle) = serde_json::to_string(name) else {
            return Origin::file(file);
        };
        let Some(found) = self.text[self.pos..].find(&needle) else {
            return Origin::file(file);
        };
        let at = self.pos + found;
        self.line += self.text[self.pos..at].matches('\n').count();
        self.pos = at + needle.len();
        Origin::line(file, self.line)
    }
}

/// The transcript files present, indexed once rather than probed per segment.
struct Transcripts {
    dir: PathBuf,
    names: HashSet<String>,
}

impl Transcripts {
    fn index(dir: &Path) -> Result<Self> {
        let mut names = HashSet::new();
        if dir.is_dir() {
            for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
                let entry = entry.map_err(|e| Error::io(dir, e))?;
                names.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(Transcripts { dir: dir.to_path_buf(), names })
    }

    /// The trimmed transcript of `id`, None if it has none (or it is empty). An unreadable
    /// transcript is a problem of the row rather than a failure of the whole corpus.
    fn read(&self, id: &str) -> std::result::Result<Option<String>, Problem> {
        let name = format!("{id}.txt");
        if !self.names.contains(&name) {
            return Ok(None);
        }
        let path = self.dir.join(&name);
        match read_text(&path) {
            Ok(t) => Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty())),
            Err(e) => Err(Problem {
                kind: ProblemKind::MalformedLine,
                origin: Origin::file(&path),
                id: Some(id.to_string()),
                message: format!("cannot read the transcript of '{id}': {e}"),
            }),
        }
    }
}
