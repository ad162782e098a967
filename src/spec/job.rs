//! Job specs: what a worker receives. A job is self-contained (no TOML, no paths to other
//! configs): one dataset × fold × variant × seed with every setting resolved.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::model::ModelSpec;
use super::stages::StageSettings;
use crate::data::folds::{FoldSet, canonical_json, sha256_hex};
use crate::data::{Corpus, DatasetSpec};
use crate::error::{Error, Result};

/// Version of the job-spec schema; bumped whenever a field's meaning changes, which also changes
/// every job id.
pub const JOB_SCHEMA: u32 = 1;

/// Which fold of the dataset a job tests on, and the checksums that pin its utterances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoldRef {
    /// Fold name (held-out speaker, session or test partition).
    pub name: String,
    /// Position of the fold in the fold set, and how many folds there are (for "n/N folds").
    pub index: usize,
    pub count: usize,
    /// Checksum of this fold's id lists.
    pub checksum: String,
}

/// An experiment variant (e.g. a Table III ablation row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantRef {
    /// Short name (`no-alignment`).
    pub name: String,
    /// Row label in tables (`Without cross-modal alignment`).
    pub label: String,
    /// Position in the experiment's variant list (row order in tables).
    pub index: usize,
}

/// Everything one job needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub schema: u32,
    /// Experiment name.
    pub experiment: String,
    /// Paper table this job feeds (`II` … `VI`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    pub dataset: DatasetSpec,
    pub fold: FoldRef,
    pub variant: VariantRef,
    pub seed: u64,
    pub backbone: ModelSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder: Option<ModelSpec>,
    pub stages: StageSettings,
}

/// A job spec and its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Hash of the spec's identity (see [`JobSpec::id`]).
    pub id: String,
    pub spec: JobSpec,
}

impl JobSpec {
    /// The job id: the first 16 hex digits of the SHA-256 of the canonical spec, with
    /// machine-local paths (corpus root, manifest, checkpoint directories) left out. The data is
    /// pinned by the fold checksum instead, so moving a corpus or a checkpoint does not orphan
    /// finished results, while any change to the data, a setting or the schema gives a new id.
    pub fn id(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        for (section, keys) in [
            ("dataset", &["root", "manifest", "transcripts", "fold_file"][..]),
            ("backbone", &["path", "features"][..]),
            ("text_encoder", &["path", "features"][..]),
        ] {
            if let Some(obj) = v.get_mut(section).and_then(|s| s.as_object_mut()) {
                for k in keys {
                    obj.remove(*k);
                }
            }
        }
        sha256_hex(&canonical_json(&v))[..16].to_string()
    }

    /// Wraps the spec with its id.
    pub fn into_job(self) -> Job {
        Job { id: self.id(), spec: self }
    }
}

impl Job {
    /// Reads a job file and checks that its id matches its contents.
    pub fn read(path: &Path) -> Result<Job> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let job: Job =
            serde_json::from_str(&text).map_err(|e| Error::config(path, format!("line {}: {e}", e.line())))?;
        if job.spec.schema != JOB_SCHEMA {
            return Err(Error::config(
                path,
                format!(
                    "job schema {} is not supported by this build (schema {JOB_SCHEMA}); re-plan the experiment",
                    job.spec.schema
                ),
            ));
        }
        let id = job.spec.id();
        if id != job.id {
            return Err(Error::config(
                path,
                format!("job id {} does not match its contents (hash {id}): the file was edited", job.id),
            ));
        }
        Ok(job)
    }

    /// Loads the job's corpus and fold, verifying that the data is the data that was planned.
    pub fn resolve(&self) -> Result<(Corpus, FoldSet)> {
        let corpus = crate::data::load(&self.spec.dataset)?;
        let folds = FoldSet::build(&self.spec.dataset, &corpus)?;
        let fold = folds.fold(&self.spec.fold.name).ok_or_else(|| Error::Job {
            job: self.id.clone(),
            message: format!("dataset '{}' has no fold '{}'", corpus.name, self.spec.fold.name),
        })?;
        if fold.checksum() != self.spec.fold.checksum {
            return Err(Error::Job {
                job: self.id.clone(),
                message: format!(
                    "fold '{}' of dataset '{}' differs from the planned one (checksum {} ≠ {}): the corpus or \
                     its spec changed since `sera plan`; re-plan",
                    fold.name,
                    corpus.name,
                    fold.checksum(),
                    self.spec.fold.checksum
                ),
            });
        }
        Ok((corpus, folds))
    }
}
