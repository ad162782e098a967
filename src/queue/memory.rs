//! The in-process queue: the embedded default when no Redis URL is given. Same semantics as the
//! Redis queue (the same contract tests run against both), with all state behind one mutex.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::{
    ChunkWrite, Claim, Completion, FailOutcome, Failure, FailureKind, Heartbeat, JobInfo, JobQueue, JobState, Lease,
    NewJob, QueueConfig, QueueError, QueueStatus, ReapReport, Release, check_chunk, check_id, check_json, check_worker,
    duration_ms, local_now_ms,
};

/// What the in-process queue calls itself in messages.
const LOCATION: &str = "memory://";

/// An in-process [`JobQueue`]; share it between threads with an `Arc`.
#[derive(Debug)]
pub struct MemoryQueue {
    config: QueueConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<String, Record>,
    /// Claimable jobs; the front is claimed next.
    ready: VecDeque<String>,
    /// Jobs waiting out a backoff, by due time.
    delayed: BTreeSet<(u64, String)>,
    /// Running jobs and their lease expiry.
    leases: BTreeMap<String, u64>,
    /// When a reaper last ran, for the outage gate.
    reaper_seen: Option<u64>,
    /// Artifact chunks per job, by (token, artifact, index).
    chunks: HashMap<String, Chunks>,
}

/// One job's artifact chunks, by (token, artifact, index).
type Chunks = BTreeMap<(u64, String, u32), Vec<u8>>;

#[derive(Debug)]
struct Record {
    payload: String,
    state: JobState,
    token: u64,
    attempts: u32,
    owner: Option<String>,
    heartbeat_ms: Option<u64>,
    progress: Option<String>,
    last_error: Option<String>,
    signal: Option<i32>,
    exit_code: Option<i32>,
    result: Option<String>,
    finished_ms: Option<u64>,
}

impl Record {
    fn holds(&self, lease: &Lease) -> bool {
        self.state == JobState::Running && self.token == lease.token
    }
}

impl MemoryQueue {
    /// An empty queue.
    pub fn new(config: QueueConfig) -> Result<Self, QueueError> {
        config.validate(LOCATION)?;
        Ok(MemoryQueue { config, state: Mutex::new(State::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in another thread cannot leave the state half-updated in a way that matters
        // more than losing the whole queue, so keep going with it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> u64 {
        local_now_ms(&self.config.clock)
    }

    fn lease_ms(&self) -> u64 {
        duration_ms(self.config.lease)
    }
}

impl State {
    /// Moves retries whose backoff is over to the front of the ready queue.
    fn promote(&mut self, now: u64) {
        while let Some((due, _)) = self.delayed.first() {
            if *due > now {
                break;
            }
            let Some((_, id)) = self.delayed.pop_first() else { break };
            if let Some(rec) = self.jobs.get_mut(&id) {
                rec.state = JobState::Queued;
                self.ready.push_front(id);
            }
        }
    }

    fn finish(&mut self, id: &str, state: JobState, now: u64) {
        self.leases.remove(id);
        if let Some(rec) = self.jobs.get_mut(id) {
            rec.state = state;
            rec.finished_ms = Some(now);
        }
    }
}

impl JobQueue for MemoryQueue {
    fn location(&self) -> &str {
        LOCATION
    }

    fn submit(&self, jobs: &[NewJob]) -> Result<usize, QueueError> {
        for job in jobs {
            check_id(LOCATION, &job.id)?;
            check_json(LOCATION, "payload", &job.id, &job.payload)?;
        }
        let mut st = self.lock();
        let mut added = 0;
        for job in jobs {
            if st.jobs.contains_key(&job.id) {
                continue;
            }
            st.jobs.insert(
                job.id.clone(),
                Record {
                    payload: job.payload.clone(),
                    state: JobState::Queued,
                    token: 0,
                    attempts: 0,
                    owner: None,
                    heartbeat_ms: None,
                    progress: None,
                    last_error: None,
                    signal: None,
                    exit_code: None,
                    result: None,
                    finished_ms: None,
                },
            );
            st.ready.push_back(job.id.clone());
            added += 1;
        }
        Ok(added)
    }

    fn claim(&self, worker: &str) -> Result<Option<Claim>, QueueError> {
        check_worker(LOCATION, worker)?;
        let now = self.now();
        let expiry = now.saturating_add(self.lease_ms());
        let mut st = self.lock();
        st.promote(now);
        while let Some(id) = st.ready.pop_front() {
            let Some(rec) = st.jobs.get_mut(&id) else { continue };
            if rec.state != JobState::Queued {
                continue;
            }
            rec.state = JobState::Running;
            rec.token += 1;
            rec.attempts += 1;
            rec.owner = Some(worker.to_string());
            rec.heartbeat_ms = Some(now);
            rec.progress = None;
            let claim = Claim { id: id.clone(), token: rec.token, attempt: rec.attempts, payload: rec.payload.clone() };
            st.leases.insert(id, expiry);
            return Ok(Some(claim));
        }
        Ok(None)
    }

    fn heartbeat(&self, lease: &Lease, progress: Option<&str>) -> Result<Heartbeat, QueueError> {
        if let Some(p) = progress {
            check_json(LOCATION, "progress", &lease.id, p)?;
        }
        let now = self.now();
        let mut st = self.lock();
        let Some(rec) = st.jobs.get_mut(&lease.id).filter(|r| r.holds(lease)) else { return Ok(Heartbeat::Lost) };
        rec.heartbeat_ms = Some(now);
        if let Some(p) = progress {
            rec.progress = Some(p.to_string());
        }
        st.leases.insert(lease.id.clone(), now.saturating_add(self.lease_ms()));
        Ok(Heartbeat::Alive)
    }

    fn complete(&self, lease: &Lease, result: &str) -> Result<Completion, QueueError> {
        check_json(LOCATION, "result", &lease.id, result)?;
        let now = self.now();
        let mut st = self.lock();
        let Some(rec) = st.jobs.get_mut(&lease.id) else { return Ok(Completion::Rejected) };
        if rec.state == JobState::Done && rec.token == lease.token {
            return Ok(Completion::Duplicate);
        }
        if !rec.holds(lease) {
            return Ok(Completion::Rejected);
        }
        rec.result = Some(result.to_string());
        st.finish(&lease.id, JobState::Done, now);
        Ok(Completion::Committed)
    }

    fn fail(&self, lease: &Lease, failure: &Failure) -> Result<FailOutcome, QueueError> {
        let now = self.now();
        let mut st = self.lock();
        let Some(rec) = st.jobs.get_mut(&lease.id).filter(|r| r.holds(lease)) else {
            return Ok(FailOutcome::Rejected);
        };
        rec.last_error = Some(failure.message.clone());
        rec.signal = failure.signal;
        rec.exit_code = failure.exit_code;
        let attempts = rec.attempts;
        if failure.kind == FailureKind::Deterministic || attempts >= self.config.max_attempts {
            st.finish(&lease.id, JobState::Dead, now);
            return Ok(FailOutcome::Dead);
        }
        let delay = self.config.backoff_after(attempts);
        rec.state = JobState::Delayed;
        rec.owner = None;
        st.leases.remove(&lease.id);
        st.delayed.insert((now.saturating_add(duration_ms(delay)), lease.id.clone()));
        Ok(FailOutcome::Retry { delay })
    }

    fn release(&self, lease: &Lease) -> Result<Release, QueueError> {
        let mut st = self.lock();
        let Some(rec) = st.jobs.get_mut(&lease.id).filter(|r| r.holds(lease)) else { return Ok(Release::Rejected) };
        rec.state = JobState::Queued;
        rec.attempts = rec.attempts.saturating_sub(1);
        rec.owner = None;
        st.leases.remove(&lease.id);
        st.ready.push_front(lease.id.clone());
        Ok(Release::Released)
    }

    fn reap(&self) -> Result<ReapReport, QueueError> {
        let now = self.now();
        let lease_ms = self.lease_ms();
        let mut st = self.lock();
        let mut report = ReapReport::default();
        if let Some(seen) = st.reaper_seen {
            let gap = now.saturating_sub(seen);
            if gap > lease_ms {
                // Capped at one lease from now, as in `lua/reap.lua`.
                let cap = now.saturating_add(lease_ms);
                for expiry in st.leases.values_mut() {
                    *expiry = (*expiry).max(expiry.saturating_add(gap).min(cap));
                }
                report.outage_gap = Some(Duration::from_millis(gap));
            }
        }
        st.reaper_seen = Some(now);

        let expired: Vec<String> = st.leases.iter().filter(|(_, e)| **e <= now).map(|(id, _)| id.clone()).collect();
        for id in expired {
            st.leases.remove(&id);
            let Some(rec) = st.jobs.get_mut(&id) else { continue };
            let silent = now.saturating_sub(rec.heartbeat_ms.unwrap_or(now));
            rec.last_error = Some(format!(
                "lease expired: worker {} sent no heartbeat for {silent} ms",
                rec.owner.as_deref().unwrap_or("?")
            ));
            rec.signal = None;
            rec.exit_code = None;
            if rec.attempts >= self.config.max_attempts {
                st.finish(&id, JobState::Dead, now);
                report.dead.push(id);
            } else {
                rec.state = JobState::Queued;
                rec.owner = None;
                st.ready.push_front(id.clone());
                report.requeued.push(id);
            }
        }
        st.promote(now);

        let retention = duration_ms(self.config.retention);
        st.jobs.retain(|_, r| {
            !(r.state.is_finished() && r.finished_ms.is_some_and(|f| f.saturating_add(retention) <= now))
        });
        // Chunks go with their job (on Redis they expire after the same retention).
        let State { jobs, chunks, .. } = &mut *st;
        chunks.retain(|id, _| jobs.contains_key(id));
        Ok(report)
    }

    fn requeue_dead(&self, ids: &[String]) -> Result<usize, QueueError> {
        let mut st = self.lock();
        let mut n = 0;
        for id in ids {
            let Some(rec) = st.jobs.get_mut(id).filter(|r| r.state == JobState::Dead) else { continue };
            rec.state = JobState::Queued;
            rec.attempts = 0;
            rec.owner = None;
            rec.finished_ms = None;
            st.ready.push_back(id.clone());
            n += 1;
        }
        Ok(n)
    }

    fn status(&self) -> Result<QueueStatus, QueueError> {
        let now = self.now();
        let st = self.lock();
        Ok(QueueStatus::from_jobs(st.jobs.iter().map(|(id, r)| info(id, r, now)).collect()))
    }

    fn job(&self, id: &str) -> Result<Option<JobInfo>, QueueError> {
        let now = self.now();
        Ok(self.lock().jobs.get(id).map(|r| info(id, r, now)))
    }

    fn result(&self, id: &str) -> Result<Option<String>, QueueError> {
        Ok(self.lock().jobs.get(id).filter(|r| r.state == JobState::Done).and_then(|r| r.result.clone()))
    }

    fn chunk_max(&self) -> usize {
        self.config.chunk_max
    }

    fn put_chunk(&self, lease: &Lease, artifact: &str, index: u32, bytes: &[u8]) -> Result<ChunkWrite, QueueError> {
        check_chunk(LOCATION, &lease.id, artifact, Some((bytes.len(), self.config.chunk_max)))?;
        let now = self.now();
        let mut st = self.lock();
        let Some(rec) = st.jobs.get_mut(&lease.id).filter(|r| r.holds(lease)) else { return Ok(ChunkWrite::Rejected) };
        rec.heartbeat_ms = Some(now);
        st.leases.insert(lease.id.clone(), now.saturating_add(self.lease_ms()));
        st.chunks
            .entry(lease.id.clone())
            .or_default()
            .insert((lease.token, artifact.to_string(), index), bytes.to_vec());
        Ok(ChunkWrite::Stored)
    }

    fn get_chunk(&self, id: &str, token: u64, artifact: &str, index: u32) -> Result<Option<Vec<u8>>, QueueError> {
        check_chunk(LOCATION, id, artifact, None)?;
        let st = self.lock();
        Ok(st.chunks.get(id).and_then(|c| c.get(&(token, artifact.to_string(), index))).cloned())
    }

    fn delete_artifacts(&self, id: &str) -> Result<usize, QueueError> {
        check_id(LOCATION, id)?;
        Ok(self.lock().chunks.remove(id).map_or(0, |c| c.len()))
    }
}

fn info(id: &str, r: &Record, now: u64) -> JobInfo {
    JobInfo {
        id: id.to_string(),
        state: r.state,
        owner: r.owner.clone(),
        token: r.token,
        attempt: r.attempts,
        progress: r.progress.clone(),
        last_error: r.last_error.clone(),
        signal: r.signal,
        exit_code: r.exit_code,
        heartbeat_age: r.heartbeat_ms.map(|h| Duration::from_millis(now.saturating_sub(h))),
    }
}
