//! Running jobs through the queue: what the worker daemon (`sera-worker work`) and the
//! orchestrator (`sera run`, `sera status`) share.
//!
//! - [`paths`]: job ids and artifact paths are checked before anything is written, so a job spec
//!   or a completion payload can never name a path outside the run and scratch directories.
//! - [`payload`]: the completion payload a worker sends through the queue (result.json and its
//!   artifacts, checksummed), and how the orchestrator verifies and records it.
//! - [`run_dir`]: the run directory, the system of record (`<run>/<job-id>/result.json` and
//!   `<run>/results.jsonl`).
//! - [`worker`]: one claimer loop: claim, run the job in a `sera-worker run-job` child process,
//!   heartbeat with its progress, kill it when stalled or when the lease is lost, report.
//! - [`signals`]: SIGTERM/SIGINT as a flag the claimer loops poll.

pub mod paths;
pub mod payload;
pub mod progress;
pub mod run_dir;
pub mod signals;
pub mod status;
pub mod worker;

/// A command-line duration in seconds: positive and finite, or an error naming the flag.
pub fn seconds(flag: &str, value: f64) -> crate::Result<std::time::Duration> {
    if !(value.is_finite() && value > 0.0) {
        return Err(crate::Error::config(
            format!("--{flag}"),
            format!("must be a positive number of seconds, got {value}"),
        ));
    }
    Ok(std::time::Duration::from_secs_f64(value))
}
