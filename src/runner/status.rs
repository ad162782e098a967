//! What `sera status` shows: counts, running jobs with worker, stage, progress and ETA, and dead
//! jobs with their reasons. Built from a live queue, or read back from `<run>/status.json`, which
//! the orchestrator rewrites as it follows a sweep (the embedded queue lives in its process).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::progress::{Progress, format_duration};
use crate::queue::{JobState, QueueStatus};

/// One job's line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub state: JobState,
    pub owner: Option<String>,
    pub attempt: u32,
    pub progress: Option<Progress>,
    pub last_error: Option<String>,
    pub signal: Option<i32>,
    pub exit_code: Option<i32>,
    pub heartbeat_age_s: Option<f64>,
}

/// The whole status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// The queue's URL (without password) or `memory://`.
    pub queue: String,
    pub queued: usize,
    pub delayed: usize,
    pub running: usize,
    pub done: usize,
    pub dead: usize,
    /// Mean duration of finished jobs, for ETAs.
    pub typical_job_s: Option<f64>,
    pub jobs: Vec<JobView>,
}

impl StatusView {
    /// From a queue's status.
    pub fn new(queue: &str, s: &QueueStatus, typical_job_s: Option<f64>) -> Self {
        StatusView {
            queue: queue.to_string(),
            queued: s.queued,
            delayed: s.delayed,
            running: s.running,
            done: s.done,
            dead: s.dead,
            typical_job_s,
            jobs: s
                .jobs
                .iter()
                .map(|j| JobView {
                    id: j.id.clone(),
                    state: j.state,
                    owner: j.owner.clone(),
                    attempt: j.attempt,
                    progress: j.progress.as_deref().and_then(Progress::parse),
                    last_error: j.last_error.clone(),
                    signal: j.signal,
                    exit_code: j.exit_code,
                    heartbeat_age_s: j.heartbeat_age.map(|d| d.as_secs_f64()),
                })
                .collect(),
        }
    }

    /// Dead jobs with their reasons, one per line (`<id>: <reason> (signal 6)`).
    pub fn dead_lines(&self) -> Vec<String> {
        self.jobs.iter().filter(|j| j.state == JobState::Dead).map(dead_line).collect()
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "queue {}: {} queued, {} delayed (retry backoff), {} running, {} done, {} dead",
            self.queue, self.queued, self.delayed, self.running, self.done, self.dead
        );
        let running: Vec<&JobView> = self.jobs.iter().filter(|j| j.state == JobState::Running).collect();
        if !running.is_empty() {
            let _ = writeln!(
                s,
                "\nrunning:\n  {:<18}{:<32}{:<10}{:<10}{:<18}{:>9}{:>9}{:>6}",
                "job", "worker", "dataset", "fold", "stage", "elapsed", "eta", "try"
            );
            for j in running {
                let p = j.progress.clone().unwrap_or_default();
                let eta = p.eta_s(self.typical_job_s).map(format_duration).unwrap_or_else(|| "?".into());
                let _ = writeln!(
                    s,
                    "  {:<18}{:<32}{:<10}{:<10}{:<18}{:>9}{:>9}{:>6}",
                    j.id,
                    j.owner.as_deref().unwrap_or("?"),
                    p.dataset,
                    p.fold,
                    p.describe(),
                    format_duration(p.elapsed_s),
                    eta,
                    j.attempt
                );
            }
        }
        let dead = self.dead_lines();
        if !dead.is_empty() {
            let _ = writeln!(s, "\ndead:");
            for d in dead {
                let _ = writeln!(s, "  {d}");
            }
        }
        s
    }
}

fn dead_line(j: &JobView) -> String {
    let mut extra = Vec::new();
    if let Some(sig) = j.signal {
        extra.push(format!("signal {sig}"));
    }
    if let Some(code) = j.exit_code {
        extra.push(format!("exit {code}"));
    }
    extra.push(format!("{} execution(s)", j.attempt));
    format!("{}: {} ({})", j.id, j.last_error.as_deref().unwrap_or("no error recorded"), extra.join(", "))
}
