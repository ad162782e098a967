//! `sera features` (pooled features of a corpus into a cache directory) and `sera bench models`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sera::data::{self, DatasetSpec};
use sera::features::{Modality, Outcome, Request};
use sera::spec::model::{ModelSpec, Pooling};
use sera::spec::stages::Precision;

/// Arguments of `sera features`.
pub struct FeaturesArgs {
    pub backbone: Option<PathBuf>,
    pub text_encoder: Option<PathBuf>,
    pub pooling: Option<String>,
    pub dataset: PathBuf,
    pub root: Option<PathBuf>,
    pub out: PathBuf,
    pub device: String,
    pub precision: String,
    pub batch_size: Option<usize>,
}

/// `sera features`.
pub fn features(args: FeaturesArgs) -> Result<ExitCode> {
    let precision = match args.precision.as_str() {
        "fp32" => Precision::Fp32,
        "bf16" => Precision::Bf16,
        other => bail!("--precision {other}: expected fp32"),
    };
    sera::features::check_precision(precision)?;
    let (spec_path, modality) = match (&args.backbone, &args.text_encoder) {
        (Some(p), None) => (p, Modality::Audio),
        (None, Some(p)) => (p, Modality::Text),
        _ => bail!("give exactly one of --backbone (audio features) or --text-encoder (text features)"),
    };
    let mut model = ModelSpec::load(spec_path)?;
    if let Some(p) = &args.pooling {
        if modality != Modality::Text {
            bail!("--pooling only applies with --text-encoder");
        }
        model.pooling = Some(match p.as_str() {
            "cls" => Pooling::Cls,
            "mean" => Pooling::Mean,
            "pooler" => Pooling::Pooler,
            other => bail!("--pooling {other}: use mean, cls or pooler"),
        });
    }
    model.check_available()?;
    let spec = DatasetSpec::load(&args.dataset, args.root.as_deref())?;
    let corpus = data::load(&spec).with_context(|| format!("loading dataset '{}'", spec.name))?;
    let device = sera::device::parse(&args.device)?;
    let bar = ProgressBar::new(corpus.utterances.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec}")
            .context("progress template")?,
    );
    let unit = if modality == Modality::Audio { "clips" } else { "texts" };
    bar.set_message(format!("{} {unit}", model.name));
    let req = Request {
        model: &model,
        modality,
        corpus: &corpus,
        out: &args.out,
        device,
        precision,
        batch_size: args.batch_size,
    };
    let outcome = sera::features::extract(&req, &mut |done, _| bar.set_position(done as u64));
    bar.finish_and_clear();
    match outcome.with_context(|| format!("extracting features into {}", args.out.display()))? {
        Outcome::Cached { n, dim } => println!(
            "{}: {n} × {dim} features of '{}' by '{}' already there (same model, front end and ids); nothing recomputed",
            args.out.display(),
            spec.name,
            model.name
        ),
        Outcome::Computed { n, dim, seconds } => println!(
            "{}: {n} × {dim} features of '{}' by '{}' in {seconds:.1} s ({:.1} {unit}/s)",
            args.out.display(),
            spec.name,
            model.name,
            n as f64 / seconds.max(1e-9)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn reference_python(python: Option<PathBuf>) -> PathBuf {
    python.unwrap_or_else(|| {
        let cached =
            std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cache/sera/pyref/bin/python");
        if cached.is_file() { cached } else { "python3".into() }
    })
}

/// `sera bench models`: sera's throughputs, then the PyTorch reference on the same device in the
/// same invocation, and the ratios.
pub fn bench_models(
    device_spec: &str,
    python: Option<PathBuf>,
    no_reference: bool,
    fbank_only: bool,
) -> Result<ExitCode> {
    let device = sera::device::parse(device_spec)?;
    let size = sera::bench::ModelBenchSize { fbank_only, ..sera::bench::ModelBenchSize::for_device(device) };
    eprintln!(
        "sera bench models on {device:?} ({} threads): \
         fbank {} × 10 s, AST batch {}, wav2vec2-large-robust-12 batch {} × {} s",
        tch::get_num_threads(),
        size.fbank_batch,
        size.ast_batch,
        size.w2v_batch,
        size.w2v_seconds
    );
    let ours = sera::bench::models(size, device)?;
    let names = [
        "AST front end (fbank), hours of audio/s",
        "AST features, clips/s",
        "AST fine-tune step, clips/s",
        "AST fine-tune step, bf16 autocast, clips/s",
        "wav2vec2 features, audio s/s",
        "wav2vec2 fine-tune step, audio s/s",
    ];
    let values = |t: &sera::bench::ModelTimes| {
        [
            Some(t.fbank_hours_per_s),
            t.ast_features_clips_per_s,
            t.ast_step_clips_per_s,
            t.ast_step_bf16_clips_per_s,
            t.w2v_features_audio_s_per_s,
            t.w2v_step_audio_s_per_s,
        ]
    };
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
    let reference = if no_reference {
        None
    } else {
        let python = reference_python(python);
        let script = Path::new("tools/bench_models_reference.py");
        let device_arg = match device {
            tch::Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".to_string(),
        };
        match sera::bench::models_reference(&python, script, size, &device_arg) {
            Ok(r) => Some((python, r)),
            Err(e) => {
                println!(
                    "no reference measured ({e}); install torch, torchaudio and transformers for {} or pass --python",
                    python.display()
                );
                None
            }
        }
    };
    println!("{:<42} {:>10} {:>10} {:>8}", "best of the timed calls (fp32 unless noted)", "sera", "PyTorch", "ratio");
    let theirs = reference.as_ref().map_or([None; 6], |(_, r)| values(&r.times));
    for ((name, v), t) in names.iter().zip(values(&ours)).zip(theirs) {
        let ratio = match (v, t) {
            (Some(v), Some(t)) => format!("{:.2}×", v / t),
            _ => "-".into(),
        };
        println!("{name:<42} {:>10} {:>10} {ratio:>8}", show(v), show(t));
    }
    if let Some((python, r)) = &reference {
        if let Some(x) = r.fbank_extractor_hours_per_s {
            println!(
                "{:<42} {:>10.3} {x:>10.3} {:>7.2}×  (transformers ASTFeatureExtractor.__call__)",
                "AST front end vs the HF extractor",
                ours.fbank_hours_per_s,
                ours.fbank_hours_per_s / x
            );
        }
        println!(
            "reference: {} (torch {}, {} threads); ratio = sera / reference, higher is better",
            python.display(),
            r.torch,
            r.threads
        );
    }
    Ok(ExitCode::SUCCESS)
}
