//! The `sera` and `sera-worker` binaries, run as users run them. scripts/test builds them first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::common::write;
use crate::data_iemocap::{build_fixture, write_spec};

/// Path of a workspace binary next to this test binary (target/<profile>/).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = dir.join(name);
    assert!(path.is_file(), "{} not built: run `cargo build --workspace --bins` (scripts/test does)", path.display());
    path
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name)).args(args).env_remove("RUST_LOG").output().expect("run binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn inspect_json_matches_hand_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_fixture(&dir.path().join("corpus"));
    let spec = write_spec(dir.path(), &dir.path().join("corpus"), "");
    let out = run("sera", &["data", "inspect", s(&spec), "--json", "--over", "0.4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["utterances"], 12);
    assert_eq!(v["by_speaker"]["Ses01F"], serde_json::json!({"neutral": 1, "happy": 2, "sad": 1}));
    assert_eq!(v["by_speaker"]["Ses03M"], serde_json::json!({"neutral": 1, "sad": 1}));
    assert_eq!(v["by_label"], serde_json::json!({"neutral": 3, "happy": 4, "angry": 2, "sad": 3}));
    assert_eq!(v["folds"], serde_json::json!({"Ses01F": 4, "Ses01M": 3, "Ses03F": 3, "Ses03M": 2}));
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(v["dropped_labels"], serde_json::json!({"fru": 1, "xxx": 1}));
    // Every fixture wav is 0.5 s long.
    assert_eq!(v["durations"]["mean_s"], 0.5);
    assert_eq!(v["durations"]["over"], 12);
}

#[test]
fn inspect_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("corpus");
    build_fixture(&root);
    let eval = root.join("Session1/dialog/EmoEvaluation/Ses01F_impro01.txt");
    let text =
        std::fs::read_to_string(&eval).expect("read").replace("\tSes01F_impro01_F001\texc", "\tSes01F_impro01_F001");
    std::fs::write(&eval, text).expect("write");
    std::fs::write(root.join("Session3/sentences/wav/Ses03M_impro05a/Ses03M_impro05a_F012.wav"), b"RIFF")
        .expect("write");
    let spec = write_spec(dir.path(), &root, "");
    let out = run("sera", &["data", "inspect", s(&spec)]);
    assert_eq!(out.status.code(), Some(1), "problems under bad_rows = error exit 1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 problem(s)"), "{text}");
    // Header, blank, then 5-line blocks: the third utterance is on line 13.
    assert!(text.contains("Ses01F_impro01.txt:13: expected `[start - end]"), "{text}");
    assert!(text.contains("Ses03M_impro05a_F012.wav"), "{text}");
}

#[test]
fn bad_specs_give_documented_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "kind = \"iemocap\"\nroot = \".\"\nprotocol = \"leave-one-speaker-out\"\nroots = 1\n",
            "line 4: unknown field `roots`",
        ),
        ("kind = \"manifest\"\nprotocol = \"leave-one-speaker-out\"\n", "needs `manifest = \"<file>.csv\"`"),
        (
            "kind = \"iemocap\"\nroot = \".\"\nprotocol = \"leave-one-person-out\"\n",
            "line 3: unknown variant `leave-one-person-out`",
        ),
        ("kind = \"iemocap\"\nroot = \".\"\nprotocol = \"partitions\"\n", "needs a [partitions] table"),
        ("kind = \"iemocap\"\nprotocol = \"leave-one-speaker-out\"\n", "SERA_ROOT_BAD"),
        (
            "kind = \"iemocap\"\nroot = \".\"\nprotocol = \"leave-one-speaker-out\"\n[labels]\nclasses = [\"a\"]\nmap = { neu = \"b\" }\n",
            "map sends 'neu' to 'b', which is not in `classes`",
        ),
    ];
    for (body, want) in cases {
        let spec = write(dir.path(), "bad.toml", body);
        let out = run("sera", &["data", "inspect", s(&spec)]);
        assert_eq!(out.status.code(), Some(2), "{body}");
        let err = stderr(&out);
        assert!(err.contains("bad.toml") && err.contains(want), "want '{want}' in: {err}");
    }
}

#[test]
fn plan_writes_jobs_that_a_worker_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("corpus");
    build_fixture(&root);
    write_spec(dir.path(), &root, "[validation]\npolicy = \"session-partner\"");
    write(dir.path(), "ast.toml", "kind = \"ast\"\nfrom_scratch = true\n[config]\nhidden_size = 8\n");
    let exp = write(
        dir.path(),
        "exp.toml",
        "datasets = [\"iemocap.toml\"]\nbackbone = \"ast.toml\"\n\
        [stage1]\nlambda_cl = 0.0\nlambda_mi = 0.0\n[stage2]\ntext_condition = false\nlambda_it = 0.0\n",
    );
    let jobs = dir.path().join("jobs");
    let out = run("sera", &["plan", s(&exp), "--json", "--out", s(&jobs)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let ids: Vec<&str> = v["jobs"].as_array().expect("jobs").iter().map(|j| j["id"].as_str().expect("id")).collect();
    assert_eq!(ids.len(), 4);
    let job = jobs.join(format!("{}.json", ids[0]));
    let out = run("sera-worker", &["check-job", s(&job)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fold Ses01F (1/4): train 5, validation 3, test 4"), "{text}");

    // Relabel one training utterance: the corpus still loads, but the fold is not the planned one.
    let eval = root.join("Session3/dialog/EmoEvaluation/Ses03M_impro05a.txt");
    let text = std::fs::read_to_string(&eval).expect("read").replace("\tneu\t", "\tfru\t");
    std::fs::write(&eval, text).expect("write");
    let out = run("sera-worker", &["check-job", s(&job)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("differs from the planned one"), "{}", stderr(&out));
}
