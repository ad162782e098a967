//! One claimer loop of a worker: claim a job, run it in a `sera-worker run-job` child process,
//! heartbeat with the child's progress, and report. The child isolates the job: a libtorch
//! abort, a sticky CUDA error or leaked GPU memory dies with it, and its exit status says what
//! happened (0 done, 2 deterministic error, anything else or a signal: retryable).
//!
//! The loop kills the child when its progress has not changed within the stall timeout (a live
//! heartbeat alone does not prove the job is alive), when the lease is lost (and then never
//! commits), and on shutdown, when it releases the job so that the attempt is not charged.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::paths::check_job_id;
use super::payload::{ArtifactStore, ChunkPush, CompletionPayload};
use super::progress::{Progress, StageProgress};
use crate::queue::{Claim, Envelope, FailOutcome, Failure, Heartbeat, JobQueue, QueueError, Release};
use crate::spec::Job;

/// Exit status of `run-job` for a deterministic failure (bad config or data).
pub const EXIT_DETERMINISTIC: i32 = 2;

/// How one claimer runs its jobs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's name in the queue and in `sera status` (`host:pid/device`).
    pub name: String,
    /// `cpu`, `cuda` or `cuda:N`, passed to `run-job --device`.
    pub device: String,
    /// The `sera-worker` binary whose `run-job` runs each job.
    pub worker_exe: PathBuf,
    /// Per-execution job directories (`<scratch>/<id>-t<token>`).
    pub scratch: PathBuf,
    /// Shared stage-1 and text-feature cache (`run-job --cache`).
    pub cache: PathBuf,
    /// Where large artifacts go.
    pub store: ArtifactStore,
    /// Heartbeat period (a quarter of the lease).
    pub heartbeat: Duration,
    /// A job whose progress does not change for this long is killed (and retried).
    pub stall_timeout: Duration,
    /// Pause between claims when nothing is ready (jittered by up to 50 %).
    pub poll: Duration,
    /// How long to keep trying to report a finished job while the queue is unreachable.
    pub report_patience: Duration,
}

/// How one execution ended, from the worker's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The result was committed.
    Committed,
    /// The failure was reported (retry or dead).
    Failed(String),
    /// The job was given back on shutdown.
    Released,
    /// The lease was lost; the child was stopped and nothing was committed.
    LeaseLost,
    /// The queue could not be told (unreachable for the whole patience); the lease will expire.
    Unreported,
}

/// Claims and runs jobs until `stop()` returns true. Queue errors never end the loop: the queue
/// may come back (a restarted Redis), and the worker with it.
pub fn claim_loop(queue: &dyn JobQueue, cfg: &WorkerConfig, stop: &dyn Fn() -> bool) {
    let mut last_warning: Option<Instant> = None;
    while !stop() {
        match queue.claim(&cfg.name) {
            Ok(Some(claim)) => {
                last_warning = None;
                let _ = run_claim(queue, cfg, claim, stop);
            }
            Ok(None) => sleep_unless(jitter(cfg.poll), stop),
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                    tracing::warn!(worker = %cfg.name, "cannot claim: {e} (retrying)");
                    last_warning = Some(Instant::now());
                }
                sleep_unless(jitter(cfg.poll), stop);
            }
        }
    }
}

/// Runs the reaper every `interval` until `stop()`: requeues jobs whose lease expired.
pub fn reap_loop(queue: &dyn JobQueue, interval: Duration, stop: &dyn Fn() -> bool) {
    while !stop() {
        match queue.reap() {
            Ok(r) => {
                for id in &r.requeued {
                    tracing::warn!(job = %id, "lease expired: job requeued");
                }
                for id in &r.dead {
                    tracing::warn!(job = %id, "lease expired on the last attempt: job is dead");
                }
            }
            Err(e) => tracing::debug!("reap: {e}"),
        }
        sleep_unless(interval, stop);
    }
}

/// Runs one claimed job to its end and reports it.
pub fn run_claim(queue: &dyn JobQueue, cfg: &WorkerConfig, claim: Claim, stop: &dyn Fn() -> bool) -> Outcome {
    let lease = claim.lease();
    let job = match parse_job(&claim) {
        Ok(job) => job,
        Err(message) => {
            let span = tracing::info_span!("job", id = %claim.id.escape_debug());
            let _enter = span.enter();
            tracing::error!("refusing the job: {message}");
            return report_failure(queue, cfg, &lease, Failure::deterministic(message));
        }
    };
    let spec = &job.spec;
    let span = tracing::info_span!("job", id = %job.id, dataset = %spec.dataset.name, fold = %spec.fold.name,
        variant = %spec.variant.name, attempt = claim.attempt, stage = tracing::field::Empty);
    let _enter = span.enter();
    tracing::info!(worker = %cfg.name, "claimed");

    let base = cfg.scratch.join(format!("{}-t{}", job.id, claim.token));
    let out = &base;
    let job_file = base.with_extension("job.json");
    let log_file = base.with_extension("log");
    let _ = std::fs::remove_dir_all(out);
    let child = serde_json::to_vec_pretty(&job)
        .map_err(|e| e.to_string())
        .and_then(|bytes| crate::fsutil::write_atomic(&job_file, &bytes).map_err(|e| e.to_string()))
        .and_then(|()| spawn_child(cfg, &job_file, out, &log_file).map_err(|e| e.to_string()));
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            return report_failure(queue, cfg, &lease, Failure::retryable(format!("cannot start the job: {e}")));
        }
    };

    let started = Instant::now();
    let mut stage = StageProgress { stage: "starting".into(), epoch: 0, epochs: 0 };
    let mut stage_started = started;
    let mut last_change = started;
    let mut next_beat = started;
    let mut last_beat = started;
    let mut beat_errors = 0u32;
    let status = loop {
        if stop() {
            kill(&mut child);
            tracing::info!("shutting down: job released for another worker");
            let released = retry_report(cfg, || queue.release(&lease));
            cleanup(out, &job_file, &log_file, true);
            return match released {
                Some(Release::Released) => Outcome::Released,
                Some(Release::Rejected) => Outcome::LeaseLost,
                None => Outcome::Unreported,
            };
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot poll the job's process: {e}"),
        }
        let now = Instant::now();
        if let Some(p) = read_progress(&out.join("progress.json"))
            && p != stage
        {
            if p.stage != stage.stage {
                stage_started = now;
                span.record("stage", p.stage.as_str());
                tracing::info!(stage = %p.stage, epochs = p.epochs, "stage started");
            }
            stage = p;
            last_change = now;
            // Show a new stage or epoch promptly, without beating more than 4 times a second.
            next_beat = next_beat.min(last_beat + Duration::from_millis(250));
        }
        if now.duration_since(last_change) > cfg.stall_timeout {
            kill(&mut child);
            let message = format!(
                "stalled: no progress for {:.0} s in {} (stall timeout {:.0} s); killed",
                now.duration_since(last_change).as_secs_f64(),
                stage.stage,
                cfg.stall_timeout.as_secs_f64()
            );
            tracing::error!("{message}");
            cleanup(out, &job_file, &log_file, false);
            return report_failure(queue, cfg, &lease, Failure::retryable(message).with_signal(libc::SIGKILL));
        }
        if now >= next_beat {
            let progress = Progress {
                stage: stage.clone(),
                device: cfg.device.clone(),
                dataset: spec.dataset.name.clone(),
                fold: spec.fold.name.clone(),
                variant: spec.variant.name.clone(),
                elapsed_s: now.duration_since(started).as_secs_f64(),
                stage_elapsed_s: now.duration_since(stage_started).as_secs_f64(),
            };
            let json = serde_json::to_string(&progress).unwrap_or_else(|_| "{}".into());
            last_beat = now;
            match queue.heartbeat(&lease, Some(&json)) {
                Ok(Heartbeat::Alive) => {
                    if beat_errors > 0 {
                        tracing::info!("queue reachable again after {beat_errors} failed heartbeat(s)");
                    }
                    beat_errors = 0;
                    next_beat = now + cfg.heartbeat;
                }
                Ok(Heartbeat::Lost) => {
                    kill(&mut child);
                    tracing::warn!("lease lost (reaped or taken over): stopped the job, nothing is committed");
                    cleanup(out, &job_file, &log_file, true);
                    return Outcome::LeaseLost;
                }
                Err(e) => {
                    if beat_errors == 0 {
                        tracing::warn!("heartbeat failed: {e} (the job keeps running; retrying)");
                    }
                    beat_errors += 1;
                    next_beat = now + cfg.heartbeat.min(Duration::from_millis(500));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    let elapsed = started.elapsed().as_secs_f64();
    if status.success() {
        // Without a shared run directory, artifacts too large for the payload go through the
        // queue in chunks, fenced by this claim's token.
        let push = ChunkPush { queue, lease: &lease, chunk_bytes: queue.chunk_max(), patience: cfg.report_patience };
        let push = cfg.store.shared_run_dir.is_none().then_some(&push);
        let payload = CompletionPayload::build_via(&job.id, &cfg.name, lease.token, out, &cfg.store, push);
        let outcome = match payload {
            Err(e) => {
                let failure = if e.is_deterministic() {
                    Failure::deterministic(format!("cannot ship the result: {e}"))
                } else {
                    Failure::retryable(format!("cannot ship the result: {e}"))
                };
                report_failure(queue, cfg, &lease, failure)
            }
            Ok(payload) => match retry_report(cfg, || queue.complete(&lease, &payload.to_json())) {
                Some(c) if c.is_committed() => {
                    tracing::info!(seconds = elapsed, "done: result committed");
                    Outcome::Committed
                }
                Some(_) => {
                    tracing::warn!("lease lost before the result was committed: result dropped");
                    Outcome::LeaseLost
                }
                None => Outcome::Unreported,
            },
        };
        if outcome != Outcome::Committed
            && let Some(run) = &cfg.store.shared_run_dir
            && let Ok(staged) = super::run_dir::RunDir::new(run).incoming_dir(&job.id, lease.token)
        {
            // Nobody will collect what this execution staged.
            let _ = std::fs::remove_dir_all(staged);
        }
        cleanup(out, &job_file, &log_file, true);
        return outcome;
    }
    if stop() {
        // The child may have died of the same signal (a Ctrl-C reaches the whole terminal group).
        let _ = retry_report(cfg, || queue.release(&lease));
        cleanup(out, &job_file, &log_file, true);
        return Outcome::Released;
    }
    let reason = last_error(&log_file);
    let failure = failure_of(status, &reason);
    tracing::error!(seconds = elapsed, "job failed: {}", failure.message);
    cleanup(out, &job_file, &log_file, false);
    report_failure(queue, cfg, &lease, failure)
}

/// The failure a child's exit status means: exit 2 is deterministic, anything else retryable.
pub fn failure_of(status: ExitStatus, reason: &str) -> Failure {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        return Failure::retryable(format!("run-job killed by signal {sig}: {reason}")).with_signal(sig);
    }
    let code = status.code().unwrap_or(-1);
    if code == EXIT_DETERMINISTIC {
        Failure::deterministic(reason.to_string()).with_exit_code(code)
    } else {
        Failure::retryable(format!("run-job exited with {code}: {reason}")).with_exit_code(code)
    }
}

fn parse_job(claim: &Claim) -> Result<Job, String> {
    let env = Envelope::parse(&claim.payload).map_err(|e| e.to_string())?;
    check_job_id(&claim.id).map_err(|e| e.to_string())?;
    if env.id != claim.id {
        return Err(format!("the payload names job {:?}, not {}", env.id, claim.id));
    }
    let job: Job = serde_json::from_value(env.job).map_err(|e| format!("not a job spec: {e}"))?;
    if job.id != claim.id {
        return Err(format!("the job spec's id {:?} is not the queue's {}", job.id, claim.id));
    }
    let hash = job.spec.id();
    if hash != job.id {
        return Err(format!("job id {} does not match its spec (hash {hash}): the spec was altered", job.id));
    }
    Ok(job)
}

fn spawn_child(cfg: &WorkerConfig, job_file: &Path, out: &Path, log_file: &Path) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(&cfg.cache)?;
    let log = std::fs::File::create(log_file)?;
    let mut cmd = Command::new(&cfg.worker_exe);
    cmd.arg("run-job")
        .arg(job_file)
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(&cfg.cache)
        .arg("--device")
        .arg(&cfg.device)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C for the worker does not kill the job behind its back.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    #[cfg(target_os = "linux")]
    unsafe {
        // A worker killed with SIGKILL takes its job with it, instead of leaving an orphan that
        // keeps the GPU busy while another worker re-runs the job.
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn read_progress(path: &Path) -> Option<StageProgress> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The child's last `error:` line (else its last line), at most 2000 characters.
fn last_error(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        text = String::from_utf8_lossy(&buf).into_owned();
    }
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = lines
        .iter()
        .rposition(|l| l.starts_with("error:"))
        .map(|i| lines[i..].join(" "))
        .or_else(|| lines.last().map(|l| l.to_string()))
        .unwrap_or_else(|| "no output".into());
    line.chars().take(2000).collect()
}

fn cleanup(out: &Path, job_file: &Path, log_file: &Path, remove_log: bool) {
    let _ = std::fs::remove_dir_all(out);
    let _ = std::fs::remove_file(job_file);
    if remove_log {
        let _ = std::fs::remove_file(log_file);
    }
}

fn report_failure(queue: &dyn JobQueue, cfg: &WorkerConfig, lease: &crate::queue::Lease, f: Failure) -> Outcome {
    let message = f.message.clone();
    match retry_report(cfg, || queue.fail(lease, &f)) {
        Some(FailOutcome::Retry { delay }) => {
            tracing::warn!("failure reported; retry in {:.1} s", delay.as_secs_f64());
            Outcome::Failed(message)
        }
        Some(FailOutcome::Dead) => {
            tracing::error!("failure reported; the job is dead");
            Outcome::Failed(message)
        }
        Some(FailOutcome::Rejected) => Outcome::LeaseLost,
        None => Outcome::Unreported,
    }
}

/// Repeats a report while the queue is unreachable, for up to the patience.
fn retry_report<T>(cfg: &WorkerConfig, mut f: impl FnMut() -> Result<T, QueueError>) -> Option<T> {
    let deadline = Instant::now() + cfg.report_patience;
    let mut pause = Duration::from_millis(200);
    loop {
        match f() {
            Ok(v) => return Some(v),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tracing::warn!("cannot report to the queue: {e} (retrying)");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!("cannot report to the queue: {e}; giving up (the lease will expire)");
                return None;
            }
        }
    }
}

/// Sleeps `d` in short steps, returning early when `stop()` turns true.
pub fn sleep_unless(d: Duration, stop: &dyn Fn() -> bool) {
    let end = Instant::now() + d;
    while !stop() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// `d` plus up to 50 %, so that many workers do not poll in step.
fn jitter(d: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.subsec_nanos()).unwrap_or(0);
    d + d.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// This host's name (for worker names in `sera status`).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
