//! `sera features`: pooled features of the demo corpus (32 utterances) from the tiny fixture models equal direct
//! model calls, the output reads back as plain safetensors + JSON, the cache is reused on an equal
//! key and recomputed on a different one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use sera::audio;
use sera::data::demo::{DemoOptions, write_demo_corpus};
use sera::data::{self, Corpus, DatasetSpec};
use sera::features::{self, Modality, Outcome, Request};
use sera::models::ast::Ast;
use sera::models::bert::TextEncoder;
use sera::models::wav2vec2::Wav2Vec2;
use sera::spec::model::{ModelSpec, Pooling};
use sera::spec::stages::Precision;
use tch::{Device, Tensor};

use crate::common::{demo_spec, write};
use crate::models_util::{fixture, max_abs_diff};

const TOL: f64 = 1e-5;

/// The demo corpus (2 sessions, 2 sentences: 32 labelled utterances) and its dataset spec, made once.
fn demo() -> &'static (tempfile::TempDir, PathBuf) {
    static DEMO: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    DEMO.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("corpus");
        write_demo_corpus(&root, &DemoOptions { sessions: 2, sentences: 2 }).expect("demo corpus");
        let spec = demo_spec(dir.path(), "demo.toml", &root);
        (dir, spec)
    })
}

fn corpus() -> Corpus {
    data::load(&DatasetSpec::load(&demo().1, None).expect("spec")).expect("load demo corpus")
}

/// A model spec file pointing at a committed fixture checkpoint.
fn model_spec(dir: &Path, name: &str, kind: &str, fixture_dir: &str, extra: &str) -> (PathBuf, ModelSpec) {
    let path = write(
        dir,
        &format!("{name}.toml"),
        &format!("kind = \"{kind}\"\npath = \"{}\"\n{extra}", fixture(fixture_dir).display()),
    );
    let spec = ModelSpec::load(&path).expect("model spec");
    (path, spec)
}

fn run(model: &ModelSpec, modality: Modality, corpus: &Corpus, out: &Path) -> sera::Result<Outcome> {
    let req =
        Request { model, modality, corpus, out, device: Device::Cpu, precision: Precision::Fp32, batch_size: Some(3) };
    features::extract(&req, &mut |_, _| {})
}

/// Reads `features.safetensors` by the format alone (8-byte little-endian header length, JSON
/// header, raw little-endian data), as a Python user's `safetensors.numpy.load_file` would.
fn read_raw(dir: &Path) -> (Vec<i64>, Vec<f32>, Vec<String>) {
    let bytes = std::fs::read(dir.join("features.safetensors")).expect("read features");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("json header");
    let entries: Vec<&String> = header.as_object().expect("object").keys().filter(|k| *k != "__metadata__").collect();
    assert_eq!(entries, ["features"], "exactly one tensor named features");
    let t = &header["features"];
    assert_eq!(t["dtype"], "F32");
    let shape: Vec<i64> = serde_json::from_value(t["shape"].clone()).expect("shape");
    let [start, end]: [usize; 2] = serde_json::from_value(t["data_offsets"].clone()).expect("offsets");
    let data: Vec<f32> = bytes[8 + n + start..8 + n + end]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    assert_eq!(data.len() as i64, shape.iter().product::<i64>());
    let ids: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ids.json")).expect("ids.json")).expect("ids");
    (shape, data, ids)
}

fn as_tensor(shape: &[i64], data: &[f32]) -> Tensor {
    Tensor::from_slice(data).view(shape)
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).expect("mtime")
}

fn waves(corpus: &Corpus) -> Vec<Vec<f32>> {
    corpus.utterances.iter().map(|u| audio::load_16k(&u.audio).expect("load").samples).collect()
}

#[test]
fn features_ast_equal_direct_calls_and_the_cache_is_reused() {
    // Building models draws from libtorch's global generator, which seeded tests rely on.
    let _rng = crate::common::torch_rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = corpus();
    let (_, spec) = model_spec(dir.path(), "ast_tiny", "ast", "models/ast_tiny", "");
    let out = dir.path().join("feats");
    let outcome = run(&spec, Modality::Audio, &corpus, &out).expect("extract");
    let n = corpus.utterances.len();
    assert!(matches!(outcome, Outcome::Computed { n: m, dim: 32, .. } if m == n), "{outcome:?}");

    let (shape, data, ids) = read_raw(&out);
    assert_eq!(shape, [n as i64, 32]);
    let want_ids: Vec<&str> = corpus.utterances.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, want_ids);
    let got = as_tensor(&shape, &data);

    let ast = Ast::from_dir(&fixture("models/ast_tiny"), None, &BTreeMap::new(), Device::Cpu).expect("ast");
    for (i, w) in waves(&corpus).iter().enumerate() {
        let direct = tch::no_grad(|| {
            let f = ast.front_end.forward_clips(&[w.as_slice()], Device::Cpu).expect("front end");
            ast.model.forward_t(&f, false).expect("forward").pooled
        });
        let err = max_abs_diff(&got.get(i as i64).unsqueeze(0), &direct);
        assert!(err <= TOL, "utterance {i}: max abs error {err:.3e}");
    }

    // Same key: nothing is recomputed (the files are not rewritten).
    let before = mtime(&out.join("features.safetensors"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(run(&spec, Modality::Audio, &corpus, &out).expect("rerun"), Outcome::Cached { n, dim: 32 });
    assert_eq!(mtime(&out.join("features.safetensors")), before);
    let key = features::cached_key(&out).expect("meta.json key");

    // Different ids (one utterance fewer): recomputed, and the directory holds the new set only.
    let mut fewer = corpus.clone();
    fewer.utterances.pop();
    let again = run(&spec, Modality::Audio, &fewer, &out).expect("recompute");
    assert!(matches!(again, Outcome::Computed { n: m, .. } if m == n - 1), "{again:?}");
    let (shape2, data2, ids2) = read_raw(&out);
    assert_eq!(shape2, [n as i64 - 1, 32]);
    assert_eq!(ids2, want_ids[..n - 1]);
    assert_eq!(data2[..], data[..(n - 1) * 32], "same model, same clips: same rows");
    assert_ne!(features::cached_key(&out).expect("new key"), key);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp dirs left behind: {leftovers:?}");
}

#[test]
fn features_wav2vec2_sorted_batches_equal_one_clip_at_a_time() {
    // Building models draws from libtorch's global generator, which seeded tests rely on.
    let _rng = crate::common::torch_rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = corpus();
    let (_, spec) = model_spec(dir.path(), "w2v", "wav2vec2", "models/wav2vec2-large-robust-tiny", "");
    let out = dir.path().join("w2v");
    run(&spec, Modality::Audio, &corpus, &out).expect("extract");
    let (got, ids) = features::read(&out).expect("read");
    assert_eq!(ids.len(), corpus.utterances.len());
    assert_eq!(got.size(), [corpus.utterances.len() as i64, 32]);
    let model =
        Wav2Vec2::from_pretrained(&fixture("models/wav2vec2-large-robust-tiny"), None, &BTreeMap::new(), Device::Cpu)
            .expect("w2v");
    for (i, w) in waves(&corpus).iter().enumerate() {
        let direct = model.embed(&[w.as_slice()]).expect("embed");
        let err = max_abs_diff(&got.get(i as i64).unsqueeze(0), &direct);
        assert!(err <= TOL, "utterance {i} ({}): max abs error {err:.3e}", ids[i]);
    }
    // A different checkpoint is a different key.
    let key = features::cached_key(&out).expect("key");
    let (_, base) = model_spec(dir.path(), "w2v_base", "wav2vec2", "models/wav2vec2-base-tiny", "");
    assert!(matches!(run(&base, Modality::Audio, &corpus, &out).expect("base"), Outcome::Computed { .. }));
    assert_ne!(features::cached_key(&out).expect("key"), key);
}

#[test]
fn features_text_follow_the_pooling_and_equal_direct_calls() {
    // Building models draws from libtorch's global generator, which seeded tests rely on.
    let _rng = crate::common::torch_rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = corpus();
    let (_, mean) = model_spec(dir.path(), "bert", "bert", "models/bert_tiny", "pooling = \"mean\"\n");
    let out = dir.path().join("text");
    run(&mean, Modality::Text, &corpus, &out).expect("extract");
    let (got, ids) = features::read(&out).expect("read");
    assert_eq!(ids.len(), corpus.utterances.len());
    let enc =
        TextEncoder::from_dir(&fixture("models/bert_tiny"), None, &BTreeMap::new(), None, Pooling::Mean, Device::Cpu)
            .expect("bert");
    for (i, u) in corpus.utterances.iter().enumerate() {
        let text = u.text.as_deref().expect("demo transcripts");
        let direct = tch::no_grad(|| enc.embed_texts_t(&[text], false)).expect("embed");
        let err = max_abs_diff(&got.get(i as i64).unsqueeze(0), &direct);
        assert!(err <= TOL, "text {i}: max abs error {err:.3e}");
    }
    assert_eq!(
        run(&mean, Modality::Text, &corpus, &out).expect("rerun"),
        Outcome::Cached { n: ids.len(), dim: got.size()[1] }
    );
    // Another pooling is another key.
    let mut cls = mean.clone();
    cls.pooling = Some(Pooling::Cls);
    assert!(matches!(run(&cls, Modality::Text, &corpus, &out).expect("cls"), Outcome::Computed { .. }));
    let (cls_feats, _) = features::read(&out).expect("read");
    assert!(max_abs_diff(&cls_feats, &got) > 1e-3, "CLS and mean pooling gave the same features");
}

#[test]
fn features_refuse_bf16_wrong_kinds_and_foreign_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = corpus();
    let (_, ast) = model_spec(dir.path(), "ast_tiny", "ast", "models/ast_tiny", "");
    let out = dir.path().join("x");
    let mut req = Request {
        model: &ast,
        modality: Modality::Audio,
        corpus: &corpus,
        out: &out,
        device: Device::Cpu,
        precision: Precision::Bf16,
        batch_size: None,
    };
    let err = features::extract(&req, &mut |_, _| {}).expect_err("bf16").to_string();
    assert!(err.contains("bf16") && err.contains("fp32"), "{err}");
    req.precision = Precision::Fp32;
    req.modality = Modality::Text;
    let err = features::extract(&req, &mut |_, _| {}).expect_err("ast as text").to_string();
    assert!(err.contains("text encoder"), "{err}");
    // An unrelated non-empty directory is never replaced.
    write(&out, "precious.txt", "keep me");
    req.modality = Modality::Audio;
    let err = features::extract(&req, &mut |_, _| {}).expect_err("foreign dir").to_string();
    assert!(err.contains("not a features directory"), "{err}");
    assert!(out.join("precious.txt").is_file());
}

#[test]
fn features_cli_writes_then_reuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spec_path, _) = model_spec(dir.path(), "ast_tiny", "ast", "models/ast_tiny", "");
    let out = dir.path().join("cli");
    let args = [
        "features",
        "--backbone",
        spec_path.to_str().expect("utf-8"),
        "--dataset",
        demo().1.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ];
    let run = || std::process::Command::new(crate::cli::bin("sera")).args(args).output().expect("run sera");
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let n = corpus().utterances.len();
    assert!(String::from_utf8_lossy(&first.stdout).contains(&format!("{n} × 32 features")), "{first:?}");
    let second = run();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("nothing recomputed"), "{:?}", second);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("meta.json")).expect("meta")).expect("json");
    assert_eq!(meta["key"]["n"], n);
    assert!(meta["key"]["model"]["files"]["model.safetensors"].as_str().is_some_and(|h| h.len() == 64));

    let bf16 = std::process::Command::new(crate::cli::bin("sera"))
        .args(args)
        .args(["--precision", "bf16"])
        .output()
        .expect("run sera");
    assert!(!bf16.status.success());
    assert!(String::from_utf8_lossy(&bf16.stderr).contains("bf16 features are not offered"));
}
