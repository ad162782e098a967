//! The job queue between the orchestrator and the workers.
//!
//! One trait, [`JobQueue`], with two implementations that pass the same contract tests:
//! [`RedisQueue`] for clusters and [`MemoryQueue`], the embedded default when no Redis URL is
//! given. The model (see `shared/notes/queue.md`) is a per-job lease renewed by heartbeats, plus a
//! fencing token: every claim of a job gets a larger token, and a heartbeat, completion, failure
//! or release that carries an older token is refused. Jobs run for hours, so what counts is the
//! time since the last sign of life, never the time since delivery.
//!
//! Job ids are deterministic (the hash from `sera plan`), so submitting a job that is already
//! known does nothing. Payloads, progress and results are JSON strings, readable with
//! `redis-cli`; payloads are normally an [`Envelope`].
//!
//! The queue also carries artifact chunks for clusters without a shared run directory: a worker
//! stores the chunks of its large artifacts with [`JobQueue::put_chunk`] (fenced like a
//! heartbeat: a stale token is refused, so a zombie cannot overwrite the new owner's chunks, and
//! the chunks of each claim live under its own token), the orchestrator reads them back with
//! [`JobQueue::get_chunk`] and drops them with [`JobQueue::delete_artifacts`] once recorded.
//! Chunks are bounded by [`QueueConfig::chunk_max`] and, on Redis, expire after the retention.

pub mod bench;
mod memory;
mod redis;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use self::memory::MemoryQueue;
pub use self::redis::RedisQueue;

/// Version of the payload envelope; a worker refuses envelopes of another version.
pub const ENVELOPE_SCHEMA: u32 = 1;

/// Default bound on one artifact chunk stored in the queue.
pub const DEFAULT_CHUNK_MAX: usize = 4 << 20;

/// The largest chunk bound a queue accepts (a Redis string holds at most 512 MiB).
pub const CHUNK_MAX_LIMIT: usize = 256 << 20;

/// The longest job id the queue accepts (ids are 16 hex digits from `sera plan`).
pub const MAX_ID_LEN: usize = 128;

/// What a queue payload holds: the job spec as JSON, tagged with the envelope version and job id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Envelope version ([`ENVELOPE_SCHEMA`] when written by this build).
    pub schema: u32,
    /// The job id, repeated so that a payload read on its own (`redis-cli`) says what it is.
    pub id: String,
    /// The job spec; the queue never looks inside it.
    pub job: serde_json::Value,
}

impl Envelope {
    /// Wraps a job spec (as JSON) under the current envelope version.
    pub fn new(id: impl Into<String>, job: serde_json::Value) -> Self {
        Envelope { schema: ENVELOPE_SCHEMA, id: id.into(), job }
    }

    /// The envelope as a JSON string.
    pub fn to_json(&self) -> String {
        // Built through `Value`, whose `Display` cannot fail, so no error path is needed here.
        serde_json::json!({ "schema": self.schema, "id": self.id, "job": self.job }).to_string()
    }

    /// The submission for this envelope.
    pub fn to_new_job(&self) -> NewJob {
        NewJob { id: self.id.clone(), payload: self.to_json() }
    }

    /// Parses a payload, refusing other envelope versions (the worker would misread them).
    pub fn parse(payload: &str) -> Result<Envelope, QueueError> {
        let env: Envelope = serde_json::from_str(payload)
            .map_err(|e| QueueError::Payload { message: format!("not a job envelope: {e}") })?;
        if env.schema != ENVELOPE_SCHEMA {
            return Err(QueueError::Payload {
                message: format!(
                    "job {}: envelope schema {} is not supported by this build (schema {ENVELOPE_SCHEMA}); run \
                     workers of the same sera version as the orchestrator",
                    env.id, env.schema
                ),
            });
        }
        Ok(env)
    }
}

/// Errors from a queue. Every message names the queue's URL (without its password).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue could not be reached or did not answer in time; the same call may succeed later.
    #[error("queue {url}: {message}")]
    Unavailable { url: String, message: String },

    /// The queue refused the request (bad URL or credentials, a script error); retrying will not help.
    #[error("queue {url}: {message}")]
    Fatal { url: String, message: String },

    /// The caller passed something the queue cannot store (a malformed id, a payload that is not JSON).
    #[error("queue {url}: {message}")]
    Invalid { url: String, message: String },

    /// A payload is not an envelope this build can run.
    #[error("job payload: {message}")]
    Payload { message: String },
}

impl QueueError {
    /// Whether the same call may succeed if repeated later (a connection problem, not a refusal).
    pub fn is_retryable(&self) -> bool {
        matches!(self, QueueError::Unavailable { .. })
    }
}

/// A job to submit: its deterministic id and its JSON payload (usually an [`Envelope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The job id; resubmitting an id the queue knows is a no-op.
    pub id: String,
    /// JSON text handed unchanged to the worker that claims the job.
    pub payload: String,
}

/// A claimed job: the worker owns it while it keeps the lease alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The job id.
    pub id: String,
    /// Fencing token: grows with every claim of this job, so an older claimant is recognised.
    pub token: u64,
    /// Which execution this is (1-based); a released claim is not counted.
    pub attempt: u32,
    /// The payload as submitted.
    pub payload: String,
}

impl Claim {
    /// The lease to present on heartbeats and on the final report.
    pub fn lease(&self) -> Lease {
        Lease { id: self.id.clone(), token: self.token }
    }
}

/// Proof of ownership: a job id and the fencing token of one claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The job id.
    pub id: String,
    /// The claim's fencing token.
    pub token: u64,
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Heartbeat {
    /// The lease is extended; keep working.
    Alive,
    /// The job is no longer this claimant's (reaped, finished or re-claimed): stop and never commit.
    Lost,
}

/// Answer to a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Completion {
    /// The result is stored and the job is done.
    Committed,
    /// This very claim had already completed the job; nothing changed.
    Duplicate,
    /// The lease is stale (the job was reaped, re-claimed or finished by another claim); the result
    /// was dropped.
    Rejected,
}

impl Completion {
    /// Whether the job is done with this claim's result (now or by an earlier, repeated call).
    pub fn is_committed(self) -> bool {
        matches!(self, Completion::Committed | Completion::Duplicate)
    }
}

/// Whether retrying a failed job can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// A transient error (lost device, killed child): retried with backoff up to the attempt limit.
    Retryable,
    /// An error that would repeat (bad config, missing data): the job is dead at once.
    Deterministic,
}

/// Why an execution failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Whether a retry can help.
    pub kind: FailureKind,
    /// What went wrong, kept as the job's last error.
    pub message: String,
    /// The signal that ended the job's child process, if one did.
    pub signal: Option<i32>,
    /// The child's exit code, if it exited.
    pub exit_code: Option<i32>,
}

impl Failure {
    /// A transient failure.
    pub fn retryable(message: impl Into<String>) -> Self {
        Failure { kind: FailureKind::Retryable, message: message.into(), signal: None, exit_code: None }
    }

    /// A failure that would repeat on every attempt.
    pub fn deterministic(message: impl Into<String>) -> Self {
        Failure { kind: FailureKind::Deterministic, message: message.into(), signal: None, exit_code: None }
    }

    /// Records the signal that killed the child.
    pub fn with_signal(mut self, signal: i32) -> Self {
        self.signal = Some(signal);
        self
    }

    /// Records the child's exit code.
    pub fn with_exit_code(mut self, code: i32) -> Self {
        self.exit_code = Some(code);
        self
    }
}

/// Answer to a failure report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum FailOutcome {
    /// The job becomes claimable again after `delay`.
    Retry { delay: Duration },
    /// The job is dead (deterministic failure, or the attempt limit is reached).
    Dead,
    /// The lease is stale; nothing changed.
    Rejected,
}

/// Answer to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Release {
    /// The job is queued again and this execution is not counted.
    Released,
    /// The lease is stale; nothing changed.
    Rejected,
}

/// Answer to a chunk write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum ChunkWrite {
    /// The chunk is stored under the claim's token (and the lease is extended, as by a heartbeat).
    Stored,
    /// The lease is stale: nothing was stored; stop and never commit.
    Rejected,
}

/// What one reaper pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Set when the reaper had been away longer than a lease: every lease was first extended by
    /// this gap, to at most one lease from now (the outage gate), so that an outage does not throw
    /// away the running jobs, while a worker that died meanwhile still loses its job within a lease.
    pub outage_gap: Option<Duration>,
    /// Jobs whose lease had expired and that are queued again.
    pub requeued: Vec<String>,
    /// Jobs whose lease had expired on their last allowed attempt.
    pub dead: Vec<String>,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Running on a worker (holding a lease).
    Running,
    /// Waiting for a worker.
    Queued,
    /// Waiting out the backoff after a retryable failure.
    Delayed,
    /// Failed for good.
    Dead,
    /// Finished with a result.
    Done,
}

impl JobState {
    /// The name stored in Redis and shown by `sera status`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Queued => "queued",
            JobState::Delayed => "delayed",
            JobState::Dead => "dead",
            JobState::Done => "done",
        }
    }

    /// Parses a stored state name.
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "running" => JobState::Running,
            "queued" => JobState::Queued,
            "delayed" => JobState::Delayed,
            "dead" => JobState::Dead,
            "done" => JobState::Done,
            _ => return None,
        })
    }

    /// Whether the job will not change any more (until it is requeued or resubmitted).
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Dead | JobState::Done)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One job as `sera status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobInfo {
    /// The job id.
    pub id: String,
    /// Where the job is.
    pub state: JobState,
    /// The worker running it, or the last one that ran it.
    pub owner: Option<String>,
    /// The fencing token of the latest claim (0 if never claimed).
    pub token: u64,
    /// Executions counted so far (released claims are not counted).
    pub attempt: u32,
    /// The latest progress JSON reported by a heartbeat of the current execution.
    pub progress: Option<String>,
    /// The last error (a failure message, or why a lease expired).
    pub last_error: Option<String>,
    /// The signal that ended the last failed execution, if any.
    pub signal: Option<i32>,
    /// The exit code of the last failed execution, if any.
    pub exit_code: Option<i32>,
    /// Time since the last heartbeat (or the claim) of the current or last execution.
    pub heartbeat_age: Option<Duration>,
}

/// Counts and per-job details for `sera status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    /// Jobs waiting for a worker.
    pub queued: usize,
    /// Jobs waiting out a retry backoff.
    pub delayed: usize,
    /// Jobs held by a worker.
    pub running: usize,
    /// Jobs finished with a result (within the retention window).
    pub done: usize,
    /// Jobs failed for good (within the retention window).
    pub dead: usize,
    /// Every known job, running first, then queued, delayed, dead and done; by id within a state.
    pub jobs: Vec<JobInfo>,
}

impl QueueStatus {
    /// Builds the counts from the job list (sorting it), so that they always agree.
    pub fn from_jobs(mut jobs: Vec<JobInfo>) -> Self {
        jobs.sort_by(|a, b| (a.state, &a.id).cmp(&(b.state, &b.id)));
        let count = |s: JobState| jobs.iter().filter(|j| j.state == s).count();
        QueueStatus {
            queued: count(JobState::Queued),
            delayed: count(JobState::Delayed),
            running: count(JobState::Running),
            done: count(JobState::Done),
            dead: count(JobState::Dead),
            jobs,
        }
    }

    /// Whether nothing is left to run (every job is done or dead).
    pub fn is_drained(&self) -> bool {
        self.queued + self.delayed + self.running == 0
    }

    /// The dead jobs, with their reasons in `last_error`.
    pub fn dead_jobs(&self) -> impl Iterator<Item = &JobInfo> {
        self.jobs.iter().filter(|j| j.state == JobState::Dead)
    }
}

/// A shift added to a queue's clock and shared by its clones, so that tests can let leases and
/// backoffs expire without sleeping. It only moves forward; production code leaves it at zero.
#[derive(Debug, Clone, Default)]
pub struct ClockOffset(Arc<AtomicU64>);

impl ClockOffset {
    /// Moves the queue's clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(duration_ms(by), Ordering::SeqCst);
    }

    /// The total shift so far.
    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::SeqCst))
    }

    fn ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Settings shared by both queue implementations.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Separates sweeps sharing one Redis: keys live under `sera:{<namespace>}:`.
    pub namespace: String,
    /// How long a claim survives without a heartbeat.
    pub lease: Duration,
    /// Executions after which a job that keeps failing (or losing its lease) is dead.
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles with every further attempt.
    pub backoff: Duration,
    /// Cap on the retry delay.
    pub backoff_max: Duration,
    /// How long a finished (done or dead) job is kept before the queue forgets it.
    pub retention: Duration,
    /// Upper bound on one call to a remote queue, connecting included.
    pub timeout: Duration,
    /// Approximate cap on the length of the Redis events stream.
    pub events_maxlen: u64,
    /// The largest artifact chunk [`JobQueue::put_chunk`] accepts (workers cut chunks this big).
    pub chunk_max: usize,
    /// Shift of the queue's clock, for tests.
    pub clock: ClockOffset,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            namespace: "default".into(),
            lease: Duration::from_secs(60),
            max_attempts: 3,
            backoff: Duration::from_secs(10),
            backoff_max: Duration::from_secs(600),
            retention: Duration::from_secs(7 * 24 * 3600),
            timeout: Duration::from_secs(5),
            events_maxlen: 10_000,
            chunk_max: DEFAULT_CHUNK_MAX,
            clock: ClockOffset::default(),
        }
    }
}

impl QueueConfig {
    /// How often a worker should heartbeat: several times per lease, so one late beat is harmless.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease / 4
    }

    /// How often a reaper should run: a lost worker's job is then reclaimed within lease + this.
    pub fn reap_interval(&self) -> Duration {
        self.lease / 4
    }

    /// The retry delay after the `attempt`-th execution failed.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.backoff.saturating_mul(1 << doublings).min(self.backoff_max)
    }

    /// Checks the settings; `url` names the queue in the error.
    pub fn validate(&self, url: &str) -> Result<(), QueueError> {
        let invalid = |message: String| Err(QueueError::Invalid { url: url.to_string(), message });
        let ns = &self.namespace;
        // The namespace sits inside the `{…}` hash tag and in SCAN patterns, so braces and glob
        // characters would break the key layout.
        if ns.is_empty() || ns.len() > 64 || !ns.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return invalid(format!("namespace '{ns}' must be 1-64 characters of letters, digits, '-', '_' or '.'"));
        }
        if self.lease < Duration::from_millis(100) {
            return invalid(format!("lease {:?} is too short (at least 100 ms)", self.lease));
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts must be at least 1".into());
        }
        if self.timeout < Duration::from_millis(10) {
            return invalid(format!("timeout {:?} is too short (at least 10 ms)", self.timeout));
        }
        if !(1024..=CHUNK_MAX_LIMIT).contains(&self.chunk_max) {
            return invalid(format!("chunk size {} must be 1024 to {CHUNK_MAX_LIMIT} bytes", self.chunk_max));
        }
        if self.retention < Duration::from_secs(1) {
            return invalid(format!("retention {:?} is too short (at least 1 s)", self.retention));
        }
        Ok(())
    }
}

/// A job queue with leases, heartbeats and fencing tokens.
///
/// Every method is one atomic transition. Methods that take a [`Lease`] refuse stale ones (a
/// smaller token, or a job that moved on) by returning `Rejected`/`Lost` rather than an error, so
/// that a zombie worker learns it must stop.
pub trait JobQueue: Send + Sync {
    /// The queue's URL without its password (`memory://` for the in-process queue).
    fn location(&self) -> &str;

    /// Adds jobs; ids the queue already knows (in any state) are left alone. Returns how many were new.
    fn submit(&self, jobs: &[NewJob]) -> Result<usize, QueueError>;

    /// Takes the next ready job for `worker`, or `None` if nothing is ready. Never blocks: workers poll.
    fn claim(&self, worker: &str) -> Result<Option<Claim>, QueueError>;

    /// Extends the lease and records `progress` (JSON), if given.
    fn heartbeat(&self, lease: &Lease, progress: Option<&str>) -> Result<Heartbeat, QueueError>;

    /// Finishes the job with `result` (JSON). Repeating it with the same lease is harmless.
    fn complete(&self, lease: &Lease, result: &str) -> Result<Completion, QueueError>;

    /// Reports a failed execution: retried after a backoff, or dead.
    fn fail(&self, lease: &Lease, failure: &Failure) -> Result<FailOutcome, QueueError>;

    /// Gives the job back unfinished (graceful shutdown); the execution is not counted.
    fn release(&self, lease: &Lease) -> Result<Release, QueueError>;

    /// Requeues (or kills, on their last attempt) jobs whose lease expired, applies the outage
    /// gate, promotes due retries and forgets finished jobs past retention.
    fn reap(&self) -> Result<ReapReport, QueueError>;

    /// Queues dead jobs again with a fresh attempt count (after the cause was fixed). Returns how
    /// many were dead and are now queued.
    fn requeue_dead(&self, ids: &[String]) -> Result<usize, QueueError>;

    /// Counts and per-job details.
    fn status(&self) -> Result<QueueStatus, QueueError>;

    /// Details of one job, or `None` if the queue does not know it.
    fn job(&self, id: &str) -> Result<Option<JobInfo>, QueueError>;

    /// The result JSON of a done job.
    fn result(&self, id: &str) -> Result<Option<String>, QueueError>;

    /// The largest chunk [`Self::put_chunk`] accepts ([`QueueConfig::chunk_max`]).
    fn chunk_max(&self) -> usize;

    /// Stores chunk `index` of `artifact` (a path relative to the job's directory) for the claim
    /// `lease` holds, under its token; a successful write also extends the lease. Refused with
    /// `Rejected` when the lease is stale, with an error when `bytes` exceeds [`Self::chunk_max`].
    /// Repeating it is harmless.
    fn put_chunk(&self, lease: &Lease, artifact: &str, index: u32, bytes: &[u8]) -> Result<ChunkWrite, QueueError>;

    /// Chunk `index` of `artifact` as stored by the claim with `token`, or `None` if there is none
    /// (never stored, deleted, or expired after the retention).
    fn get_chunk(&self, id: &str, token: u64, artifact: &str, index: u32) -> Result<Option<Vec<u8>>, QueueError>;

    /// Deletes every artifact chunk of the job, whatever claim stored it. Returns how many.
    fn delete_artifacts(&self, id: &str) -> Result<usize, QueueError>;
}

/// Opens the queue at `url` (`redis://` or `rediss://`), or a fresh in-process queue when `url`
/// is `None`.
pub fn open(url: Option<&str>, config: QueueConfig) -> Result<Arc<dyn JobQueue>, QueueError> {
    Ok(match url {
        Some(url) => Arc::new(RedisQueue::connect(url, config)?),
        None => Arc::new(MemoryQueue::new(config)?),
    })
}

/// `url` with the password (and a lone user-info token, which Redis may treat as one) replaced
/// by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some(at) = rest.rfind('@') else { return url.to_string() };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{scheme}://{user}@{host}")
}

/// Refuses ids that would break the key layout or `redis-cli` output.
fn check_id(url: &str, id: &str) -> Result<(), QueueError> {
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(QueueError::Invalid {
            url: url.to_string(),
            message: format!("job id {id:?} must be 1-{MAX_ID_LEN} printable ASCII characters without spaces"),
        });
    }
    Ok(())
}

/// Refuses artifact names (relative paths) that would be unreadable in keys, and oversized chunks.
fn check_chunk(url: &str, id: &str, artifact: &str, len: Option<(usize, usize)>) -> Result<(), QueueError> {
    check_id(url, id)?;
    let invalid = |message: String| Err(QueueError::Invalid { url: url.to_string(), message });
    if artifact.is_empty() || artifact.len() > 1024 || artifact.chars().any(char::is_control) {
        return invalid(format!(
            "job {id}: artifact name {artifact:?} must be 1-1024 characters without control characters"
        ));
    }
    if let Some((len, max)) = len
        && len > max
    {
        return invalid(format!("job {id}: chunk of {artifact} is {len} bytes, more than the {max}-byte chunk limit"));
    }
    Ok(())
}

/// Refuses text that is not JSON, so that everything in the queue stays readable.
fn check_json(url: &str, what: &str, id: &str, text: &str) -> Result<(), QueueError> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).map(|_| ()).map_err(|e| QueueError::Invalid {
        url: url.to_string(),
        message: format!("job {id}: {what} is not JSON: {e}"),
    })
}

/// Refuses worker names that would be unreadable in `sera status`.
fn check_worker(url: &str, worker: &str) -> Result<(), QueueError> {
    if worker.is_empty() || worker.len() > 256 || worker.chars().any(char::is_control) {
        return Err(QueueError::Invalid {
            url: url.to_string(),
            message: format!("worker name {worker:?} must be 1-256 characters without control characters"),
        });
    }
    Ok(())
}

/// Whole milliseconds of `d`, saturating.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch on this host, plus the test offset.
fn local_now_ms(offset: &ClockOffset) -> u64 {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(duration_ms).unwrap_or(0);
    wall.saturating_add(offset.ms())
}
