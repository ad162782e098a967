//! The data layer: one [`Utterance`] record for every corpus, one adapter per corpus, and the
//! checks every corpus goes through (label map, duplicate ids, missing audio, missing text).
//!
//! Adapters only parse. They return [`RawRow`]s with the corpus' raw label and where each row
//! came from; [`load`] applies the spec's label map and validation, so every corpus is held to the
//! same rules and every problem names its file and line.

pub mod demo;
pub mod folds;
pub mod iemocap;
pub mod inspect;
pub mod manifest;
pub mod msp_improv;
pub mod msp_podcast;
pub mod spec;
mod transcripts;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use spec::{BadRows, CorpusKind, DatasetSpec, Protocol};

use crate::error::{Error, Result};

/// Speaker gender, where the corpus records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    Female,
    Male,
}

impl Gender {
    /// Parses `F`/`M`/`female`/`male` (any case).
    pub fn parse(s: &str) -> Option<Gender> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f" | "female" => Some(Gender::Female),
            "m" | "male" => Some(Gender::Male),
            _ => None,
        }
    }
}

/// One labelled utterance of any corpus: the only contract between a corpus and training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Utterance {
    /// Corpus-unique id (IEMOCAP `Ses01F_impro01_M003`).
    pub id: String,
    /// Absolute path of the audio file.
    pub audio: PathBuf,
    /// Speaker id (IEMOCAP `Ses01M`: session plus the gender of the turn, not of the dialog).
    pub speaker: String,
    /// Recording session, where the corpus has them.
    pub session: Option<String>,
    /// Speaker gender, if known.
    pub gender: Option<Gender>,
    /// Class name after the label map (raw label before it, inside adapters).
    pub label: String,
    /// Transcript, if any.
    pub text: Option<String>,
    /// Predefined partition (MSP-Podcast `Train`, `Development`, `Test1` …), if any.
    pub partition: Option<String>,
}

/// Where a row came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: Option<usize>,
}

impl Origin {
    /// A row at `line` (1-based) of `file`.
    pub fn line(file: &Path, line: usize) -> Self {
        Origin { file: file.to_path_buf(), line: Some(line) }
    }
    /// A whole file.
    pub fn file(file: &Path) -> Self {
        Origin { file: file.to_path_buf(), line: None }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// An adapter's row: an utterance carrying its *raw* label, and its origin.
#[derive(Debug, Clone)]
pub struct RawRow {
    pub utt: Utterance,
    pub origin: Origin,
}

/// The kinds of problem a corpus can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    MalformedLine,
    UnknownLabel,
    DuplicateId,
    MissingAudio,
    UnreadableAudio,
    EmptyText,
}

/// One problem found in a corpus, with the file and line it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub origin: Origin,
    /// The utterance id, when the row got far enough to have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// What an adapter returns.
#[derive(Debug, Default)]
pub struct AdapterOutput {
    /// Parsed rows with raw labels.
    pub rows: Vec<RawRow>,
    /// Lines that could not be parsed.
    pub problems: Vec<Problem>,
    /// Things skipped by design (not errors), counted by reason: e.g. IEMOCAP transcription lines
    /// that are not utterances.
    pub ignored: BTreeMap<String, usize>,
    /// The raw labels this corpus can carry. A raw label outside it is an error; a label inside it
    /// that the map does not list is dropped and counted. `None` means the vocabulary is open.
    pub vocabulary: Option<Vec<String>>,
}

/// What loading did besides producing utterances.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Raw labels dropped by the label map, with counts.
    pub dropped_labels: BTreeMap<String, usize>,
    /// Things skipped by design, with counts.
    pub ignored: BTreeMap<String, usize>,
    /// Rows dropped because of problems (only with `bad_rows = "skip"`).
    pub skipped: Vec<Problem>,
}

/// A loaded, validated corpus.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Dataset name (from the spec).
    pub name: String,
    /// Class names; a label's index in this list is its class index.
    pub classes: Vec<String>,
    /// The kept utterances, in adapter order.
    pub utterances: Vec<Utterance>,
    /// Drops, skips and ignored lines.
    pub report: LoadReport,
}

impl Corpus {
    /// Class index of every utterance, in order.
    pub fn label_indices(&self) -> Vec<usize> {
        let index: HashMap<&str, usize> = self.classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
        self.utterances.iter().map(|u| index[u.label.as_str()]).collect()
    }
}

/// Loads a corpus and enforces the spec's `bad_rows` policy: with `error`, any problem fails the
/// load and the error lists every problem; with `skip`, bad rows are dropped and listed in the
/// report.
pub fn load(spec: &DatasetSpec) -> Result<Corpus> {
    let (corpus, problems) = load_collecting(spec)?;
    if spec.bad_rows == BadRows::Error && !problems.is_empty() {
        return Err(Error::InvalidData { dataset: spec.name.clone(), problems });
    }
    Ok(corpus)
}

/// Loads a corpus, dropping bad rows whatever the policy, and returns every problem found (for
/// `sera data inspect`). Only problems that prevent reading at all (a missing root) are errors.
pub fn load_collecting(spec: &DatasetSpec) -> Result<(Corpus, Vec<Problem>)> {
    if let Some(root) = &spec.root
        && !root.is_dir()
    {
        return Err(Error::config(
            root,
            format!(
                "corpus root of dataset '{}' does not exist; point `root` in the spec at your copy, \
                     pass --root DIR, or set {}",
                spec.name,
                spec::root_env_var(&spec.name)
            ),
        ));
    }
    let mut out = match spec.kind {
        CorpusKind::Iemocap => iemocap::read(spec.root()?)?,
        CorpusKind::MspImprov => msp_improv::read(spec.root()?, spec.types.as_deref())?,
        CorpusKind::MspPodcast => msp_podcast::read(spec.root()?)?,
        CorpusKind::Manifest => {
            let path = spec.manifest.as_deref().ok_or_else(|| Error::config(&spec.name, "no manifest"))?;
            manifest::read(path)?
        }
    };
    if let Some(path) = &spec.transcripts {
        transcripts::apply(path, &mut out.rows)?;
    }
    Ok(check(spec, out))
}

/// Applies the label map and the row checks shared by every corpus.
fn check(spec: &DatasetSpec, out: AdapterOutput) -> (Corpus, Vec<Problem>) {
    let AdapterOutput { rows, mut problems, ignored, vocabulary } = out;
    let map = &spec.labels.map;
    // With a label map, a manifest's vocabulary is what the map and the ignore list name.
    let vocabulary: Option<BTreeSet<String>> = match vocabulary {
        Some(v) => Some(v.into_iter().chain(spec.labels.ignore.iter().cloned()).collect()),
        None if !map.is_empty() => Some(map.keys().chain(spec.labels.ignore.iter()).cloned().collect()),
        None => None,
    };
    let mut report = LoadReport { ignored, ..LoadReport::default() };
    let mut first_seen: HashMap<String, Origin> = HashMap::new();
    let mut kept: Vec<Utterance> = Vec::with_capacity(rows.len());
    let classes_only: Option<BTreeSet<&String>> = match (&spec.labels.classes, map.is_empty()) {
        (Some(c), true) => Some(c.iter().collect()),
        _ => None,
    };
    for RawRow { mut utt, origin } in rows {
        let problem =
            |kind, message: String| Problem { kind, origin: origin.clone(), id: Some(utt.id.clone()), message };
        // Duplicates are checked before any label filtering, so a duplicate of a dropped row is
        // still reported.
        if let Some(first) = first_seen.get(&utt.id) {
            problems.push(problem(
                ProblemKind::DuplicateId,
                format!("duplicate utterance id '{}' (first seen at {first}); ids must be unique", utt.id),
            ));
            continue;
        }
        first_seen.insert(utt.id.clone(), origin.clone());
        if let Some(vocab) = &vocabulary
            && !vocab.contains(&utt.label)
        {
            let known: Vec<&str> = vocab.iter().map(String::as_str).collect();
            problems.push(problem(
                ProblemKind::UnknownLabel,
                format!(
                    "utterance '{}' has unknown label '{}' (known: {}); add it to [labels] map or ignore",
                    utt.id,
                    utt.label,
                    known.join(", ")
                ),
            ));
            continue;
        }
        // Labels are dropped when listed in `ignore`, when a map exists and omits them, or when
        // there is no map and `classes` omits them.
        let class = if spec.labels.ignore.contains(&utt.label) {
            None
        } else if !map.is_empty() {
            map.get(&utt.label).cloned()
        } else if classes_only.as_ref().is_some_and(|c| !c.contains(&utt.label)) {
            None
        } else {
            Some(utt.label.clone())
        };
        match class {
            Some(c) => utt.label = c,
            None => {
                *report.dropped_labels.entry(utt.label).or_default() += 1;
                continue;
            }
        }
        if !utt.audio.is_file() {
            problems.push(problem(
                ProblemKind::MissingAudio,
                format!("audio file of '{}' not found: {}", utt.id, utt.audio.display()),
            ));
            continue;
        }
        if spec.require_text && utt.text.as_deref().is_none_or(|t| t.trim().is_empty()) {
            problems.push(problem(
                ProblemKind::EmptyText,
                format!(
                    "utterance '{}' has no transcript, and the spec sets require_text = true; supply one \
                     (e.g. `transcripts = \"asr.csv\"`)",
                    utt.id
                ),
            ));
            continue;
        }
        kept.push(utt);
    }
    let classes = spec.classes().unwrap_or_else(|| {
        let set: BTreeSet<&String> = kept.iter().map(|u| &u.label).collect();
        set.into_iter().cloned().collect()
    });
    if spec.bad_rows == BadRows::Skip {
        report.skipped = problems.clone();
    }
    (Corpus { name: spec.name.clone(), classes, utterances: kept, report }, problems)
}

/// Reads a text file, naming the path on failure.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    // Corpus text files are not always valid UTF-8 (IEMOCAP has a few Latin-1 bytes).
    Ok(String::from_utf8(bytes).unwrap_or_else(|e| e.into_bytes().iter().map(|&b| b as char).collect()))
}

/// A malformed-line problem.
pub(crate) fn malformed(file: &Path, line: usize, message: impl Into<String>) -> Problem {
    Problem { kind: ProblemKind::MalformedLine, origin: Origin::line(file, line), id: None, message: message.into() }
}
