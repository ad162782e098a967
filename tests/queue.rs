//! The queue: one contract, run against the in-process queue and a real `redis-server`, plus the
//! Redis-only reliability checks (crash and restart, unreachable server, TLS, AUTH, throughput).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sera::queue::{
    ClockOffset, Completion, ENVELOPE_SCHEMA, Envelope, FailOutcome, Failure, Heartbeat, JobQueue, JobState,
    MemoryQueue, NewJob, QueueConfig, QueueError, RedisQueue, Release, redact_url,
};
use serde_json::json;

use crate::queue_support::{RedisServer, free_port};

const LEASE: Duration = Duration::from_secs(2);

/// Test-scale settings: a 2 s lease, 1 s first backoff.
fn config() -> QueueConfig {
    QueueConfig {
        namespace: "test".into(),
        lease: LEASE,
        max_attempts: 3,
        backoff: Duration::from_secs(1),
        backoff_max: Duration::from_secs(4),
        timeout: Duration::from_secs(2),
        ..QueueConfig::default()
    }
}

/// A queue under test, with the handle that moves its clock and the server it talks to.
struct Harness {
    queue: Arc<dyn JobQueue>,
    clock: ClockOffset,
    config: QueueConfig,
    _server: Option<RedisServer>,
}

impl Harness {
    fn memory() -> Self {
        let config = config();
        let queue = Arc::new(MemoryQueue::new(config.clone()).expect("memory queue"));
        Harness { queue, clock: config.clock.clone(), config, _server: None }
    }

    fn redis() -> Self {
        let server = RedisServer::start();
        let config = config();
        let queue = Arc::new(RedisQueue::connect(&server.url(), config.clone()).expect("redis queue"));
        Harness { queue, clock: config.clock.clone(), config, _server: Some(server) }
    }

    fn q(&self) -> &dyn JobQueue {
        self.queue.as_ref()
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    fn state(&self, id: &str) -> JobState {
        self.q().job(id).expect("job info").expect("job known").state
    }
}

fn job(id: &str) -> NewJob {
    Envelope::new(id, json!({ "dataset": "demo", "fold": id, "seed": 1 })).to_new_job()
}

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $name() { super::$name(&super::Harness::memory()); } )*
        }
        mod redis {
            $( #[test] fn $name() { super::$name(&super::Harness::redis()); } )*
        }
    };
}

contract_tests!(
    submit_is_idempotent_and_completion_is_fenced,
    expired_lease_is_reclaimed_with_the_next_token,
    heartbeats_keep_a_job_ten_leases_long,
    poison_job_is_dead_after_three_executions,
    deterministic_failure_is_dead_after_one_execution,
    release_requeues_without_charging_an_attempt,
    retry_is_not_claimable_before_its_backoff,
    outage_gate_extends_leases_instead_of_reclaiming,
    dead_jobs_can_be_requeued,
    invalid_input_is_refused,
    concurrent_claimers_never_share_a_job,
);

fn submit_is_idempotent_and_completion_is_fenced(h: &Harness) {
    let q = h.q();
    assert_eq!(q.submit(&[job("a")]).unwrap(), 1);
    assert_eq!(q.submit(&[job("a"), job("a")]).unwrap(), 0, "resubmitting is a no-op");
    let st = q.status().unwrap();
    assert_eq!((st.queued, st.jobs.len()), (1, 1));
    assert_eq!(q.result("a").unwrap(), None);
    assert!(q.job("nope").unwrap().is_none());

    let c = q.claim("w1").unwrap().expect("a job");
    assert_eq!((c.id.as_str(), c.token, c.attempt), ("a", 1, 1));
    let env = Envelope::parse(&c.payload).unwrap();
    assert_eq!((env.schema, env.id.as_str()), (ENVELOPE_SCHEMA, "a"));
    assert!(q.claim("w2").unwrap().is_none(), "one job, one claim");
    assert_eq!(q.submit(&[job("a")]).unwrap(), 0, "resubmitting a running job is a no-op");

    let info = q.job("a").unwrap().unwrap();
    assert_eq!((info.state, info.owner.as_deref(), info.token, info.attempt), (JobState::Running, Some("w1"), 1, 1));

    let stale = sera::queue::Lease { id: "a".into(), token: 0 };
    let future = sera::queue::Lease { id: "a".into(), token: 2 };
    assert_eq!(q.complete(&stale, r#"{"uar":0.1}"#).unwrap(), Completion::Rejected);
    assert_eq!(q.complete(&future, r#"{"uar":0.2}"#).unwrap(), Completion::Rejected);
    assert_eq!(q.complete(&c.lease(), r#"{"uar":0.7}"#).unwrap(), Completion::Committed);
    assert_eq!(q.complete(&c.lease(), r#"{"uar":0.9}"#).unwrap(), Completion::Duplicate);
    assert_eq!(q.heartbeat(&c.lease(), None).unwrap(), Heartbeat::Lost, "a finished job has no lease");
    assert_eq!(q.result("a").unwrap().as_deref(), Some(r#"{"uar":0.7}"#), "exactly the first result");

    let st = q.status().unwrap();
    assert_eq!((st.queued, st.running, st.done, st.dead), (0, 0, 1, 0));
    assert!(st.is_drained());
    assert_eq!(q.submit(&[job("a")]).unwrap(), 0, "resubmitting a finished job is a no-op");
    assert!(q.claim("w1").unwrap().is_none());
}

/// Ticks a reaper every quarter lease until `worker` can claim something; returns the claim and
/// the time it took.
fn reap_until_claimed(h: &Harness, worker: &str, limit: Duration) -> (sera::queue::Claim, Duration) {
    let tick = h.config.reap_interval();
    let mut waited = Duration::ZERO;
    loop {
        h.advance(tick);
        waited += tick;
        let report = h.q().reap().unwrap();
        assert_eq!(report.outage_gap, None, "a reaper ticking every {tick:?} is no outage");
        if let Some(c) = h.q().claim(worker).unwrap() {
            return (c, waited);
        }
        assert!(waited <= limit, "nothing reclaimed within {limit:?}");
    }
}

fn expired_lease_is_reclaimed_with_the_next_token(h: &Harness) {
    let q = h.q();
    q.submit(&[job("a")]).unwrap();
    let old = q.claim("w1").unwrap().unwrap();
    assert_eq!(old.token, 1);

    // w1 dies silently: no heartbeat, no report.
    let tick = h.config.reap_interval();
    let (new, waited) = reap_until_claimed(h, "w2", LEASE + tick);
    assert!(waited >= LEASE - tick, "reclaimed after {waited:?}, before the lease ran out");
    assert_eq!((new.id.as_str(), new.token, new.attempt), ("a", 2, 2));
    let info = q.job("a").unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some("w2"));
    assert!(info.last_error.as_deref().unwrap_or("").contains("lease expired: worker w1"), "{info:?}");

    // The zombie learns it lost the job, and can change nothing.
    assert_eq!(q.heartbeat(&old.lease(), Some(r#"{"epoch":3}"#)).unwrap(), Heartbeat::Lost);
    assert_eq!(q.complete(&old.lease(), r#"{"by":"w1"}"#).unwrap(), Completion::Rejected);
    assert_eq!(q.fail(&old.lease(), &Failure::retryable("late")).unwrap(), FailOutcome::Rejected);
    assert_eq!(q.release(&old.lease()).unwrap(), Release::Rejected);

    assert_eq!(q.heartbeat(&new.lease(), None).unwrap(), Heartbeat::Alive);
    assert_eq!(q.complete(&new.lease(), r#"{"by":"w2"}"#).unwrap(), Completion::Committed);
    assert_eq!(q.complete(&old.lease(), r#"{"by":"w1"}"#).unwrap(), Completion::Rejected);
    assert_eq!(q.result("a").unwrap().as_deref(), Some(r#"{"by":"w2"}"#));
    assert_eq!(q.status().unwrap().done, 1);
}

fn heartbeats_keep_a_job_ten_leases_long(h: &Harness) {
    let q = h.q();
    q.submit(&[job("long")]).unwrap();
    let c = q.claim("w1").unwrap().unwrap();
    let tick = h.config.heartbeat_interval();
    let steps = (10 * LEASE.as_millis() / tick.as_millis()) as u32;
    for epoch in 0..steps {
        h.advance(tick);
        let progress = json!({ "stage": "finetune", "epoch": epoch }).to_string();
        assert_eq!(q.heartbeat(&c.lease(), Some(&progress)).unwrap(), Heartbeat::Alive);
        let report = q.reap().unwrap();
        assert!(report.requeued.is_empty() && report.dead.is_empty(), "reclaimed at epoch {epoch}");
        assert!(q.claim("w2").unwrap().is_none());
    }
    let st = q.status().unwrap();
    assert_eq!(st.running, 1);
    let info = &st.jobs[0];
    assert_eq!((info.state, info.owner.as_deref(), info.token), (JobState::Running, Some("w1"), 1));
    let progress: serde_json::Value = serde_json::from_str(info.progress.as_deref().unwrap()).unwrap();
    assert_eq!(progress["epoch"], steps - 1);
    assert!(info.heartbeat_age.unwrap() < tick, "heartbeat age {:?}", info.heartbeat_age);
    assert_eq!(q.complete(&c.lease(), "{}").unwrap(), Completion::Committed);
}

fn poison_job_is_dead_after_three_executions(h: &Harness) {
    let q = h.q();
    let mut jobs = vec![job("poison")];
    jobs.extend((0..20).map(|i| job(&format!("good-{i:02}"))));
    assert_eq!(q.submit(&jobs).unwrap(), 21);

    let mut poison_runs = 0;
    let mut committed = HashSet::new();
    for _ in 0..500 {
        match q.claim("w1").unwrap() {
            Some(c) if c.id == "poison" => {
                poison_runs += 1;
                assert_eq!(c.attempt, poison_runs);
                let failure = Failure::retryable("child aborted (SIGABRT)").with_signal(6);
                let outcome = q.fail(&c.lease(), &failure).unwrap();
                if poison_runs < 3 {
                    assert!(matches!(outcome, FailOutcome::Retry { .. }), "{outcome:?}");
                } else {
                    assert_eq!(outcome, FailOutcome::Dead);
                }
            }
            Some(c) => {
                assert_eq!(q.complete(&c.lease(), r#"{"ok":true}"#).unwrap(), Completion::Committed);
                assert!(committed.insert(c.id), "a good job ran twice");
            }
            None => {
                if q.status().unwrap().is_drained() {
                    break;
                }
                h.advance(h.config.backoff_max);
            }
        }
    }
    assert_eq!(poison_runs, 3, "exactly 3 executions");
    assert_eq!(committed.len(), 20, "every good job finished");
    let st = q.status().unwrap();
    assert_eq!((st.done, st.dead, st.queued, st.delayed, st.running), (20, 1, 0, 0, 0));
    let dead: Vec<_> = st.dead_jobs().collect();
    assert_eq!(dead[0].id, "poison");
    assert_eq!(dead[0].last_error.as_deref(), Some("child aborted (SIGABRT)"));
    assert_eq!((dead[0].signal, dead[0].attempt), (Some(6), 3));
}

fn deterministic_failure_is_dead_after_one_execution(h: &Harness) {
    let q = h.q();
    q.submit(&[job("bad")]).unwrap();
    let c = q.claim("w1").unwrap().unwrap();
    let failure = Failure::deterministic("dataset 'iemocap': root /data/IEMOCAP does not exist").with_exit_code(2);
    assert_eq!(q.fail(&c.lease(), &failure).unwrap(), FailOutcome::Dead);
    assert_eq!(q.fail(&c.lease(), &failure).unwrap(), FailOutcome::Rejected);
    h.advance(Duration::from_secs(60));
    q.reap().unwrap();
    assert!(q.claim("w1").unwrap().is_none(), "a dead job is never retried");
    let info = q.job("bad").unwrap().unwrap();
    assert_eq!((info.state, info.attempt, info.exit_code, info.signal), (JobState::Dead, 1, Some(2), None));
    assert!(info.last_error.unwrap().contains("does not exist"));
}

fn release_requeues_without_charging_an_attempt(h: &Harness) {
    let q = h.q();
    q.submit(&[job("a")]).unwrap();
    let mut token = 0;
    // More releases than the attempt limit: none of them counts.
    for _ in 0..5 {
        let c = q.claim("w1").unwrap().unwrap();
        token += 1;
        assert_eq!((c.token, c.attempt), (token, 1));
        assert_eq!(q.heartbeat(&c.lease(), Some(r#"{"epoch":1}"#)).unwrap(), Heartbeat::Alive);
        assert_eq!(q.release(&c.lease()).unwrap(), Release::Released);
        assert_eq!(q.release(&c.lease()).unwrap(), Release::Rejected);
        let info = q.job("a").unwrap().unwrap();
        assert_eq!((info.state, info.attempt, info.owner), (JobState::Queued, 0, None));
    }
    let c = q.claim("w2").unwrap().unwrap();
    assert_eq!((c.token, c.attempt), (6, 1));
    assert_eq!(q.complete(&c.lease(), "{}").unwrap(), Completion::Committed);
}

fn retry_is_not_claimable_before_its_backoff(h: &Harness) {
    let q = h.q();
    q.submit(&[job("a")]).unwrap();
    let c = q.claim("w1").unwrap().unwrap();
    let outcome = q.fail(&c.lease(), &Failure::retryable("CUDA out of memory")).unwrap();
    assert_eq!(outcome, FailOutcome::Retry { delay: Duration::from_secs(1) });
    assert_eq!(h.state("a"), JobState::Delayed);
    assert_eq!(q.status().unwrap().delayed, 1);
    assert!(q.claim("w1").unwrap().is_none());
    // Real time passes too (Redis's clock): keep a margin for a loaded machine.
    h.advance(Duration::from_millis(500));
    q.reap().unwrap();
    assert!(q.claim("w1").unwrap().is_none(), "claimable before its backoff");
    h.advance(Duration::from_millis(600));
    let c = q.claim("w1").unwrap().expect("claimable after its backoff");
    assert_eq!((c.token, c.attempt), (2, 2));
    // The delay doubles.
    let outcome = q.fail(&c.lease(), &Failure::retryable("CUDA out of memory")).unwrap();
    assert_eq!(outcome, FailOutcome::Retry { delay: Duration::from_secs(2) });
}

fn outage_gate_extends_leases_instead_of_reclaiming(h: &Harness) {
    let q = h.q();
    q.submit(&[job("a"), job("b")]).unwrap();
    let a = q.claim("w1").unwrap().unwrap();
    let b = q.claim("w2").unwrap().unwrap();
    assert_eq!(q.reap().unwrap().outage_gap, None);

    // Every reaper is away for 5 leases. a's worker cannot heartbeat either (say Redis was down
    // for it); b's worker heartbeats along.
    let tick = h.config.heartbeat_interval();
    let outage = 5 * LEASE;
    let mut away = Duration::ZERO;
    while away < outage {
        h.advance(tick);
        away += tick;
        assert_eq!(q.heartbeat(&b.lease(), None).unwrap(), Heartbeat::Alive);
    }
    let report = q.reap().unwrap();
    let gap = report.outage_gap.expect("the gate opened");
    assert!(gap >= outage && gap < outage + Duration::from_secs(1), "gap {gap:?}");
    assert!(report.requeued.is_empty() && report.dead.is_empty(), "{report:?}");
    assert_eq!(q.reap().unwrap().outage_gap, None);
    assert_eq!(q.heartbeat(&a.lease(), None).unwrap(), Heartbeat::Alive, "a survived the outage");

    // The gate postpones expiry by at most a lease: b's worker now dies and loses its job within
    // lease + tick, not after another outage's worth of time.
    let mut waited = Duration::ZERO;
    let c = loop {
        h.advance(tick);
        waited += tick;
        assert_eq!(q.heartbeat(&a.lease(), None).unwrap(), Heartbeat::Alive);
        assert_eq!(q.reap().unwrap().outage_gap, None);
        if let Some(c) = q.claim("w3").unwrap() {
            break c;
        }
        assert!(waited <= LEASE + tick, "b not reclaimed within a lease after the outage");
    };
    assert_eq!((c.id.as_str(), c.token), ("b", 2));
    assert_eq!(q.heartbeat(&b.lease(), None).unwrap(), Heartbeat::Lost);
}

fn dead_jobs_can_be_requeued(h: &Harness) {
    let q = h.q();
    q.submit(&[job("a")]).unwrap();
    let c = q.claim("w1").unwrap().unwrap();
    assert_eq!(q.fail(&c.lease(), &Failure::deterministic("missing data")).unwrap(), FailOutcome::Dead);
    assert_eq!(q.submit(&[job("a")]).unwrap(), 0, "resubmitting a dead job is a no-op");
    assert_eq!(q.requeue_dead(&["a".into(), "unknown".into()]).unwrap(), 1);
    assert_eq!(q.status().unwrap().dead, 0);
    let c = q.claim("w1").unwrap().unwrap();
    assert_eq!((c.token, c.attempt), (2, 1));
    assert_eq!(q.complete(&c.lease(), "{}").unwrap(), Completion::Committed);
    assert_eq!(q.requeue_dead(&["a".into()]).unwrap(), 0, "only dead jobs are requeued");
}

fn invalid_input_is_refused(h: &Harness) {
    let q = h.q();
    let bad = [
        q.submit(&[NewJob { id: "has space".into(), payload: "{}".into() }]).unwrap_err(),
        q.submit(&[NewJob { id: String::new(), payload: "{}".into() }]).unwrap_err(),
        q.submit(&[NewJob { id: "x".into(), payload: "not json".into() }]).unwrap_err(),
        q.claim("").unwrap_err(),
    ];
    for e in bad {
        assert!(matches!(e, QueueError::Invalid { .. }), "{e:?}");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains(q.location()), "{e}");
    }
    q.submit(&[job("a")]).unwrap();
    let c = q.claim("w1").unwrap().unwrap();
    assert!(matches!(q.complete(&c.lease(), "{oops").unwrap_err(), QueueError::Invalid { .. }));
    assert!(matches!(q.heartbeat(&c.lease(), Some("[1,")).unwrap_err(), QueueError::Invalid { .. }));
    assert_eq!(h.state("a"), JobState::Running, "refused input changes nothing");
}

fn concurrent_claimers_never_share_a_job(h: &Harness) {
    let jobs: Vec<NewJob> = (0..200).map(|i| job(&format!("j{i:03}"))).collect();
    h.q().submit(&jobs).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let q = Arc::clone(&h.queue);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                while let Some(c) = q.claim(&format!("w{w}")).unwrap() {
                    assert_eq!(q.complete(&c.lease(), "{}").unwrap(), Completion::Committed);
                    mine.push(c.id);
                }
                mine
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        for id in t.join().unwrap() {
            assert!(all.insert(id), "a job was claimed twice");
        }
    }
    assert_eq!(all.len(), 200);
    assert_eq!(h.q().status().unwrap().done, 200);
}

#[test]
fn envelope_round_trips_and_checks_its_schema() {
    let env = Envelope::new("0123456789abcdef", json!({ "experiment": "table2", "seed": 7 }));
    assert_eq!(Envelope::parse(&env.to_json()).unwrap(), env);
    let newer = json!({ "schema": ENVELOPE_SCHEMA + 1, "id": "x", "job": {} }).to_string();
    let e = Envelope::parse(&newer).unwrap_err();
    assert!(matches!(e, QueueError::Payload { .. }) && e.to_string().contains("schema"), "{e}");
    assert!(Envelope::parse(r#"{"schema":1,"id":"x","job":{},"extra":1}"#).is_err());
}

#[test]
fn urls_are_shown_without_passwords() {
    assert_eq!(redact_url("redis://127.0.0.1:7000/"), "redis://127.0.0.1:7000/");
    assert_eq!(redact_url("redis://:s3cret@h:1/0"), "redis://:***@h:1/0");
    assert_eq!(redact_url("rediss://worker:s3cret@h:1"), "rediss://worker:***@h:1");
    assert_eq!(redact_url("redis://s3cret@h:1"), "redis://***@h:1");
}

#[test]
fn bad_urls_and_settings_are_refused() {
    for url in ["http://127.0.0.1:1/", "127.0.0.1:1"] {
        let e = RedisQueue::new(url, config()).unwrap_err();
        assert!(matches!(e, QueueError::Invalid { .. }) && e.to_string().contains(url), "{e}");
    }
    let e = RedisQueue::new("redis://127.0.0.1:1/", QueueConfig { namespace: "a}b".into(), ..config() }).unwrap_err();
    assert!(e.to_string().contains("namespace"), "{e}");
    assert!(MemoryQueue::new(QueueConfig { max_attempts: 0, ..config() }).is_err());
}

// --- Redis only --------------------------------------------------------------------------------

/// A real 2 s lease on Redis's own clock: a silent worker's job comes back within lease + tick.
#[test]
fn redis_real_lease_expires_on_server_time() {
    let server = RedisServer::start();
    let q = RedisQueue::connect(&server.url(), config()).unwrap();
    q.submit(&[job("a")]).unwrap();
    let old = q.claim("w1").unwrap().unwrap();
    let claimed = Instant::now();
    let tick = config().reap_interval();
    let new = loop {
        std::thread::sleep(tick);
        q.reap().unwrap();
        if let Some(c) = q.claim("w2").unwrap() {
            break c;
        }
        assert!(claimed.elapsed() < LEASE + tick + Duration::from_secs(1), "not reclaimed");
    };
    let waited = claimed.elapsed();
    println!("reclaimed after {waited:?} (lease {LEASE:?}, reaper tick {tick:?})");
    assert!(waited >= LEASE - Duration::from_millis(50) && waited <= LEASE + tick + Duration::from_millis(500));
    assert_eq!(new.token, 2);
    assert_eq!(q.heartbeat(&old.lease(), None).unwrap(), Heartbeat::Lost);
    assert_eq!(q.complete(&new.lease(), "{}").unwrap(), Completion::Committed);
}

/// kill -9 on an AOF server mid-sweep, restart on the same port: the client recovers within 5 s,
/// the in-flight job keeps its lease, and every job is done exactly once.
#[test]
fn redis_kill9_and_restart_lose_and_duplicate_nothing() {
    let mut server = RedisServer::start_persistent();
    let q = RedisQueue::connect(&server.url(), config()).unwrap();
    let n = 40;
    let ids: Vec<String> = (0..n).map(|i| format!("job-{i:02}")).collect();
    q.submit(&ids.iter().map(|id| job(id)).collect::<Vec<_>>()).unwrap();
    let mut completed = HashSet::new();
    for _ in 0..15 {
        let c = q.claim("w1").unwrap().unwrap();
        assert_eq!(q.complete(&c.lease(), &json!({ "id": c.id }).to_string()).unwrap(), Completion::Committed);
        completed.insert(c.id);
    }
    let in_flight = q.claim("w1").unwrap().unwrap();
    assert_eq!(q.heartbeat(&in_flight.lease(), Some(r#"{"epoch":1}"#)).unwrap(), Heartbeat::Alive);

    server.kill9();
    let e = q.status().unwrap_err();
    assert!(e.is_retryable() && e.to_string().contains(&server.url()), "{e}");
    server.restart();

    let restarted = Instant::now();
    let status = loop {
        match q.status() {
            Ok(st) => break st,
            Err(e) if e.is_retryable() && restarted.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("no recovery within 5 s: {e}"),
        }
    };
    println!("recovered {:?} after the restart", restarted.elapsed());
    assert_eq!((status.done, status.running, status.queued), (15, 1, n - 16), "nothing lost");

    // The worker that was mid-job carries on and commits once.
    assert_eq!(q.heartbeat(&in_flight.lease(), Some(r#"{"epoch":2}"#)).unwrap(), Heartbeat::Alive);
    assert_eq!(q.complete(&in_flight.lease(), "{}").unwrap(), Completion::Committed);
    completed.insert(in_flight.id.clone());
    while let Some(c) = q.claim("w2").unwrap() {
        assert!(!completed.contains(&c.id), "{} ran again after it was done", c.id);
        assert_eq!(q.complete(&c.lease(), "{}").unwrap(), Completion::Committed);
        completed.insert(c.id);
    }
    assert_eq!(completed.len(), n);
    let st = q.status().unwrap();
    assert_eq!((st.done, st.dead, st.running, st.queued), (n, 0, 0, 0));
    for id in &ids[..3] {
        assert!(q.result(id).unwrap().is_some());
    }
}

/// Asserts that `f` fails within the timeout (+1 s), retryably, naming the URL without its password.
fn assert_fails_fast<T: std::fmt::Debug>(
    what: &str,
    shown_url: &str,
    timeout: Duration,
    f: impl FnOnce() -> Result<T, QueueError>,
) {
    let start = Instant::now();
    let e = f().expect_err(what);
    let took = start.elapsed();
    assert!(took < timeout + Duration::from_secs(1), "{what} took {took:?}");
    assert!(e.is_retryable(), "{what}: {e}");
    let msg = e.to_string();
    assert!(msg.contains(shown_url), "{what}: {msg}");
    assert!(!msg.contains("s3cret"), "{what} leaks the password: {msg}");
}

/// Runs every queue call against `q` and asserts each fails fast.
fn assert_every_call_fails_fast(q: &RedisQueue, shown_url: &str, timeout: Duration) {
    let lease = sera::queue::Lease { id: "a".into(), token: 1 };
    assert_fails_fast("ping", shown_url, timeout, || q.ping());
    assert_fails_fast("submit", shown_url, timeout, || q.submit(&[job("a")]));
    assert_fails_fast("claim", shown_url, timeout, || q.claim("w1"));
    assert_fails_fast("heartbeat", shown_url, timeout, || q.heartbeat(&lease, None));
    assert_fails_fast("complete", shown_url, timeout, || q.complete(&lease, "{}"));
    assert_fails_fast("fail", shown_url, timeout, || q.fail(&lease, &Failure::retryable("x")));
    assert_fails_fast("release", shown_url, timeout, || q.release(&lease));
    assert_fails_fast("reap", shown_url, timeout, || q.reap());
    assert_fails_fast("status", shown_url, timeout, || q.status());
    assert_fails_fast("result", shown_url, timeout, || q.result("a"));
}

#[test]
fn redis_closed_port_fails_every_call_fast() {
    let port = free_port();
    let url = format!("redis://sera:s3cret@127.0.0.1:{port}/");
    let shown = format!("redis://sera:***@127.0.0.1:{port}/");
    let timeout = Duration::from_millis(500);
    let cfg = QueueConfig { timeout, ..config() };
    assert_fails_fast("connect", &shown, timeout, || RedisQueue::connect(&url, cfg.clone()));
    assert_fails_fast("open", &shown, timeout, || sera::queue::open(Some(&url), cfg.clone()).map(|_| ()));
    let q = RedisQueue::new(&url, cfg).unwrap();
    assert_every_call_fails_fast(&q, &shown, timeout);
}

#[test]
fn redis_stopped_server_fails_every_call_within_its_timeout() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(400);
    let cfg = QueueConfig { timeout, ..config() };
    let q = RedisQueue::connect(&server.url(), cfg.clone()).unwrap();
    q.submit(&[job("warm")]).unwrap();
    server.pause();
    // Pooled connections, then fresh ones: the kernel still accepts connections for a stopped
    // server, so only the read timeout saves the caller.
    assert_every_call_fails_fast(&q, &server.url(), timeout);
    let fresh = RedisQueue::new(&server.url(), cfg).unwrap();
    assert_fails_fast("ping (fresh)", &server.url(), timeout, || fresh.ping());
    server.resume();
    let resumed = Instant::now();
    while q.ping().is_err() {
        assert!(resumed.elapsed() < Duration::from_secs(5), "no recovery after SIGCONT");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(q.status().unwrap().jobs.iter().any(|j| j.id == "warm"));
}

#[test]
fn redis_auth_and_noeviction() {
    let server = RedisServer::start_with(&[
        "--requirepass",
        "s3cret",
        "--maxmemory-policy",
        "allkeys-lru",
        // One config line, given as separate words.
        "--user",
        "worker",
        "on",
        ">w0rker",
        "~*",
        "&*",
        "+@all",
    ]);
    let port = server.port();
    let q = RedisQueue::connect(&format!("redis://:s3cret@127.0.0.1:{port}/"), config()).unwrap();
    q.submit(&[job("a")]).unwrap();
    let policy = server_config(&format!("redis://:s3cret@127.0.0.1:{port}/"), "maxmemory-policy");
    assert_eq!(policy, "noeviction", "the queue sets noeviction on connect");

    let as_user = RedisQueue::connect(&format!("redis://worker:w0rker@127.0.0.1:{port}/"), config()).unwrap();
    assert_eq!(as_user.claim("w1").unwrap().unwrap().id, "a");

    let e = RedisQueue::connect(&format!("redis://worker:s3cret@127.0.0.1:{port}/"), config()).unwrap_err();
    let msg = e.to_string();
    assert!(!e.is_retryable(), "a wrong password is fatal: {msg}");
    assert!(msg.contains(&format!("redis://worker:***@127.0.0.1:{port}/")) && !msg.contains("s3cret"), "{msg}");
}

fn server_config(url: &str, key: &str) -> String {
    let client = ::redis::Client::open(url).unwrap();
    let mut conn = client.get_connection().unwrap();
    let reply: Vec<String> = ::redis::cmd("CONFIG").arg("GET").arg(key).query(&mut conn).unwrap();
    reply[1].clone()
}

#[test]
fn redis_keys_share_one_hash_tag_and_finished_jobs_expire() {
    let server = RedisServer::start();
    let cfg = QueueConfig { retention: Duration::from_secs(100), events_maxlen: 10, ..config() };
    let q = RedisQueue::connect(&server.url(), cfg).unwrap();
    let jobs: Vec<NewJob> = (0..150).map(|i| job(&format!("j{i:03}"))).collect();
    q.submit(&jobs).unwrap();
    let c = q.claim("w1").unwrap().unwrap();
    assert_eq!(q.complete(&c.lease(), "{}").unwrap(), Completion::Committed);

    let client = ::redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(keys.iter().all(|k| k.starts_with("sera:{test}:")), "{keys:?}");
    let done_key = format!("sera:{{test}}:job:{}", c.id);
    let ttl: i64 = ::redis::cmd("TTL").arg(&done_key).query(&mut conn).unwrap();
    assert!(ttl > 0 && ttl <= 100, "finished job TTL {ttl}");
    let queued_ttl: i64 = ::redis::cmd("TTL").arg("sera:{test}:job:j149").query(&mut conn).unwrap();
    assert_eq!(queued_ttl, -1, "unfinished jobs never expire");
    // Payloads stay readable with redis-cli.
    let payload: String = ::redis::cmd("HGET").arg(&done_key).arg("payload").query(&mut conn).unwrap();
    assert_eq!(Envelope::parse(&payload).unwrap().id, c.id);
    // 152 events into a stream capped at ~10 (trimmed a whole node at a time).
    let events: usize = ::redis::cmd("XLEN").arg("sera:{test}:events").query(&mut conn).unwrap();
    assert!(events < 152, "events stream not capped: {events}");
    assert!(q.purge().unwrap() > 150);
    let left: Vec<String> = ::redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// `rediss://` with a private CA (generated with the openssl CLI).
#[test]
fn rediss_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(d).output();
        match out {
            Ok(o) => assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => panic!("the TLS test needs the openssl command-line tool: {e}"),
        }
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=sera test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let tls_port = free_port().to_string();
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (p("server.crt"), p("server.key"), p("ca.crt"));
    let server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let pem = std::fs::read(d.join("ca.crt")).unwrap();
    let q = RedisQueue::with_root_ca(&url, config(), &pem).unwrap();
    q.ping().unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    q.submit(&[job("a")]).unwrap();
    let c = q.claim("w1").unwrap().unwrap();
    assert_eq!(q.complete(&c.lease(), "{}").unwrap(), Completion::Committed);
    // Without the CA the server's certificate is not trusted.
    let untrusted = RedisQueue::new(&url, config()).unwrap();
    let e = untrusted.ping().unwrap_err();
    assert!(e.to_string().contains(&url), "{e}");
}

/// No-op jobs through the Redis queue on this (shared, 2-core) machine.
#[test]
fn redis_throughput_noop_jobs() {
    let server = RedisServer::start();
    let n = 2000;
    let rate = sera::queue::bench::noop_throughput(Some(&server.url()), n).unwrap();
    println!("redis queue: {rate:.0} no-op jobs/s ({n} jobs: batched submit, one claim + one complete each)");
    // A floor, not a measurement: this machine does 5,000–11,000 jobs/s through Redis and
    // 80,000+ in-process (`sera bench queue`); only a per-job round-trip regression (e.g. an
    // unbatched submit) falls below 1,000.
    assert!(rate >= 1000.0, "{rate:.0} jobs/s");
    let memory = sera::queue::bench::noop_throughput(None, n).unwrap();
    println!("in-process queue: {memory:.0} no-op jobs/s");
    assert!(memory >= 1000.0, "{memory:.0} jobs/s");
}

/// Artifact chunks: round trip under the claim's token, bounded size, fenced writes (a stale
/// token is refused and cannot touch the new owner's chunks), deletion.
fn artifact_chunks_round_trip_and_are_fenced(h: &Harness) {
    let q = h.q();
    assert_eq!(q.chunk_max(), sera::queue::DEFAULT_CHUNK_MAX);
    q.submit(&[job("c1")]).unwrap();
    let first = q.claim("w1").unwrap().unwrap();
    let (a, b): (Vec<u8>, Vec<u8>) = ((0..=255u8).cycle().take(70_000).collect(), vec![0, 1, 2, 255]);
    assert_eq!(
        q.put_chunk(&first.lease(), "stage2/generator.safetensors", 0, &a).unwrap(),
        sera::queue::ChunkWrite::Stored
    );
    assert_eq!(
        q.put_chunk(&first.lease(), "stage2/generator.safetensors", 1, &b).unwrap(),
        sera::queue::ChunkWrite::Stored
    );
    // Repeating a write is harmless; binary data comes back byte for byte.
    assert_eq!(
        q.put_chunk(&first.lease(), "stage2/generator.safetensors", 1, &b).unwrap(),
        sera::queue::ChunkWrite::Stored
    );
    assert_eq!(q.get_chunk("c1", first.token, "stage2/generator.safetensors", 0).unwrap().unwrap(), a);
    assert_eq!(q.get_chunk("c1", first.token, "stage2/generator.safetensors", 1).unwrap().unwrap(), b);
    assert_eq!(q.get_chunk("c1", first.token, "stage2/generator.safetensors", 2).unwrap(), None);
    assert_eq!(q.get_chunk("c1", first.token + 1, "stage2/generator.safetensors", 0).unwrap(), None);
    // Bounded: a chunk above chunk_max is refused.
    let big = vec![7u8; sera::queue::DEFAULT_CHUNK_MAX + 1];
    assert!(matches!(q.put_chunk(&first.lease(), "x.bin", 0, &big), Err(QueueError::Invalid { .. })));

    // The lease expires and another worker claims the job: the first claim's writes are refused.
    h.advance(LEASE + Duration::from_millis(100));
    let (second, _) = reap_until_claimed(h, "w2", Duration::from_secs(5));
    assert_eq!(second.token, first.token + 1);
    assert_eq!(
        q.put_chunk(&second.lease(), "stage2/generator.safetensors", 0, &b).unwrap(),
        sera::queue::ChunkWrite::Stored
    );
    let stale = q.put_chunk(&first.lease(), "stage2/generator.safetensors", 0, b"zombie").unwrap();
    assert_eq!(stale, sera::queue::ChunkWrite::Rejected, "a stale token's chunk write is rejected");
    assert_eq!(q.get_chunk("c1", second.token, "stage2/generator.safetensors", 0).unwrap().unwrap(), b);
    assert_eq!(q.get_chunk("c1", first.token, "stage2/generator.safetensors", 0).unwrap().unwrap(), a);
    // A chunk write counts as a sign of life, like a heartbeat.
    assert!(q.job("c1").unwrap().unwrap().heartbeat_age.unwrap() < Duration::from_secs(1));
    assert_eq!(q.complete(&second.lease(), "{}").unwrap(), Completion::Committed);
    assert_eq!(q.put_chunk(&second.lease(), "late.bin", 0, b"x").unwrap(), sera::queue::ChunkWrite::Rejected);

    assert_eq!(q.delete_artifacts("c1").unwrap(), 3, "two chunks of token 1, one of token 2");
    assert_eq!(q.get_chunk("c1", second.token, "stage2/generator.safetensors", 0).unwrap(), None);
    assert_eq!(q.delete_artifacts("c1").unwrap(), 0);
    assert!(q.get_chunk("no spaces allowed", 1, "a", 0).is_err());
    assert!(q.put_chunk(&second.lease(), "", 0, b"x").is_err());
}

#[test]
fn memory_artifact_chunks_round_trip_and_are_fenced() {
    artifact_chunks_round_trip_and_are_fenced(&Harness::memory());
}

#[test]
fn redis_artifact_chunks_round_trip_and_are_fenced() {
    let h = Harness::redis();
    artifact_chunks_round_trip_and_are_fenced(&h);
    // On Redis: under the queue's hash tag, with the finished-job retention as TTL.
    let server = h._server.as_ref().unwrap();
    let cfg = QueueConfig { retention: Duration::from_secs(100), chunk_max: 4096, ..config() };
    let q = RedisQueue::connect(&server.url(), cfg).unwrap();
    q.submit(&[job("c2")]).unwrap();
    let c = q.claim("w").unwrap().unwrap();
    assert_eq!(q.put_chunk(&c.lease(), "a:b.bin", 0, &[1u8; 4096]).unwrap(), sera::queue::ChunkWrite::Stored);
    assert!(q.put_chunk(&c.lease(), "a:b.bin", 1, &[1u8; 4097]).is_err(), "configurable bound");
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let key = q.chunk_key("c2", c.token, "a:b.bin", 0);
    assert!(key.starts_with("sera:{test}:chunk:"), "{key}");
    let ttl: i64 = ::redis::cmd("TTL").arg(&key).query(&mut conn).unwrap();
    assert!(ttl > 0 && ttl <= 100, "chunk TTL {ttl}");
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*chunk*").query(&mut conn).unwrap();
    assert!(keys.iter().all(|k| k.starts_with("sera:{test}:")), "{keys:?}");
    assert_eq!(q.delete_artifacts("c2").unwrap(), 1);
    let left: Vec<String> = ::redis::cmd("KEYS").arg("*chunk*").query(&mut conn).unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(RedisQueue::new(&server.url(), QueueConfig { chunk_max: 10, ..config() }).is_err());
}
