//! Generic manifests (CSV and JSONL), through the public loading API.

use std::path::Path;

use sera::Error;
use sera::data::{DatasetSpec, Gender, ProblemKind, load, load_collecting};

use crate::common::{wav, write};

/// (id, speaker, session, gender, split, text) of an utterance.
type Row<'a> = (&'a str, &'a str, Option<&'a str>, Option<Gender>, Option<&'a str>, Option<&'a str>);
/// (id, speaker, label, gender, text) of an utterance.
type Short<'a> = (&'a str, &'a str, &'a str, Option<Gender>, Option<&'a str>);

/// Writes `dir/<name>.toml` with `body` and loads it.
fn spec(dir: &Path, name: &str, body: &str) -> DatasetSpec {
    let path = write(dir, &format!("{name}.toml"), body);
    DatasetSpec::load(&path, None).expect("spec loads")
}

/// The three-line spec of a manifest corpus.
fn minimal(dir: &Path, manifest: &str) -> DatasetSpec {
    spec(
        dir,
        "mini",
        &format!("kind = \"manifest\"\nmanifest = \"{manifest}\"\nprotocol = \"leave-one-speaker-out\"\n"),
    )
}

/// A spec with a label map and `extra` lines.
fn mapped(dir: &Path, manifest: &str, extra: &str) -> DatasetSpec {
    spec(
        dir,
        "mapped",
        &format!(
            "kind = \"manifest\"\nmanifest = \"{manifest}\"\nprotocol = \"leave-one-speaker-out\"\n{extra}\n\
             [labels.map]\nang = \"angry\"\nhap = \"happy\"\nneu = \"neutral\"\nsad = \"sad\"\n"
        ),
    )
}

fn wavs(root: &Path, names: &[&str]) {
    for n in names {
        wav(root, &format!("data/wav/{n}.wav"), 0.1, 16000);
    }
}

/// Lines: 1 header; 2 u1 (text with a comma); 3–4 u2 (text with a newline); 5 u3 (no text);
/// 6 blank; 7 u4.
const CSV: &str = "id,path,speaker,label,text,session,gender,split
u1,wav/u1.wav,s1,ang,\"Well, no.\",A,F,train
u2,wav/u2.wav,s1,hap,\"Line one
line two\",A,female,train
u3,wav/u3.wav,s2,neu,,B,,test

u4,wav/u4.wav,s2,sad,plain,B,M,test
";

#[test]
fn manifest_minimal_csv() {
    let dir = tempfile::tempdir().expect("tempdir");
    wavs(dir.path(), &["u1", "u2", "u3", "u4"]);
    write(dir.path(), "data/m.csv", CSV);
    let corpus = load(&minimal(dir.path(), "data/m.csv")).expect("loads");

    // No label map: every raw label is its own class, sorted.
    assert_eq!(corpus.classes, ["ang", "hap", "neu", "sad"]);
    assert_eq!(corpus.label_indices(), [0, 1, 2, 3]);
    let rows: Vec<Row<'_>> = corpus
        .utterances
        .iter()
        .map(|u| {
            (
                u.id.as_str(),
                u.speaker.as_str(),
                u.session.as_deref(),
                u.gender,
                u.partition.as_deref(),
                u.text.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("u1", "s1", Some("A"), Some(Gender::Female), Some("train"), Some("Well, no.")),
            ("u2", "s1", Some("A"), Some(Gender::Female), Some("train"), Some("Line one\nline two")),
            ("u3", "s2", Some("B"), None, Some("test"), None),
            ("u4", "s2", Some("B"), Some(Gender::Male), Some("test"), Some("plain")),
        ]
    );
    // Paths are relative to the manifest's directory.
    assert_eq!(corpus.utterances[0].audio, dir.path().join("data/wav/u1.wav"));
    assert!(corpus.report.skipped.is_empty() && corpus.report.dropped_labels.is_empty());
}

#[test]
fn manifest_line_numbers_survive_quoted_newlines_and_crlf() {
    let dir = tempfile::tempdir().expect("tempdir");
    wavs(dir.path(), &["u1", "u2", "u3", "u4", "u5"]);
    // Line 8: no speaker; line 9: a bad gender; line 10: too few fields.
    let text = format!("{CSV}u5,wav/u5.wav,,sad,x,B,,test\nu6,wav/u5.wav,s3,sad,x,B,X,test\nu7,wav/u5.wav\n");
    write(dir.path(), "data/m.csv", &text);
    let m = dir.path().join("data/m.csv");
    let expected = [
        (ProblemKind::MalformedLine, format!("{}:8", m.display()), Some("u5")),
        (ProblemKind::MalformedLine, format!("{}:9", m.display()), Some("u6")),
        (ProblemKind::MalformedLine, format!("{}:10", m.display()), None),
    ];
    let (corpus, problems) = load_collecting(&minimal(dir.path(), "data/m.csv")).expect("loads");
    assert_eq!(corpus.utterances.len(), 4);
    let got: Vec<(ProblemKind, String, Option<&str>)> =
        problems.iter().map(|p| (p.kind, p.origin.to_string(), p.id.as_deref())).collect();
    assert_eq!(got, expected);
    assert!(problems[0].message.contains("`speaker`"), "{}", problems[0].message);
    assert!(problems[1].message.contains("'X'"), "{}", problems[1].message);

    // The same file with CRLF line ends gives the same lines.
    write(dir.path(), "data/m.csv", &text.replace('\n', "\r\n"));
    let (_, problems) = load_collecting(&minimal(dir.path(), "data/m.csv")).expect("loads");
    let got: Vec<(ProblemKind, String, Option<&str>)> =
        problems.iter().map(|p| (p.kind, p.origin.to_string(), p.id.as_deref())).collect();
    assert_eq!(got, expected);

    // And load() fails, naming the lines.
    let err = load(&minimal(dir.path(), "data/m.csv")).expect_err("bad rows fail");
    assert!(matches!(err, Error::InvalidData { .. }));
    assert!(err.to_string().contains(&format!("{}:9", m.display())), "{err}");
}

#[test]
fn manifest_jsonl() {
    let dir = tempfile::tempdir().expect("tempdir");
    wavs(dir.path(), &["a", "b", "c"]);
    // An absolute path is kept as it is.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let abs = wav(elsewhere.path(), "x.wav", 0.1, 16000);
    // Line 3 is blank; 4: bad JSON; 5: an unknown key; 6: a wrong type; 7: an array; 8: abs path.
    let jsonl = format!(
        "{{\"id\": \"a\", \"path\": \"wav/a.wav\", \"speaker\": 7, \"label\": \"hap\", \"text\": \"Hi.\", \"gender\": \"m\"}}\n\
         {{\"id\": \"b\", \"path\": \"wav/b.wav\", \"speaker\": \"s2\", \"label\": \"sad\", \"text\": \"\", \"split\": null}}\n\
         \n\
         {{\"id\": \"c\", \"path\": \"wav/c.wav\",\n\
         {{\"id\": \"d\", \"path\": \"wav/c.wav\", \"speaker\": \"s2\", \"label\": \"sad\", \"emotion\": \"sad\"}}\n\
         {{\"id\": \"e\", \"path\": \"wav/c.wav\", \"speaker\": \"s2\", \"label\": [\"sad\"]}}\n\
         [1, 2]\n\
         {{\"id\": \"f\", \"path\": {}, \"speaker\": \"s3\", \"label\": \"ang\"}}\n",
        serde_json::to_string(&abs.display().to_string()).expect("json string")
    );
    write(dir.path(), "data/m.jsonl", &jsonl);
    let m = dir.path().join("data/m.jsonl");
    let (corpus, problems) = load_collecting(&minimal(dir.path(), "data/m.jsonl")).expect("loads");

    let rows: Vec<Short<'_>> = corpus
        .utterances
        .iter()
        .map(|u| (u.id.as_str(), u.speaker.as_str(), u.label.as_str(), u.gender, u.text.as_deref()))
        .collect();
    assert_eq!(
        rows,
        [
            ("a", "7", "hap", Some(Gender::Male), Some("Hi.")),
            ("b", "s2", "sad", None, None),
            ("f", "s3", "ang", None, None)
        ]
    );
    assert_eq!(corpus.utterances[0].audio, dir.path().join("data/wav/a.wav"));
    assert_eq!(corpus.utterances[2].audio, abs);

    let got: Vec<(String, Option<&str>)> = problems.iter().map(|p| (p.origin.to_string(), p.id.as_deref())).collect();
    assert_eq!(
        got,
        [
            (format!("{}:4", m.display()), None),
            (format!("{}:5", m.display()), Some("d")),
            (format!("{}:6", m.display()), Some("e")),
            (format!("{}:7", m.display()), None),
        ]
    );
    assert!(problems.iter().all(|p| p.kind == ProblemKind::MalformedLine));
    assert!(problems[0].message.contains("not valid JSON"), "{}", problems[0].message);
    assert!(problems[1].message.contains("unknown key 'emotion'"), "{}", problems[1].message);
    assert!(problems[2].message.contains("`label` must be a string"), "{}", problems[2].message);
}

#[test]
fn manifest_row_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    wavs(dir.path(), &["u1", "u2", "u3"]);
    // Line 3: unknown label; 4: duplicate of line 2; 5: missing wav; 6: dropped by `ignore`;
    // 7: no text (only a problem with require_text).
    write(
        dir.path(),
        "data/m.csv",
        "id,path,speaker,label,text\n\
         u1,wav/u1.wav,s1,ang,one\n\
         u2,wav/u2.wav,s1,xyz,two\n\
         u1,wav/u3.wav,s2,sad,three\n\
         u4,wav/missing.wav,s2,neu,four\n\
         u5,wav/u3.wav,s2,oth,five\n\
         u6,wav/u3.wav,s2,hap,\n",
    );
    let m = dir.path().join("data/m.csv");
    let (corpus, problems) =
        load_collecting(&mapped(dir.path(), "data/m.csv", "[labels]\nignore = [\"oth\"]")).expect("loads");
    let ids: Vec<&str> = corpus.utterances.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["u1", "u6"]);
    assert_eq!(corpus.utterances[1].label, "happy");
    assert_eq!(corpus.report.dropped_labels.get("oth"), Some(&1));
    let got: Vec<(ProblemKind, String)> = problems.iter().map(|p| (p.kind, p.origin.to_string())).collect();
    assert_eq!(
        got,
        [
            (ProblemKind::UnknownLabel, format!("{}:3", m.display())),
            (ProblemKind::DuplicateId, format!("{}:4", m.display())),
            (ProblemKind::MissingAudio, format!("{}:5", m.display())),
        ]
    );
    assert!(problems[0].message.contains("'xyz'"), "{}", problems[0].message);
    // The duplicate names the first line too.
    assert!(problems[1].message.contains(&format!("{}:2", m.display())), "{}", problems[1].message);
    assert!(problems[2].message.contains(&dir.path().join("data/wav/missing.wav").display().to_string()));

    // require_text: u6 has no text.
    let (_, problems) =
        load_collecting(&mapped(dir.path(), "data/m.csv", "require_text = true\n[labels]\nignore = [\"oth\"]"))
            .expect("loads");
    let empty: Vec<String> =
        problems.iter().filter(|p| p.kind == ProblemKind::EmptyText).map(|p| p.origin.to_string()).collect();
    assert_eq!(empty, [format!("{}:7", m.display())]);

    // With `skip`, load() keeps the good rows and lists the skipped ones.
    let corpus =
        load(&mapped(dir.path(), "data/m.csv", "bad_rows = \"skip\"\n[labels]\nignore = [\"oth\"]")).expect("loads");
    assert_eq!(corpus.utterances.len(), 2);
    assert_eq!(corpus.report.skipped.len(), 3);
}

#[test]
fn manifest_header_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "m.csv", "id,path,speaker,emotion\nu1,a.wav,s1,ang\n");
    let err = load(&minimal(dir.path(), "m.csv")).expect_err("unknown column");
    let msg = err.to_string();
    assert!(matches!(err, Error::Config { .. }), "{msg}");
    assert!(msg.contains("unknown column 'emotion'") && msg.contains("id, path, speaker, label"), "{msg}");
    assert!(msg.contains(&dir.path().join("m.csv").display().to_string()), "{msg}");

    write(dir.path(), "m.csv", "id,path,label\nu1,a.wav,ang\n");
    let err = load(&minimal(dir.path(), "m.csv")).expect_err("missing column");
    let msg = err.to_string();
    assert!(matches!(err, Error::Config { .. }), "{msg}");
    assert!(msg.contains("missing required column 'speaker'"), "{msg}");

    write(dir.path(), "m.txt", "id,path,speaker,label\n");
    let err = load(&minimal(dir.path(), "m.txt")).expect_err("unknown extension");
    let msg = err.to_string();
    assert!(msg.contains("m.txt") && msg.contains(".csv") && msg.contains(".jsonl"), "{msg}");

    let err = load(&minimal(dir.path(), "absent.csv")).expect_err("missing manifest");
    assert!(err.to_string().contains("absent.csv"), "{err}");
}
