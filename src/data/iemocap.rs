//! IEMOCAP in its release layout.
//!
//! - `Session{k}/dialog/EmoEvaluation/<dialog>.txt`: consensus lines
//!   `[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]`; annotator lines
//!   (`C-E1:`, `A-E3:`) and headers are not consensus and are skipped.
//! - `Session{k}/sentences/wav/<dialog>/<utterance>.wav`.
//! - `Session{k}/dialog/transcriptions/<dialog>.txt`: `Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`
//!
//! The speaker is the session plus the gender letter of the *turn* (`Ses01F_impro01_M003` is
//! `Ses01M`): the dialog prefix names the dialog, which has both actors. Ids such as
//! `Ses05M_script01_1b_F003` defeat fixed-index parsing, so ids are split on `_` from the end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{AdapterOutput, Gender, Origin, RawRow, Utterance, malformed, read_text};
use crate::error::{Error, Result};

/// Every categorical code IEMOCAP uses; labels outside it are malformed, not merely unmapped.
pub const VOCABULARY: &[&str] = &["neu", "hap", "exc", "ang", "sad", "fru", "fea", "sur", "dis", "oth", "xxx"];

/// The parts of an IEMOCAP utterance id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtteranceId {
    /// `Ses01`.
    pub session: String,
    /// `Ses01F_impro01`: everything before the turn.
    pub dialog: String,
    /// Gender of the speaking actor (the letter of the turn, e.g. `M` in `M003`).
    pub gender: Gender,
    /// `Ses01M`.
    pub speaker: String,
}

/// Parses an utterance id such as `Ses03M_impro05a_F012`. Returns None for ids that are not
/// utterances (`Ses01F_impro01_MXX0`, names without a turn).
pub fn parse_id(id: &str) -> Option<UtteranceId> {
    let (dialog, turn) = id.rsplit_once('_')?;
    let mut chars = turn.chars();
    let letter = chars.next()?;
    let digits = chars.as_str();
    if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let gender = match letter {
        'F' => Gender::Female,
        'M' => Gender::Male,
        _ => return None,
    };
    // The dialog starts with `SesNN` plus the gender of the dialog's first actor, then `_`.
    let prefix = dialog.split('_').next()?;
    if prefix.len() != 6 || !prefix.starts_with("Ses") || !prefix[3..5].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !matches!(&prefix[5..], "F" | "M") || !dialog.contains('_') {
        return None;
    }
    let session = prefix[..5].to_string();
    let speaker = format!("{session}{letter}");
    Some(UtteranceId { session, dialog: dialog.to_string(), gender, speaker })
}

/// Reads the corpus under `root`.
pub fn read(root: &Path) -> Result<AdapterOutput> {
    let mut out = AdapterOutput {
        vocabulary: Some(VOCABULARY.iter().map(|s| s.to_string()).collect()),
        ..AdapterOutput::default()
    };
    let sessions = session_dirs(root)?;
    if sessions.is_empty() {
        return Err(Error::config(
            root,
            "no Session1 … Session5 directories found: is this the IEMOCAP release root (IEMOCAP_full_release)?",
        ));
    }
    for session in sessions {
        let eval_dir = session.join("dialog").join("EmoEvaluation");
        let trans_dir = session.join("dialog").join("transcriptions");
        let wav_dir = session.join("sentences").join("wav");
        for eval_file in txt_files(&eval_dir)? {
            let dialog = eval_file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let transcripts = read_transcripts(&trans_dir.join(format!("{dialog}.txt")), &mut out)?;
            read_evaluation(&eval_file, &wav_dir, &transcripts, &mut out)?;
        }
    }
    Ok(out)
}

fn session_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_session =
            name.strip_prefix("Session").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if is_session && entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// `*.txt` files of a directory, sorted; macOS `._*` resource forks (common in copies of the
/// release) are not evaluation files.
fn txt_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::config(dir, "missing directory: the IEMOCAP release has one per session"));
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".txt") && !name.starts_with("._") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Transcripts of one dialog: id → text. A missing file yields no transcripts (the multimodal
/// path then reports every utterance without text).
fn read_transcripts(path: &Path, out: &mut AdapterOutput) -> Result<HashMap<String, String>> {
    let mut texts = HashMap::new();
    if !path.is_file() {
        return Ok(texts);
    }
    for line in read_text(path)?.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        // `Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`
        let parsed = line.split_once(' ').and_then(|(id, rest)| {
            let rest = rest.trim_start();
            let text = rest.strip_prefix('[')?.split_once("]:")?.1;
            parse_id(id).map(|_| (id.to_string(), text.trim().to_string()))
        });
        match parsed {
            Some((id, text)) => {
                texts.insert(id, text);
            }
            None => *out.ignored.entry("transcription lines that are not utterances".into()).or_default() += 1,
        }
    }
    Ok(texts)
}

fn read_evaluation(
    path: &Path,
    wav_dir: &Path,
    transcripts: &HashMap<String, String>,
    out: &mut AdapterOutput,
) -> Result<()> {
    for (i, line) in read_text(path)?.lines().enumerate() {
        let line_no = i + 1;
        if !line.starts_with('[') {
            continue; // headers, blank lines and annotator lines
        }
        let fields: Vec<&str> = line.split('\t').map(str::trim).filter(|f| !f.is_empty()).collect();
        let &[_times, id, label, vad] = fields.as_slice() else {
            out.problems.push(malformed(
                path,
                line_no,
                format!("expected `[start - end]<TAB>utterance id<TAB>label<TAB>[v, a, d]`, got '{line}'"),
            ));
            continue;
        };
        if label.starts_with('[') || !vad.starts_with('[') {
            out.problems.push(malformed(
                path,
                line_no,
                format!("no label between the utterance id and [v, a, d] in '{line}'"),
            ));
            continue;
        }
        let Some(parts) = parse_id(id) else {
            out.problems.push(malformed(
                path,
                line_no,
                format!("'{id}' is not an IEMOCAP utterance id (expected e.g. Ses01F_impro01_M003)"),
            ));
            continue;
        };
        let audio = wav_dir.join(&parts.dialog).join(format!("{id}.wav"));
        out.rows.push(RawRow {
            utt: Utterance {
                id: id.to_string(),
                audio,
                speaker: parts.speaker,
                session: Some(parts.session),
                gender: Some(parts.gender),
                label: label.to_string(),
                text: transcripts.get(id).cloned(),
                partition: None,
            },
            origin: Origin::line(path, line_no),
        });
    }
    Ok(())
}
