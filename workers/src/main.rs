//! `sera-worker`: runs the jobs that `sera plan` produces. Workers never read TOML: a job spec is
//! self-contained JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use sera::spec::Job;

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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::CheckJob { job } => check_job(&job),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check_job(path: &std::path::Path) -> Result<()> {
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
