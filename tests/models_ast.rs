//! AST against transformers (tests/fixtures/models/ast_tiny, golden/ast.safetensors from
//! tools/fixtures/ast.py), strict checkpoint loading, training behaviour.

use std::collections::BTreeMap;
use std::path::Path;

use sera::models::ast::{Ast, AstConfig};
use sera::models::hf::HfDir;
use sera::spec::model::ModelSpec;
use tch::nn::{Module, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

use crate::models_util::{Golden, fixture, max_abs_diff};

/// Issue 3's tolerance on encoder outputs.
const TOL: f64 = 1e-4;

fn tiny() -> Ast {
    Ast::from_dir(&fixture("models/ast_tiny"), None, &BTreeMap::new(), Device::Cpu).expect("load ast_tiny")
}

#[test]
fn ast_matches_transformers() {
    let g = Golden::load("ast");
    let ast = tiny();
    let out = tch::no_grad(|| ast.model.forward_all_t(&g.get("input_values"), false)).expect("forward");
    let err = max_abs_diff(&out.last_hidden_state, &g.get("last_hidden_state"));
    println!("AST last_hidden_state: max abs error {err:.3e}");
    assert!(err <= TOL, "last_hidden_state max abs error {err}");
    let err = max_abs_diff(&out.pooled, &g.get("pooler_output"));
    println!("AST pooled: max abs error {err:.3e}");
    assert!(err <= TOL, "pooled max abs error {err}");
    assert_eq!(out.hidden_states.len(), 3);
    for (i, h) in out.hidden_states.iter().enumerate() {
        let err = max_abs_diff(h, &g.get(&format!("hidden_states.{i}")));
        println!("AST hidden_states.{i}: max abs error {err:.3e}");
        assert!(err <= TOL, "hidden_states.{i} max abs error {err}");
    }
}

#[test]
fn ast_from_waveforms_matches_feature_extractor_and_model() {
    let g = Golden::load("ast");
    let ast = tiny();
    let waves = g.get("waves").to_kind(Kind::Float) / 32768.0;
    let lengths = Vec::<i64>::try_from(g.get("lengths")).expect("lengths");
    let feats = ast.front_end.forward(&waves, Some(&lengths)).expect("front end");
    let err = max_abs_diff(&feats, &g.get("input_values"));
    println!("AST front end (padded batch): max abs error {err:.3e}");
    assert!(err <= 1e-3, "features max abs error {err}");
    let pooled = tch::no_grad(|| ast.embed_t(&waves, Some(&lengths), false)).expect("embed");
    let err = max_abs_diff(&pooled, &g.get("pooler_output"));
    println!("AST pooled from waveforms: max abs error {err:.3e}");
    // Feature differences up to 1e-3 (f32 FFT rounding near the log floor) pass through the model.
    assert!(err <= 1e-3, "pooled-from-waveform max abs error {err}");
}

#[test]
fn ast_batch_equals_one_at_a_time() {
    let g = Golden::load("ast");
    let ast = tiny();
    let x = g.get("input_values");
    let batch = tch::no_grad(|| ast.model.forward_t(&x, false)).expect("batch");
    for i in 0..x.size()[0] {
        let one = tch::no_grad(|| ast.model.forward_t(&x.narrow(0, i, 1), false)).expect("single");
        let err = max_abs_diff(&batch.pooled.narrow(0, i, 1), &one.pooled);
        assert!(err <= TOL, "clip {i}: batched vs single max abs error {err}");
    }
}

#[test]
fn ast_dropout_only_in_training() {
    let g = Golden::load("ast");
    let ast = tiny();
    assert!(ast.model.config.hidden_dropout_prob > 0.0, "the tiny fixture must have dropout");
    let x = g.get("input_values");
    let a = ast.model.forward_t(&x, false).expect("eval").pooled;
    let b = ast.model.forward_t(&x, false).expect("eval").pooled;
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let t = ast.model.forward_t(&x, true).expect("train").pooled;
    assert!(max_abs_diff(&a, &t) > 1e-3, "train=true should apply dropout");
}

#[test]
fn ast_training_steps_reduce_the_loss() {
    tch::manual_seed(0);
    let config: AstConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "max_length": 32, "num_mel_bins": 32, "hidden_dropout_prob": 0.1
    }))
    .expect("config");
    let ast = Ast::from_config(&config, Device::Cpu).expect("ast");
    let head = tch::nn::linear(ast.vs.root() / "head", 32, 3, Default::default());
    let mut opt = tch::nn::AdamW::default().build(&ast.vs, 1e-3).expect("optimizer");
    let x = Tensor::randn([6, 32, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2]);
    let loss_of = |train: bool| -> Tensor {
        let pooled = ast.model.forward_t(&x, train).expect("forward").pooled;
        head.forward(&pooled).cross_entropy_for_logits(&y)
    };
    let before = tch::no_grad(|| loss_of(false)).double_value(&[]);
    for _ in 0..20 {
        let loss = loss_of(true);
        opt.backward_step(&loss);
    }
    let after = tch::no_grad(|| loss_of(false)).double_value(&[]);
    println!("AST training: loss {before:.4} → {after:.4}");
    assert!(after < before * 0.8, "loss {before} → {after}");
    // Gradients reached the patch embedding, the first thing in the graph.
    let grad = ast.model.embeddings.patch_embeddings.weight.grad();
    assert!(grad.defined() && grad.abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn ast_bf16_weights_stay_close_to_fp32() {
    let g = Golden::load("ast");
    let mut ast = tiny();
    let x = g.get("input_values");
    let fp32 = tch::no_grad(|| ast.model.forward_t(&x, false)).expect("fp32").pooled;
    ast.vs.bfloat16();
    let bf16 = tch::no_grad(|| ast.model.forward_t(&x.to_kind(Kind::BFloat16), false)).expect("bf16").pooled;
    assert_eq!(bf16.kind(), Kind::BFloat16);
    let err = max_abs_diff(&bf16, &fp32);
    let scale = fp32.abs().max().double_value(&[]);
    println!("AST bf16 vs fp32 pooled: max abs error {err:.3e} (max |x| {scale:.3})");
    assert!(err <= 0.05 * scale.max(1.0), "bf16 drifted by {err}");
}

#[test]
fn ast_from_spec_scratch_and_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec_path = dir.path().join("tiny.toml");
    std::fs::write(
        &spec_path,
        "kind = \"ast\"\nfrom_scratch = true\n[config]\nhidden_size = 16\nnum_hidden_layers = 1\n\
         num_attention_heads = 2\nintermediate_size = 32\nmax_length = 40\n",
    )
    .expect("write spec");
    let spec = ModelSpec::load(&spec_path).expect("spec");
    let ast = Ast::from_spec(&spec, Device::Cpu).expect("from scratch");
    assert_eq!(ast.model.config.seq_len(), 12 * 3 + 2);
    let pooled = ast.embed_t(&Tensor::randn([2, 8000], (Kind::Float, Device::Cpu)), None, false).expect("embed");
    assert_eq!(pooled.size(), [2, 16]);

    std::fs::write(&spec_path, format!("kind = \"ast\"\npath = {:?}\n", fixture("models/ast_tiny"))).expect("write");
    let spec = ModelSpec::load(&spec_path).expect("spec");
    let ast = Ast::from_spec(&spec, Device::Cpu).expect("checkpoint");
    assert_eq!(ast.model.config.max_length, 100);
    assert_eq!(ast.front_end.config().max_length, 100);
}

// ---- strict loading ----

/// A copy of ast_tiny whose weights are `edit`ed.
fn edited_checkpoint(edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = fixture("models/ast_tiny");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).expect("copy config");
    let mut tensors = Tensor::read_safetensors(src.join("model.safetensors")).expect("read");
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).expect("write");
    dir
}

fn load_err(dir: &Path) -> String {
    match Ast::from_dir(dir, None, &BTreeMap::new(), Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

const Q0: &str = "audio_spectrogram_transformer.encoder.layer.0.attention.attention.query.weight";

#[test]
fn strict_loading_names_a_missing_tensor() {
    let dir = edited_checkpoint(|t| t.retain(|(n, _)| n != Q0));
    let msg = load_err(dir.path());
    assert!(
        msg.contains("missing") && msg.contains("encoder.layer.0.attention.attention.query.weight [32, 32]"),
        "{msg}"
    );
    assert!(msg.contains("model.safetensors"), "the message names the file: {msg}");
}

#[test]
fn strict_loading_names_unexpected_tensors_but_ignores_heads() {
    let dir = edited_checkpoint(|t| {
        t.push((
            "audio_spectrogram_transformer.encoder.layer.0.extra.weight".into(),
            Tensor::zeros([3], tch::kind::FLOAT_CPU),
        ));
        t.push(("something_else".into(), Tensor::zeros([2, 2], tch::kind::FLOAT_CPU)));
    });
    let msg = load_err(dir.path());
    assert!(msg.contains("2 unexpected"), "{msg}");
    assert!(msg.contains("audio_spectrogram_transformer.encoder.layer.0.extra.weight [3]"), "{msg}");
    assert!(msg.contains("something_else [2, 2]"), "{msg}");
    assert!(!msg.contains("classifier."), "the classification head is ignored: {msg}");
}

#[test]
fn strict_loading_names_both_shapes_on_mismatch() {
    let dir = edited_checkpoint(|t| {
        for (n, v) in t.iter_mut() {
            if n == Q0 {
                *v = Tensor::zeros([32, 16], tch::kind::FLOAT_CPU);
            }
        }
    });
    let msg = load_err(dir.path());
    assert!(msg.contains(&format!("{Q0}: checkpoint has [32, 16], model expects [32, 32]")), "{msg}");
}

#[test]
fn strict_loading_reports_every_problem_at_once() {
    let dir = edited_checkpoint(|t| {
        t.retain(|(n, _)| n != Q0 && !n.ends_with("layernorm.bias"));
        t.push(("extra".into(), Tensor::zeros([1], tch::kind::FLOAT_CPU)));
    });
    let msg = load_err(dir.path());
    assert!(msg.contains("2 missing") && msg.contains("layernorm.bias") && msg.contains("1 unexpected"), "{msg}");
}

#[test]
fn strict_loading_accepts_names_without_prefix() {
    let g = Golden::load("ast");
    let dir = edited_checkpoint(|t| {
        t.retain(|(n, _)| !n.starts_with("classifier."));
        for (n, _) in t.iter_mut() {
            *n = n.trim_start_matches("audio_spectrogram_transformer.").to_string();
        }
    });
    let ast = Ast::from_dir(dir.path(), None, &BTreeMap::new(), Device::Cpu).expect("unprefixed checkpoint loads");
    let pooled = tch::no_grad(|| ast.model.forward_t(&g.get("input_values"), false)).expect("forward").pooled;
    assert!(max_abs_diff(&pooled, &g.get("pooler_output")) <= TOL);
}

/// A zero variable at a dotted path (tch wants one component per `/`).
fn zeros_at(vs: &VarStore, name: &str, dims: &[i64]) -> Tensor {
    let mut parts: Vec<&str> = name.split('.').collect();
    let last = parts.pop().expect("non-empty name");
    let p = parts.iter().fold(vs.root(), |p, c| p / *c);
    p.zeros(last, dims)
}

#[test]
fn strict_loading_ignores_known_buffers_by_suffix() {
    let hf = HfDir::open(&fixture("models/ast_tiny"), None).expect("open");
    let mut vs = VarStore::new(Device::Cpu);
    let _w = zeros_at(&vs, "layer.weight", &[2]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(hf.config_path(), dir.path().join("config.json")).expect("copy");
    let tensors = vec![
        ("layer.weight".to_string(), Tensor::ones([2], tch::kind::FLOAT_CPU)),
        ("embeddings.position_ids".to_string(), Tensor::arange(4, tch::kind::INT64_CPU)),
    ];
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).expect("write");
    let hf = HfDir::open(dir.path(), None).expect("open");
    let err = hf.load_weights(&mut vs, &[], &[], &[]).expect_err("position_ids is unexpected without the suffix");
    assert!(err.to_string().contains("embeddings.position_ids [4]"), "{err}");
    hf.load_weights(&mut vs, &[], &[], &["position_ids"]).expect("ignored by suffix");
    assert_eq!((vs.root() / "layer").get("weight").expect("var").sum(Kind::Float).double_value(&[]), 2.0);
}

#[test]
fn strict_loading_maps_weight_norm_spellings_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.json"), "{}").expect("config");
    let g = Tensor::from_slice(&[1f32, 2.0, 3.0]).view([1, 1, 3]);
    let v = Tensor::from_slice(&[4f32, 5.0, 6.0]).view([1, 1, 3]);
    // A model with old names, a file with the parametrization names …
    Tensor::write_safetensors(
        &[
            ("wav2vec2.conv.parametrizations.weight.original0", &g),
            ("wav2vec2.conv.parametrizations.weight.original1", &v),
            ("wav2vec2.LayerNorm.gamma", &g),
        ],
        dir.path().join("model.safetensors"),
    )
    .expect("write");
    let hf = HfDir::open(dir.path(), None).expect("open");
    let mut vs = VarStore::new(Device::Cpu);
    let wg = zeros_at(&vs, "conv.weight_g", &[1, 1, 3]);
    let wv = zeros_at(&vs, "conv.weight_v", &[1, 1, 3]);
    let ln = zeros_at(&vs, "LayerNorm.weight", &[1, 1, 3]);
    hf.load_weights(&mut vs, &["wav2vec2."], &[], &[]).expect("parametrization names load into weight_g/v");
    assert_eq!(max_abs_diff(&wg, &g), 0.0);
    assert_eq!(max_abs_diff(&wv, &v), 0.0);
    assert_eq!(max_abs_diff(&ln, &g), 0.0);
    // … and the other way round.
    Tensor::write_safetensors(&[("conv.weight_g", &v), ("conv.weight_v", &g)], dir.path().join("model.safetensors"))
        .expect("write");
    let mut vs = VarStore::new(Device::Cpu);
    let o0 = zeros_at(&vs, "conv.parametrizations.weight.original0", &[1, 1, 3]);
    let o1 = zeros_at(&vs, "conv.parametrizations.weight.original1", &[1, 1, 3]);
    hf.load_weights(&mut vs, &["wav2vec2."], &[], &[]).expect("weight_g/v load into parametrization names");
    assert_eq!(max_abs_diff(&o0, &v), 0.0);
    assert_eq!(max_abs_diff(&o1, &g), 0.0);
}

#[test]
fn missing_checkpoint_names_the_download_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("ast-audioset");
    let err = HfDir::open(&missing, Some("MIT/ast-finetuned-audioset-10-10-0.4593")).expect_err("missing");
    let msg = err.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!(
            "huggingface-cli download MIT/ast-finetuned-audioset-10-10-0.4593 --local-dir {}",
            missing.display()
        )),
        "{msg}"
    );
    std::fs::create_dir_all(&missing).expect("mkdir");
    std::fs::write(missing.join("config.json"), "{}").expect("config");
    let hf = HfDir::open(&missing, None).expect("open");
    let err = hf.load_weights(&mut VarStore::new(Device::Cpu), &[], &[], &[]).expect_err("no weights");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}
