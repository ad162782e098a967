//! The demo corpus, loaded through the real IEMOCAP adapter: counts derived from the options,
//! the label merges and drops, transcripts, determinism, and prosody that differs by emotion.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sera::audio;
use sera::data::demo::{self, DemoOptions, FRU_PER_SPEAKER};
use sera::data::{self, DatasetSpec};

const OPTS: DemoOptions = DemoOptions { sessions: 2, sentences: 2 };

/// One corpus shared by the read-only tests: espeak-ng runs once per test binary.
fn corpus() -> &'static (tempfile::TempDir, demo::DemoSummary) {
    static CORPUS: OnceLock<(tempfile::TempDir, demo::DemoSummary)> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = demo::write_demo_corpus(dir.path(), &OPTS).expect("write demo corpus");
        (dir, summary)
    })
}

fn spec_for(root: &Path, spec_dir: &Path) -> DatasetSpec {
    let path = crate::common::demo_spec(spec_dir, "demo_iemocap.toml", root);
    DatasetSpec::load(&path, None).expect("load spec")
}

/// Every file under `root`, relative path → bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn demo_corpus_loads_through_the_iemocap_adapter() {
    let (dir, summary) = corpus();
    let per_speaker = 4 * OPTS.sentences + FRU_PER_SPEAKER;
    let speakers = 2 * OPTS.sessions;
    assert_eq!(summary.speakers, speakers);
    assert_eq!(summary.utterances, speakers * per_speaker);
    assert!(summary.espeak_version.contains("eSpeak NG"), "{}", summary.espeak_version);

    let spec_dir = tempfile::tempdir().expect("tempdir");
    let spec = spec_for(dir.path(), spec_dir.path());
    let corpus = data::load(&spec).expect("load demo corpus");
    assert_eq!(corpus.classes, ["neutral", "happy", "angry", "sad"]);

    // Exact counts per speaker and class: every emotion reads `sentences` sentences; happy
    // includes the exc ones.
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for u in &corpus.utterances {
        *counts.entry((u.speaker.clone(), u.label.clone())).or_default() += 1;
    }
    let mut want = BTreeMap::new();
    for k in 1..=OPTS.sessions {
        for g in ["F", "M"] {
            for class in ["neutral", "happy", "angry", "sad"] {
                want.insert((format!("Ses{k:02}{g}"), class.to_string()), OPTS.sentences);
            }
        }
    }
    assert_eq!(counts, want);
    assert_eq!(corpus.utterances.len(), speakers * 4 * OPTS.sentences);

    // fru is in the IEMOCAP vocabulary but not in the map: dropped and counted.
    assert_eq!(corpus.report.dropped_labels, BTreeMap::from([("fru".to_string(), speakers * FRU_PER_SPEAKER)]));
    // One non-utterance transcription line per dialog (4 dialogs per session).
    let ignored: usize = corpus.report.ignored.values().sum();
    assert_eq!(ignored, 4 * OPTS.sessions, "{:?}", corpus.report.ignored);
    assert!(corpus.report.skipped.is_empty());

    for u in &corpus.utterances {
        let text = u.text.as_deref().unwrap_or_default();
        assert!(demo::SENTENCES.contains(&text), "{}: transcript '{text}' is not one of the sentences", u.id);
        // The speaker comes from the turn letter, not the dialog prefix.
        let turn_gender = u.id.rsplit('_').next().and_then(|t| t.chars().next()).expect("turn");
        assert!(u.speaker.ends_with(turn_gender), "{} attributed to {}", u.id, u.speaker);
        assert_eq!(audio::wav_info(&u.audio).expect("wav info").sample_rate, 16_000);
    }
    // Dialog names that break fixed-index parsing are present.
    assert!(corpus.utterances.iter().any(|u| u.id.contains("_script01_1b_")));
    assert!(corpus.utterances.iter().any(|u| u.id.contains("_impro05a_")));

    // The raw labels: exc is about a third of the happy utterances, from the second one on.
    let mut raw: BTreeMap<String, usize> = BTreeMap::new();
    for entry in std::fs::read_dir(dir.path().join("Session1/dialog/EmoEvaluation")).expect("ls") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        for line in text.lines().filter(|l| l.starts_with('[')) {
            *raw.entry(line.split('\t').nth(2).expect("label").to_string()).or_default() += 1;
        }
    }
    let exc_per_speaker = (0..OPTS.sentences).filter(|j| j % 3 == 1).count();
    assert_eq!(raw.get("exc"), Some(&(2 * exc_per_speaker)));
    assert_eq!(raw.get("hap"), Some(&(2 * (OPTS.sentences - exc_per_speaker))));
}

#[test]
fn demo_corpus_files_follow_the_release_format() {
    let (dir, _) = corpus();
    let eval =
        std::fs::read_to_string(dir.path().join("Session1/dialog/EmoEvaluation/Ses01F_impro01.txt")).expect("eval");
    let mut lines = eval.lines();
    assert!(lines.next().expect("header").starts_with('%'));
    let first = eval.lines().find(|l| l.starts_with('[')).expect("an utterance line");
    let fields: Vec<&str> = first.split('\t').collect();
    assert_eq!(fields.len(), 4, "{first}");
    assert!(fields[1].starts_with("Ses01F_impro01_F000"), "the dialog's named actor speaks first: {first}");
    assert!(fields[3].starts_with('[') && fields[3].ends_with(']'));
    assert!(eval.contains("C-E1:\t") && eval.contains("A-E1:\tval "), "annotator lines");

    let trans =
        std::fs::read_to_string(dir.path().join("Session1/dialog/transcriptions/Ses01F_impro01.txt")).expect("trans");
    let first = trans.lines().next().expect("a line");
    // `Ses01F_impro01_F000 [006.2901-008.2357]: text`, zero-padded times.
    let (id, rest) = first.split_once(' ').expect("id");
    assert_eq!(id, "Ses01F_impro01_F000");
    assert_eq!(&rest[..1], "[");
    assert_eq!(&rest[4..5], ".", "times are zero-padded to three digits: {first}");
    assert!(trans.lines().any(|l| l.starts_with("Ses01F_impro01_FXX0 [")), "non-utterance line");

    // Times in the evaluation file match the audio durations.
    for line in eval.lines().filter(|l| l.starts_with('[')) {
        let fields: Vec<&str> = line.split('\t').collect();
        let times: Vec<f64> =
            fields[0].trim_matches(['[', ']']).split(" - ").map(|t| t.parse().expect("time")).collect();
        let wav = dir.path().join(format!("Session1/sentences/wav/Ses01F_impro01/{}.wav", fields[1]));
        let info = audio::wav_info(&wav).expect("wav");
        assert!((times[1] - times[0] - info.duration_s).abs() < 2e-4, "{line}: audio lasts {}", info.duration_s);
    }
}

#[test]
fn demo_corpus_prosody_differs_by_emotion() {
    let (dir, _) = corpus();
    let spec_dir = tempfile::tempdir().expect("tempdir");
    let corpus = data::load(&spec_for(dir.path(), spec_dir.path())).expect("load");
    let mut rms: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut dur: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for u in &corpus.utterances {
        let a = audio::read_wav(&u.audio).expect("read");
        let r = (a.samples.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / a.samples.len() as f64).sqrt();
        rms.entry(u.label.clone()).or_default().push(r);
        dur.entry(u.label.clone()).or_default().push(a.duration_s());
    }
    let mean = |m: &BTreeMap<String, Vec<f64>>, k: &str| m[k].iter().sum::<f64>() / m[k].len() as f64;
    let (ang, neu, sad) = (mean(&rms, "angry"), mean(&rms, "neutral"), mean(&rms, "sad"));
    assert!(ang > 1.3 * neu && neu > 1.3 * sad, "mean RMS angry {ang:.4}, neutral {neu:.4}, sad {sad:.4}");
    let (sad_d, hap_d) = (mean(&dur, "sad"), mean(&dur, "happy"));
    assert!(sad_d > 1.3 * hap_d, "mean duration sad {sad_d:.2} s, happy {hap_d:.2} s");
}

#[test]
fn demo_corpus_is_deterministic_and_cached() {
    let (first, summary) = corpus();
    let dir = tempfile::tempdir().expect("tempdir");
    let again = demo::write_demo_corpus(dir.path(), &OPTS).expect("second corpus");
    assert_eq!(&again, summary);
    assert_eq!(tree(dir.path()), tree(first.path()), "two generations differ");

    // Asking again for the same corpus returns the recorded summary without touching the files.
    let before = std::fs::metadata(dir.path().join(demo::MARKER)).expect("marker").modified().expect("mtime");
    let cached = demo::write_demo_corpus(dir.path(), &OPTS).expect("cached");
    assert_eq!(&cached, summary);
    let after = std::fs::metadata(dir.path().join(demo::MARKER)).expect("marker").modified().expect("mtime");
    assert_eq!(before, after);

    // A run interrupted while installing leaves DEMO_PENDING and no marker: it is regenerated,
    // identically, and nothing of the interrupted run is left.
    std::fs::remove_file(dir.path().join(demo::MARKER)).expect("rm marker");
    std::fs::write(dir.path().join("DEMO_PENDING"), "").expect("pending");
    std::fs::remove_file(dir.path().join("Session2/dialog/transcriptions/Ses02M_impro05a.txt")).expect("rm");
    crate::common::write(dir.path(), ".partial-999999999-0/Session1/x.txt", "left by a run that died");
    demo::write_demo_corpus(dir.path(), &OPTS).expect("regenerate");
    assert_eq!(tree(dir.path()), tree(first.path()));

    // Session directories without any marker may be another corpus: refused, never deleted.
    std::fs::remove_file(dir.path().join(demo::MARKER)).expect("rm marker");
    let err = demo::write_demo_corpus(dir.path(), &OPTS).expect_err("no marker").to_string();
    assert!(err.contains(&dir.path().display().to_string()) && err.contains(demo::MARKER), "{err}");
    assert!(dir.path().join("Session1").is_dir());
}

#[test]
fn demo_corpus_other_options_replace_it_and_foreign_dirs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = DemoOptions { sessions: 2, sentences: 1 };
    demo::write_demo_corpus(dir.path(), &small).expect("two sessions");
    let one = DemoOptions { sessions: 1, sentences: 1 };
    let s = demo::write_demo_corpus(dir.path(), &one).expect("one session");
    assert_eq!(s.utterances, 2 * (4 + FRU_PER_SPEAKER));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, [demo::MARKER, "Session1"], "the old Session2 and the staging dir are gone");

    let foreign = tempfile::tempdir().expect("tempdir");
    let keep = crate::common::write(foreign.path(), "README.txt", "my real corpus");
    let err = demo::write_demo_corpus(foreign.path(), &one).expect_err("refuses a non-demo directory").to_string();
    assert!(err.contains(&foreign.path().display().to_string()) && err.contains("README.txt"), "{err}");
    assert!(keep.is_file());

    let err = demo::write_demo_corpus(dir.path(), &DemoOptions { sessions: 1, sentences: 0 }).expect_err("0 sentences");
    assert!(err.to_string().contains("sentences"), "{err}");
}

#[test]
#[ignore = "timing: run with --ignored to measure the default corpus"]
fn demo_corpus_default_size_timing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = std::time::Instant::now();
    let s = demo::write_demo_corpus(dir.path(), &DemoOptions::default()).expect("default corpus");
    let elapsed = t.elapsed();
    eprintln!(
        "default demo corpus: {} utterances, {:.0} s of audio, generated in {elapsed:.2?}",
        s.utterances, s.seconds
    );
    assert!(elapsed.as_secs() < 60);
}
