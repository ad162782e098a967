//! A small synthetic corpus in the IEMOCAP release layout, spoken by espeak-ng.
//!
//! IEMOCAP is licensed and never ships with sera, yet the whole pipeline (adapter, folds,
//! features, training, reports) needs something real to run on in tests, CI and a first
//! `sera` session. This corpus exercises the same code path as the real release: the same
//! directory layout and file formats, speaker attribution from the turn letter, dialog names that
//! break fixed-index id parsing (`Ses01F_script01_1b`, `Ses01M_impro05a`), `exc` to merge into
//! happy, `fru` for the 4-class map to drop, and transcription lines that are not utterances.
//!
//! The emotions are acted by espeak-ng's prosody controls (pitch, rate, amplitude, word gap), so
//! they are learnable from audio, while every emotion of a speaker reads the same sentences, so
//! the text alone does not give the label away.
//!
//! Output is a pure function of the options and the espeak-ng version: randomness comes from a
//! generator seeded with each utterance id, and all files are written in a fixed order and
//! format. Generation happens in `out/.partial-<pid>-<n>` and is moved into place only when
//! complete; a `DEMO_COMPLETE` marker, written last, records the options and the espeak-ng
//! version so that asking again for the same corpus returns at once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::audio::{self, SAMPLE_RATE};
use crate::error::{Error, Result};

/// How big a demo corpus to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoOptions {
    /// Sessions (`Session1` …), each with one female and one male speaker. At most 99.
    pub sessions: usize,
    /// Sentences per emotion per speaker. At most [`SENTENCES`]`.len()`.
    pub sentences: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { sessions: 3, sentences: 10 }
    }
}

/// What [`write_demo_corpus`] produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoSummary {
    /// Utterances written (every label, `fru` included).
    pub utterances: usize,
    /// Speakers (two per session).
    pub speakers: usize,
    /// Total audio, in seconds.
    pub seconds: f64,
    /// `espeak-ng --version`, without its data path.
    pub espeak_version: String,
}

/// `fru` utterances per speaker: labelled in the corpus, dropped by the standard 4-class map.
pub const FRU_PER_SPEAKER: usize = 2;

/// The marker written last; its presence means the corpus is complete.
pub const MARKER: &str = "DEMO_COMPLETE";

/// Written while completed sessions are being moved into place, so that a run interrupted
/// there is recognised as ours and redone.
const PENDING: &str = "DEMO_PENDING";

/// Bumped whenever the generator's output changes, so that old corpora are regenerated.
const GENERATOR_VERSION: u32 = 1;

/// The espeak-ng executable.
const ESPEAK: &str = "espeak-ng";

/// Ordinary sentences. Speaker `s` reads sentences `7s, 7s+1, …` (mod the list) in every emotion.
pub const SENTENCES: &[&str] = &[
    "I left my keys on the kitchen table this morning.",
    "The train to the city leaves at half past seven.",
    "We should paint the fence before the summer ends.",
    "My brother called me twice while I was at the store.",
    "There is still some soup left in the fridge.",
    "She moved to a smaller apartment near the river.",
    "The meeting has been moved to Thursday afternoon.",
    "He forgot to bring the documents to the office.",
    "They finally fixed the light in the hallway.",
    "I read the whole book on the flight back home.",
    "The dog has been waiting by the door all day.",
    "We ran out of milk again, so I bought two bottles.",
    "Your package arrived while you were out.",
    "The museum is closed on Mondays and holidays.",
    "I think the printer on the second floor is broken.",
    "Our neighbours are having the roof replaced next week.",
    "He said he would call back after lunch.",
    "The results of the test came in this afternoon.",
    "She wants to learn how to play the piano.",
    "The bus was late, so I walked the rest of the way.",
    "I have to return these shoes to the shop tomorrow.",
    "The garden looks different since they cut the old tree.",
    "We are going to visit my parents this weekend.",
    "Somebody left a bicycle in front of the gate.",
    "The coffee machine at work makes a strange noise.",
    "I found the letter you sent me last year.",
    "They changed the schedule without telling anyone.",
    "My sister is starting a new job in September.",
    "The restaurant on the corner is open again.",
    "I need to renew my passport before the trip.",
    "He cleaned the whole house before the guests arrived.",
    "The lake was frozen when we got there.",
    "We watched the game at my cousin's place.",
    "The teacher gave us the answers at the end of class.",
    "I lost my umbrella somewhere on the way to work.",
    "The new bridge will open at the end of the month.",
    "She told me the story about the broken window.",
    "The phone has not stopped ringing since noon.",
    "We planted tomatoes and beans along the back wall.",
    "I will pick you up at the station at six.",
];

/// The emotions a demo speaker acts, with their IEMOCAP codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Emotion {
    Neutral,
    Happy,
    Excited,
    Angry,
    Sad,
    Frustrated,
}

impl Emotion {
    fn code(self) -> &'static str {
        match self {
            Emotion::Neutral => "neu",
            Emotion::Happy => "hap",
            Emotion::Excited => "exc",
            Emotion::Angry => "ang",
            Emotion::Sad => "sad",
            Emotion::Frustrated => "fru",
        }
    }

    /// The name annotators' lines use (`C-E1:\tNeutral;`).
    fn annotator_name(self) -> &'static str {
        match self {
            Emotion::Neutral => "Neutral",
            Emotion::Happy => "Happiness",
            Emotion::Excited => "Excited",
            Emotion::Angry => "Anger",
            Emotion::Sad => "Sadness",
            Emotion::Frustrated => "Frustration",
        }
    }

    /// A label a dissenting annotator might pick instead, as in the real release.
    fn confusable(self) -> Emotion {
        match self {
            Emotion::Neutral => Emotion::Frustrated,
            Emotion::Happy => Emotion::Excited,
            Emotion::Excited => Emotion::Happy,
            Emotion::Angry => Emotion::Frustrated,
            Emotion::Sad => Emotion::Neutral,
            Emotion::Frustrated => Emotion::Angry,
        }
    }

    /// espeak-ng prosody: (pitch 0-99, words per minute, amplitude 0-200, word gap in 10 ms).
    /// Anger is loud and fast at a low-mid pitch, happiness high and fast, sadness low, slow,
    /// quiet and halting; the gaps between them are much wider than the per-utterance jitter.
    fn prosody(self) -> (i32, i32, i32, i32) {
        match self {
            Emotion::Neutral => (50, 160, 80, 0),
            Emotion::Happy => (72, 195, 110, 0),
            Emotion::Excited => (78, 205, 120, 0),
            Emotion::Angry => (38, 190, 170, 0),
            Emotion::Sad => (22, 115, 45, 5),
            Emotion::Frustrated => (42, 175, 130, 1),
        }
    }

    /// Typical (valence, activation, dominance) on IEMOCAP's 1-5 scales.
    fn vad(self) -> (i32, i32, i32) {
        match self {
            Emotion::Neutral => (3, 2, 3),
            Emotion::Happy => (4, 3, 3),
            Emotion::Excited => (4, 4, 3),
            Emotion::Angry => (2, 4, 4),
            Emotion::Sad => (2, 2, 2),
            Emotion::Frustrated => (2, 3, 3),
        }
    }
}

/// The emotion of happy utterance `j` of a speaker: every third one, starting at the second, is
/// `exc`, so the exc→happy merge is exercised even with two sentences.
fn happy_variant(j: usize) -> Emotion {
    if j % 3 == 1 { Emotion::Excited } else { Emotion::Happy }
}

/// espeak-ng voices (language plus variant), one per speaker, cycling over sessions.
const FEMALE_VOICES: &[&str] = &["en-us+f2", "en-gb+f4", "en+f3", "en-us+f5", "en-gb-scotland+f1"];
const MALE_VOICES: &[&str] = &["en+m3", "en-us+m1", "en-gb-scotland+m2", "en-us+m4", "en-gb+m7"];
/// Base pitch offsets per speaker, cycling over sessions, so two speakers sharing a voice in a
/// large corpus still differ.
const FEMALE_PITCH: &[i32] = &[4, -3, 7, 0, -6];
const MALE_PITCH: &[i32] = &[-4, 3, -7, 0, 6];

/// One utterance to synthesize.
#[derive(Debug, Clone)]
struct Job {
    session: usize,
    dialog: String,
    id: String,
    emotion: Emotion,
    text: &'static str,
    voice: &'static str,
    pitch: i32,
    rate: i32,
    amplitude: i32,
    gap: i32,
}

/// A splitmix64 generator: tiny, and seeded from a name so that each utterance's draws do not
/// depend on the order the parallel synthesis runs in.
struct Rng(u64);

impl Rng {
    fn from_name(name: &str) -> Rng {
        // FNV-1a, then splitmix mixes it.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        let span = (hi - lo + 1).max(1) as u64;
        lo + (self.next() % span) as i32
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The dialogs of session `k`: the letter after `SesNN` is the gender of the dialog's first
/// actor, and the names include the `impro05a` and `script01_1b` shapes that break fixed-index
/// parsing of utterance ids.
fn dialog_names(k: usize) -> Vec<String> {
    ["F_impro01", "M_impro05a", "F_script01_1b", "M_script02_2a"].iter().map(|d| format!("Ses{k:02}{d}")).collect()
}

/// Writes the demo corpus under `out` (which becomes the IEMOCAP root) and returns what it wrote.
/// Returns at once if `out` already holds a complete demo corpus of the same options and
/// espeak-ng version. `out` must be missing, empty, or an earlier demo corpus.
pub fn write_demo_corpus(out: &Path, opts: &DemoOptions) -> Result<DemoSummary> {
    if opts.sessions == 0 || opts.sessions > 99 {
        return Err(Error::config(out, format!("demo sessions must be 1 to 99, got {}", opts.sessions)));
    }
    if opts.sentences == 0 || opts.sentences > SENTENCES.len() {
        return Err(Error::config(
            out,
            format!("demo sentences must be 1 to {} per emotion and speaker, got {}", SENTENCES.len(), opts.sentences),
        ));
    }
    let version = espeak_version()?;
    let wanted = Marker { generator: GENERATOR_VERSION, options: *opts, espeak_ng: version.clone(), summary: None };
    if let Some(summary) = read_marker(out).filter(|m| m.same_corpus(&wanted)).and_then(|m| m.summary) {
        return Ok(summary);
    }
    prepare_out(out)?;
    let staging = staging_dir(out);
    // Leftovers from a crashed call of this very process cannot exist (the counter is fresh),
    // but be safe against a recycled pid.
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    let result = generate(&staging, opts, version);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            // Best effort: the generation error is the one to report.
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    install(out, &staging, opts.sessions)?;
    let marker = Marker { summary: Some(summary.clone()), ..wanted };
    write_marker(out, &marker)?;
    remove_file_if_exists(&out.join(PENDING))?;
    Ok(summary)
}

/// What the marker records: enough to tell whether a corpus is the one asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Marker {
    generator: u32,
    options: DemoOptions,
    espeak_ng: String,
    summary: Option<DemoSummary>,
}

impl Marker {
    fn same_corpus(&self, other: &Marker) -> bool {
        self.generator == other.generator && self.options == other.options && self.espeak_ng == other.espeak_ng
    }
}

fn read_marker(out: &Path) -> Option<Marker> {
    let text = std::fs::read_to_string(out.join(MARKER)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_marker(out: &Path, marker: &Marker) -> Result<()> {
    let path = out.join(MARKER);
    let mut text = serde_json::to_string_pretty(marker)
        .map_err(|e| Error::config(&path, format!("cannot serialise the demo marker: {e}")))?;
    text.push('\n');
    let tmp = out.join(format!(".{MARKER}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// `espeak-ng --version` up to the data path, which differs between installs of the same voices.
fn espeak_version() -> Result<String> {
    let output = Command::new(ESPEAK).arg("--version").output().map_err(|e| {
        let why =
            if e.kind() == std::io::ErrorKind::NotFound { "not found on PATH".to_string() } else { e.to_string() };
        Error::config(
            ESPEAK,
            format!(
                "{why}; the demo corpus is spoken by espeak-ng: run scripts/setup, which installs it \
                 (or `apt-get install espeak-ng`)"
            ),
        )
    })?;
    if !output.status.success() {
        return Err(Error::config(ESPEAK, format!("`espeak-ng --version` failed ({})", output.status)));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.split("Data at:").next().unwrap_or_default().trim().to_string();
    if version.is_empty() {
        return Err(Error::config(ESPEAK, "`espeak-ng --version` printed nothing"));
    }
    Ok(version)
}

fn is_session_dir_name(name: &str) -> bool {
    name.strip_prefix("Session").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Makes sure `out` exists and holds nothing but an earlier demo corpus (which may be replaced),
/// and removes staging directories left by runs that died.
fn prepare_out(out: &Path) -> Result<()> {
    if !out.exists() {
        return std::fs::create_dir_all(out).map_err(|e| Error::io(out, e));
    }
    if !out.is_dir() {
        return Err(Error::config(out, "demo corpus output exists and is not a directory"));
    }
    let ours = out.join(MARKER).is_file() || out.join(PENDING).is_file();
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let entry = entry.map_err(|e| Error::io(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(owner) = name.strip_prefix(".partial-") {
            if staging_is_stale(owner) {
                let path = entry.path();
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
            continue;
        }
        if name == MARKER || name == PENDING || name.starts_with(&format!(".{MARKER}.tmp-")) {
            continue;
        }
        if is_session_dir_name(&name) {
            if ours {
                continue;
            }
            // Without a marker these may be someone's real corpus: never delete them.
            return Err(Error::config(
                out,
                format!(
                    "holds '{name}' but no {MARKER} marker: either an incomplete demo corpus or another \
                     corpus; delete the directory to regenerate the demo corpus there, or choose another"
                ),
            ));
        }
        return Err(Error::config(
            out,
            format!(
                "holds '{name}', which is not part of a demo corpus: the demo corpus is written only into a \
                 missing or empty directory, or over an earlier demo corpus (marked by {MARKER}); choose \
                 another directory"
            ),
        ));
    }
    Ok(())
}

/// A staging directory `.partial-<pid>-<n>` is stale when its process is gone. Without /proc
/// there is no cheap way to tell, so it is kept (it is hidden and the adapter ignores it).
fn staging_is_stale(owner: &str) -> bool {
    let Some(pid) = owner.split('-').next().filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) else {
        return false;
    };
    if pid == std::process::id().to_string() {
        return false;
    }
    Path::new("/proc/self").exists() && !Path::new("/proc").join(pid).exists()
}

fn staging_dir(out: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    out.join(format!(".partial-{}-{n}", std::process::id()))
}

/// Moves the finished sessions from `staging` into `out`, replacing an earlier demo corpus.
/// `PENDING` marks the window in which `out` holds a mix, so an interrupted move is redone.
fn install(out: &Path, staging: &Path, sessions: usize) -> Result<()> {
    let pending = out.join(PENDING);
    std::fs::write(&pending, "demo corpus being installed; rerun to regenerate\n")
        .map_err(|e| Error::io(&pending, e))?;
    remove_file_if_exists(&out.join(MARKER))?;
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let entry = entry.map_err(|e| Error::io(out, e))?;
        if is_session_dir_name(&entry.file_name().to_string_lossy()) {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    for k in 1..=sessions {
        let from = staging.join(format!("Session{k}"));
        let to = out.join(format!("Session{k}"));
        std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
    }
    std::fs::remove_dir_all(staging).map_err(|e| Error::io(staging, e))
}

fn remove_file_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// The utterances of one speaker, in the order they are spread over the session's dialogs.
fn speaker_items(k: usize, gender: char, sentences: usize) -> Vec<(Emotion, &'static str)> {
    let speaker_index = 2 * (k - 1) + usize::from(gender == 'M');
    let base = 7 * speaker_index;
    let text = |j: usize| SENTENCES[(base + j) % SENTENCES.len()];
    let mut items = Vec::with_capacity(4 * sentences + FRU_PER_SPEAKER);
    for emotion in [Emotion::Neutral, Emotion::Happy, Emotion::Angry, Emotion::Sad] {
        for j in 0..sentences {
            let e = if emotion == Emotion::Happy { happy_variant(j) } else { emotion };
            items.push((e, text(j)));
        }
    }
    for f in 0..FRU_PER_SPEAKER {
        items.push((Emotion::Frustrated, text(sentences + f)));
    }
    // Fisher-Yates, so that every dialog mixes emotions.
    let mut rng = Rng::from_name(&format!("Ses{k:02}{gender}"));
    for i in (1..items.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
    items
}

/// Splits `items` into `parts` contiguous runs whose lengths differ by at most one.
fn split_even<T: Clone>(items: &[T], parts: usize) -> Vec<Vec<T>> {
    let (q, r) = (items.len() / parts, items.len() % parts);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for p in 0..parts {
        let len = q + usize::from(p < r);
        out.push(items[start..start + len].to_vec());
        start += len;
    }
    out
}

/// One dialog: its turns in speaking order.
struct Dialog {
    session: usize,
    name: String,
    /// Indices into the job list.
    turns: Vec<usize>,
}

/// Plans every utterance: which dialog, turn id, text and prosody.
fn plan(opts: &DemoOptions) -> (Vec<Job>, Vec<Dialog>) {
    let mut jobs = Vec::new();
    let mut dialogs = Vec::new();
    for k in 1..=opts.sessions {
        let names = dialog_names(k);
        let female = split_even(&speaker_items(k, 'F', opts.sentences), names.len());
        let male = split_even(&speaker_items(k, 'M', opts.sentences), names.len());
        let voices = [
            ('F', FEMALE_VOICES[(k - 1) % FEMALE_VOICES.len()], FEMALE_PITCH[(k - 1) % FEMALE_PITCH.len()]),
            ('M', MALE_VOICES[(k - 1) % MALE_VOICES.len()], MALE_PITCH[(k - 1) % MALE_PITCH.len()]),
        ];
        for (d, name) in names.iter().enumerate() {
            // The actor named by the dialog's prefix speaks first; turns then alternate until one
            // actor runs out.
            // Sides index `voices` and `lists`: 0 is the female actor, 1 the male one.
            let lists = [&female[d], &male[d]];
            let order = if name.as_bytes().get(5) == Some(&b'M') { [1, 0] } else { [0, 1] };
            let mut counters = [0usize; 2];
            let mut turns = Vec::new();
            for t in 0..female[d].len().max(male[d].len()) {
                for side in order {
                    let Some(&(emotion, text)) = lists[side].get(t) else { continue };
                    let (gender, voice, base_pitch) = voices[side];
                    let id = format!("{name}_{gender}{:03}", counters[side]);
                    counters[side] += 1;
                    let mut rng = Rng::from_name(&id);
                    let (p, s, amp, g) = emotion.prosody();
                    turns.push(jobs.len());
                    jobs.push(Job {
                        session: k,
                        dialog: name.clone(),
                        id,
                        emotion,
                        text,
                        voice,
                        pitch: (p + base_pitch + rng.range(-3, 3)).clamp(0, 99),
                        rate: s + rng.range(-8, 8),
                        amplitude: (amp + rng.range(-5, 5)).clamp(0, 200),
                        gap: g,
                    });
                }
            }
            dialogs.push(Dialog { session: k, name: name.clone(), turns });
        }
    }
    (jobs, dialogs)
}

fn session_dir(root: &Path, k: usize) -> PathBuf {
    root.join(format!("Session{k}"))
}

/// Synthesizes every utterance into `root` (the staging directory) and writes the evaluation and
/// transcription files.
fn generate(root: &Path, opts: &DemoOptions, espeak_version: String) -> Result<DemoSummary> {
    let (jobs, dialogs) = plan(opts);
    let scratch = root.join(".espeak");
    std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    for d in &dialogs {
        let dir = session_dir(root, d.session).join("sentences").join("wav").join(&d.name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    for k in 1..=opts.sessions {
        for sub in ["EmoEvaluation", "transcriptions"] {
            let dir = session_dir(root, k).join("dialog").join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
    }
    let durations: Vec<f64> = jobs.par_iter().map(|job| synthesize(root, &scratch, job)).collect::<Result<_>>()?;
    std::fs::remove_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    for d in &dialogs {
        write_dialog_texts(root, d, &jobs, &durations)?;
    }
    Ok(DemoSummary {
        utterances: jobs.len(),
        speakers: 2 * opts.sessions,
        seconds: durations.iter().sum(),
        espeak_version,
    })
}

/// Speaks one utterance with espeak-ng, resamples it to 16 kHz and writes it in place. Returns
/// its duration in seconds.
fn synthesize(root: &Path, scratch: &Path, job: &Job) -> Result<f64> {
    let tmp = scratch.join(format!("{}.wav", job.id));
    let output = Command::new(ESPEAK)
        .arg("-v")
        .arg(job.voice)
        .arg("-p")
        .arg(job.pitch.to_string())
        .arg("-s")
        .arg(job.rate.to_string())
        .arg("-a")
        .arg(job.amplitude.to_string())
        .arg("-g")
        .arg(job.gap.to_string())
        .arg("-w")
        .arg(&tmp)
        .arg(job.text)
        .output()
        .map_err(|e| Error::config(ESPEAK, format!("cannot run espeak-ng for {}: {e}", job.id)))?;
    if !output.status.success() {
        return Err(Error::audio(
            &tmp,
            format!(
                "espeak-ng failed ({}) for {}: {}",
                output.status,
                job.id,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    let spoken = audio::read_wav(&tmp)?;
    std::fs::remove_file(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let samples = if spoken.sample_rate == SAMPLE_RATE {
        spoken.samples
    } else {
        audio::resample(&spoken.samples, spoken.sample_rate, SAMPLE_RATE)
            .map_err(|e| Error::audio(&tmp, format!("resampling espeak-ng output: {e}")))?
    };
    // About 1 dB of headroom: espeak-ng's loudest settings reach full scale, and the band-limited
    // resampler can overshoot a little.
    let samples: Vec<f32> = samples.iter().map(|s| s * 0.89).collect();
    let path =
        session_dir(root, job.session).join("sentences").join("wav").join(&job.dialog).join(format!("{}.wav", job.id));
    audio::write_wav_16bit(&path, &samples, SAMPLE_RATE)?;
    Ok(samples.len() as f64 / f64::from(SAMPLE_RATE))
}

/// Writes `EmoEvaluation/<dialog>.txt` and `transcriptions/<dialog>.txt`, with turn times laid
/// end to end from the real durations plus pauses.
fn write_dialog_texts(root: &Path, d: &Dialog, jobs: &[Job], durations: &[f64]) -> Result<()> {
    let mut rng = Rng::from_name(&d.name);
    let mut eval = String::from("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n");
    // Transcription lines keyed by start time, so the non-utterance line sorts into its gap.
    let mut trans: BTreeMap<u64, String> = BTreeMap::new();
    let mut t = 1.0 + rng.unit();
    for (n, &i) in d.turns.iter().enumerate() {
        let job = &jobs[i];
        let (start, end) = (t, t + durations[i]);
        let pause = 0.3 + 0.9 * rng.unit();
        t = end + pause;
        let mut ann = Rng::from_name(&format!("{}/annotators", job.id));
        let (v, a, dm) = job.emotion.vad();
        let dims: Vec<(i32, i32, i32)> = (0..2)
            .map(|_| {
                let j = |x: i32, r: &mut Rng| (x + r.range(-1, 1)).clamp(1, 5);
                (j(v, &mut ann), j(a, &mut ann), j(dm, &mut ann))
            })
            .collect();
        let mean = |f: fn(&(i32, i32, i32)) -> i32| dims.iter().map(f).sum::<i32>() as f64 / dims.len() as f64;
        let _ = writeln!(
            eval,
            "[{start:.4} - {end:.4}]\t{}\t{}\t[{:.4}, {:.4}, {:.4}]",
            job.id,
            job.emotion.code(),
            mean(|x| x.0),
            mean(|x| x.1),
            mean(|x| x.2)
        );
        for evaluator in ["C-E1", "C-E2", "C-F1"] {
            // Most annotators agree with the consensus; some pick a neighbouring category.
            let label = if ann.unit() < 0.75 { job.emotion } else { job.emotion.confusable() };
            let _ = writeln!(eval, "{evaluator}:\t{};\t()", label.annotator_name());
        }
        for (evaluator, (v, a, dm)) in ["A-E1", "A-F1"].iter().zip(&dims) {
            let _ = writeln!(eval, "{evaluator}:\tval {v}; act {a}; dom  {dm};\t()");
        }
        eval.push('\n');
        trans.insert(time_key(start), format!("{} [{start:08.4}-{end:08.4}]: {}", job.id, job.text));
        // One line per dialog that is not an utterance (an `XX` id), as in the real release.
        if n == 1 {
            let gender = d.name.as_bytes().get(5).copied().map(char::from).unwrap_or('F');
            let (s, e) = (end + 0.05, end + pause - 0.05);
            trans.insert(time_key(s), format!("{}_{gender}XX0 [{s:08.4}-{e:08.4}]: [BREATHING]", d.name));
        }
    }
    let dialog_dir = session_dir(root, d.session).join("dialog");
    let eval_path = dialog_dir.join("EmoEvaluation").join(format!("{}.txt", d.name));
    std::fs::write(&eval_path, eval).map_err(|e| Error::io(&eval_path, e))?;
    let mut text: String = trans.into_values().collect::<Vec<_>>().join("\n");
    text.push('\n');
    let trans_path = dialog_dir.join("transcriptions").join(format!("{}.txt", d.name));
    std::fs::write(&trans_path, text).map_err(|e| Error::io(&trans_path, e))
}

/// Orders times exactly (they are non-negative, so the bit pattern sorts like the value).
fn time_key(t: f64) -> u64 {
    t.to_bits()
}
