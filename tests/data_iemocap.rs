//! The IEMOCAP adapter on a fixture tree in the release layout, with the ids that break
//! index-based parsing and the lines that are not utterances. Expected counts are by hand.

use std::path::Path;

use sera::data::iemocap::parse_id;
use sera::data::{self, DatasetSpec, Gender, ProblemKind};

use crate::common::{wav, write};

/// (dialog, [(utterance id, label)]) per session. Kept after the 4-class map, by speaker:
/// Ses01F: neu, exc, sad, hap → neutral 1, happy 2, sad 1 (4)
/// Ses01M: ang, neu, sad (fru dropped) → angry 1, neutral 1, sad 1 (3)
/// Ses03F: ang, hap, exc → angry 1, happy 2 (3)
/// Ses03M: neu, sad (xxx dropped) → neutral 1, sad 1 (2)
/// Total 12: neutral 3, happy 4, angry 2, sad 3. Dropped: fru 1, xxx 1.
/// A dialog: its name and its (utterance id, raw label) turns.
type Dialog = (&'static str, &'static [(&'static str, &'static str)]);

pub const SESSIONS: &[(&str, &[Dialog])] = &[
    (
        "Session1",
        &[
            (
                "Ses01F_impro01",
                &[
                    ("Ses01F_impro01_F000", "neu"),
                    ("Ses01F_impro01_M000", "ang"),
                    ("Ses01F_impro01_F001", "exc"),
                    ("Ses01F_impro01_M001", "fru"),
                    ("Ses01F_impro01_F002", "sad"),
                ],
            ),
            (
                "Ses01M_script01_1b",
                &[
                    ("Ses01M_script01_1b_F000", "hap"),
                    ("Ses01M_script01_1b_M000", "neu"),
                    ("Ses01M_script01_1b_M001", "sad"),
                ],
            ),
        ],
    ),
    (
        "Session3",
        &[
            (
                "Ses03M_impro05a",
                &[("Ses03M_impro05a_F012", "ang"), ("Ses03M_impro05a_M007", "neu"), ("Ses03M_impro05a_F013", "hap")],
            ),
            (
                "Ses03M_impro08b",
                &[("Ses03M_impro08b_M007", "sad"), ("Ses03M_impro08b_F000", "exc"), ("Ses03M_impro08b_M008", "xxx")],
            ),
        ],
    ),
];

/// Writes the fixture corpus under `root`: evaluation files with headers and annotator lines,
/// transcriptions with one non-utterance line per dialog, and a short wav per utterance.
pub fn build_fixture(root: &Path) {
    for (session, dialogs) in SESSIONS {
        for (dialog, utts) in *dialogs {
            let mut eval = String::from("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n");
            let mut trans = String::new();
            for (i, (id, label)) in utts.iter().enumerate() {
                let (s, e) = (i as f64 * 2.0 + 0.5, i as f64 * 2.0 + 1.75);
                eval.push_str(&format!("[{s:.4} - {e:.4}]\t{id}\t{label}\t[2.5000, 3.0000, 3.5000]\n"));
                eval.push_str("C-E1:\tNeutral;\t()\nC-E2:\tAnger;\t()\nA-E3:\tval 2; act 4; dom 4;\t()\n\n");
                trans.push_str(&format!("{id} [{s:08.4}-{e:08.4}]: Sentence number {i}, said by {id}.\n"));
                wav(root, &format!("{session}/sentences/wav/{dialog}/{id}.wav"), 0.5, 16_000);
            }
            let gender = &dialog[5..6];
            trans.push_str(&format!("{dialog}_{gender}XX0 [000.0000-000.5000]: (laughter)\n"));
            write(root, &format!("{session}/dialog/EmoEvaluation/{dialog}.txt"), &eval);
            write(root, &format!("{session}/dialog/transcriptions/{dialog}.txt"), &trans);
        }
    }
}

/// A 4-class LOSO spec for a fixture root, written next to it.
pub fn write_spec(dir: &Path, root: &Path, extra: &str) -> std::path::PathBuf {
    write(
        dir,
        "iemocap.toml",
        &format!(
            "kind = \"iemocap\"\nroot = \"{}\"\nprotocol = \"leave-one-speaker-out\"\n{extra}\n\
             [labels]\nclasses = [\"neutral\", \"happy\", \"angry\", \"sad\"]\n\
             map = {{ neu = \"neutral\", hap = \"happy\", exc = \"happy\", ang = \"angry\", sad = \"sad\" }}\n",
            root.display()
        ),
    )
}

fn count(corpus: &data::Corpus, speaker: &str, label: &str) -> usize {
    corpus.utterances.iter().filter(|u| u.speaker == speaker && u.label == label).count()
}

#[test]
fn ids_that_break_index_parsing() {
    let p = parse_id("Ses03M_impro05a_F012").expect("valid id");
    assert_eq!((p.speaker.as_str(), p.dialog.as_str(), p.gender), ("Ses03F", "Ses03M_impro05a", Gender::Female));
    let p = parse_id("Ses03M_impro08b_M007").expect("valid id");
    assert_eq!((p.speaker.as_str(), p.dialog.as_str()), ("Ses03M", "Ses03M_impro08b"));
    let p = parse_id("Ses05M_script01_1b_F003").expect("valid id");
    assert_eq!((p.speaker.as_str(), p.session.as_str(), p.dialog.as_str()), ("Ses05F", "Ses05", "Ses05M_script01_1b"));
    assert_eq!(parse_id("Ses01F_impro01_M003").expect("valid id").speaker, "Ses01M");
    for id in ["Ses01F_impro01_MXX0", "Ses01F_impro01", "Ses01F_impro01_F00", "Sess1F_impro01_F000", "Ses01F_X001"] {
        assert!(parse_id(id).is_none(), "{id} should not parse");
    }
}

#[test]
fn fixture_counts_by_speaker_and_label() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("IEMOCAP_full_release");
    build_fixture(&root);
    let spec = DatasetSpec::load(&write_spec(dir.path(), &root, ""), None).expect("spec");
    let corpus = data::load(&spec).expect("load");
    assert_eq!(corpus.utterances.len(), 12);
    assert_eq!(corpus.classes, ["neutral", "happy", "angry", "sad"]);
    let expected =
        [("Ses01F", [1, 2, 0, 1]), ("Ses01M", [1, 0, 1, 1]), ("Ses03F", [0, 2, 1, 0]), ("Ses03M", [1, 0, 0, 1])];
    for (speaker, counts) in expected {
        for (class, want) in corpus.classes.iter().zip(counts) {
            assert_eq!(count(&corpus, speaker, class), want, "{speaker} {class}");
        }
    }
    assert_eq!(corpus.report.dropped_labels.get("fru"), Some(&1));
    assert_eq!(corpus.report.dropped_labels.get("xxx"), Some(&1));
    assert_eq!(corpus.report.ignored.get("transcription lines that are not utterances"), Some(&4));
    let u = corpus.utterances.iter().find(|u| u.id == "Ses01M_script01_1b_F000").expect("utt");
    assert_eq!((u.speaker.as_str(), u.session.as_deref(), u.gender), ("Ses01F", Some("Ses01"), Some(Gender::Female)));
    assert_eq!(u.text.as_deref(), Some("Sentence number 0, said by Ses01M_script01_1b_F000."));
    assert!(u.audio.ends_with("Session1/sentences/wav/Ses01M_script01_1b/Ses01M_script01_1b_F000.wav"));
    assert_eq!(corpus.label_indices().iter().filter(|&&i| i == 1).count(), 4);
}

#[test]
fn malformed_line_and_missing_wav_name_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("iemocap");
    build_fixture(&root);
    let eval = root.join("Session1/dialog/EmoEvaluation/Ses01F_impro01.txt");
    let mut text = std::fs::read_to_string(&eval).expect("read");
    let bad_line = text.lines().count() + 1;
    text.push_str("[9.0000 - 9.5000]\tSes01F_impro01_F009\n");
    std::fs::write(&eval, text).expect("write");
    std::fs::remove_file(root.join("Session3/sentences/wav/Ses03M_impro05a/Ses03M_impro05a_F012.wav")).expect("rm");

    let spec = DatasetSpec::load(&write_spec(dir.path(), &root, ""), None).expect("spec");
    let err = data::load(&spec).expect_err("problems must fail the load").to_string();
    assert!(err.contains(&format!("Ses01F_impro01.txt:{bad_line}")), "{err}");
    assert!(err.contains("Ses03M_impro05a_F012.wav"), "{err}");
    assert!(err.contains("2 problem(s)"), "{err}");

    let spec = DatasetSpec::load(&write_spec(dir.path(), &root, "bad_rows = \"skip\""), None).expect("spec");
    let corpus = data::load(&spec).expect("skip policy loads");
    assert_eq!(corpus.utterances.len(), 11);
    let kinds: Vec<ProblemKind> = corpus.report.skipped.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [ProblemKind::MalformedLine, ProblemKind::MissingAudio]);
    assert_eq!(corpus.report.skipped[0].origin.line, Some(bad_line));
}

#[test]
fn unknown_label_is_an_error_not_a_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("iemocap");
    build_fixture(&root);
    let eval = root.join("Session3/dialog/EmoEvaluation/Ses03M_impro08b.txt");
    let text = std::fs::read_to_string(&eval).expect("read").replace("\tsad\t", "\tsadness\t");
    std::fs::write(&eval, text).expect("write");
    let spec = DatasetSpec::load(&write_spec(dir.path(), &root, ""), None).expect("spec");
    let (_, problems) = data::load_collecting(&spec).expect("collect");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, ProblemKind::UnknownLabel);
    assert_eq!(problems[0].origin.line, Some(3));
    assert!(problems[0].message.contains("'sadness'"), "{}", problems[0].message);
}

#[test]
fn require_text_reports_missing_transcripts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("iemocap");
    build_fixture(&root);
    std::fs::remove_file(root.join("Session3/dialog/transcriptions/Ses03M_impro05a.txt")).expect("rm");
    let spec = DatasetSpec::load(&write_spec(dir.path(), &root, "require_text = true"), None).expect("spec");
    let (corpus, problems) = data::load_collecting(&spec).expect("collect");
    assert_eq!(problems.iter().filter(|p| p.kind == ProblemKind::EmptyText).count(), 3);
    assert_eq!(corpus.utterances.len(), 9);
}

#[test]
fn missing_root_names_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = DatasetSpec::load(&write_spec(dir.path(), &dir.path().join("nowhere"), ""), None).expect("spec");
    let err = data::load(&spec).expect_err("missing root").to_string();
    assert!(err.contains("nowhere") && err.contains("--root") && err.contains("SERA_ROOT_IEMOCAP"), "{err}");
}
