//! Dataset specs: the TOML files in `configs/datasets/`. A spec names the corpus kind, where it
//! lives, how raw labels map to classes, the evaluation protocol and how strict loading is.
//! Unknown keys are errors, and keys that do not apply to the spec's kind are errors too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which adapter reads the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CorpusKind {
    /// IEMOCAP release layout (`Session1` … `Session5`).
    Iemocap,
    /// MSP-IMPROV (`Evaluation.txt` plus session folders of wav files).
    MspImprov,
    /// MSP-Podcast (`Labels/labels_consensus.csv|json`, `Audios/`, `Transcripts/`).
    MspPodcast,
    /// A generic CSV or JSONL manifest: a new corpus without code.
    Manifest,
}

impl CorpusKind {
    /// The spelling used in spec files.
    pub fn as_str(self) -> &'static str {
        match self {
            CorpusKind::Iemocap => "iemocap",
            CorpusKind::MspImprov => "msp-improv",
            CorpusKind::MspPodcast => "msp-podcast",
            CorpusKind::Manifest => "manifest",
        }
    }
}

/// How folds are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// One fold per speaker (IEMOCAP: 10 folds, MSP-IMPROV: 12).
    LeaveOneSpeakerOut,
    /// One fold per session (IEMOCAP: 5 folds, MSP-IMPROV: 6).
    LeaveOneSessionOut,
    /// The corpus' own partitions (MSP-Podcast); see [`PartitionSpec`].
    Partitions,
    /// Folds read from a file written by `sera data folds`.
    FoldFile,
}

impl Protocol {
    /// The spelling used in spec files.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::LeaveOneSpeakerOut => "leave-one-speaker-out",
            Protocol::LeaveOneSessionOut => "leave-one-session-out",
            Protocol::Partitions => "partitions",
            Protocol::FoldFile => "fold-file",
        }
    }
}

/// How raw corpus labels become classes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    /// Raw label → class (e.g. `exc = "happy"`). Raw labels the corpus knows but the map does not
    /// list are dropped and counted. Empty means every raw label is its own class.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// Class order (class index = position). Defaults to the sorted distinct values of `map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// Extra raw labels to accept and drop (manifest corpora, whose label vocabulary is open).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
}

/// Partitions for `protocol = "partitions"`: each test partition becomes one fold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// Partition names used for training.
    pub train: Vec<String>,
    /// Partition names used for validation (model selection).
    #[serde(default)]
    pub validation: Vec<String>,
    /// Partition names used for testing; each one is a fold.
    pub test: Vec<String>,
}

/// How the validation set (for epoch selection; never the test fold) is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValidationPolicy {
    /// IEMOCAP / MSP-IMPROV LOSO: the other speaker of the held-out speaker's session.
    SessionPartner,
    /// A class-stratified random fraction of the training speakers' utterances.
    Stratified,
    /// The `validation` partitions of a partitioned corpus or fold file.
    Partition,
    /// No validation set: the last epoch is used.
    None,
}

/// Validation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSpec {
    /// Which policy.
    pub policy: ValidationPolicy,
    /// Fraction of training utterances for `stratified`.
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// Seed for `stratified`.
    #[serde(default)]
    pub seed: u64,
}

fn default_fraction() -> f64 {
    0.1
}

/// What to do with rows that fail validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadRows {
    /// Any problem fails the load, listing every problem found.
    #[default]
    Error,
    /// Bad rows are dropped; the skips are counted and listed.
    Skip,
}

/// A dataset spec as written in TOML, before paths are resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Dataset name used in job ids, tables and environment overrides. Defaults to the file stem.
    #[serde(default)]
    pub name: String,
    /// Which adapter reads it.
    pub kind: CorpusKind,
    /// Corpus root (not for manifests). Relative paths are relative to the spec file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Manifest file, CSV or JSONL (manifest kind only). Relative to the spec file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<PathBuf>,
    /// A transcript file (CSV with `id,text` or JSONL) supplied by the user, e.g. from ASR, for
    /// corpora whose release has no transcripts. Overrides transcripts from the corpus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcripts: Option<PathBuf>,
    /// Label mapping.
    #[serde(default)]
    pub labels: LabelSpec,
    /// Evaluation protocol.
    pub protocol: Protocol,
    /// Partitions, for `protocol = "partitions"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<PartitionSpec>,
    /// Fold file, for `protocol = "fold-file"`. Relative to the spec file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold_file: Option<PathBuf>,
    /// Validation policy.
    #[serde(default = "default_validation")]
    pub validation: ValidationSpec,
    /// Fail on bad rows (default) or skip them.
    #[serde(default)]
    pub bad_rows: BadRows,
    /// Every kept utterance must have a non-empty transcript (multimodal experiments).
    #[serde(default)]
    pub require_text: bool,
    /// MSP-IMPROV recording types to keep (R, S, P, T). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
}

fn default_validation() -> ValidationSpec {
    ValidationSpec { policy: ValidationPolicy::None, fraction: default_fraction(), seed: 0 }
}

/// Environment variable that overrides the root of dataset `name`: `SERA_ROOT_<NAME>`, with the
/// name upper-cased and every non-alphanumeric character replaced by `_`.
pub fn root_env_var(name: &str) -> String {
    let up: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("SERA_ROOT_{up}")
}

impl DatasetSpec {
    /// Reads and validates a spec file. Relative paths become absolute (relative to the spec's
    /// directory). The root is taken from `root_override`, else from `SERA_ROOT_<NAME>`, else from
    /// the file.
    pub fn load(path: &Path, root_override: Option<&Path>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut spec: DatasetSpec = toml::from_str(&text).map_err(|e| Error::config(path, toml_message(&e, &text)))?;
        if spec.name.is_empty() {
            spec.name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = std::path::absolute(&base).unwrap_or(base);
        let env_root = std::env::var_os(root_env_var(&spec.name)).map(PathBuf::from);
        if let Some(r) = root_override.map(Path::to_path_buf).or(env_root) {
            spec.root = Some(std::path::absolute(&r).unwrap_or(r));
        } else if let Some(r) = &spec.root {
            spec.root = Some(base.join(r));
        }
        for p in [&mut spec.manifest, &mut spec.transcripts, &mut spec.fold_file].into_iter().flatten() {
            *p = base.join(&*p);
        }
        spec.validate().map_err(|m| Error::config(path, m))?;
        Ok(spec)
    }

    /// Checks that the keys present fit the kind and protocol. Returns a message naming the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let kind = self.kind.as_str();
        match self.kind {
            CorpusKind::Manifest => {
                if self.manifest.is_none() {
                    return Err("kind = \"manifest\" needs `manifest = \"<file>.csv\"` (or .jsonl)".into());
                }
                if self.root.is_some() {
                    return Err(
                        "`root` does not apply to kind = \"manifest\": paths are relative to the manifest".into()
                    );
                }
            }
            _ => {
                if self.root.is_none() {
                    return Err(format!(
                        "kind = \"{kind}\" needs `root = \"/path/to/corpus\"` (or set {} or pass --root)",
                        root_env_var(&self.name)
                    ));
                }
                if self.manifest.is_some() {
                    return Err(format!("`manifest` only applies to kind = \"manifest\", not \"{kind}\""));
                }
            }
        }
        if let Some(types) = &self.types {
            if self.kind != CorpusKind::MspImprov {
                return Err(format!("`types` only applies to kind = \"msp-improv\", not \"{kind}\""));
            }
            if types.is_empty() {
                return Err("`types` is empty: list the recording types to keep (R, S, P, T) or drop the key".into());
            }
            if let Some(bad) = types.iter().find(|t| !matches!(t.as_str(), "R" | "S" | "P" | "T")) {
                return Err(format!("`types` lists '{bad}'; MSP-IMPROV recording types are R, S, P and T"));
            }
        }
        match (self.protocol, &self.partitions, &self.fold_file) {
            (Protocol::Partitions, None, _) => {
                return Err("protocol = \"partitions\" needs a [partitions] table with `train` and `test`".into());
            }
            (Protocol::FoldFile, _, None) => {
                return Err("protocol = \"fold-file\" needs `fold_file = \"<file>.json\"`".into());
            }
            (p, Some(_), _) if p != Protocol::Partitions => {
                return Err("[partitions] only applies to protocol = \"partitions\"".into());
            }
            (p, _, Some(_)) if p != Protocol::FoldFile => {
                return Err("`fold_file` only applies to protocol = \"fold-file\"".into());
            }
            _ => {}
        }
        if let Some(p) = &self.partitions
            && p.test.is_empty()
        {
            return Err("[partitions] `test` must name at least one partition".into());
        }
        let v = &self.validation;
        if v.policy == ValidationPolicy::Stratified && !(v.fraction > 0.0 && v.fraction < 1.0) {
            return Err(format!("[validation] fraction must be in (0, 1), got {}", v.fraction));
        }
        if v.policy == ValidationPolicy::SessionPartner && self.protocol != Protocol::LeaveOneSpeakerOut {
            return Err("[validation] policy = \"session-partner\" needs protocol = \"leave-one-speaker-out\"".into());
        }
        if v.policy == ValidationPolicy::Partition
            && !matches!(self.protocol, Protocol::Partitions | Protocol::FoldFile)
        {
            return Err("[validation] policy = \"partition\" needs protocol = \"partitions\" or \"fold-file\"".into());
        }
        if let Some(classes) = &self.labels.classes {
            let mut seen = std::collections::BTreeSet::new();
            for c in classes {
                if !seen.insert(c) {
                    return Err(format!("[labels] classes lists '{c}' twice"));
                }
            }
            for (raw, class) in &self.labels.map {
                if !classes.contains(class) {
                    return Err(format!("[labels] map sends '{raw}' to '{class}', which is not in `classes`"));
                }
            }
        }
        Ok(())
    }

    /// The ordered class list: `labels.classes`, else the sorted distinct map values (None when
    /// the map is empty, i.e. classes come from the data).
    pub fn classes(&self) -> Option<Vec<String>> {
        if let Some(c) = &self.labels.classes {
            return Some(c.clone());
        }
        if self.labels.map.is_empty() {
            return None;
        }
        let set: std::collections::BTreeSet<&String> = self.labels.map.values().collect();
        Some(set.into_iter().cloned().collect())
    }

    /// The corpus root (set for every kind but manifest once validated).
    pub fn root(&self) -> Result<&Path> {
        self.root.as_deref().ok_or_else(|| {
            Error::config(
                PathBuf::from(&self.name),
                format!("no root set; pass --root or set {}", root_env_var(&self.name)),
            )
        })
    }
}

/// Renders a TOML error with its line number, which `toml` reports as a byte span.
pub(crate) fn toml_message(e: &toml::de::Error, text: &str) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}
