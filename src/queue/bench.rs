//! Queue throughput with no-op jobs, for `sera bench queue` and the throughput test.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{Envelope, JobQueue, MemoryQueue, NewJob, QueueConfig, QueueError, RedisQueue};

/// Submits `n_jobs` no-op jobs, then claims and completes them one at a time as a single worker
/// would, and returns jobs per second over the whole run. Submission is batched (as `sera run`
/// submits a sweep); claims and completions are not, since a real worker cannot batch them.
/// `url` is a Redis URL, or `None` for the in-process queue. The run uses a namespace of its own
/// and deletes it afterwards.
pub fn noop_throughput(url: Option<&str>, n_jobs: usize) -> Result<f64, QueueError> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let config = QueueConfig { namespace: format!("bench-{}-{nanos}", std::process::id()), ..QueueConfig::default() };
    match url {
        Some(url) => {
            let queue = RedisQueue::connect(url, config)?;
            let rate = run(&queue, n_jobs);
            let purged = queue.purge();
            let rate = rate?;
            purged?;
            Ok(rate)
        }
        None => run(&MemoryQueue::new(config)?, n_jobs),
    }
}

fn run(queue: &dyn JobQueue, n_jobs: usize) -> Result<f64, QueueError> {
    let jobs: Vec<NewJob> = (0..n_jobs)
        .map(|i| Envelope::new(format!("noop-{i:08}"), serde_json::json!({ "noop": i })).to_new_job())
        .collect();
    let fatal = |message: String| QueueError::Fatal { url: queue.location().to_string(), message };
    let start = Instant::now();
    let added = queue.submit(&jobs)?;
    if added != n_jobs {
        return Err(fatal(format!("bench: submitted {n_jobs} jobs but {added} were new")));
    }
    let mut done = 0;
    while let Some(claim) = queue.claim("bench")? {
        if !queue.complete(&claim.lease(), "{}")?.is_committed() {
            return Err(fatal(format!("bench: completion of {} was rejected", claim.id)));
        }
        done += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    if done != n_jobs {
        return Err(fatal(format!("bench: {done} of {n_jobs} jobs came back")));
    }
    Ok(n_jobs as f64 / secs.max(1e-9))
}
