//! MSP-IMPROV in its release layout.
//!
//! - `Evaluation.txt` (at the root, or one directory down, e.g. `Evaluation/Evaluation.txt`):
//!   one consensus line per recording,
//!   `UTD-IMPROV-S01A-F01-P-FM01.avi; A; A:4.000000; V:3.000000; D:3.000000 ; N:10.000000;`,
//!   whose second field is the consensus category (A angry, H happy, S sad, N neutral, O other,
//!   X no agreement), each followed by per-evaluator lines that are not the consensus.
//! - `session{N}/<scenario>/<type>/MSP-IMPROV-S01A-F01-P-FM01.wav`; copies often move the session
//!   folders (under `Audio/`, say), so wav files are found by name anywhere under the root.
//!
//! A recording name `S01A-F01-P-FM01` is: scenario `S01A` (sentence 01; `A` is the emotion the
//! scenario *targets*, not the one perceived, so labels never come from the name), speaker `F01`
//! (gender F; the number is the session), recording type `P` (R read, S scripted?, P improvised
//! partner interaction, T target sentence) and the turn `FM01`. There are no transcripts in the
//! release; supply them with `transcripts = "…"` in the spec.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{AdapterOutput, Gender, Origin, RawRow, Utterance, malformed, read_text};
use crate::error::{Error, Result};

/// The consensus category codes of `Evaluation.txt`.
pub const VOCABULARY: &[&str] = &["A", "H", "S", "N", "O", "X"];

/// The recording types.
pub const TYPES: &[&str] = &["R", "S", "P", "T"];

/// Prefix of consensus lines in `Evaluation.txt` (the video's name).
const EVAL_PREFIX: &str = "UTD-IMPROV-";
/// Prefix of audio files and of utterance ids.
const AUDIO_PREFIX: &str = "MSP-IMPROV-";

/// How deep to look for wav files under the root (the release layout needs 4 levels; the limit
/// only guards against symlink loops).
const MAX_DEPTH: usize = 12;

/// The parts of a recording name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingName {
    /// `S01A-F01-P-FM01`: the name without prefix or extension.
    pub name: String,
    /// `S01A`.
    pub scenario: String,
    /// `F01`.
    pub speaker: String,
    /// From the speaker's letter.
    pub gender: Gender,
    /// `session1`, from the speaker's number.
    pub session: String,
    /// `P`: one of [`TYPES`].
    pub kind: String,
}

impl RecordingName {
    /// The utterance id: `MSP-IMPROV-S01A-F01-P-FM01`.
    pub fn id(&self) -> String {
        format!("{AUDIO_PREFIX}{}", self.name)
    }

    /// Where the release puts the audio, relative to the root.
    pub fn release_path(&self) -> PathBuf {
        Path::new(&self.session).join(&self.scenario).join(&self.kind).join(format!("{}.wav", self.id()))
    }
}

/// Parses a recording name without prefix or extension, such as `S01A-F01-P-FM01`.
pub fn parse_name(name: &str) -> Option<RecordingName> {
    let parts: Vec<&str> = name.split('-').collect();
    let [scenario, speaker, kind, turn] = parts.as_slice() else {
        return None;
    };
    // Scenario: `S`, two digits, the target emotion letter.
    let s = scenario.as_bytes();
    if s.len() != 4
        || s[0] != b'S'
        || !s[1..3].iter().all(u8::is_ascii_digit)
        || !matches!(s[3], b'A' | b'H' | b'S' | b'N')
    {
        return None;
    }
    // Speaker: gender letter and the two-digit session number (01 … 06 in the release).
    let gender = match speaker.as_bytes().first()? {
        b'F' => Gender::Female,
        b'M' => Gender::Male,
        _ => return None,
    };
    let number = &speaker[1..];
    if number.len() != 2 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let session: u32 = number.parse().ok().filter(|&n| n > 0)?;
    if !TYPES.contains(kind) {
        return None;
    }
    // Turn: one or two speaker letters and a number (`FM01`).
    let letters = turn.bytes().take_while(u8::is_ascii_uppercase).count();
    let digits = turn.len() - letters;
    if !(1..=2).contains(&letters) || !(2..=3).contains(&digits) || !turn[letters..].bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some(RecordingName {
        name: name.to_string(),
        scenario: scenario.to_string(),
        speaker: speaker.to_string(),
        gender,
        session: format!("session{session}"),
        kind: kind.to_string(),
    })
}

/// Reads the corpus under `root`, keeping only the recording types in `types` (all if None).
pub fn read(root: &Path, types: Option<&[String]>) -> Result<AdapterOutput> {
    let keep = keep_types(root, types)?;
    let eval = find_evaluation(root)?;
    let wavs = index_wavs(root)?;
    let mut out = AdapterOutput {
        vocabulary: Some(VOCABULARY.iter().map(|s| s.to_string()).collect()),
        ..AdapterOutput::default()
    };
    for (i, raw) in read_text(&eval)?.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if !line.starts_with(EVAL_PREFIX) {
            continue; // blank lines and per-evaluator lines
        }
        let fields: Vec<&str> = line.split(';').map(str::trim).collect();
        let (video, label) = match fields.as_slice() {
            [video, label, ..] if !label.is_empty() => (*video, *label),
            _ => {
                out.problems.push(malformed(
                    &eval,
                    line_no,
                    format!("expected `UTD-IMPROV-<name>.avi; <category>; A:…; V:…; D:…; N:…`, got '{line}'"),
                ));
                continue;
            }
        };
        let stem = video.strip_prefix(EVAL_PREFIX).unwrap_or(video).split('.').next().unwrap_or_default();
        let Some(name) = parse_name(stem) else {
            out.problems.push(malformed(
                &eval,
                line_no,
                format!("'{video}' is not an MSP-IMPROV recording name (expected e.g. UTD-IMPROV-S01A-F01-P-FM01.avi)"),
            ));
            continue;
        };
        if !keep.contains(&name.kind.as_str()) {
            *out.ignored.entry("rows of excluded recording types".into()).or_default() += 1;
            continue;
        }
        let id = name.id();
        // A missing file keeps the release path, so that the missing-audio problem names where
        // the file was expected.
        let audio = wavs.get(&format!("{id}.wav")).cloned().unwrap_or_else(|| root.join(name.release_path()));
        out.rows.push(RawRow {
            utt: Utterance {
                id,
                audio,
                speaker: name.speaker,
                session: Some(name.session),
                gender: Some(name.gender),
                label: label.to_string(),
                text: None,
                partition: None,
            },
            origin: Origin::line(&eval, line_no),
        });
    }
    Ok(out)
}

/// The recording types to keep, checked against [`TYPES`].
fn keep_types<'a>(root: &Path, types: Option<&'a [String]>) -> Result<Vec<&'a str>> {
    let Some(types) = types else {
        return Ok(TYPES.to_vec());
    };
    if types.is_empty() {
        return Err(Error::config(
            root,
            format!("`types` is empty, which keeps nothing; list some of {}", TYPES.join(", ")),
        ));
    }
    for t in types {
        if !TYPES.contains(&t.as_str()) {
            return Err(Error::config(
                root,
                format!(
                    "`types` lists '{t}', which is not an MSP-IMPROV recording type; use {} (R read, S scripted, P improvised, T target sentence)",
                    TYPES.join(", ")
                ),
            ));
        }
    }
    Ok(types.iter().map(String::as_str).collect())
}

/// `root/Evaluation.txt`, else `Evaluation.txt` in a directory directly under the root.
fn find_evaluation(root: &Path) -> Result<PathBuf> {
    let direct = root.join("Evaluation.txt");
    if direct.is_file() {
        return Ok(direct);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
        let candidate = entry.map_err(|e| Error::io(root, e))?.path().join("Evaluation.txt");
        if candidate.is_file() {
            found.push(candidate);
        }
    }
    found.sort();
    found.into_iter().next().ok_or_else(|| {
        Error::config(
            direct,
            "MSP-IMPROV label file not found (also looked one directory down, e.g. Evaluation/Evaluation.txt); \
             point `root` at the MSP-IMPROV release",
        )
    })
}

/// Every `*.wav` under `root`, by file name. Directories are walked in sorted order, so when a name
/// occurs twice the first path in that order wins, the same on every run.
fn index_wavs(root: &Path) -> Result<HashMap<String, PathBuf>> {
    let mut index = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            entries.push(entry.map_err(|e| Error::io(&dir, e))?.path());
        }
        entries.sort();
        let mut subdirs = Vec::new();
        for path in entries {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // `._*` are macOS resource forks in copies of the release, not audio.
            if name.starts_with("._") {
                continue;
            }
            if path.is_dir() {
                if depth < MAX_DEPTH {
                    subdirs.push((path, depth + 1));
                }
            } else if name.to_ascii_lowercase().ends_with(".wav") {
                index.entry(name).or_insert(path);
            }
        }
        // Reversed so that the stack pops them in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(index)
}
