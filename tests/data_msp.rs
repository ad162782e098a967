//! MSP-IMPROV and MSP-Podcast adapters, through the public loading API, on fixture trees in the
//! release layouts. Expected values are counted by hand from the fixtures.

use std::collections::BTreeMap;
use std::path::Path;

use sera::Error;
use sera::data::{DatasetSpec, Gender, ProblemKind, load, load_collecting};

use crate::common::{wav, write};

/// Consensus lines and annotator lines, 2 sessions, 4 speakers. Line numbers matter.
///
/// Kept with A/H/S/N mapped (O and X dropped):
///   line 1  S01A-F01-P-FM01  A  angry
///   line 4  S01H-F01-R-FM02  H  happy
///   line 5  S01S-M01-P-MF01  N  neutral   (scenario targets sad; the consensus is neutral)
///   line 7  S02N-M01-T-MF02  S  sad
///   line 8  S03A-F02-P-FM01  H  happy     (scenario targets angry)
///   line 9  S03A-F02-S-FM02  O  dropped
///   line 10 S02N-F02-T-FM03  N  neutral
///   line 11 S04H-M02-P-MF01  X  dropped
///   line 13 S04H-M02-P-MF02  A  angry
///   line 14 S05N-M02-R-MF03  N  neutral
const EVALUATION: &str = "\
UTD-IMPROV-S01A-F01-P-FM01.avi; A; A:4.000000; V:2.000000; D:3.000000 ; N:5.000000;
F01-evaluator1; Angry; Angry; A:4.000000; V:2.000000; D:3.000000; N:5.000000;

UTD-IMPROV-S01H-F01-R-FM02.avi; H; A:3.200000; V:4.000000; D:3.000000 ; N:5.000000;
UTD-IMPROV-S01S-M01-P-MF01.avi; N; A:2.800000; V:3.000000; D:3.000000 ; N:5.000000;
M01-evaluator2; Neutral; Neutral; A:3.000000; V:3.000000; D:3.000000; N:5.000000;
UTD-IMPROV-S02N-M01-T-MF02.avi; S; A:2.000000; V:2.000000; D:2.000000 ; N:5.000000;
UTD-IMPROV-S03A-F02-P-FM01.avi; H; A:3.600000; V:4.200000; D:3.000000 ; N:5.000000;
UTD-IMPROV-S03A-F02-S-FM02.avi; O; A:3.000000; V:3.000000; D:3.000000 ; N:5.000000;
UTD-IMPROV-S02N-F02-T-FM03.avi; N; A:3.000000; V:3.000000; D:3.000000 ; N:5.000000;
UTD-IMPROV-S04H-M02-P-MF01.avi; X; A:3.000000; V:3.000000; D:3.000000 ; N:5.000000;
M02-evaluator1; Happy; Happy; A:3.000000; V:4.000000; D:3.000000; N:5.000000;
UTD-IMPROV-S04H-M02-P-MF02.avi; A; A:4.400000; V:1.800000; D:4.000000 ; N:5.000000;
UTD-IMPROV-S05N-M02-R-MF03.avi; N; A:3.000000; V:3.000000; D:3.000000 ; N:5.000000;
";

/// Every recording of [`EVALUATION`]: (name, session, scenario, type).
const RECORDINGS: &[(&str, &str, &str, &str)] = &[
    ("S01A-F01-P-FM01", "session1", "S01A", "P"),
    ("S01H-F01-R-FM02", "session1", "S01H", "R"),
    ("S01S-M01-P-MF01", "session1", "S01S", "P"),
    ("S02N-M01-T-MF02", "session1", "S02N", "T"),
    ("S03A-F02-P-FM01", "session2", "S03A", "P"),
    ("S03A-F02-S-FM02", "session2", "S03A", "S"),
    ("S02N-F02-T-FM03", "session2", "S02N", "T"),
    ("S04H-M02-P-MF01", "session2", "S04H", "P"),
    ("S04H-M02-P-MF02", "session2", "S04H", "P"),
    ("S05N-M02-R-MF03", "session2", "S05N", "R"),
];

/// Writes the MSP-IMPROV fixture under `root`. Session 2 lies under `Audio/`, as in some copies,
/// to show that wav files are found anywhere under the root.
fn improv_tree(root: &Path) {
    write(root, "Evaluation.txt", EVALUATION);
    for (name, session, scenario, kind) in RECORDINGS {
        let dir = if *session == "session2" { format!("Audio/{session}") } else { session.to_string() };
        wav(root, &format!("{dir}/{scenario}/{kind}/MSP-IMPROV-{name}.wav"), 0.1, 16000);
    }
    // A macOS resource fork: not audio.
    write(root, "session1/S01A/P/._MSP-IMPROV-S01A-F01-P-FM01.wav", "junk");
}

/// A spec for the fixture at `corpus/` with the 4-class map and `extra` TOML lines.
fn improv_spec(dir: &Path, extra: &str) -> DatasetSpec {
    let spec = write(
        dir,
        "improv.toml",
        &format!(
            "kind = \"msp-improv\"\nroot = \"corpus\"\nprotocol = \"leave-one-speaker-out\"\n{extra}\n\
             [labels.map]\nA = \"angry\"\nH = \"happy\"\nS = \"sad\"\nN = \"neutral\"\n"
        ),
    );
    DatasetSpec::load(&spec, None).expect("spec loads")
}

fn counts<'a>(items: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i.to_string()).or_default() += 1;
    }
    m
}

fn map(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn msp_improv_counts_speakers_and_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("corpus");
    improv_tree(&root);
    let corpus = load(&improv_spec(dir.path(), "")).expect("loads");

    assert_eq!(corpus.classes, ["angry", "happy", "neutral", "sad"]);
    assert_eq!(corpus.utterances.len(), 8);
    assert_eq!(
        counts(corpus.utterances.iter().map(|u| u.speaker.as_str())),
        map(&[("F01", 2), ("F02", 2), ("M01", 2), ("M02", 2)])
    );
    assert_eq!(
        counts(corpus.utterances.iter().map(|u| u.label.as_str())),
        map(&[("angry", 2), ("happy", 2), ("neutral", 3), ("sad", 1)])
    );
    assert_eq!(corpus.report.dropped_labels, map(&[("O", 1), ("X", 1)]));
    assert!(corpus.report.ignored.is_empty());
    assert!(corpus.report.skipped.is_empty());

    let by_id = |id: &str| corpus.utterances.iter().find(|u| u.id == id).expect("utterance present");
    let u = by_id("MSP-IMPROV-S01A-F01-P-FM01");
    assert_eq!(u.speaker, "F01");
    assert_eq!(u.session.as_deref(), Some("session1"));
    assert_eq!(u.gender, Some(Gender::Female));
    assert_eq!(u.label, "angry");
    assert_eq!(u.text, None);
    assert_eq!(u.partition, None);
    assert_eq!(u.audio, root.join("session1/S01A/P/MSP-IMPROV-S01A-F01-P-FM01.wav"));

    let u = by_id("MSP-IMPROV-S04H-M02-P-MF02");
    assert_eq!((u.speaker.as_str(), u.session.as_deref(), u.gender), ("M02", Some("session2"), Some(Gender::Male)));
    // Found by name under Audio/, not at the release path.
    assert_eq!(u.audio, root.join("Audio/session2/S04H/P/MSP-IMPROV-S04H-M02-P-MF02.wav"));

    // The label is the consensus field, not the scenario's target letter.
    assert_eq!(by_id("MSP-IMPROV-S01S-M01-P-MF01").label, "neutral"); // S01S targets sad
    assert_eq!(by_id("MSP-IMPROV-S03A-F02-P-FM01").label, "happy"); // S03A targets angry

    // Sessions follow speakers: F01/M01 in session1, F02/M02 in session2.
    assert_eq!(
        counts(corpus.utterances.iter().map(|u| u.session.as_deref().unwrap_or("-"))),
        map(&[("session1", 4), ("session2", 4)])
    );
    // Adapter order is file order.
    let ids: Vec<&str> = corpus.utterances.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "MSP-IMPROV-S01A-F01-P-FM01",
            "MSP-IMPROV-S01H-F01-R-FM02",
            "MSP-IMPROV-S01S-M01-P-MF01",
            "MSP-IMPROV-S02N-M01-T-MF02",
            "MSP-IMPROV-S03A-F02-P-FM01",
            "MSP-IMPROV-S02N-F02-T-FM03",
            "MSP-IMPROV-S04H-M02-P-MF02",
            "MSP-IMPROV-S05N-M02-R-MF03",
        ]
    );
}

#[test]
fn msp_improv_malformed_line_fails_or_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("corpus");
    improv_tree(&root);
    // Line 15: a name that does not parse; line 16: no category field.
    write(
        &root,
        "Evaluation.txt",
        &format!(
            "{EVALUATION}UTD-IMPROV-S1A-F01-P-FM09.avi; A; A:3.0; V:3.0; D:3.0 ; N:5.0;\nUTD-IMPROV-S01A-F01-P-FM08.avi\n"
        ),
    );
    let eval = root.join("Evaluation.txt");

    let err = load(&improv_spec(dir.path(), "")).expect_err("malformed lines fail the load");
    let msg = err.to_string();
    let Error::InvalidData { problems, .. } = err else { panic!("expected InvalidData, got {msg}") };
    assert_eq!(problems.len(), 2, "{msg}");
    assert!(problems.iter().all(|p| p.kind == ProblemKind::MalformedLine));
    assert_eq!(problems[0].origin.line, Some(15));
    assert_eq!(problems[1].origin.line, Some(16));
    assert!(msg.contains(&format!("{}:15", eval.display())), "{msg}");
    assert!(msg.contains(&format!("{}:16", eval.display())), "{msg}");
    assert!(msg.contains("UTD-IMPROV-S1A-F01-P-FM09.avi"), "{msg}");

    let corpus = load(&improv_spec(dir.path(), "bad_rows = \"skip\"")).expect("skip policy loads");
    assert_eq!(corpus.utterances.len(), 8);
    let skipped: Vec<(ProblemKind, Option<usize>)> =
        corpus.report.skipped.iter().map(|p| (p.kind, p.origin.line)).collect();
    assert_eq!(skipped, [(ProblemKind::MalformedLine, Some(15)), (ProblemKind::MalformedLine, Some(16))]);
    assert!(corpus.report.skipped.iter().all(|p| p.origin.file == eval));
}

#[test]
fn msp_improv_types_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    improv_tree(&dir.path().join("corpus"));
    let corpus = load(&improv_spec(dir.path(), "types = [\"P\"]")).expect("loads");
    // P recordings: S01A-F01 (A), S01S-M01 (N), S03A-F02 (H), S04H-M02-MF01 (X, dropped), S04H-M02-MF02 (A).
    let ids: Vec<&str> = corpus.utterances.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "MSP-IMPROV-S01A-F01-P-FM01",
            "MSP-IMPROV-S01S-M01-P-MF01",
            "MSP-IMPROV-S03A-F02-P-FM01",
            "MSP-IMPROV-S04H-M02-P-MF02"
        ]
    );
    assert_eq!(corpus.report.ignored, map(&[("rows of excluded recording types", 5)]));
    assert_eq!(corpus.report.dropped_labels, map(&[("X", 1)]));

    let corpus = load(&improv_spec(dir.path(), "types = [\"R\", \"T\"]")).expect("loads");
    assert_eq!(
        counts(corpus.utterances.iter().map(|u| u.label.as_str())),
        map(&[("happy", 1), ("neutral", 2), ("sad", 1)])
    );
    assert_eq!(corpus.report.ignored, map(&[("rows of excluded recording types", 6)]));

    // An unknown type letter is caught when the spec is read, naming the spec file.
    let spec = write(
        dir.path(),
        "bad-types.toml",
        "kind = \"msp-improv\"\nroot = \"corpus\"\nprotocol = \"leave-one-speaker-out\"\ntypes = [\"P\", \"Q\"]\n",
    );
    let err = DatasetSpec::load(&spec, None).expect_err("unknown type");
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("bad-types.toml") && err.to_string().contains("'Q'"), "{err}");
}

#[test]
fn msp_improv_missing_wav_names_the_release_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("corpus");
    improv_tree(&root);
    let gone = root.join("session1/S01H/R/MSP-IMPROV-S01H-F01-R-FM02.wav");
    std::fs::remove_file(&gone).expect("remove wav");

    let (corpus, problems) = load_collecting(&improv_spec(dir.path(), "")).expect("loads");
    assert_eq!(corpus.utterances.len(), 7);
    assert_eq!(problems.len(), 1);
    let p = &problems[0];
    assert_eq!(p.kind, ProblemKind::MissingAudio);
    assert_eq!(p.id.as_deref(), Some("MSP-IMPROV-S01H-F01-R-FM02"));
    assert_eq!(p.origin.line, Some(4));
    assert!(p.message.contains(&gone.display().to_string()), "{}", p.message);
}

#[test]
fn msp_improv_evaluation_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("corpus");
    improv_tree(&root);
    std::fs::remove_file(root.join("Evaluation.txt")).expect("remove");

    let err = load(&improv_spec(dir.path(), "")).expect_err("no Evaluation.txt");
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains(&root.join("Evaluation.txt").display().to_string()), "{err}");

    // One level down is found.
    write(&root, "Evaluation/Evaluation.txt", EVALUATION);
    let corpus = load(&improv_spec(dir.path(), "")).expect("loads");
    assert_eq!(corpus.utterances.len(), 8);
}

#[test]
fn msp_improv_transcripts_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    improv_tree(&dir.path().join("corpus"));
    // The last id is not in the corpus (fine); the quoted text has a comma.
    write(
        dir.path(),
        "asr.csv",
        "id,text,confidence\n\
         MSP-IMPROV-S01A-F01-P-FM01,\"No, I won't.\",0.9\n\
         MSP-IMPROV-S05N-M02-R-MF03,  It is fine.  ,0.8\n\
         MSP-IMPROV-S09A-F05-P-FM01,elsewhere,0.7\n",
    );
    let corpus = load(&improv_spec(dir.path(), "transcripts = \"asr.csv\"")).expect("loads");
    let texts: Vec<(&str, Option<&str>)> =
        corpus.utterances.iter().filter(|u| u.text.is_some()).map(|u| (u.id.as_str(), u.text.as_deref())).collect();
    assert_eq!(
        texts,
        [("MSP-IMPROV-S01A-F01-P-FM01", Some("No, I won't.")), ("MSP-IMPROV-S05N-M02-R-MF03", Some("It is fine."))]
    );

    // With require_text, the 6 kept rows without a transcript are problems.
    let (corpus, problems) =
        load_collecting(&improv_spec(dir.path(), "transcripts = \"asr.csv\"\nrequire_text = true")).expect("loads");
    assert_eq!(corpus.utterances.len(), 2);
    assert_eq!(problems.len(), 6);
    assert!(problems.iter().all(|p| p.kind == ProblemKind::EmptyText));

    // JSONL works the same way.
    write(
        dir.path(),
        "asr.jsonl",
        "{\"id\": \"MSP-IMPROV-S02N-M01-T-MF02\", \"text\": \"So sad.\"}\n\n{\"id\": \"MSP-IMPROV-S04H-M02-P-MF02\", \"text\": \"Stop!\"}\n",
    );
    let corpus = load(&improv_spec(dir.path(), "transcripts = \"asr.jsonl\"")).expect("loads");
    let texts: Vec<&str> = corpus.utterances.iter().filter_map(|u| u.text.as_deref()).collect();
    assert_eq!(texts, ["So sad.", "Stop!"]);

    // No id matches: an error showing an id from each side.
    write(dir.path(), "other.csv", "id,text\nSes01F_impro01_F000,Excuse me.\n");
    let err = load(&improv_spec(dir.path(), "transcripts = \"other.csv\"")).expect_err("ids do not match");
    let msg = err.to_string();
    assert!(matches!(err, Error::Config { .. }), "{msg}");
    assert!(msg.contains("Ses01F_impro01_F000") && msg.contains("MSP-IMPROV-S01A-F01-P-FM01"), "{msg}");

    // A malformed row names file:line.
    write(
        dir.path(),
        "bad.jsonl",
        "{\"id\": \"MSP-IMPROV-S02N-M01-T-MF02\", \"text\": \"ok\"}\n{\"id\": 3.5e300, \"text\": [1]}\n",
    );
    let err = load(&improv_spec(dir.path(), "transcripts = \"bad.jsonl\"")).expect_err("bad row");
    assert!(err.to_string().contains(&format!("{}:2", dir.path().join("bad.jsonl").display())), "{err}");

    // An id listed twice names both lines.
    write(dir.path(), "twice.csv", "id,text\nMSP-IMPROV-S02N-M01-T-MF02,a\n\nMSP-IMPROV-S02N-M01-T-MF02,b\n");
    let err = load(&improv_spec(dir.path(), "transcripts = \"twice.csv\"")).expect_err("duplicate");
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}:4", dir.path().join("twice.csv").display())) && msg.contains("line 2"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// MSP-Podcast

/// Label rows (line numbers in the CSV are one more than the index, after the header):
///   line 2 0001_0008 N 127 Female Train
///   line 3 0001_0019 H 127 Female Development
///   line 4 0002_0033 A Unknown Unknown Test1
///   line 5 0003_0001 S 311 Male Test2
///   line 6 0003_0002 X 311 Male Train    (dropped)
///   line 7 0004_0001 U 12 Male Test3     (dropped)
///   line 8 0004_0002 N 12 Male Validation
const PODCAST_CSV: &str = "\
FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set
MSP-PODCAST_0001_0008.wav,N,4.2,4.0,4.4,127,Female,Train
MSP-PODCAST_0001_0019.wav,H,5.0,5.6,4.8,127,Female,Development
MSP-PODCAST_0002_0033.wav,A,6.0,2.0,5.8,Unknown,Unknown,Test1
MSP-PODCAST_0003_0001.wav,S,2.4,2.2,3.0,311,Male,Test2
MSP-PODCAST_0003_0002.wav,X,4.0,4.0,4.0,311,Male,Train
MSP-PODCAST_0004_0001.wav,U,5.2,4.4,4.0,12,Male,Test3
MSP-PODCAST_0004_0002.wav,N,3.8,4.0,4.2,12,Male,Validation
";

const PODCAST_FILES: &[&str] = &[
    "MSP-PODCAST_0001_0008",
    "MSP-PODCAST_0001_0019",
    "MSP-PODCAST_0002_0033",
    "MSP-PODCAST_0003_0001",
    "MSP-PODCAST_0003_0002",
    "MSP-PODCAST_0004_0001",
    "MSP-PODCAST_0004_0002",
];

/// Audio and two transcripts under `root`.
fn podcast_tree(root: &Path) {
    for stem in PODCAST_FILES {
        wav(root, &format!("Audios/{stem}.wav"), 0.1, 16000);
    }
    write(root, "Transcripts/MSP-PODCAST_0001_0008.txt", "  Hello there.\n");
    write(root, "Transcripts/MSP-PODCAST_0003_0001.txt", "I miss it.");
    write(root, "Transcripts/MSP-PODCAST_0004_0002.txt", "   \n");
}

fn podcast_spec(dir: &Path, extra: &str) -> DatasetSpec {
    let spec = write(
        dir,
        "podcast.toml",
        &format!(
            "kind = \"msp-podcast\"\nroot = \"corpus\"\nprotocol = \"partitions\"\n{extra}\n\
             [partitions]\ntrain = [\"Train\"]\nvalidation = [\"Development\", \"Validation\"]\ntest = [\"Test1\", \"Test2\"]\n\
             [labels.map]\nN = \"neutral\"\nH = \"happy\"\nS = \"sad\"\nA = \"angry\"\n"
        ),
    );
    DatasetSpec::load(&spec, None).expect("spec loads")
}

/// The expected (id, label, speaker, gender, partition, text) of the kept rows.
type Expected<'a> = (&'a str, &'a str, &'a str, Option<Gender>, &'a str, Option<&'a str>);

const PODCAST_EXPECTED: &[Expected<'static>] = &[
    ("MSP-PODCAST_0001_0008", "neutral", "127", Some(Gender::Female), "Train", Some("Hello there.")),
    ("MSP-PODCAST_0001_0019", "happy", "127", Some(Gender::Female), "Development", None),
    ("MSP-PODCAST_0002_0033", "angry", "Unknown", None, "Test1", None),
    ("MSP-PODCAST_0003_0001", "sad", "311", Some(Gender::Male), "Test2", Some("I miss it.")),
    ("MSP-PODCAST_0004_0002", "neutral", "12", Some(Gender::Male), "Validation", None),
];

fn check_podcast(corpus: &sera::data::Corpus, root: &Path) {
    let got: Vec<Expected<'_>> = corpus
        .utterances
        .iter()
        .map(|u| {
            (
                u.id.as_str(),
                u.label.as_str(),
                u.speaker.as_str(),
                u.gender,
                u.partition.as_deref().unwrap_or("-"),
                u.text.as_deref(),
            )
        })
        .collect();
    assert_eq!(got, PODCAST_EXPECTED);
    assert_eq!(corpus.report.dropped_labels, map(&[("U", 1), ("X", 1)]));
    assert_eq!(corpus.classes, ["angry", "happy", "neutral", "sad"]);
    assert_eq!(corpus.utterances[0].audio, root.join("Audios/MSP-PODCAST_0001_0008.wav"));
    assert!(corpus.utterances.iter().all(|u| u.session.is_none()));
}

#[test]
fn msp_podcast_csv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("corpus");
    podcast_tree(&root);
    write(&root, "Labels/labels_consensus.csv", PODCAST_CSV);
    let corpus = load(&podcast_spec(dir.path(), "")).expect("loads");
    check_podcast(&corpus, &root);
}

#[test]
fn msp_podcast_concensus_spelling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("corpus");
    podcast_tree(&root);
    write(&root, "Labels/labels_concensus.csv", PODCAST_CSV);
    let corpus = load(&podcast_spec(dir.path(), "")).expect("loads");
    check_podcast(&corpus, &root);
}

#[test]
fn msp_podcast_json_dict_and_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("corpus");
    podcast_tree(&root);
    // The dict form, pretty-printed; SpkrID as a number in one entry.
    let dict = r#"{
  "MSP-PODCAST_0001_0008.wav": {"EmoClass": "N", "EmoAct": 4.2, "SpkrID": 127, "Gender": "Female", "Split_Set": "Train"},
  "MSP-PODCAST_0001_0019.wav": {"EmoClass": "H", "SpkrID": "127", "Gender": "Female", "Split_Set": "Development"},
  "MSP-PODCAST_0002_0033.wav": {"EmoClass": "A", "SpkrID": "Unknown", "Gender": "Unknown", "Split_Set": "Test1"},
  "MSP-PODCAST_0003_0001.wav": {
    "EmoClass": "S",
    "SpkrID": "311",
    "Gender": "Male",
    "Split_Set": "Test2"
  },
  "MSP-PODCAST_0003_0002.wav": {"EmoClass": "X", "SpkrID": "311", "Gender": "Male", "Split_Set": "Train"},
  "MSP-PODCAST_0004_0001.wav": {"EmoClass": "U", "SpkrID": "12", "Gender": "Male", "Split_Set": "Test3"},
  "MSP-PODCAST_0004_0002.wav": {"EmoClass": "N", "SpkrID": "12", "Gender": "Male", "Split_Set": "Validation"}
}
"#;
    write(&root, "Labels/labels_consensus.json", dict);
    let corpus = load(&podcast_spec(dir.path(), "")).expect("loads");
    check_podcast(&corpus, &root);

    // The list form, with a bad entry on line 5 (EmoClass is a number) and one without SpkrID on
    // line 6.
    let list = r#"[
{"FileName": "MSP-PODCAST_0001_0008.wav", "EmoClass": "N", "SpkrID": "127", "Gender": "Female", "Split_Set": "Train"},
{"FileName": "MSP-PODCAST_0001_0019.wav", "EmoClass": "H", "SpkrID": "127", "Gender": "Female", "Split_Set": "Development"},
{"FileName": "MSP-PODCAST_0002_0033.wav", "EmoClass": "A", "SpkrID": "Unknown", "Gender": "Unknown", "Split_Set": "Test1"},
{"FileName": "MSP-PODCAST_0003_0001.wav", "EmoClass": 3, "SpkrID": "311", "Gender": "Male", "Split_Set": "Test2"},
{"FileName": "MSP-PODCAST_0003_0002.wav", "EmoClass": "X", "Gender": "Male", "Split_Set": "Train"}
]
"#;
    write(&root, "Labels/labels_consensus.json", list);
    let labels = root.join("Labels/labels_consensus.json");
    let corpus = load(&podcast_spec(dir.path(), "bad_rows = \"skip\"")).expect("loads");
    let ids: Vec<&str> = corpus.utterances.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["MSP-PODCAST_0001_0008", "MSP-PODCAST_0001_0019", "MSP-PODCAST_0002_0033"]);
    let skipped: Vec<String> = corpus.report.skipped.iter().map(|p| p.origin.to_string()).collect();
    assert_eq!(skipped, [format!("{}:5", labels.display()), format!("{}:6", labels.display())]);
    assert!(corpus.report.skipped[0].message.contains("EmoClass"), "{}", corpus.report.skipped[0].message);
    assert!(corpus.report.skipped[1].message.contains("SpkrID"), "{}", corpus.report.skipped[1].message);
    assert_eq!(corpus.report.skipped[1].id.as_deref(), Some("MSP-PODCAST_0003_0002"));
}

#[test]
fn msp_podcast_row_problems_have_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("corpus");
    podcast_tree(&root);
    // Line 3: no Split_Set; line 4: a bad gender; line 5: a label outside the vocabulary.
    write(
        &root,
        "Labels/labels_consensus.csv",
        "FileName,EmoClass,SpkrID,Gender,Split_Set,Extra\n\
         MSP-PODCAST_0001_0008.wav,N,127,Female,Train,x\n\
         MSP-PODCAST_0001_0019.wav,H,127,Female,,x\n\
         MSP-PODCAST_0002_0033.wav,A,Unknown,Robot,Test1,x\n\
         MSP-PODCAST_0003_0001.wav,Q,311,Male,Test2,x\n",
    );
    let labels = root.join("Labels/labels_consensus.csv");
    let err = load(&podcast_spec(dir.path(), "")).expect_err("bad rows");
    let msg = err.to_string();
    let Error::InvalidData { problems, .. } = err else { panic!("expected InvalidData: {msg}") };
    let got: Vec<(ProblemKind, String)> = problems.iter().map(|p| (p.kind, p.origin.to_string())).collect();
    assert_eq!(
        got,
        [
            (ProblemKind::MalformedLine, format!("{}:3", labels.display())),
            (ProblemKind::MalformedLine, format!("{}:4", labels.display())),
            (ProblemKind::UnknownLabel, format!("{}:5", labels.display())),
        ]
    );
    assert!(problems[1].message.contains("Robot"), "{}", problems[1].message);
}

#[test]
fn msp_podcast_missing_labels_or_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("corpus");
    podcast_tree(&root);
    let err = load(&podcast_spec(dir.path(), "")).expect_err("no label file");
    let msg = err.to_string();
    assert!(matches!(err, Error::Config { .. }), "{msg}");
    for name in ["labels_consensus.csv", "labels_concensus.csv", "labels_consensus.json"] {
        assert!(msg.contains(&root.join("Labels").join(name).display().to_string()), "{msg}");
    }

    write(
        &root,
        "Labels/labels_consensus.csv",
        "FileName,EmoClass,Gender,Split_Set\nMSP-PODCAST_0001_0008.wav,N,Female,Train\n",
    );
    let err = load(&podcast_spec(dir.path(), "")).expect_err("no SpkrID column");
    let msg = err.to_string();
    assert!(matches!(err, Error::Config { .. }), "{msg}");
    assert!(msg.contains("'SpkrID'") && msg.contains("labels_consensus.csv"), "{msg}");
}
