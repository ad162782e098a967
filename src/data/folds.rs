//! Folds as data. A protocol turns a corpus into folds (train / validation / test id lists);
//! fold sets can be written out, checksummed, and read back, so that every job of a sweep and
//! every worker agrees on exactly which utterances it trains and tests on.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::spec::{DatasetSpec, Protocol, ValidationPolicy};
use super::{Corpus, Utterance};
use crate::error::{Error, Result};

/// One fold: disjoint lists of utterance ids, each sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fold {
    /// Fold name: the held-out speaker (`Ses01F`), session (`Ses01`) or test partition (`Test1`).
    pub name: String,
    /// Training ids.
    #[serde(default)]
    pub train: Vec<String>,
    /// Validation ids (epoch selection), disjoint from test.
    #[serde(default)]
    pub validation: Vec<String>,
    /// Test ids.
    pub test: Vec<String>,
}

impl Fold {
    /// SHA-256 (hex) of the fold's canonical JSON: changes whenever any id moves.
    pub fn checksum(&self) -> String {
        sha256_hex(&canonical_json(self))
    }
}

/// Every fold of one dataset under one protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoldSet {
    /// Dataset name.
    pub dataset: String,
    /// Protocol that made the folds.
    pub protocol: String,
    /// Checksum of the folds; written by [`FoldSet::write`], verified by [`FoldSet::read`] when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// The folds, in a stable order.
    pub folds: Vec<Fold>,
}

impl FoldSet {
    /// Builds the folds that `spec`'s protocol and validation policy define for `corpus`.
    pub fn build(spec: &DatasetSpec, corpus: &Corpus) -> Result<FoldSet> {
        let err = |m: String| Error::config(format!("dataset '{}'", spec.name), m);
        let utts = &corpus.utterances;
        let mut folds = match spec.protocol {
            Protocol::LeaveOneSpeakerOut => group_folds(utts, |u| Some(u.speaker.clone())).map_err(err)?,
            Protocol::LeaveOneSessionOut => group_folds(utts, |u| u.session.clone()).map_err(err)?,
            Protocol::Partitions => partition_folds(spec, utts).map_err(err)?,
            Protocol::FoldFile => {
                let path = spec.fold_file.as_deref().ok_or_else(|| err("no fold_file".into()))?;
                return FoldSet::read(path, corpus);
            }
        };
        if spec.protocol != Protocol::Partitions {
            for fold in &mut folds {
                assign_validation(spec, corpus, fold).map_err(err)?;
            }
        }
        let mut set =
            FoldSet { dataset: spec.name.clone(), protocol: spec.protocol.as_str().into(), checksum: None, folds };
        set.checksum = Some(set.compute_checksum());
        Ok(set)
    }

    /// Checksum over the folds (not over the `checksum` field itself).
    pub fn compute_checksum(&self) -> String {
        let parts: Vec<String> = self.folds.iter().map(Fold::checksum).collect();
        sha256_hex(&format!("{}\n{}\n{}", self.dataset, self.protocol, parts.join("\n")))
    }

    /// The fold called `name`.
    pub fn fold(&self, name: &str) -> Option<&Fold> {
        self.folds.iter().find(|f| f.name == name)
    }

    /// Writes the fold set as pretty JSON with its checksum, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut set = self.clone();
        set.checksum = Some(self.compute_checksum());
        let json = serde_json::to_string_pretty(&set).map_err(|e| Error::config(path, e.to_string()))?;
        crate::fsutil::write_atomic(path, json.as_bytes())
    }

    /// Reads a fold file and checks it against `corpus`: every id must exist, the lists of a fold
    /// must be disjoint, and a recorded checksum must match (a hand-edited file must drop it). A fold
    /// without `train` trains on every utterance not in its test or validation lists.
    pub fn read(path: &Path, corpus: &Corpus) -> Result<FoldSet> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut set: FoldSet =
            serde_json::from_str(&text).map_err(|e| Error::config(path, format!("line {}: {e}", e.line())))?;
        if let Some(recorded) = &set.checksum {
            let actual = set.compute_checksum();
            if *recorded != actual {
                return Err(Error::config(
                    path,
                    format!(
                        "checksum mismatch (recorded {recorded}, contents give {actual}): the file was edited \
                         after it was written; delete the \"checksum\" field to accept the edit"
                    ),
                ));
            }
        }
        let known: HashSet<&str> = corpus.utterances.iter().map(|u| u.id.as_str()).collect();
        let mut names = HashSet::new();
        for fold in &mut set.folds {
            if !names.insert(fold.name.clone()) {
                return Err(Error::config(path, format!("fold '{}' appears twice", fold.name)));
            }
            let mut seen: HashMap<&str, &str> = HashMap::new();
            for (list, ids) in [("train", &fold.train), ("validation", &fold.validation), ("test", &fold.test)] {
                for id in ids {
                    if !known.contains(id.as_str()) {
                        return Err(Error::config(
                            path,
                            format!(
                                "fold '{}' {list} names utterance '{id}', which dataset '{}' does not have",
                                fold.name, corpus.name
                            ),
                        ));
                    }
                    if let Some(other) = seen.insert(id, list) {
                        return Err(Error::config(
                            path,
                            format!("fold '{}': utterance '{id}' is in both {other} and {list}", fold.name),
                        ));
                    }
                }
            }
            if fold.test.is_empty() {
                return Err(Error::config(path, format!("fold '{}' has no test utterances", fold.name)));
            }
            if fold.train.is_empty() {
                fold.train = corpus
                    .utterances
                    .iter()
                    .map(|u| u.id.clone())
                    .filter(|id| !seen.contains_key(id.as_str()))
                    .collect();
            }
            for list in [&mut fold.train, &mut fold.validation, &mut fold.test] {
                list.sort();
            }
        }
        set.checksum = Some(set.compute_checksum());
        Ok(set)
    }
}

/// One fold per distinct key (speaker or session), in sorted key order.
fn group_folds(
    utts: &[Utterance],
    key: impl Fn(&Utterance) -> Option<String>,
) -> std::result::Result<Vec<Fold>, String> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in utts {
        let k = key(u)
            .ok_or_else(|| format!("utterance '{}' has no session, so leave-one-session-out cannot place it", u.id))?;
        groups.entry(k).or_default().push(u.id.clone());
    }
    if groups.len() < 2 {
        return Err(format!("leave-one-out needs at least 2 groups, found {}", groups.len()));
    }
    let all: Vec<&String> = utts.iter().map(|u| &u.id).collect();
    Ok(groups
        .into_iter()
        .map(|(name, mut test)| {
            test.sort();
            let held: HashSet<&String> = test.iter().collect();
            let mut train: Vec<String> = all.iter().filter(|id| !held.contains(*id)).map(|id| (*id).clone()).collect();
            train.sort();
            Fold { name, train, validation: Vec::new(), test }
        })
        .collect())
}

/// One fold per test partition; train and validation partitions as the spec lists them.
fn partition_folds(spec: &DatasetSpec, utts: &[Utterance]) -> std::result::Result<Vec<Fold>, String> {
    let parts = spec.partitions.as_ref().ok_or("protocol = \"partitions\" needs [partitions]")?;
    let mut by_part: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for u in utts {
        let p = u.partition.as_deref().ok_or_else(|| format!("utterance '{}' has no partition", u.id))?;
        by_part.entry(p).or_default().push(u.id.clone());
    }
    let collect = |names: &[String]| -> Vec<String> {
        let mut ids: Vec<String> = names.iter().filter_map(|n| by_part.get(n.as_str())).flatten().cloned().collect();
        ids.sort();
        ids
    };
    let train = collect(&parts.train);
    if train.is_empty() {
        return Err(format!(
            "no utterance is in the training partitions {:?}; partitions present: {:?}",
            parts.train,
            by_part.keys().collect::<Vec<_>>()
        ));
    }
    let validation = match spec.validation.policy {
        ValidationPolicy::Partition => collect(&parts.validation),
        _ => Vec::new(),
    };
    parts
        .test
        .iter()
        .map(|t| {
            let test = collect(std::slice::from_ref(t));
            if test.is_empty() {
                return Err(format!(
                    "test partition '{t}' is empty; partitions present: {:?}",
                    by_part.keys().collect::<Vec<_>>()
                ));
            }
            Ok(Fold { name: t.clone(), train: train.clone(), validation: validation.clone(), test })
        })
        .collect()
}

/// Moves the fold's validation utterances out of its training list, by the spec's policy.
fn assign_validation(spec: &DatasetSpec, corpus: &Corpus, fold: &mut Fold) -> std::result::Result<(), String> {
    let by_id: HashMap<&str, &Utterance> = corpus.utterances.iter().map(|u| (u.id.as_str(), u)).collect();
    let v = &spec.validation;
    let validation: BTreeSet<String> = match v.policy {
        ValidationPolicy::None | ValidationPolicy::Partition => return Ok(()),
        ValidationPolicy::SessionPartner => {
            let held = by_id.get(fold.test[0].as_str()).ok_or("test id not in corpus")?;
            let session = held
                .session
                .as_deref()
                .ok_or_else(|| format!("speaker '{}' has no session, so it has no session partner", fold.name))?;
            let ids: BTreeSet<String> = fold
                .train
                .iter()
                .filter(|id| by_id[id.as_str()].session.as_deref() == Some(session))
                .cloned()
                .collect();
            if ids.is_empty() {
                return Err(format!(
                    "speaker '{}' has no other speaker in session '{session}' to validate on",
                    fold.name
                ));
            }
            ids
        }
        ValidationPolicy::Stratified => {
            let mut per_class: BTreeMap<&str, Vec<(String, &String)>> = BTreeMap::new();
            for id in &fold.train {
                let key = sha256_hex(&format!("{}:{id}", v.seed));
                per_class.entry(by_id[id.as_str()].label.as_str()).or_default().push((key, id));
            }
            let mut ids = BTreeSet::new();
            for members in per_class.values_mut() {
                members.sort();
                let take = (members.len() as f64 * v.fraction).round() as usize;
                ids.extend(members.iter().take(take).map(|(_, id)| (*id).clone()));
            }
            ids
        }
    };
    fold.train.retain(|id| !validation.contains(id));
    fold.validation = validation.into_iter().collect();
    Ok(())
}

/// Compact JSON with object keys sorted (serde_json's map is ordered), the form that is hashed.
pub fn canonical_json<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).map(|v| v.to_string()).unwrap_or_default()
}

/// SHA-256 of `text` as lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}
