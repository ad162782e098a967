//! `sera data inspect`: what a corpus holds and everything wrong with it, before any GPU time is
//! spent on it.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

use super::folds::FoldSet;
use super::spec::DatasetSpec;
use super::{Corpus, Origin, Problem, ProblemKind, load_collecting};
use crate::audio;
use crate::error::Result;

/// Duration statistics over the readable audio files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Durations {
    /// Mean duration in seconds.
    pub mean_s: f64,
    /// Longest duration in seconds.
    pub max_s: f64,
    /// Total duration in hours.
    pub total_h: f64,
    /// The threshold used for `over`.
    pub over_threshold_s: f64,
    /// How many utterances are longer than the threshold (AST's window is 10.24 s).
    pub over: usize,
}

/// Per-fold sizes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FoldSummary {
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    /// Test utterances per class.
    pub test_by_label: BTreeMap<String, usize>,
    /// Training utterances per class.
    pub train_by_label: BTreeMap<String, usize>,
    pub checksum: String,
}

/// The machine-readable inspection report (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub dataset: String,
    pub kind: String,
    pub protocol: String,
    pub classes: Vec<String>,
    /// Kept utterances.
    pub utterances: usize,
    /// speaker → label → count.
    pub by_speaker: BTreeMap<String, BTreeMap<String, usize>>,
    /// label → count.
    pub by_label: BTreeMap<String, usize>,
    /// fold name → number of test utterances.
    pub folds: BTreeMap<String, usize>,
    /// fold name → sizes and class counts, in fold order.
    pub fold_details: BTreeMap<String, FoldSummary>,
    /// Checksum of the whole fold set.
    pub folds_checksum: Option<String>,
    /// Utterances with a transcript.
    pub with_text: usize,
    /// Duration statistics (None when no audio could be read).
    pub durations: Option<Durations>,
    /// Raw labels dropped by the label map.
    pub dropped_labels: BTreeMap<String, usize>,
    /// Lines skipped by design, by reason.
    pub ignored: BTreeMap<String, usize>,
    /// Every problem found, including unreadable audio and fold errors.
    pub problems: Vec<Problem>,
}

/// Inspects the corpus of `spec`. `over_s` is the duration threshold to count (10.24 s for AST).
/// Problems are collected, never raised, except when the corpus cannot be read at all.
pub fn inspect(spec: &DatasetSpec, over_s: f64) -> Result<Inspection> {
    let (corpus, mut problems) = load_collecting(spec)?;
    let mut by_speaker: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut by_label: BTreeMap<String, usize> = BTreeMap::new();
    for u in &corpus.utterances {
        *by_speaker.entry(u.speaker.clone()).or_default().entry(u.label.clone()).or_default() += 1;
        *by_label.entry(u.label.clone()).or_default() += 1;
    }
    let durations = durations(&corpus, over_s, &mut problems);
    let (folds, fold_details, folds_checksum) = match FoldSet::build(spec, &corpus) {
        Ok(set) => summarise_folds(&corpus, &set),
        Err(e) => {
            problems.push(Problem {
                kind: ProblemKind::MalformedLine,
                origin: Origin::file(spec.fold_file.as_deref().unwrap_or(std::path::Path::new(&spec.name))),
                id: None,
                message: format!("folds: {e}"),
            });
            Default::default()
        }
    };
    Ok(Inspection {
        dataset: spec.name.clone(),
        kind: spec.kind.as_str().into(),
        protocol: spec.protocol.as_str().into(),
        classes: corpus.classes.clone(),
        utterances: corpus.utterances.len(),
        by_speaker,
        by_label,
        folds,
        fold_details,
        folds_checksum,
        with_text: corpus.utterances.iter().filter(|u| u.text.as_deref().is_some_and(|t| !t.trim().is_empty())).count(),
        durations,
        dropped_labels: corpus.report.dropped_labels.clone(),
        ignored: corpus.report.ignored.clone(),
        problems,
    })
}

type FoldTables = (BTreeMap<String, usize>, BTreeMap<String, FoldSummary>, Option<String>);

fn summarise_folds(corpus: &Corpus, set: &FoldSet) -> FoldTables {
    let label: std::collections::HashMap<&str, &str> =
        corpus.utterances.iter().map(|u| (u.id.as_str(), u.label.as_str())).collect();
    let count = |ids: &[String]| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for id in ids {
            *m.entry(label[id.as_str()].to_string()).or_default() += 1;
        }
        m
    };
    let tests = set.folds.iter().map(|f| (f.name.clone(), f.test.len())).collect();
    let details = set
        .folds
        .iter()
        .map(|f| {
            let summary = FoldSummary {
                train: f.train.len(),
                validation: f.validation.len(),
                test: f.test.len(),
                test_by_label: count(&f.test),
                train_by_label: count(&f.train),
                checksum: f.checksum(),
            };
            (f.name.clone(), summary)
        })
        .collect();
    (tests, details, set.checksum.clone())
}

/// Reads every WAV header in parallel; unreadable files become problems.
fn durations(corpus: &Corpus, over_s: f64, problems: &mut Vec<Problem>) -> Option<Durations> {
    let results: Vec<_> = corpus.utterances.par_iter().map(|u| (u, audio::wav_info(&u.audio))).collect();
    let mut secs = Vec::with_capacity(results.len());
    for (u, r) in results {
        match r {
            Ok(info) => secs.push(info.duration_s),
            Err(e) => {
                // The origin already names the file; keep the message to what is wrong with it.
                let why = match e {
                    crate::Error::Audio { message, .. } => message,
                    other => other.to_string(),
                };
                problems.push(Problem {
                    kind: ProblemKind::UnreadableAudio,
                    origin: Origin::file(&u.audio),
                    id: Some(u.id.clone()),
                    message: format!("audio of '{}': {why}", u.id),
                })
            }
        }
    }
    if secs.is_empty() {
        return None;
    }
    let total: f64 = secs.iter().sum();
    Some(Durations {
        mean_s: total / secs.len() as f64,
        max_s: secs.iter().cloned().fold(0.0, f64::max),
        total_h: total / 3600.0,
        over_threshold_s: over_s,
        over: secs.iter().filter(|&&s| s > over_s).count(),
    })
}

impl Inspection {
    /// The human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "dataset {} ({}, {}): {} utterances, {} with transcripts",
            self.dataset, self.kind, self.protocol, self.utterances, self.with_text
        );
        let _ = writeln!(s, "classes: {}", self.classes.join(", "));
        let mut header = format!("{:<16}", "speaker");
        for c in &self.classes {
            let _ = write!(header, "{c:>10}");
        }
        let _ = writeln!(s, "\n{header}{:>10}", "total");
        for (spk, counts) in &self.by_speaker {
            let mut row = format!("{spk:<16}");
            for c in &self.classes {
                let _ = write!(row, "{:>10}", counts.get(c).copied().unwrap_or(0));
            }
            let _ = writeln!(s, "{row}{:>10}", counts.values().sum::<usize>());
        }
        let mut total = format!("{:<16}", "all");
        for c in &self.classes {
            let _ = write!(total, "{:>10}", self.by_label.get(c).copied().unwrap_or(0));
        }
        let _ = writeln!(s, "{total}{:>10}", self.utterances);
        if !self.fold_details.is_empty() {
            let _ = writeln!(s, "\n{:<16}{:>8}{:>8}{:>8}  test per class", "fold", "train", "valid", "test");
            for (name, f) in &self.fold_details {
                let per: Vec<String> = self
                    .classes
                    .iter()
                    .map(|c| format!("{c} {}", f.test_by_label.get(c).copied().unwrap_or(0)))
                    .collect();
                let _ = writeln!(s, "{name:<16}{:>8}{:>8}{:>8}  {}", f.train, f.validation, f.test, per.join(", "));
            }
            if let Some(c) = &self.folds_checksum {
                let _ = writeln!(s, "fold set checksum {c}");
            }
        }
        if let Some(d) = &self.durations {
            let _ = writeln!(
                s,
                "\ndurations: mean {:.2} s, max {:.2} s, total {:.2} h, {} over {:.2} s (truncated by a fixed window of that length)",
                d.mean_s, d.max_s, d.total_h, d.over, d.over_threshold_s
            );
        }
        for (label, n) in &self.dropped_labels {
            let _ = writeln!(s, "dropped by the label map: {label} × {n}");
        }
        for (what, n) in &self.ignored {
            let _ = writeln!(s, "ignored: {n} {what}");
        }
        if self.problems.is_empty() {
            let _ = writeln!(s, "\nno problems found");
        } else {
            let _ = writeln!(s, "\n{} problem(s):", self.problems.len());
            for p in &self.problems {
                let _ = writeln!(s, "  {p}");
            }
        }
        s
    }
}
