//! `sera run` and `sera status`: submit a sweep to the queue and follow it until it is drained,
//! recording every verified result in the run directory (the system of record).
//!
//! Without `--redis` the queue is in-process and this process also runs the workers (one
//! claimer thread per device, or `--workers N` on the CPU), each job in a `sera-worker run-job`
//! child. With `--redis` the workers are `sera-worker work` daemons anywhere on the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sera::queue::{self, Envelope, JobQueue, JobState, QueueConfig, RedisQueue};
use sera::runner::payload::{ArtifactStore, DEFAULT_INLINE_MAX, Recorded, record_from};
use sera::runner::progress::Progress;
use sera::runner::run_dir::RunDir;
use sera::runner::status::StatusView;
use sera::runner::worker::{WorkerConfig, claim_loop, hostname, sleep_unless};
use sera::spec::{self, Job};

use crate::commands::{results, root_overrides};

/// Options of `sera run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Experiment file (configs/experiments/*.toml).
    pub experiment: PathBuf,
    /// Run directory (default: runs/<experiment name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Corpus root for a dataset: NAME=DIR (repeatable).
    #[arg(long = "root", value_name = "NAME=DIR")]
    pub roots: Vec<String>,
    /// Submit to this Redis queue and follow the cluster's workers (`sera-worker work`) instead
    /// of running the jobs here.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Queue namespace; the workers must use the same one.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Local workers (embedded mode): one per --device (repeatable: cpu, cuda, cuda:N).
    #[arg(long = "device", value_name = "DEVICE")]
    pub devices: Vec<String>,
    /// Local CPU workers when no --device is given (embedded mode).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Continue a sweep: jobs with a result.json in the run directory are never run again (that
    /// holds without --resume too, also after Redis lost its data), and jobs the queue holds as
    /// dead are queued again with a fresh attempt count (after you fixed their cause).
    #[arg(long)]
    pub resume: bool,
    /// Lease in seconds (embedded workers; the reaper uses it for Redis too).
    #[arg(long, default_value_t = 60.0)]
    pub lease: f64,
    /// Kill a local job whose progress has not changed for this many seconds.
    #[arg(long, default_value_t = 7200.0)]
    pub stall_timeout: f64,
    /// First retry delay in seconds after a retryable failure (embedded workers).
    #[arg(long, default_value_t = 10.0)]
    pub backoff: f64,
    /// Executions after which a failing job is dead.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Upper bound in seconds on each call to Redis.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Seconds between looks at the queue.
    #[arg(long, default_value_t = 1.0)]
    pub poll: f64,
}

/// Options of `sera status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The Redis queue to ask.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Queue namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// A run directory: its status.json (written by `sera run`, also in embedded mode) when no
    /// --redis is given; with --redis, its finished jobs give the ETAs.
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// Upper bound in seconds on each call to Redis.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `sera status`.
pub fn status(a: StatusArgs) -> Result<ExitCode> {
    let view = match &a.redis {
        Some(url) => {
            let config = QueueConfig {
                namespace: a.namespace.clone(),
                timeout: sera::runner::seconds("timeout", a.timeout)?,
                ..QueueConfig::default()
            };
            let queue = RedisQueue::connect(url, config)?;
            let typical = a.run.as_deref().and_then(typical_job_s);
            StatusView::new(queue.location(), &queue.status()?, typical)
        }
        None => {
            let Some(run) = &a.run else {
                bail!("give --redis URL (a cluster queue) or --run DIR (a run directory of `sera run`)");
            };
            RunDir::new(run)
                .read_status()
                .with_context(|| format!("no status in {}: is it the run directory of a `sera run`?", run.display()))?
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", view.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// Mean total duration of the jobs recorded in a run directory.
fn typical_job_s(run: &Path) -> Option<f64> {
    let results = sera::report::load_results(run).ok()?;
    let totals: Vec<f64> = results.iter().filter_map(|r| r.timings_s.get("total").copied()).collect();
    (!totals.is_empty()).then(|| totals.iter().sum::<f64>() / totals.len() as f64)
}

/// `sera run`.
pub fn run(a: RunArgs) -> Result<ExitCode> {
    // Planning loads every corpus and checks every checkpoint: nothing is queued if one is missing.
    let plan = spec::plan(&a.experiment, &root_overrides(&a.roots)?)?;
    let run_path = a.out.clone().unwrap_or_else(|| Path::new("runs").join(&plan.experiment));
    let run = RunDir::new(&run_path);
    let earlier = plan.jobs.iter().filter(|j| run.has_result(&j.id)).count();
    std::fs::create_dir_all(&run_path).with_context(|| format!("creating {}", run_path.display()))?;
    for job in &plan.jobs {
        let path = run_path.join("jobs").join(format!("{}.json", job.id));
        sera::fsutil::write_atomic(&path, serde_json::to_string_pretty(job)?.as_bytes())?;
    }
    // A previous orchestrator may have died between writing a result.json and its bookkeeping.
    run.repair(&plan.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>())?;
    let pending: Vec<&Job> = plan.jobs.iter().filter(|j| !run.has_result(&j.id)).collect();

    let lease = sera::runner::seconds("lease", a.lease)?;
    let config = QueueConfig {
        namespace: a.namespace.clone(),
        lease,
        max_attempts: a.max_attempts,
        backoff: sera::runner::seconds("backoff", a.backoff)?,
        timeout: sera::runner::seconds("timeout", a.timeout)?,
        ..QueueConfig::default()
    };
    let queue = queue::open(a.redis.as_deref(), config.clone())?;

    // Embedded mode: the workers are threads of this process.
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    if a.redis.is_none() && !pending.is_empty() {
        let exe = std::env::current_exe()?.with_file_name("sera-worker");
        if !exe.is_file() {
            bail!("{} not found: build the workspace (cargo build --release --workspace)", exe.display());
        }
        let devices = if a.devices.is_empty() { vec!["cpu".to_string(); a.workers.max(1)] } else { a.devices.clone() };
        for d in &devices {
            sera::device::parse(d).with_context(|| format!("--device {d}"))?;
        }
        let (host, pid) = (hostname(), std::process::id());
        for (k, device) in devices.iter().enumerate() {
            let cfg = WorkerConfig {
                name: format!("{host}:{pid}/{device}#{k}"),
                device: device.clone(),
                worker_exe: exe.clone(),
                scratch: run_path.join(".work"),
                cache: run_path.join("cache"),
                store: ArtifactStore { shared_run_dir: Some(run_path.clone()), inline_max: DEFAULT_INLINE_MAX },
                heartbeat: config.heartbeat_interval().min(Duration::from_secs(1)),
                stall_timeout: sera::runner::seconds("stall-timeout", a.stall_timeout)?,
                poll: Duration::from_millis(200),
                report_patience: Duration::from_secs(5),
            };
            let (q, stop) = (Arc::clone(&queue), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || claim_loop(q.as_ref(), &cfg, &|| stop.load(Ordering::SeqCst))));
        }
    }

    let envelopes: Vec<_> = pending.iter().map(|j| envelope(j)).collect::<Result<_>>()?;
    let added = queue.submit(&envelopes)?;
    let pending_ids: BTreeSet<String> = pending.iter().map(|j| j.id.clone()).collect();
    if a.resume && !pending.is_empty() {
        let dead: Vec<String> =
            queue.status()?.dead_jobs().map(|j| j.id.clone()).filter(|id| pending_ids.contains(id)).collect();
        if !dead.is_empty() {
            let n = queue.requeue_dead(&dead)?;
            println!("{n} dead job(s) queued again");
        }
    }
    println!(
        "experiment {}: {} jobs, {earlier} with results already in {}, {} to run on {} ({} newly queued)",
        plan.experiment,
        plan.jobs.len(),
        run_path.display(),
        pending.len(),
        queue.location(),
        added
    );

    let outcome =
        follow(queue.as_ref(), &run, &plan.jobs, &pending, &envelopes, sera::runner::seconds("poll", a.poll)?);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    let failures = outcome?;

    if run.count_results() > 0 {
        println!();
        results(&run_path, sera::report::Format::Markdown)?;
    }
    if !failures.is_empty() {
        eprintln!("{} job(s) failed for good:", failures.len());
        for (id, why) in &failures {
            eprintln!("  {id}: {why}");
        }
        eprintln!("fix the cause, then `sera run --resume` queues them again");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn envelope(job: &Job) -> Result<queue::NewJob> {
    Ok(Envelope::new(job.id.clone(), serde_json::to_value(job)?).to_new_job())
}

/// Follows the queue until every pending job is recorded or failed for good. Returns the failed
/// jobs with their reasons.
fn follow(
    queue: &dyn JobQueue,
    run: &RunDir,
    all: &[Job],
    pending: &[&Job],
    envelopes: &[queue::NewJob],
    poll: Duration,
) -> Result<BTreeMap<String, String>> {
    let label: HashMap<&str, String> = all
        .iter()
        .map(|j| {
            (
                j.id.as_str(),
                format!("{} {} {} seed {}", j.spec.dataset.name, j.spec.fold.name, j.spec.variant.name, j.spec.seed),
            )
        })
        .collect();
    let mp = MultiProgress::new();
    let overall = mp.add(ProgressBar::new(pending.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} jobs ({elapsed}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let say = |line: String| mp.suspend(|| println!("{line}"));
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut open: BTreeSet<String> = pending.iter().map(|j| j.id.clone()).collect();
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut totals: Vec<f64> = Vec::new();
    let mut last_warning: Option<Instant> = None;
    let mut seen_running: BTreeSet<String> = BTreeSet::new();
    let mut record_tries: HashMap<String, u32> = HashMap::new();
    while !open.is_empty() {
        let _ = queue.reap();
        let status = match queue.status() {
            Ok(s) => s,
            Err(e) if e.is_retryable() => {
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                    say(format!("queue unreachable: {e} (still following; results are safe in the run directory)"));
                    last_warning = Some(Instant::now());
                }
                sleep_unless(poll, &|| false);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        last_warning = None;
        let by_id: HashMap<&str, &queue::JobInfo> = status.jobs.iter().map(|j| (j.id.as_str(), j)).collect();
        let mut missing = Vec::new();
        for id in open.clone() {
            let name = label.get(id.as_str()).cloned().unwrap_or_default();
            let Some(info) = by_id.get(id.as_str()) else {
                missing.push(id);
                continue;
            };
            match info.state {
                JobState::Done => {
                    let payload = match queue.result(&id) {
                        Ok(Some(p)) => p,
                        Ok(None) => continue,
                        Err(e) if e.is_retryable() => continue,
                        Err(e) => return Err(e.into()),
                    };
                    // Chunked artifacts are fetched from the queue, verified and deleted there.
                    match record_from(run, &id, &payload, Some(queue)) {
                        Ok(Recorded::New(r)) => {
                            if let Some(t) = r.timings_s.get("total") {
                                totals.push(*t);
                            }
                            let after =
                                r.after.as_ref().map(|m| format!("{:.2}", 100.0 * m.audio.uar)).unwrap_or("-".into());
                            say(format!(
                                "job {id} ({name}): done, UAR before {:.2}, after {after}",
                                100.0 * r.before.audio.uar
                            ));
                        }
                        Ok(Recorded::Already) => {}
                        Err(e) if !e.is_deterministic() && *record_tries.entry(id.clone()).or_default() < 20 => {
                            // The queue or the disk hiccuped (not a bad result): try again next poll.
                            *record_tries.entry(id.clone()).or_default() += 1;
                            say(format!("job {id} ({name}): cannot record the result yet: {e} (retrying)"));
                            continue;
                        }
                        Err(e) => {
                            say(format!("job {id} ({name}): result REJECTED: {e}"));
                            failed.insert(id.clone(), format!("result rejected: {e}"));
                        }
                    }
                    open.remove(&id);
                    overall.inc(1);
                    if let Some(b) = bars.remove(&id) {
                        b.finish_and_clear();
                        mp.remove(&b);
                    }
                }
                JobState::Dead => {
                    let why = info.last_error.clone().unwrap_or_else(|| "no error recorded".into());
                    let mut extra = vec![format!("{} execution(s)", info.attempt)];
                    if let Some(s) = info.signal {
                        extra.push(format!("signal {s}"));
                    }
                    if let Some(c) = info.exit_code {
                        extra.push(format!("exit {c}"));
                    }
                    say(format!("job {id} ({name}): DEAD: {why} ({})", extra.join(", ")));
                    failed.insert(id.clone(), format!("{why} ({})", extra.join(", ")));
                    open.remove(&id);
                    overall.inc(1);
                    if let Some(b) = bars.remove(&id) {
                        b.finish_and_clear();
                        mp.remove(&b);
                    }
                }
                JobState::Running => {
                    let p = info.progress.as_deref().and_then(Progress::parse).unwrap_or_default();
                    let owner = info.owner.clone().unwrap_or_default();
                    if seen_running.insert(format!("{id}#{}", info.token)) {
                        say(format!("job {id} ({name}): running on {owner} (attempt {})", info.attempt));
                    }
                    let bar = bars.entry(id.clone()).or_insert_with(|| {
                        let b = mp.add(ProgressBar::new_spinner());
                        b.enable_steady_tick(Duration::from_millis(200));
                        b
                    });
                    let stage = p.describe();
                    bar.set_message(format!("{id} {name}: {stage} on {owner}"));
                }
                JobState::Queued | JobState::Delayed => {
                    if let Some(b) = bars.remove(&id) {
                        b.finish_and_clear();
                        mp.remove(&b);
                    }
                }
            }
        }
        if !missing.is_empty() {
            // Redis lost its data (or forgot a finished job past retention) before the result was
            // recorded: submit again. Ids are deterministic, so this is idempotent.
            let again: Vec<queue::NewJob> = envelopes.iter().filter(|e| missing.contains(&e.id)).cloned().collect();
            match queue.submit(&again) {
                Ok(n) => say(format!("{n} job(s) were unknown to the queue (did it lose its data?): submitted again")),
                Err(e) => say(format!("cannot resubmit {} job(s): {e}", again.len())),
            }
        }
        let typical = (!totals.is_empty()).then(|| totals.iter().sum::<f64>() / totals.len() as f64);
        let view = StatusView::new(queue.location(), &status, typical);
        let _ = run.write_status(&view);
        overall.set_message(format!(
            "{} running, {} queued, {} dead",
            view.running,
            view.queued + view.delayed,
            failed.len()
        ));
        if !open.is_empty() {
            std::thread::sleep(poll);
        }
    }
    overall.finish_and_clear();
    // A final status for `sera status --run`.
    if let Ok(status) = queue.status() {
        let typical = (!totals.is_empty()).then(|| totals.iter().sum::<f64>() / totals.len() as f64);
        let _ = run.write_status(&StatusView::new(queue.location(), &status, typical));
    }
    Ok(failed)
}
