//! BERT / RoBERTa and tokenisation against transformers + tokenizers
//! (tests/fixtures/models/{bert,roberta}_tiny, golden/{bert,roberta}.safetensors, golden/text.json,
//! from tools/fixtures/bert.py).

use std::collections::BTreeMap;

use sera::models::bert::{Flavor, TextEncoder, pool};
use sera::spec::model::{ModelSpec, Pooling};
use tch::nn::{Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::models_util::{Golden, fixture, max_abs_diff};

/// Issue 3's tolerance on encoder outputs.
const TOL: f64 = 1e-4;

fn sentences() -> Vec<String> {
    let path = fixture("golden/text.json");
    let text = std::fs::read_to_string(&path).expect("text.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["sentences"].as_array().expect("sentences").iter().map(|s| s.as_str().expect("string").to_string()).collect()
}

fn encoder(name: &str, pooling: Pooling) -> TextEncoder {
    TextEncoder::from_dir(&fixture(&format!("models/{name}_tiny")), None, &BTreeMap::new(), None, pooling, Device::Cpu)
        .unwrap_or_else(|e| panic!("load {name}_tiny: {e}"))
}

fn assert_ids_equal(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes");
    assert!(a.eq_tensor(b).all().int64_value(&[]) == 1, "{what} differ:\n{a}\n{b}");
}

#[test]
fn tokenisation_matches_the_python_tokenizers() {
    let texts = sentences();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    for name in ["bert", "roberta"] {
        let g = Golden::load(name);
        let enc = encoder(name, Pooling::Cls);
        let batch = enc.tokenizer.as_ref().expect("tokenizer").encode_batch(&texts, Device::Cpu).expect("encode");
        assert_ids_equal(&batch.input_ids, &g.get("input_ids"), &format!("{name} input_ids"));
        assert_ids_equal(&batch.attention_mask, &g.get("attention_mask"), &format!("{name} attention_mask"));
        assert_ids_equal(&batch.token_type_ids, &g.get("token_type_ids"), &format!("{name} token_type_ids"));
    }
}

fn check_parity(name: &str, pooling: Pooling) {
    let g = Golden::load(name);
    let enc = encoder(name, pooling);
    let (ids, mask, types) = (g.get("input_ids"), g.get("attention_mask"), g.get("token_type_ids"));
    let out = tch::no_grad(|| enc.model.forward_all_t(&ids, &mask, Some(&types), false)).expect("forward");
    let err = max_abs_diff(&out.last_hidden_state, &g.get("last_hidden_state"));
    println!("{name} last_hidden_state: max abs error {err:.3e}");
    assert!(err <= TOL, "{name} last_hidden_state max abs error {err}");
    for (i, h) in out.hidden_states.iter().enumerate() {
        let err = max_abs_diff(h, &g.get(&format!("hidden_states.{i}")));
        assert!(err <= TOL, "{name} hidden_states.{i} max abs error {err}");
    }
    for (p, key) in [(Pooling::Cls, "cls"), (Pooling::Mean, "mean")] {
        let err = max_abs_diff(&pool(&out, &mask, p).expect("pool"), &g.get(key));
        println!("{name} {key} pooling: max abs error {err:.3e}");
        assert!(err <= TOL, "{name} {key} max abs error {err}");
    }
    if pooling == Pooling::Pooler {
        let err = max_abs_diff(&pool(&out, &mask, Pooling::Pooler).expect("pool"), &g.get("pooler_output"));
        println!("{name} pooler output: max abs error {err:.3e}");
        assert!(err <= TOL, "{name} pooler max abs error {err}");
    }
}

#[test]
fn bert_matches_transformers() {
    check_parity("bert", Pooling::Pooler);
}

#[test]
fn roberta_matches_transformers() {
    check_parity("roberta", Pooling::Mean);
}

#[test]
fn roberta_positions_skip_padding_and_start_after_padding_idx() {
    let g = Golden::load("roberta");
    let enc = encoder("roberta", Pooling::Cls);
    assert_eq!(enc.model.flavor, Flavor::Roberta);
    let pos = enc.model.embeddings.position_ids(&g.get("input_ids")).expect("positions");
    let first = Vec::<i64>::try_from(pos.get(0)).expect("row");
    let real = g.get("attention_mask").get(0).sum(Kind::Int64).int64_value(&[]);
    for (i, &p) in first.iter().enumerate() {
        let want = if (i as i64) < real { i as i64 + 2 } else { 1 };
        assert_eq!(p, want, "position {i} of {first:?}");
    }
}

#[test]
fn padded_batch_equals_one_at_a_time() {
    let texts = sentences();
    for (name, pooling) in
        [("bert", Pooling::Pooler), ("bert", Pooling::Mean), ("roberta", Pooling::Mean), ("roberta", Pooling::Cls)]
    {
        let enc = encoder(name, pooling);
        let all: Vec<&str> = texts.iter().map(String::as_str).collect();
        let batch = tch::no_grad(|| enc.embed_texts_t(&all, false)).expect("batch");
        let mut worst = 0f64;
        for (i, t) in all.iter().enumerate() {
            let one = tch::no_grad(|| enc.embed_texts_t(&[t], false)).expect("single");
            worst = worst.max(max_abs_diff(&batch.narrow(0, i as i64, 1), &one));
        }
        println!("{name} {pooling:?}: batched vs one at a time max abs diff {worst:.3e}");
        assert!(worst <= TOL, "{name} {pooling:?}: {worst}");
    }
    // RoBERTa's tokenizer pads everything to 24 tokens, so also compare against unpadded inputs.
    for name in ["bert", "roberta"] {
        let g = Golden::load(name);
        let enc = encoder(name, Pooling::Mean);
        let (ids, mask) = (g.get("input_ids"), g.get("attention_mask"));
        let batch = tch::no_grad(|| enc.model.forward_t(&ids, &mask, None, false)).expect("batch");
        let batch = pool(&batch, &mask, Pooling::Mean).expect("pool");
        for i in 0..ids.size()[0] {
            let n = mask.get(i).sum(Kind::Int64).int64_value(&[]);
            let (one_ids, one_mask) = (ids.narrow(0, i, 1).narrow(1, 0, n), mask.narrow(0, i, 1).narrow(1, 0, n));
            let one = tch::no_grad(|| enc.model.forward_t(&one_ids, &one_mask, None, false)).expect("single");
            let err = max_abs_diff(&batch.narrow(0, i, 1), &pool(&one, &one_mask, Pooling::Mean).expect("pool"));
            assert!(err <= TOL, "{name} text {i}: padded vs unpadded max abs diff {err}");
        }
    }
}

#[test]
fn roberta_without_a_trained_pooler_cannot_pool_with_it() {
    let err = TextEncoder::from_dir(
        &fixture("models/roberta_tiny"),
        None,
        &BTreeMap::new(),
        None,
        Pooling::Pooler,
        Device::Cpu,
    )
    .expect_err("RobertaForMaskedLM has no pooler");
    let msg = err.to_string();
    assert!(msg.contains("missing") && msg.contains("pooler.dense.weight [32, 32]"), "{msg}");
}

#[test]
fn text_dropout_only_in_training_and_fine_tuning_reduces_the_loss() {
    tch::manual_seed(0);
    let enc = encoder("bert", Pooling::Cls);
    let texts = sentences();
    let all: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = enc.tokenizer.as_ref().expect("tokenizer").encode_batch(&all, Device::Cpu).expect("encode");
    let a = enc.embed_encoded_t(&batch, false).expect("eval");
    let b = enc.embed_encoded_t(&batch, false).expect("eval");
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert!(max_abs_diff(&a, &enc.embed_encoded_t(&batch, true).expect("train")) > 1e-3);

    let head = tch::nn::linear(enc.vs.root() / "head", 32, 2, Default::default());
    let mut opt = tch::nn::AdamW::default().build(&enc.vs, 2e-3).expect("optimizer");
    let y = Tensor::from_slice(&[0i64, 1, 1, 0, 1]);
    let loss_of =
        |train: bool| head.forward(&enc.embed_encoded_t(&batch, train).expect("forward")).cross_entropy_for_logits(&y);
    let before = tch::no_grad(|| loss_of(false)).double_value(&[]);
    for _ in 0..20 {
        opt.backward_step(&loss_of(true));
    }
    let after = tch::no_grad(|| loss_of(false)).double_value(&[]);
    println!("BERT fine-tuning: loss {before:.4} → {after:.4}");
    assert!(after < before * 0.8, "loss {before} → {after}");
    let grad = enc.model.embeddings.word_embeddings.grad();
    assert!(grad.defined() && grad.abs().sum(Kind::Float).double_value(&[]) > 0.0, "gradients reach the embeddings");
}

#[test]
fn text_bf16_weights_stay_close_to_fp32() {
    let g = Golden::load("bert");
    let mut enc = encoder("bert", Pooling::Mean);
    let (ids, mask) = (g.get("input_ids"), g.get("attention_mask"));
    let fp32 = tch::no_grad(|| enc.model.forward_t(&ids, &mask, None, false)).expect("fp32");
    enc.vs.bfloat16();
    let bf16 = tch::no_grad(|| enc.model.forward_t(&ids, &mask, None, false)).expect("bf16");
    let (p32, p16) =
        (pool(&fp32, &mask, Pooling::Mean).expect("pool"), pool(&bf16, &mask, Pooling::Mean).expect("pool"));
    assert_eq!(p16.kind(), Kind::BFloat16);
    let err = max_abs_diff(&p16, &p32);
    println!("BERT bf16 vs fp32 mean-pooled: max abs error {err:.3e}");
    assert!(err <= 0.1, "bf16 drifted by {err}");
}

#[test]
fn text_encoders_from_specs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec_path = dir.path().join("enc.toml");
    std::fs::write(
        &spec_path,
        "kind = \"roberta\"\nfrom_scratch = true\npooling = \"mean\"\n[config]\nvocab_size = 50\nhidden_size = 16\n\
         num_hidden_layers = 1\nnum_attention_heads = 2\nintermediate_size = 32\nmax_position_embeddings = 20\n",
    )
    .expect("write");
    let spec = ModelSpec::load(&spec_path).expect("spec");
    let enc = TextEncoder::from_spec(&spec, Device::Cpu).expect("scratch");
    assert_eq!((enc.model.flavor, enc.model.config.pad_token_id), (Flavor::Roberta, 1));
    let ids = Tensor::from_slice(&[0i64, 5, 6, 2, 1, 1]).view([1, 6]);
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 0, 0]).view([1, 6]);
    let out = enc.model.forward_t(&ids, &mask, None, false).expect("forward");
    assert_eq!(pool(&out, &mask, enc.pooling).expect("pool").size(), [1, 16]);

    std::fs::write(
        &spec_path,
        format!("kind = \"bert\"\npooling = \"pooler\"\npath = {:?}\n", fixture("models/bert_tiny")),
    )
    .expect("write");
    let spec = ModelSpec::load(&spec_path).expect("spec");
    let enc = TextEncoder::from_spec(&spec, Device::Cpu).expect("checkpoint");
    let feats = enc.embed_texts_t(&["okay.", "i am so happy today"], false).expect("embed");
    assert_eq!(feats.size(), [2, 32]);
}

#[test]
fn unreadable_pytorch_bin_names_the_file_and_the_conversion() {
    // libtorch's pickle reader cannot read HF's OrderedDict state dicts (checked with a real
    // torch.save of bert_tiny), so a .bin-only directory must say how to convert it.
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("models/bert_tiny").join(f), dir.path().join(f)).expect("copy");
    }
    std::fs::write(dir.path().join("pytorch_model.bin"), b"PK\x03\x04 not really a zip").expect("write");
    let err = TextEncoder::from_dir(dir.path(), None, &BTreeMap::new(), None, Pooling::Cls, Device::Cpu)
        .expect_err("unreadable pickle");
    let msg = err.to_string();
    assert!(msg.contains("pytorch_model.bin") && msg.contains("safetensors") && msg.contains("python -c"), "{msg}");
}
