//! `sera bench stages`: seconds per stage-2 (InfoGAN) and stage-3 (classifier) epoch on synthetic
//! features of the paper's size, beside `tools/bench_reference.py` (the same loop written plainly
//! in PyTorch) measured in the same run, so the ratio compares like with like on one machine.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::spec::stages::Stage2;
use crate::train::classifier::{FitSettings, Labelled, fit};
use crate::train::heads::Heads;
use crate::train::stage2::{GanData, train};

/// Sizes of the benchmark (the reference figures in libtorch.md use 5000 × 768, batch 64).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct BenchSize {
    pub n: i64,
    pub dim: i64,
    pub text_dim: i64,
    pub classes: i64,
    pub batch: usize,
    pub epochs: usize,
}

impl Default for BenchSize {
    fn default() -> Self {
        BenchSize { n: 5000, dim: 768, text_dim: 768, classes: 4, batch: 64, epochs: 3 }
    }
}

/// Seconds per epoch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct EpochTimes {
    pub stage2_epoch_s: f64,
    pub stage3_epoch_s: f64,
}

/// Times sera's stage-2 and stage-3 epochs on `device`: the median over `size.epochs` epochs
/// after a warm-up epoch, robust to a busy neighbour slowing one of them.
pub fn stages(size: BenchSize, device: Device) -> Result<EpochTimes> {
    tch::manual_seed(0);
    let h = Tensor::randn([size.n, size.dim], (Kind::Float, device));
    let t = Tensor::randn([size.n, size.text_dim], (Kind::Float, device));
    let y = Tensor::randint(size.classes, [size.n], (Kind::Int64, device));
    let heads = Heads::new(size.dim, size.classes, Some(size.text_dim), device);
    let data = GanData { h: &h, y: &y, t: Some(&t), classes: size.classes, temperature: 0.07 };
    let sync = || sync(device);
    // Stage 2: one run of 1 + E epochs, each epoch timed at its end (the hook).
    let s2 = Stage2 { epochs: 1 + size.epochs, batch_size: size.batch, z_dim: 128, ..Stage2::default() };
    let mut ends = vec![Instant::now()];
    train(&data, &heads, &s2, 0, &mut |_| {
        sync();
        ends.push(Instant::now());
        true
    })?;
    let stage2: Vec<f64> = ends.windows(2).skip(1).map(|w| (w[1] - w[0]).as_secs_f64()).collect();

    // Stage 3: 1 + E one-epoch fits (each includes the classifier's tiny set-up).
    let x3 = Tensor::cat(&[&h, &h], 0);
    let y3 = Tensor::cat(&[&y, &y], 0);
    let fs = FitSettings { epochs: 1, batch_size: size.batch, lr: 1e-3, seed: 0 };
    let mut stage3 = Vec::with_capacity(size.epochs);
    for i in 0..=size.epochs {
        let t0 = Instant::now();
        fit(&Labelled { x: &x3, y: &y3 }, None, size.classes, None, fs)?;
        sync();
        if i > 0 {
            stage3.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(EpochTimes { stage2_epoch_s: median(stage2), stage3_epoch_s: median(stage3) })
}

/// Waits for `device`'s queued work (a no-op on the CPU), so a timer sees it finish.
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The median of `xs` (NaN when empty).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => 0.5 * (xs[n / 2 - 1] + xs[n / 2]),
    }
}

/// Runs `tools/bench_reference.py` with `python` on `device` ("cpu", "cuda:0") and parses its
/// JSON line.
pub fn reference(python: &Path, script: &Path, size: BenchSize, device: &str) -> Result<EpochTimes> {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(["--device", device])
        .args(["--n", &size.n.to_string(), "--dim", &size.dim.to_string(), "--text-dim", &size.text_dim.to_string()])
        .args([
            "--classes",
            &size.classes.to_string(),
            "--batch",
            &size.batch.to_string(),
            "--epochs",
            &size.epochs.to_string(),
        ]);
    run_json(&mut cmd, python, script)
}

/// Runs a reference script and parses the JSON object on the last line of its output.
fn run_json<T: serde::de::DeserializeOwned>(cmd: &mut Command, python: &Path, script: &Path) -> Result<T> {
    let out = cmd.output().map_err(|e| Error::io(python, e))?;
    if !out.status.success() {
        return Err(Error::config(script, format!("reference failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line.trim()).map_err(|e| Error::config(script, format!("unexpected output '{line}': {e}")))
}

// ---------------------------------------------------------------------------------------------
// `sera bench models`: the front end and the two audio backbones at their real shapes.
// ---------------------------------------------------------------------------------------------

/// Sizes of `sera bench models`. The models are randomly initialised at the real shapes: AST
/// 12 layers × 768 over 1024 frames (1214 tokens), wav2vec2-large-robust-12 (12 layers × 1024).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ModelBenchSize {
    /// 10-second clips per fbank batch.
    pub fbank_batch: i64,
    pub fbank_iters: usize,
    /// Clips per AST batch.
    pub ast_batch: i64,
    pub ast_iters: usize,
    /// Clips per wav2vec2 batch, each `w2v_seconds` long.
    pub w2v_batch: i64,
    pub w2v_seconds: f64,
    pub w2v_iters: usize,
    /// Measure the front end only (the CPU target), skipping both models.
    pub fbank_only: bool,
}

impl ModelBenchSize {
    /// The batch sizes on a GPU (AST 32, wav2vec2 8 × 6 s); small and short on a CPU.
    pub fn for_device(device: Device) -> Self {
        if device.is_cuda() {
            ModelBenchSize {
                fbank_batch: 64,
                fbank_iters: 10,
                ast_batch: 32,
                ast_iters: 5,
                w2v_batch: 8,
                w2v_seconds: 6.0,
                w2v_iters: 5,
                fbank_only: false,
            }
        } else {
            ModelBenchSize {
                fbank_batch: 32,
                fbank_iters: 10,
                ast_batch: 2,
                ast_iters: 1,
                w2v_batch: 2,
                w2v_seconds: 6.0,
                w2v_iters: 1,
                fbank_only: false,
            }
        }
    }
}

/// Throughputs (higher is better), fp32; the model fields are `None` with `fbank_only`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ModelTimes {
    /// AST front end (Kaldi fbank, pad/cut to 1024 frames, normalise): hours of audio per second.
    pub fbank_hours_per_s: f64,
    /// AST pooled features from spectrograms, no gradients: clips per second.
    pub ast_features_clips_per_s: Option<f64>,
    /// One AST fine-tune step (forward with dropout, linear head, cross-entropy, backward, AdamW).
    pub ast_step_clips_per_s: Option<f64>,
    /// The same AST step under bf16 autocast (weights and optimiser state stay fp32).
    #[serde(default)]
    pub ast_step_bf16_clips_per_s: Option<f64>,
    /// wav2vec2 pooled features (normalise, encode, masked mean): audio seconds per second.
    pub w2v_features_audio_s_per_s: Option<f64>,
    /// One wav2vec2 fine-tune step: audio seconds per second.
    pub w2v_step_audio_s_per_s: Option<f64>,
}

/// The wav2vec2-large-robust-12 geometry (audeering's emotion model), with layerdrop off so that
/// every step does the same work on both sides of the comparison.
pub fn wav2vec2_large_robust_12() -> crate::models::wav2vec2::Wav2Vec2Config {
    use crate::models::wav2vec2::{FeatExtractNorm, Wav2Vec2Config};
    Wav2Vec2Config {
        hidden_size: 1024,
        num_hidden_layers: 12,
        num_attention_heads: 16,
        intermediate_size: 4096,
        feat_extract_norm: FeatExtractNorm::Layer,
        do_stable_layer_norm: true,
        conv_bias: true,
        feat_proj_dropout: 0.1,
        layerdrop: 0.0,
        ..Wav2Vec2Config::default()
    }
}

/// Seconds of the fastest of `iters` calls of `f`, after `warmup` untimed calls. The minimum, as
/// `timeit` reports, because a shared machine only ever adds time.
fn per_call(device: Device, warmup: usize, iters: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    let sync = || sync(device);
    for _ in 0..warmup {
        f()?;
    }
    sync();
    let mut best = f64::INFINITY;
    for _ in 0..iters.max(1) {
        let t0 = Instant::now();
        f()?;
        sync();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// One fine-tune step: `pooled` → linear head → cross-entropy → backward → AdamW on both stores.
fn step(pooled: &Tensor, head: &tch::nn::Linear, y: &Tensor, opts: &mut [&mut tch::nn::Optimizer]) -> Result<()> {
    use tch::nn::Module;
    let loss = head.forward(pooled).f_cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, 0.0)?;
    for o in opts.iter_mut() {
        o.zero_grad();
    }
    loss.f_backward()?;
    for o in opts.iter_mut() {
        o.step();
    }
    // Reading the loss back is what a training loop does each step (and it synchronises).
    f64::try_from(&loss)?;
    Ok(())
}

/// Measures the AST front end, AST features and step (fp32 and bf16 autocast), wav2vec2 features
/// and step on `device`.
pub fn models(size: ModelBenchSize, device: Device) -> Result<ModelTimes> {
    use crate::models::ast::{Ast, AstConfig};
    use crate::models::fbank::{AstFrontEnd, AstFrontEndConfig};
    use crate::models::wav2vec2::{Wav2Vec2, normalize};
    use tch::nn::OptimizerConfig;

    tch::manual_seed(0);
    let clip = 160_000; // 10 s at 16 kHz
    let front_end = AstFrontEnd::new(AstFrontEndConfig::default(), device)?;
    let wav = Tensor::f_randn([size.fbank_batch, clip], (Kind::Float, device))?.f_mul_scalar(0.1)?;
    let fbank_s =
        per_call(device, 1, size.fbank_iters, &mut || tch::no_grad(|| front_end.forward(&wav, None)).map(|_| ()))?;
    let fbank_hours_per_s = (size.fbank_batch as f64 * 10.0 / 3600.0) / fbank_s;
    if size.fbank_only {
        return Ok(ModelTimes {
            fbank_hours_per_s,
            ast_features_clips_per_s: None,
            ast_step_clips_per_s: None,
            ast_step_bf16_clips_per_s: None,
            w2v_features_audio_s_per_s: None,
            w2v_step_audio_s_per_s: None,
        });
    }

    let classes = 4;
    let ast = Ast::from_config(&AstConfig::default(), device)?;
    let spec = Tensor::f_randn([size.ast_batch, 1024, 128], (Kind::Float, device))?;
    let y = Tensor::f_randint(classes, [size.ast_batch], (Kind::Int64, device))?;
    let feats_s =
        per_call(device, 1, size.ast_iters, &mut || tch::no_grad(|| ast.model.forward_t(&spec, false)).map(|_| ()))?;
    let head_vs = tch::nn::VarStore::new(device);
    let head = tch::nn::linear(head_vs.root() / "head", 768, classes, Default::default());
    let adamw = tch::nn::AdamW::default();
    let mut opt_model = adamw.build(&ast.vs, 1e-5)?;
    let mut opt_head = adamw.build(&head_vs, 1e-3)?;
    let step_s = per_call(device, 1, size.ast_iters, &mut || {
        let pooled = ast.model.forward_t(&spec, true)?.pooled;
        step(&pooled, &head, &y, &mut [&mut opt_model, &mut opt_head])
    })?;
    let step_bf16_s = per_call(device, 1, size.ast_iters, &mut || {
        crate::precision::bf16_autocast(device, || {
            let pooled = ast.model.forward_t(&spec, true)?.pooled.f_to_kind(Kind::Float)?;
            step(&pooled, &head, &y, &mut [&mut opt_model, &mut opt_head])
        })
    })?;
    drop((opt_model, opt_head, ast));

    let w2v = Wav2Vec2::from_config(wav2vec2_large_robust_12(), device, Path::new("(bench)"))?;
    let samples = (size.w2v_seconds * 16_000.0) as i64;
    let raw = Tensor::f_randn([size.w2v_batch, samples], (Kind::Float, device))?.f_mul_scalar(0.1)?;
    let mask = Tensor::f_ones([size.w2v_batch, samples], (Kind::Int64, device))?;
    let y = Tensor::f_randint(classes, [size.w2v_batch], (Kind::Int64, device))?;
    let w2v_feats_s = per_call(device, 1, size.w2v_iters, &mut || {
        tch::no_grad(|| -> Result<()> {
            let input = normalize(&raw, Some(&mask))?;
            w2v.forward_t(&input, Some(&mask), false)?.pooled().map(|_| ())
        })
    })?;
    let head_vs = tch::nn::VarStore::new(device);
    let head = tch::nn::linear(head_vs.root() / "head", 1024, classes, Default::default());
    let mut opt_model = adamw.build(&w2v.vs, 1e-5)?;
    let mut opt_head = adamw.build(&head_vs, 1e-3)?;
    let w2v_step_s = per_call(device, 1, size.w2v_iters, &mut || {
        let input = tch::no_grad(|| normalize(&raw, Some(&mask)))?;
        let pooled = w2v.forward_t(&input, Some(&mask), true)?.pooled()?;
        step(&pooled, &head, &y, &mut [&mut opt_model, &mut opt_head])
    })?;
    let audio_s = size.w2v_batch as f64 * size.w2v_seconds;
    Ok(ModelTimes {
        fbank_hours_per_s,
        ast_features_clips_per_s: Some(size.ast_batch as f64 / feats_s),
        ast_step_clips_per_s: Some(size.ast_batch as f64 / step_s),
        ast_step_bf16_clips_per_s: Some(size.ast_batch as f64 / step_bf16_s),
        w2v_features_audio_s_per_s: Some(audio_s / w2v_feats_s),
        w2v_step_audio_s_per_s: Some(audio_s / w2v_step_s),
    })
}

/// What `tools/bench_models_reference.py` prints: the same fields, plus the per-clip
/// `ASTFeatureExtractor` call for context.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelReference {
    #[serde(flatten)]
    pub times: ModelTimes,
    /// transformers' `ASTFeatureExtractor.__call__` on the same clips (numpy in and out).
    pub fbank_extractor_hours_per_s: Option<f64>,
    pub torch: String,
    pub threads: i64,
}

/// Runs `tools/bench_models_reference.py` with `python` on `device` (`cpu` or `cuda:N`) and parses
/// its JSON line.
pub fn models_reference(python: &Path, script: &Path, size: ModelBenchSize, device: &str) -> Result<ModelReference> {
    let mut cmd = Command::new(python);
    cmd.arg(script);
    if size.fbank_only {
        cmd.arg("--fbank-only");
    }
    cmd.args(["--device", device])
        .args(["--fbank-batch", &size.fbank_batch.to_string(), "--fbank-iters", &size.fbank_iters.to_string()])
        .args(["--ast-batch", &size.ast_batch.to_string(), "--ast-iters", &size.ast_iters.to_string()])
        .args(["--w2v-batch", &size.w2v_batch.to_string(), "--w2v-seconds", &size.w2v_seconds.to_string()])
        .args(["--w2v-iters", &size.w2v_iters.to_string()]);
    run_json(&mut cmd, python, script)
}
