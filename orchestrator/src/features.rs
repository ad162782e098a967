//! `sera features` (pooled features of a corpus into a cache directory) and `sera bench models`.

use std::path::PathBuf;
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
