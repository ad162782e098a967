//! The cluster path end to end: real `redis-server` children, real `sera-worker work` daemons,
//! real `sera run` orchestrators, real (tiny) jobs on the demo corpus, at test-scale timings
//! (2 s lease). Long and crashing jobs use the worker's test-only hooks (`SERA_TEST_*`, read from
//! the worker's environment, never from a job spec).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sera::data::demo::{DemoOptions, write_demo_corpus};
use sera::queue::{Envelope, JobInfo, JobQueue, JobState, QueueConfig, RedisQueue};
use sera::runner::paths::{check_job_id, check_relative};
use sera::runner::payload::{CompletionPayload, Recorded, Stored, record};
use sera::runner::run_dir::RunDir;
use sera::spec::{Job, RootOverrides, plan};

use crate::cli::bin;
use crate::common::write;
use crate::queue_support::{RedisServer, free_port};

const LEASE: Duration = Duration::from_secs(2);
/// The reaper runs every lease / 4.
const REAP_TICK: Duration = Duration::from_millis(500);

/// The small demo corpus (4 speakers, 40 utterances), generated once per test binary.
fn corpus() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("corpus");
        write_demo_corpus(&root, &DemoOptions { sessions: 2, sentences: 2 }).unwrap();
        (dir, root)
    })
    .1
}

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

/// Tiny audio-only stage settings: a real job takes a few seconds on CPU.
const TINY: &str = "[stage1]\nepochs = 1\nlambda_cl = 0.0\nlambda_mi = 0.0\n[stage2]\nepochs = 2\n\
    text_condition = false\nlambda_it = 0.0\n[stage3]\nepochs = 2\n";

/// An experiment on the demo corpus: `top` holds top-level keys (seeds, folds), `variants` any
/// `[[variants]]` tables.
fn experiment(dir: &Path, top: &str, variants: &str) -> PathBuf {
    let c = configs();
    write(
        dir,
        "exp.toml",
        &format!(
            "table = \"II\"\ndatasets = [\"{}\"]\nbackbone = \"{}\"\nstages = \"{}\"\n{top}\n{TINY}{variants}",
            c.join("datasets/demo.toml").display(),
            c.join("backbones/tiny-ast.toml").display(),
            c.join("stages/tiny.toml").display()
        ),
    )
}

/// `n` variants that share stage 1 and skip stages 2-3, so that after the first one (which trains
/// stage 1 into the shared cache) each job takes about a second.
fn quick_variants(n: usize) -> String {
    (0..n).map(|k| format!("[[variants]]\nname = \"v{k:02}\"\nstage3 = {{ augment = \"none\" }}\n")).collect()
}

fn jobs_of(exp: &Path, root: &Path) -> Vec<Job> {
    plan(exp, &RootOverrides::from([("demo".to_string(), root.to_path_buf())])).unwrap().jobs
}

fn queue(url: &str, ns: &str) -> RedisQueue {
    let config =
        QueueConfig { namespace: ns.into(), lease: LEASE, timeout: Duration::from_secs(2), ..QueueConfig::default() };
    RedisQueue::connect(url, config).unwrap()
}

fn submit(q: &dyn JobQueue, jobs: &[Job]) {
    let new: Vec<_> =
        jobs.iter().map(|j| Envelope::new(j.id.clone(), serde_json::to_value(j).unwrap()).to_new_job()).collect();
    assert_eq!(q.submit(&new).unwrap(), jobs.len());
}

fn info(q: &dyn JobQueue, id: &str) -> JobInfo {
    q.job(id).unwrap().unwrap_or_else(|| panic!("job {id} unknown"))
}

/// Polls `f` every 50 ms until it returns Some, or panics after `limit` with `what`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process (worker or orchestrator) with its output in a file; SIGKILLed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(exe: &str, args: &[&str], envs: &[(&str, String)], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin(exe));
        cmd.args(args).env("RUST_LOG", "info").stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Proc { child: cmd.spawn().unwrap(), log, status: None }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.status = Some(s);
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "{} still running after {limit:?}:\n{}",
                self.log.display(),
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill9();
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A `sera-worker work` daemon at test-scale timings. `extra` adds flags; `envs` the test hooks.
fn worker(dir: &Path, name: &str, url: &str, ns: &str, extra: &[&str], envs: &[(&str, String)]) -> Proc {
    let scratch = dir.join(format!("scratch-{name}"));
    let cache = dir.join("worker-cache");
    let mut args = vec![
        "work",
        "--redis",
        url,
        "--namespace",
        ns,
        "--lease",
        "2",
        "--poll",
        "0.2",
        "--backoff",
        "0.2",
        "--timeout",
        "2",
        "--scratch",
        s(&scratch),
        "--cache",
        s(&cache),
    ];
    args.extend_from_slice(extra);
    Proc::spawn("sera-worker", &args, envs, dir.join(format!("worker-{name}.log")))
}

/// A `sera run --redis` orchestrator.
fn orchestrator(dir: &Path, exp: &Path, run: &Path, url: &str, ns: &str, extra: &[&str], log: &str) -> Proc {
    let root_arg = format!("demo={}", corpus().display());
    let mut args = vec![
        "run",
        s(exp),
        "--root",
        &root_arg,
        "--out",
        s(run),
        "--redis",
        url,
        "--namespace",
        ns,
        "--lease",
        "2",
        "--poll",
        "0.2",
        "--timeout",
        "2",
    ];
    args.extend_from_slice(extra);
    Proc::spawn("sera", &args, &[], dir.join(log))
}

fn jsonl_ids(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("results.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["job_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn cluster_sigkill_worker_mid_job_is_reclaimed_within_lease_and_committed_once() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "folds = [\"Ses01F\"]\nseeds = [1]", "");
    let run = dir.path().join("run");
    let sleep = [("SERA_TEST_JOB_SLEEP_MS", "4000".to_string())];
    let mut a = worker(dir.path(), "a", &server.url(), "kill", &["--run-dir", s(&run)], &sleep);
    let mut orch = orchestrator(dir.path(), &exp, &run, &server.url(), "kill", &[], "orch.log");
    let q = queue(&server.url(), "kill");
    let id = jobs_of(&exp, corpus())[0].id.clone();
    // Mid-job: the child is in its (slow) first phase and heartbeating.
    wait_for(Duration::from_secs(30), "the job running on worker a", || {
        q.job(&id).unwrap().filter(|j| j.state == JobState::Running && j.progress.is_some()).map(|_| ())
    });
    std::thread::sleep(Duration::from_millis(500));
    a.kill9();
    let killed = Instant::now();
    let _b = worker(dir.path(), "b", &server.url(), "kill", &["--run-dir", s(&run)], &sleep);
    // Reclaimed: the lease expired and the job was requeued (and claimed by b, with token 2).
    wait_for(Duration::from_secs(10), "the job reclaimed", || {
        let j = info(&q, &id);
        (j.token >= 2 || j.state == JobState::Queued).then_some(())
    });
    let reclaimed = killed.elapsed();
    eprintln!(
        "SIGKILLed worker's job reclaimed after {:.2} s (lease 2 s + reaper tick 0.5 s)",
        reclaimed.as_secs_f64()
    );
    assert!(reclaimed <= LEASE + REAP_TICK + Duration::from_millis(300), "reclaimed after {reclaimed:?}");
    let status = orch.wait(Duration::from_secs(90));
    assert!(status.success(), "{}", orch.output());
    let j = info(&q, &id);
    assert_eq!((j.state, j.token, j.attempt), (JobState::Done, 2, 2));
    assert_eq!(jsonl_ids(&run), vec![id.clone()], "exactly one result committed and recorded");
    assert!(run.join(&id).join("result.json").is_file());
}

#[test]
fn cluster_job_ten_times_its_lease_is_never_reclaimed() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "folds = [\"Ses01M\"]\nseeds = [1]", &quick_variants(1));
    let jobs = jobs_of(&exp, corpus());
    let q = queue(&server.url(), "long");
    submit(&q, &jobs);
    let started = Instant::now();
    let _w = worker(dir.path(), "w", &server.url(), "long", &[], &[("SERA_TEST_JOB_SLEEP_MS", "20000".into())]);
    let mut max_age = Duration::ZERO;
    let done = wait_for(Duration::from_secs(90), "the long job done", || {
        let j = info(&q, &jobs[0].id);
        assert!(j.token <= 1 && j.attempt <= 1, "the long job was reclaimed: {j:?}");
        if j.state == JobState::Running {
            max_age = max_age.max(j.heartbeat_age.unwrap_or_default());
        }
        (j.state == JobState::Done).then_some(j)
    });
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "a job of {secs:.1} s (10× the 2 s lease) ran once; oldest heartbeat seen {:.2} s",
        max_age.as_secs_f64()
    );
    assert!(secs >= 20.0);
    assert_eq!((done.token, done.attempt), (1, 1));
    assert!(max_age < LEASE, "heartbeat age {max_age:?}");
}

#[test]
fn cluster_poison_job_runs_three_times_then_dead_while_twenty_good_jobs_finish() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "folds = [\"Ses02F\"]\nseeds = [1]", &quick_variants(21));
    let jobs = jobs_of(&exp, corpus());
    assert_eq!(jobs.len(), 21);
    let poison = jobs[7].id.clone();
    let run = dir.path().join("run");
    let hook = [("SERA_TEST_ABORT_JOB", poison.clone())];
    // No --run-dir: every artifact travels inline through the queue.
    let _a = worker(dir.path(), "a", &server.url(), "poison", &[], &hook);
    let _b = worker(dir.path(), "b", &server.url(), "poison", &[], &hook);
    let started = Instant::now();
    let mut orch = orchestrator(dir.path(), &exp, &run, &server.url(), "poison", &[], "orch.log");
    let status = orch.wait(Duration::from_secs(150));
    let secs = started.elapsed().as_secs_f64();
    let out = orch.output();
    assert_eq!(status.code(), Some(1), "a sweep with a dead job exits non-zero:\n{out}");
    let q = queue(&server.url(), "poison");
    let p = info(&q, &poison);
    eprintln!("poison job: {} executions, then {}; 20 good jobs done in {secs:.1} s", p.attempt, p.state);
    assert_eq!((p.state, p.attempt, p.signal), (JobState::Dead, 3, Some(libc::SIGABRT)));
    assert!(out.contains(&format!("{poison}: run-job killed by signal 6")), "{out}");
    let ids: BTreeSet<String> = jsonl_ids(&run).into_iter().collect();
    assert_eq!(ids.len(), 20);
    assert_eq!(jsonl_ids(&run).len(), 20, "no duplicates");
    for j in &jobs {
        assert_eq!(ids.contains(&j.id), j.id != poison);
        if j.id != poison {
            assert_eq!(info(&q, &j.id).state, JobState::Done);
        }
    }
    // `sera status` lists the dead job with its reason.
    let st =
        Command::new(bin("sera")).args(["status", "--redis", &server.url(), "--namespace", "poison"]).output().unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(text.contains("0 queued") && text.contains("20 done, 1 dead"), "{text}");
    assert!(text.contains(&poison) && text.contains("signal 6") && text.contains("3 execution(s)"), "{text}");
}

#[test]
fn cluster_deterministic_error_and_hostile_specs_are_dead_after_one_execution() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // A private copy of the corpus, deleted after planning: the job's dataset is missing.
    let root = dir.path().join("corpus");
    copy_dir(corpus(), &root);
    let exp = experiment(dir.path(), "folds = [\"Ses01F\"]\nseeds = [1]", &quick_variants(1));
    let jobs = jobs_of(&exp, &root);
    std::fs::remove_dir_all(&root).unwrap();
    let q = queue(&server.url(), "det");
    submit(&q, &jobs);
    // A job id that would be a path outside the scratch directory, and a spec altered after
    // planning to carry a shell command: neither is run, nothing is written for them.
    let pwned = dir.path().join("PWNED");
    let mut altered = serde_json::to_value(&jobs[0]).unwrap();
    altered["spec"]["dataset"]["name"] = format!("x$(touch {})", pwned.display()).into();
    altered["id"] = "0123456789abcdef".into();
    let hostile =
        [("../../../../tmp/sera-escape", serde_json::to_value(&jobs[0]).unwrap()), ("0123456789abcdef", altered)];
    for (id, job) in &hostile {
        q.submit(&[Envelope::new(*id, job.clone()).to_new_job()]).unwrap();
    }
    let mut w = worker(dir.path(), "w", &server.url(), "det", &[], &[]);
    for id in [jobs[0].id.as_str(), hostile[0].0, hostile[1].0] {
        let j = wait_for(Duration::from_secs(60), "the job dead", || {
            Some(info(&q, id)).filter(|j| j.state == JobState::Dead)
        });
        eprintln!("{id}: dead after {} execution(s): {}", j.attempt, j.last_error.as_deref().unwrap_or(""));
        assert_eq!(j.attempt, 1, "{j:?}");
    }
    let missing = info(&q, &jobs[0].id);
    assert_eq!(missing.exit_code, Some(2));
    assert!(missing.last_error.as_deref().unwrap_or("").contains("corpus"), "{missing:?}");
    assert!(info(&q, hostile[0].0).last_error.unwrap().contains("16 lowercase hex digits"));
    assert!(info(&q, hostile[1].0).last_error.unwrap().contains("altered"));
    assert!(!pwned.exists() && !Path::new("/tmp/sera-escape").exists());
    // SIGTERM: the daemon exits promptly when idle.
    w.signal(libc::SIGTERM);
    assert!(w.wait(Duration::from_secs(5)).success(), "{}", w.output());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn cluster_sigterm_releases_the_job_and_stalled_jobs_are_killed() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "folds = [\"Ses02M\"]\nseeds = [1]", &quick_variants(2));
    let jobs = jobs_of(&exp, corpus());
    let q = queue(&server.url(), "term");
    submit(&q, &jobs[..1]);
    let mut a = worker(dir.path(), "a", &server.url(), "term", &[], &[("SERA_TEST_JOB_SLEEP_MS", "30000".into())]);
    wait_for(Duration::from_secs(30), "the job running", || {
        Some(()).filter(|_| info(&q, &jobs[0].id).state == JobState::Running)
    });
    let t = Instant::now();
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(5)).success(), "{}", a.output());
    let j = info(&q, &jobs[0].id);
    eprintln!(
        "SIGTERM: worker exited after {:.2} s, job {} with {} counted executions",
        t.elapsed().as_secs_f64(),
        j.state,
        j.attempt
    );
    assert_eq!((j.state, j.attempt), (JobState::Queued, 0), "released, attempt not charged");

    // A job that stops reporting progress is killed after the stall timeout, not left to hang.
    let q2 = queue(&server.url(), "stall");
    submit(&q2, &jobs[1..2]);
    let _b = worker(
        dir.path(),
        "b",
        &server.url(),
        "stall",
        &["--stall-timeout", "1", "--max-attempts", "1"],
        &[("SERA_TEST_JOB_HANG_MS", "60000".into())],
    );
    let j = wait_for(Duration::from_secs(30), "the stalled job dead", || {
        Some(info(&q2, &jobs[1].id)).filter(|j| j.state == JobState::Dead)
    });
    assert!(j.last_error.as_deref().unwrap_or("").contains("stalled"), "{j:?}");
    assert_eq!(j.signal, Some(libc::SIGKILL));
}

#[test]
fn cluster_redis_kill9_and_restart_workers_recover_within_5s_nothing_lost_or_duplicated() {
    let mut server = RedisServer::start_persistent();
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "folds = [\"Ses01F\"]\nseeds = [2]", &quick_variants(4));
    let jobs = jobs_of(&exp, corpus());
    let run = dir.path().join("run");
    let sleep = [("SERA_TEST_JOB_SLEEP_MS", "3000".to_string())];
    let _a = worker(dir.path(), "a", &server.url(), "aof", &["--run-dir", s(&run)], &sleep);
    let _b = worker(dir.path(), "b", &server.url(), "aof", &["--run-dir", s(&run)], &sleep);
    let mut orch = orchestrator(dir.path(), &exp, &run, &server.url(), "aof", &[], "orch.log");
    let q = queue(&server.url(), "aof");
    wait_for(Duration::from_secs(30), "two jobs running", || {
        let st = q.status().ok()?;
        (st.running == 2).then_some(())
    });
    server.kill9();
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    let restarted = Instant::now();
    // Recovered: a worker's heartbeat or claim reaches the restarted server.
    wait_for(Duration::from_secs(10), "a worker talking to the restarted server", || {
        let st = q.status().ok()?;
        st.jobs
            .iter()
            .any(|j| j.state == JobState::Running && j.heartbeat_age.is_some_and(|a| a < restarted.elapsed()))
            .then_some(())
            .or_else(|| (st.done > 0).then_some(()))
    });
    let recovered = restarted.elapsed();
    eprintln!("workers recovered {:.2} s after redis-server restarted", recovered.as_secs_f64());
    assert!(recovered < Duration::from_secs(5), "{recovered:?}");
    let status = orch.wait(Duration::from_secs(120));
    assert!(status.success(), "{}", orch.output());
    let ids = jsonl_ids(&run);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (4, 4), "nothing lost, nothing duplicated: {ids:?}");
    for j in &jobs {
        assert_eq!(info(&q, &j.id).state, JobState::Done);
    }
}

#[test]
fn cluster_redis_flushall_mid_sweep_then_resume_recomputes_no_finished_job() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "folds = [\"Ses01M\"]\nseeds = [3]", &quick_variants(6));
    let jobs = jobs_of(&exp, corpus());
    let run = dir.path().join("run");
    let _a = worker(dir.path(), "a", &server.url(), "flush", &["--run-dir", s(&run)], &[]);
    let _b = worker(dir.path(), "b", &server.url(), "flush", &["--run-dir", s(&run)], &[]);
    let mut first = orchestrator(dir.path(), &exp, &run, &server.url(), "flush", &[], "orch1.log");
    let rd = RunDir::new(&run);
    wait_for(Duration::from_secs(90), "two results recorded", || (rd.count_results() >= 2).then_some(()));
    first.kill9();
    server.raw(&["FLUSHALL"]);
    let finished: Vec<String> = jobs.iter().filter(|j| rd.has_result(&j.id)).map(|j| j.id.clone()).collect();
    let n = finished.len();
    let mut second = orchestrator(dir.path(), &exp, &run, &server.url(), "flush", &["--resume"], "orch2.log");
    let status = second.wait(Duration::from_secs(90));
    let out = second.output();
    assert!(status.success(), "{out}");
    assert!(out.contains(&format!("{n} with results already")) && out.contains(&format!("{} to run", 6 - n)), "{out}");
    // The queue only ever saw the unfinished jobs again: no finished job was recomputed.
    let q = queue(&server.url(), "flush");
    let known: BTreeSet<String> = q.status().unwrap().jobs.into_iter().map(|j| j.id).collect();
    for id in &finished {
        assert!(!known.contains(id), "finished job {id} was queued again");
    }
    assert_eq!(known.len(), 6 - n);
    let ids = jsonl_ids(&run);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 6);
    assert_eq!(ids.len(), 6, "{ids:?}");
    eprintln!("FLUSHALL after {n} of 6 results: --resume ran the other {} only", 6 - n);
}

fn results_table(run: &Path) -> String {
    let out = Command::new(bin("sera")).args(["results", s(run)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cluster_orchestrator_killed_and_restarted_gives_byte_identical_tables() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "folds = [\"Ses01F\", \"Ses02M\"]\nseeds = [5]", "");
    let root_arg = format!("demo={}", corpus().display());

    // Reference: uninterrupted, embedded (in-process queue, 2 local workers).
    let reference = dir.path().join("reference");
    let out = Command::new(bin("sera"))
        .args(["run", s(&exp), "--root", &root_arg, "--out", s(&reference), "--workers", "2", "--poll", "0.2"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = Command::new(bin("sera")).args(["status", "--run", s(&reference)]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("queue memory://: 0 queued, 0 delayed (retry backoff), 0 running, 2 done, 0 dead"), "{text}");

    // On the cluster, with the orchestrator SIGKILLed after the first result and restarted; large
    // artifacts (here: all of them, --inline-max 0) go through the shared run directory.
    let server = RedisServer::start();
    let run = dir.path().join("run");
    let args = ["--run-dir", s(&run), "--inline-max", "0"];
    let _a = worker(dir.path(), "a", &server.url(), "orch", &args, &[]);
    let mut first = orchestrator(dir.path(), &exp, &run, &server.url(), "orch", &[], "orch1.log");
    let rd = RunDir::new(&run);
    wait_for(Duration::from_secs(90), "one result recorded", || (rd.count_results() >= 1).then_some(()));
    first.kill9();
    let mut second = orchestrator(dir.path(), &exp, &run, &server.url(), "orch", &["--resume"], "orch2.log");
    assert!(second.wait(Duration::from_secs(90)).success(), "{}", second.output());
    let (a, b) = (results_table(&reference), results_table(&run));
    // Two of the corpus's four folds were planned: the cell says so instead of passing for complete.
    assert!(a.contains("| sera: default |") && a.contains("(incomplete)") && a.contains("2/4"), "{a}");
    assert_eq!(a, b, "tables differ");
    assert_eq!(jsonl_ids(&run).len(), 2);
    assert!(!run.join(".incoming").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false), "staging left behind");
}

#[test]
fn cluster_redis_unreachable_every_command_fails_within_its_timeout_naming_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "folds = [\"Ses01F\"]\nseeds = [1]", "");
    let root_arg = format!("demo={}", corpus().display());
    let closed = format!("redis://127.0.0.1:{}/", free_port());
    let stopped = RedisServer::start();
    stopped.pause();
    for url in [closed.as_str(), stopped.url().as_str()] {
        let run = dir.path().join("run");
        let cases: [(&str, Vec<&str>); 3] = [
            ("sera", vec!["run", s(&exp), "--root", &root_arg, "--out", s(&run), "--redis", url, "--timeout", "1"]),
            ("sera", vec!["status", "--redis", url, "--timeout", "1"]),
            ("sera-worker", vec!["--redis", url, "--timeout", "1"]),
        ];
        for (exe, args) in cases {
            let t = Instant::now();
            let out = Command::new(bin(exe)).args(&args).output().unwrap();
            let secs = t.elapsed().as_secs_f64();
            let err = String::from_utf8_lossy(&out.stderr);
            eprintln!("{exe} {} on {url}: failed after {secs:.2} s", args[0]);
            assert!(!out.status.success(), "{exe} {args:?}");
            assert!(err.contains(url), "{exe} {args:?}: {err}");
            assert!(err.contains("timeout") || url == closed, "{exe} {args:?}: {err}");
            // The 1 s timeout, plus starting a binary that loads libtorch and, for `sera run`,
            // planning the experiment first (on 2 busy cores).
            assert!(secs < 6.0, "{exe} {args:?} took {secs:.1} s");
        }
        assert!(!run.join("results.jsonl").exists());
    }
    stopped.resume();
}

#[test]
fn cluster_paths_and_payloads_are_checked_before_anything_is_written() {
    for good in ["0123456789abcdef", "ffffffffffffffff"] {
        assert!(check_job_id(good).is_ok());
    }
    for bad in ["", "../../etc/passwd", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "/tmp/abcdefghij"] {
        assert!(check_job_id(bad).is_err(), "{bad}");
    }
    assert!(check_relative("j", "stage2/generator.safetensors").is_ok());
    for bad in ["../x", "/etc/passwd", "stage2/../../x", ".incoming/x", "a/./b", "", "a\\..\\b", "a//b", "stage3/"] {
        assert!(check_relative("j", bad).is_err(), "{bad}");
    }

    // A real result, shipped inline: recorded once; a tampered or path-escaping copy is refused
    // and leaves nothing behind.
    let _rng = crate::common::torch_rng();
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "folds = [\"Ses02F\"]\nseeds = [9]", "");
    let job = &jobs_of(&exp, corpus())[0];
    let out = dir.path().join("job");
    let opts = sera::train::pipeline::RunOptions {
        out: out.clone(),
        cache: dir.path().join("cache"),
        device: tch::Device::Cpu,
    };
    sera::train::pipeline::run_job(job, &opts).unwrap();
    let store = sera::runner::payload::ArtifactStore { shared_run_dir: None, inline_max: 1 << 30 };
    let payload = CompletionPayload::build(&job.id, "test", 1, &out, &store).unwrap();
    assert!(!payload.artifacts.is_empty());
    assert!(payload.artifacts.iter().all(|a| matches!(a.stored, Stored::Inline { .. })));

    let run = RunDir::new(dir.path().join("run"));
    let mut tampered = payload.clone();
    if let Stored::Inline { hex } = &mut tampered.artifacts[0].stored {
        let flipped = if hex.starts_with('0') { "1" } else { "0" };
        hex.replace_range(0..1, flipped);
    }
    let err = record(&run, &job.id, &tampered.to_json()).unwrap_err().to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    let mut escaping = payload.clone();
    escaping.artifacts[0].path = "../../escape.bin".into();
    assert!(record(&run, &job.id, &escaping.to_json()).is_err());
    let mut other = payload.clone();
    other.result_json = other.result_json.replace(&job.id, "0000000000000000");
    assert!(record(&run, &job.id, &other.to_json()).unwrap_err().to_string().contains("checksum"));
    assert!(!run.root().exists() || !run.has_result(&job.id), "nothing recorded from a bad payload");
    assert!(!dir.path().join("escape.bin").exists());

    assert!(matches!(record(&run, &job.id, &payload.to_json()).unwrap(), Recorded::New(_)));
    assert_eq!(record(&run, &job.id, &payload.to_json()).unwrap(), Recorded::Already);
    assert_eq!(jsonl_ids(run.root()), vec![job.id.clone()]);
    for a in &payload.artifacts {
        let (sha, bytes) = sera::fsutil::sha256_file(&run.root().join(&job.id).join(&a.path)).unwrap();
        assert_eq!((sha, bytes), (a.sha256.clone(), a.bytes));
    }
    // A payload cannot name another job's directory either.
    assert!(record(&run, "0000000000000000", &payload.to_json()).is_err());
}

/// The completion payload a done job left in the queue, and its chunked artifacts (path, chunks).
fn chunked_artifacts(q: &RedisQueue, id: &str) -> (CompletionPayload, Vec<(String, usize)>) {
    let payload: CompletionPayload = serde_json::from_str(&q.result(id).unwrap().unwrap()).unwrap();
    let chunked = payload
        .artifacts
        .iter()
        .filter_map(|a| match &a.stored {
            Stored::Chunked { chunks, .. } => Some((a.path.clone(), chunks.len())),
            _ => None,
        })
        .collect();
    (payload, chunked)
}

/// Every file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn cluster_without_shared_store_large_artifacts_travel_through_redis_in_verified_chunks() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "folds = [\"Ses02M\"]\nseeds = [6]", "");
    let id = jobs_of(&exp, corpus())[0].id.clone();
    let run = dir.path().join("run");
    // No --run-dir, and every artifact above 0 bytes is "large": all of them go through Redis,
    // in chunks of 1 KiB.
    let _w = worker(dir.path(), "w", &server.url(), "chunks", &["--inline-max", "0", "--chunk-size", "1024"], &[]);
    let mut orch = orchestrator(dir.path(), &exp, &run, &server.url(), "chunks", &[], "orch.log");
    assert!(orch.wait(Duration::from_secs(120)).success(), "{}", orch.output());
    let q = queue(&server.url(), "chunks");
    let (payload, chunked) = chunked_artifacts(&q, &id);
    let nonempty = payload.artifacts.iter().filter(|a| a.bytes > 0).count();
    assert_eq!(chunked.len(), nonempty, "every non-empty artifact was chunked: {chunked:?}");
    assert!(chunked.iter().any(|(_, n)| *n >= 2), "{chunked:?}");
    // The recorded files are the worker's, byte for byte (result.json lists the worker's SHA-256).
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(&id).join("result.json")).unwrap()).unwrap();
    let listed = result["artifacts"].as_array().unwrap();
    assert_eq!(listed.len(), payload.artifacts.len());
    let mut bytes = 0;
    for a in listed {
        let path = a["path"].as_str().unwrap();
        let (sha, n) = sera::fsutil::sha256_file(&run.join(&id).join(path)).unwrap();
        assert_eq!((sha.as_str(), n), (a["sha256"].as_str().unwrap(), a["bytes"].as_u64().unwrap()), "{path}");
        bytes += n;
    }
    // Recorded, then deleted from Redis; nothing left in staging, no temp files.
    for (path, _) in &chunked {
        assert_eq!(q.get_chunk(&id, payload.token, path, 0).unwrap(), None, "{path} still in Redis");
    }
    assert!(files_under(&run.join(".incoming")).is_empty(), "staging left behind");
    assert!(files_under(&run).iter().all(|f| !f.to_string_lossy().contains(".tmp-")));
    assert_eq!(jsonl_ids(&run), vec![id]);
    let total: usize = chunked.iter().map(|(_, n)| n).sum();
    eprintln!(
        "{} artifacts ({bytes} bytes) went through Redis in {total} chunks of ≤ 1024 bytes and were recorded with matching SHA-256",
        chunked.len()
    );
}

#[test]
fn cluster_corrupted_chunk_makes_the_orchestrator_refuse_the_result_and_write_nothing() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), "folds = [\"Ses01M\"]\nseeds = [7]", "");
    let jobs = jobs_of(&exp, corpus());
    let id = jobs[0].id.clone();
    let q = queue(&server.url(), "corrupt");
    submit(&q, &jobs);
    let _w = worker(dir.path(), "w", &server.url(), "corrupt", &["--inline-max", "0", "--chunk-size", "1024"], &[]);
    wait_for(Duration::from_secs(90), "the job done", || (info(&q, &id).state == JobState::Done).then_some(()));
    let (payload, chunked) = chunked_artifacts(&q, &id);
    let (path, n) = chunked.iter().max_by_key(|(_, n)| *n).unwrap().clone();
    assert!(n >= 2, "{chunked:?}");
    // Overwrite the last chunk of the largest artifact behind the queue's back.
    let key = q.chunk_key(&id, payload.token, &path, u32::try_from(n - 1).unwrap());
    assert_eq!(server.raw(&["SET", &key, "corrupted bytes"]), "+OK\r\n");
    let run = dir.path().join("run");
    let mut orch = orchestrator(dir.path(), &exp, &run, &server.url(), "corrupt", &[], "orch.log");
    let status = orch.wait(Duration::from_secs(60));
    let out = orch.output();
    assert_eq!(status.code(), Some(1), "a refused result fails the sweep:\n{out}");
    assert!(out.contains("result REJECTED") && out.contains(&format!("chunk {} checksum mismatch", n - 1)), "{out}");
    assert!(!run.join(&id).join(&path).exists(), "a file at the final path");
    assert!(files_under(&run.join(&id)).is_empty(), "{:?}", files_under(&run.join(&id)));
    assert!(files_under(&run.join(".incoming")).is_empty(), "{:?}", files_under(&run.join(".incoming")));
    assert!(!RunDir::new(&run).has_result(&id) && jsonl_ids(&run).is_empty());
    eprintln!("chunk {} of {path} ({n} chunks) overwritten in Redis: result refused, nothing written", n - 1);
}
