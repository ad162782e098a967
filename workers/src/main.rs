//! `sera-worker`: runs the jobs that `sera plan` produces. Workers never read TOML: a job spec is
//! self-contained JSON.
//!
//! Exit status of `run-job`: 0 done, 2 deterministic failure (bad config or data: retrying cannot
//! help), 1 anything else (a retry may succeed).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use sera::spec::Job;
use sera::train::pipeline::{RunOptions, run_job};

/// sera GPU worker.
#[derive(Parser)]
#[command(name = "sera-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that a job spec is intact and that its data is exactly the data that was planned
    /// (corpus loads, fold exists, fold checksum matches).
    CheckJob {
        /// A job file written by `sera plan --out DIR`.
        job: PathBuf,
    },
    /// Run all stages of one job and write result.json and artifacts into --out. A killed job
    /// that is restarted with the same --out (and --cache) continues at its first unfinished stage.
    RunJob {
        /// A job file written by `sera plan --out DIR`.
        job: PathBuf,
        /// The job's output directory.
        #[arg(long)]
        out: PathBuf,
        /// Shared cache of stage-1 outputs and text features (default: <out>/../cache).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::CheckJob { job } => check_job(&job),
        Command::RunJob { job, out, cache, device } => run(&job, &out, cache, &device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let deterministic = e.downcast_ref::<sera::Error>().is_some_and(sera::Error::is_deterministic);
            ExitCode::from(if deterministic { 2 } else { 1 })
        }
    }
}

fn check_job(path: &Path) -> Result<()> {
    let job = Job::read(path)?;
    let span = tracing::info_span!("job", id = %job.id, dataset = %job.spec.dataset.name, fold = %job.spec.fold.name);
    let _enter = span.enter();
    let (corpus, folds) = job.resolve()?;
    let fold = folds.fold(&job.spec.fold.name).ok_or_else(|| anyhow::anyhow!("fold vanished"))?;
    println!(
        "job {} ok: dataset {} ({} utterances, {} classes), fold {} ({}/{}): train {}, validation {}, test {}; variant {}, seed {}",
        job.id,
        corpus.name,
        corpus.utterances.len(),
        corpus.classes.len(),
        fold.name,
        job.spec.fold.index + 1,
        job.spec.fold.count,
        fold.train.len(),
        fold.validation.len(),
        fold.test.len(),
        job.spec.variant.name,
        job.spec.seed
    );
    Ok(())
}

fn run(path: &Path, out: &Path, cache: Option<PathBuf>, device: &str) -> Result<()> {
    let job = Job::read(path)?;
    let device = sera::device::parse(device)?;
    let cache = cache.unwrap_or_else(|| out.parent().unwrap_or(Path::new(".")).join("cache"));
    let result = run_job(&job, &RunOptions { out: out.to_path_buf(), cache, device })?;
    let after = result.after.as_ref().map(|a| format!("{:.2}", 100.0 * a.audio.uar)).unwrap_or_else(|| "-".into());
    println!(
        "job {} done: fold {}, variant {}: UAR before {:.2}, after {after} ({:.1} s)",
        job.id,
        job.spec.fold.name,
        job.spec.variant.name,
        100.0 * result.before.audio.uar,
        result.timings_s.get("total").copied().unwrap_or(0.0)
    );
    Ok(())
}
