//! `sera-worker work`: the daemon. One claimer thread per device (or `--workers N` on the CPU),
//! each running its jobs in `sera-worker run-job` child processes, plus a reaper thread. SIGTERM
//! or Ctrl-C releases the running jobs for other workers (the attempt is not charged) and exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use sera::queue::{DEFAULT_CHUNK_MAX, JobQueue, QueueConfig, RedisQueue};
use sera::runner::payload::{ArtifactStore, DEFAULT_INLINE_MAX};
use sera::runner::signals;
use sera::runner::worker::{WorkerConfig, claim_loop, hostname, reap_loop};

/// Options of the worker daemon.
#[derive(Args, Debug, Clone)]
pub struct WorkArgs {
    /// The queue: redis://[user:password@]host:port/ or rediss:// (TLS).
    #[arg(long, value_name = "URL")]
    pub redis: String,
    /// A device to claim jobs for: one claimer per --device (repeatable: --device cuda:0 --device cuda:1).
    #[arg(long = "device", value_name = "DEVICE")]
    pub devices: Vec<String>,
    /// Claimers on the CPU when no --device is given.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Queue namespace (one per sweep sharing a Redis); must match `sera run --namespace`.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Lease in seconds: a job whose worker sent no heartbeat for this long is reclaimed.
    #[arg(long, default_value_t = 60.0)]
    pub lease: f64,
    /// Kill a job whose progress (stage, epoch) has not changed for this many seconds.
    #[arg(long, default_value_t = 7200.0)]
    pub stall_timeout: f64,
    /// The sweep's run directory, shared with the orchestrator: large artifacts are staged there
    /// (and the stage-1 cache lives in <run-dir>/cache). Without it, artifacts above --inline-max
    /// are pushed through Redis in checksummed chunks of --chunk-size bytes.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Local scratch for running jobs (default: $TMPDIR/sera-worker-<namespace>).
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// Stage-1 cache (default: <run-dir>/cache, else <scratch>/cache).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Artifacts up to this many bytes travel inline in the completion payload.
    #[arg(long, default_value_t = DEFAULT_INLINE_MAX)]
    pub inline_max: u64,
    /// Bytes per artifact chunk pushed through Redis (without --run-dir); 1024 to 268435456.
    #[arg(long, default_value_t = DEFAULT_CHUNK_MAX)]
    pub chunk_size: usize,
    /// Seconds between claims when the queue is empty.
    #[arg(long, default_value_t = 1.0)]
    pub poll: f64,
    /// First retry delay in seconds after a retryable failure (doubles per attempt).
    #[arg(long, default_value_t = 10.0)]
    pub backoff: f64,
    /// Executions after which a failing job is dead.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Upper bound in seconds on each call to Redis.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn work(args: WorkArgs) -> Result<ExitCode> {
    signals::install();
    let lease = sera::runner::seconds("lease", args.lease)?;
    let config = QueueConfig {
        namespace: args.namespace.clone(),
        lease,
        max_attempts: args.max_attempts,
        backoff: sera::runner::seconds("backoff", args.backoff)?,
        timeout: sera::runner::seconds("timeout", args.timeout)?,
        chunk_max: args.chunk_size,
        ..QueueConfig::default()
    };
    let heartbeat = config.heartbeat_interval();
    let reap_every = config.reap_interval();
    let queue: Arc<dyn JobQueue> = Arc::new(RedisQueue::connect(&args.redis, config)?);
    let devices = if args.devices.is_empty() { vec!["cpu".to_string(); args.workers.max(1)] } else { args.devices };
    for d in &devices {
        sera::device::parse(d).with_context(|| format!("--device {d}"))?;
    }
    let exe = std::env::current_exe().context("locating the sera-worker binary")?;
    let scratch = args.scratch.unwrap_or_else(|| std::env::temp_dir().join(format!("sera-worker-{}", args.namespace)));
    let cache = args.cache.unwrap_or_else(|| match &args.run_dir {
        Some(run) => run.join("cache"),
        None => scratch.join("cache"),
    });
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let host = hostname();
    let pid = std::process::id();
    let stall = sera::runner::seconds("stall-timeout", args.stall_timeout)?;
    let poll = sera::runner::seconds("poll", args.poll)?;
    tracing::info!(
        queue = %queue.location(), namespace = %args.namespace, devices = ?devices,
        "worker started (lease {:.1} s, stall timeout {:.0} s)", lease.as_secs_f64(), stall.as_secs_f64()
    );

    let mut threads = Vec::new();
    for (k, device) in devices.iter().enumerate() {
        let cfg = WorkerConfig {
            name: if devices.len() > 1 {
                format!("{host}:{pid}/{device}#{k}")
            } else {
                format!("{host}:{pid}/{device}")
            },
            device: device.clone(),
            worker_exe: exe.clone(),
            scratch: scratch.clone(),
            cache: cache.clone(),
            store: ArtifactStore { shared_run_dir: args.run_dir.clone(), inline_max: args.inline_max },
            heartbeat,
            stall_timeout: stall,
            poll,
            report_patience: (lease * 10).max(Duration::from_secs(60)),
        };
        let q = Arc::clone(&queue);
        threads.push(
            std::thread::Builder::new()
                .name(format!("claimer-{k}"))
                .spawn(move || claim_loop(q.as_ref(), &cfg, &signals::requested))?,
        );
    }
    let q = Arc::clone(&queue);
    threads.push(
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap_loop(q.as_ref(), reap_every, &signals::requested))?,
    );
    for t in threads {
        let _ = t.join();
    }
    tracing::info!("worker stopped");
    Ok(ExitCode::SUCCESS)
}
