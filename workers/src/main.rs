//! `sera-worker`: runs the jobs that `sera plan` produces. Workers never read TOML: a job spec is
//! self-contained JSON.
//!
//! `sera-worker work --redis URL [--device cuda:0 …]` (or `sera-worker --redis URL …`) is the
//! cluster daemon (see `daemon`); `run-job` runs one job and is what the daemon's child processes
//! run. Exit status of `run-job`: 0 done, 2 deterministic failure (bad config or data: retrying
//! cannot help), 1 anything else (a retry may succeed).
//!
//! Test-only hooks, read by `run-job` from its environment (never from a job spec), used by the
//! reliability tests to make a job slow, hang or crash:
//! `SERA_TEST_JOB_SLEEP_MS` (sleep first, reporting progress every 200 ms),
//! `SERA_TEST_JOB_HANG_MS` (sleep first without progress), `SERA_TEST_ABORT_JOB=<job-id>` (abort).

mod daemon;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use sera::spec::Job;
use sera::train::pipeline::{RunOptions, run_job};

/// sera GPU worker.
#[derive(Parser)]
#[command(name = "sera-worker", version, about)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `sera-worker --redis URL …` is short for `sera-worker work --redis URL …`.
    #[command(flatten)]
    work: Option<daemon::WorkArgs>,
}

#[derive(Subcommand)]
enum Command {
    /// Claim jobs from the queue and run each in a `run-job` child process, one claimer per
    /// --device, until SIGTERM (which releases the running jobs for other workers).
    Work(daemon::WorkArgs),
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
    let cli = Cli::parse();
    let result = match (cli.command, cli.work) {
        (Some(Command::Work(args)), _) | (None, Some(args)) => daemon::work(args),
        (Some(Command::CheckJob { job }), _) => check_job(&job).map(|()| ExitCode::SUCCESS),
        (Some(Command::RunJob { job, out, cache, device }), _) => {
            run(&job, &out, cache, &device).map(|()| ExitCode::SUCCESS)
        }
        (None, None) => {
            eprintln!("error: give a subcommand, or --redis URL to run the worker daemon (see --help)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
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
    let fold = folds.fold(&job.spec.fold.name).ok_or_else(|| {
        anyhow::anyhow!("fold {} is not in the folds of dataset {}", job.spec.fold.name, job.spec.dataset.name)
    })?;
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
    test_hooks(&job, out);
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

/// The test-only hooks (see the module docs). They read this process's environment only, so no
/// job spec can trigger them.
fn test_hooks(job: &Job, out: &Path) {
    if std::env::var("SERA_TEST_ABORT_JOB").is_ok_and(|id| id == job.id) {
        eprintln!("SERA_TEST_ABORT_JOB: aborting job {}", job.id);
        std::process::abort();
    }
    let ms = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let hang = ms("SERA_TEST_JOB_HANG_MS");
    if hang > 0 {
        std::thread::sleep(std::time::Duration::from_millis(hang));
    }
    let sleep = ms("SERA_TEST_JOB_SLEEP_MS");
    if sleep > 0 {
        let _ = std::fs::create_dir_all(out);
        let ticks = sleep.div_ceil(200);
        for k in 0..ticks {
            let p = serde_json::json!({ "stage": "test-sleep", "epoch": k, "epochs": ticks });
            let _ = sera::fsutil::write_atomic(&out.join("progress.json"), p.to_string().as_bytes());
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}
