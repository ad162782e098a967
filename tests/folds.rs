//! Folds: speaker-disjointness, every utterance tested exactly once, validation policies,
//! write/read round trips and stable checksums.

use std::collections::{HashMap, HashSet};

use sera::data::folds::FoldSet;
use sera::data::{self, DatasetSpec};

use crate::common::write;
use crate::data_iemocap::{build_fixture, write_spec};

fn fixture(extra: &str) -> (tempfile::TempDir, DatasetSpec, data::Corpus) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("iemocap");
    build_fixture(&root);
    let spec = DatasetSpec::load(&write_spec(dir.path(), &root, extra), None).expect("spec");
    let corpus = data::load(&spec).expect("load");
    (dir, spec, corpus)
}

#[test]
fn loso_folds_are_speaker_disjoint_and_cover_every_utterance_once() {
    let (_dir, spec, corpus) = fixture("");
    let set = FoldSet::build(&spec, &corpus).expect("folds");
    let names: Vec<&str> = set.folds.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["Ses01F", "Ses01M", "Ses03F", "Ses03M"]);
    let speaker: HashMap<&str, &str> = corpus.utterances.iter().map(|u| (u.id.as_str(), u.speaker.as_str())).collect();
    let mut tested = HashMap::new();
    for f in &set.folds {
        let test_speakers: HashSet<&str> = f.test.iter().map(|id| speaker[id.as_str()]).collect();
        let train_speakers: HashSet<&str> = f.train.iter().map(|id| speaker[id.as_str()]).collect();
        assert_eq!(test_speakers, HashSet::from([f.name.as_str()]));
        assert!(!train_speakers.contains(f.name.as_str()));
        assert_eq!(f.train.len() + f.test.len(), 12, "no validation policy: everything else trains");
        for id in &f.test {
            *tested.entry(id.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(tested.len(), 12);
    assert!(tested.values().all(|&n| n == 1));
    let sizes: Vec<usize> = set.folds.iter().map(|f| f.test.len()).collect();
    assert_eq!(sizes, [4, 3, 3, 2]);
}

#[test]
fn session_partner_validates_on_the_other_speaker_of_the_session() {
    let (_dir, spec, corpus) = fixture("[validation]\npolicy = \"session-partner\"");
    let set = FoldSet::build(&spec, &corpus).expect("folds");
    let f = set.fold("Ses01F").expect("fold");
    assert_eq!(f.validation, ["Ses01F_impro01_M000", "Ses01M_script01_1b_M000", "Ses01M_script01_1b_M001"]);
    assert_eq!(f.train.len(), 5, "Ses03F (3) + Ses03M (2)");
    assert!(f.train.iter().all(|id| id.starts_with("Ses03")));
    let f = set.fold("Ses03M").expect("fold");
    assert_eq!(f.validation.len(), 3);
    assert_eq!(f.train.len(), 7);
}

#[test]
fn stratified_validation_is_per_class_and_seeded() {
    let (_dir, spec, corpus) = fixture("[validation]\npolicy = \"stratified\"\nfraction = 0.5\nseed = 7");
    let a = FoldSet::build(&spec, &corpus).expect("folds");
    let b = FoldSet::build(&spec, &corpus).expect("folds");
    assert_eq!(a, b, "same seed, same split");
    // Fold Ses03M trains on 10 utterances: neutral 2, happy 4, angry 2, sad 2 → round(n/2) each = 5.
    let f = a.fold("Ses03M").expect("fold");
    assert_eq!((f.validation.len(), f.train.len(), f.test.len()), (5, 5, 2));
    let label: HashMap<&str, &str> = corpus.utterances.iter().map(|u| (u.id.as_str(), u.label.as_str())).collect();
    let happy = f.validation.iter().filter(|id| label[id.as_str()] == "happy").count();
    assert_eq!(happy, 2);
}

#[test]
fn fold_files_round_trip_with_stable_checksums() {
    let (dir, spec, corpus) = fixture("");
    let set = FoldSet::build(&spec, &corpus).expect("folds");
    let again = FoldSet::build(&spec, &corpus).expect("folds");
    assert_eq!(set.compute_checksum(), again.compute_checksum());
    // Fold checksums depend only on fold names and ids, never on paths or machines. The value is
    // SHA-256 of the sorted-key compact JSON {"name","test","train","validation"}, computed
    // independently with Python's json.dumps(sort_keys=True, separators=(',', ':')) + hashlib.
    assert_eq!(
        set.fold("Ses03M").expect("fold").checksum(),
        "0edde737561335d00ea4839a044f4eab5bad02ecc0e2315a17f768fa6fbcf941"
    );
    let path = dir.path().join("folds.json");
    set.write(&path).expect("write");
    let back = FoldSet::read(&path, &corpus).expect("read back");
    assert_eq!(back.folds, set.folds);
    assert_eq!(back.compute_checksum(), set.compute_checksum());

    // Through a spec with protocol = "fold-file".
    let spec_path = write(
        dir.path(),
        "ff.toml",
        &format!(
            "kind = \"iemocap\"\nroot = \"{}\"\nprotocol = \"fold-file\"\nfold_file = \"folds.json\"\n[labels]\nmap = {{ neu = \"neutral\", hap = \"happy\", exc = \"happy\", ang = \"angry\", sad = \"sad\" }}\n",
            spec.root.as_ref().expect("root").display()
        ),
    );
    let ff = DatasetSpec::load(&spec_path, None).expect("spec");
    let from_file = FoldSet::build(&ff, &data::load(&ff).expect("load")).expect("folds");
    assert_eq!(from_file.compute_checksum(), set.compute_checksum());

    // Moving one id changes the checksum, and an edited file with a stale checksum is refused.
    let text = std::fs::read_to_string(&path).expect("read");
    let edited = text.replacen("\"Ses03M_impro08b_M007\"", "\"Ses01F_impro01_F000\"", 1);
    std::fs::write(&path, &edited).expect("write");
    let err = FoldSet::read(&path, &corpus).expect_err("stale checksum").to_string();
    assert!(err.contains("checksum mismatch") && err.contains("folds.json"), "{err}");
}

#[test]
fn hand_written_fold_files_are_checked() {
    let (dir, _spec, corpus) = fixture("");
    let path = write(
        dir.path(),
        "hand.json",
        r#"{"dataset": "x", "protocol": "fold-file", "folds": [
        {"name": "a", "test": ["Ses01F_impro01_F000"], "validation": ["Ses01F_impro01_M000"]}]}"#,
    );
    let set = FoldSet::read(&path, &corpus).expect("read");
    assert_eq!(set.folds[0].train.len(), 10, "train defaults to everything else");
    let path = write(
        dir.path(),
        "bad.json",
        r#"{"dataset": "x", "protocol": "fold-file", "folds": [
        {"name": "a", "test": ["Ses01F_impro01_F000", "nope"]}]}"#,
    );
    let err = FoldSet::read(&path, &corpus).expect_err("unknown id").to_string();
    assert!(err.contains("bad.json") && err.contains("'nope'"), "{err}");
    let path = write(
        dir.path(),
        "overlap.json",
        r#"{"dataset": "x", "protocol": "fold-file", "folds": [
        {"name": "a", "test": ["Ses01F_impro01_F000"], "train": ["Ses01F_impro01_F000"]}]}"#,
    );
    let err = FoldSet::read(&path, &corpus).expect_err("overlap").to_string();
    assert!(err.contains("both train and test"), "{err}");
}

#[test]
fn leave_one_session_out_has_one_fold_per_session() {
    let (dir, spec, corpus) = fixture("");
    let text = std::fs::read_to_string(dir.path().join("iemocap.toml"))
        .expect("read")
        .replace("leave-one-speaker-out", "leave-one-session-out");
    let path = write(dir.path(), "ses.toml", &text);
    let spec2 = DatasetSpec::load(&path, None).expect("spec");
    let set = FoldSet::build(&spec2, &corpus).expect("folds");
    let sizes: Vec<(&str, usize)> = set.folds.iter().map(|f| (f.name.as_str(), f.test.len())).collect();
    assert_eq!(sizes, [("Ses01", 7), ("Ses03", 5)]);
    assert_eq!(spec.name, "iemocap");
}
