//! The Redis queue: every transition is one Lua script (`lua/*.lua`), so concurrent workers and
//! orchestrators never see half a transition.
//!
//! Connections are synchronous, with connect, read and write timeouts bounded by the per-call
//! budget ([`QueueConfig::timeout`]): a sync connection without a read timeout hangs forever when
//! the server stops answering. Idle connections are pooled; after a timeout or an I/O error the
//! connection is dropped (its reply may still be in flight) together with the idle ones (a
//! restarted server has closed them all), and the next call connects afresh.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::{
    Client, Connection, ErrorKind, FromRedisValue, RedisError, RedisResult, Script, ScriptInvocation, ServerErrorKind,
};

use super::{
    ChunkWrite, Claim, Completion, FailOutcome, Failure, FailureKind, Heartbeat, JobInfo, JobQueue, JobState, Lease,
    NewJob, QueueConfig, QueueError, QueueStatus, ReapReport, Release, check_chunk, check_id, check_json, check_worker,
    duration_ms, redact_url,
};

/// Jobs per submit script: keeps one script run short (Redis serves nobody else meanwhile).
const SUBMIT_BATCH: usize = 500;

/// Keys passed to every script, in the order `lua/common.lua` documents.
const KEY_NAMES: [&str; 7] = ["ready", "delayed", "leases", "done", "dead", "events", "meta"];

const COMMON: &str = include_str!("lua/common.lua");

/// The transition scripts, each prefixed with the shared helpers.
struct Scripts {
    submit: Script,
    claim: Script,
    heartbeat: Script,
    complete: Script,
    fail: Script,
    release: Script,
    reap: Script,
    requeue: Script,
    info: Script,
    chunk_put: Script,
    delete_chunks: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{COMMON}\n{body}"));
        Scripts {
            submit: s(include_str!("lua/submit.lua")),
            claim: s(include_str!("lua/claim.lua")),
            heartbeat: s(include_str!("lua/heartbeat.lua")),
            complete: s(include_str!("lua/complete.lua")),
            fail: s(include_str!("lua/fail.lua")),
            release: s(include_str!("lua/release.lua")),
            reap: s(include_str!("lua/reap.lua")),
            requeue: s(include_str!("lua/requeue.lua")),
            info: s(include_str!("lua/info.lua")),
            chunk_put: s(include_str!("lua/chunk_put.lua")),
            delete_chunks: s(include_str!("lua/delete_chunks.lua")),
        }
    }
}

/// A [`JobQueue`] on a Redis server (`redis://` or `rediss://`, with `user:password@` for AUTH).
/// Share it between threads with an `Arc`: calls from several threads use separate connections.
pub struct RedisQueue {
    /// The URL without its password, for every message.
    url: String,
    client: Client,
    config: QueueConfig,
    /// `sera:{<namespace>}:`; the hash tag keeps every key of a namespace in one cluster slot.
    prefix: String,
    keys: Vec<String>,
    scripts: Scripts,
    idle: Mutex<Vec<Connection>>,
    /// Whether the eviction-policy warning was already logged (it would repeat on every reconnect).
    warned_policy: AtomicBool,
}

impl fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueue").field("url", &self.url).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisQueue {
    /// A queue on `url`; checks the URL and settings but does not connect yet.
    pub fn new(url: &str, config: QueueConfig) -> Result<Self, QueueError> {
        let shown = Self::check_url(url, &config)?;
        let client = Client::open(url)
            .map_err(|e| QueueError::Invalid { url: shown.clone(), message: format!("not a usable Redis URL: {e}") })?;
        Ok(Self::with_client(shown, client, config))
    }

    /// A queue on a `rediss://` URL whose server certificate is signed by the CA in `ca_pem`
    /// (instead of the system's trust store); does not connect yet.
    pub fn with_root_ca(url: &str, config: QueueConfig, ca_pem: &[u8]) -> Result<Self, QueueError> {
        let shown = Self::check_url(url, &config)?;
        let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(ca_pem.to_vec()) };
        let client = Client::build_with_tls(url, certs)
            .map_err(|e| QueueError::Invalid { url: shown.clone(), message: format!("TLS set-up failed: {e}") })?;
        Ok(Self::with_client(shown, client, config))
    }

    /// A queue on `url`, after checking that the server answers (and setting `noeviction`).
    pub fn connect(url: &str, config: QueueConfig) -> Result<Self, QueueError> {
        let queue = Self::new(url, config)?;
        queue.ping()?;
        Ok(queue)
    }

    /// Checks that the server answers within the timeout.
    pub fn ping(&self) -> Result<(), QueueError> {
        self.call("ping", true, |conn| redis::cmd("PING").query::<String>(conn)).map(|_| ())
    }

    /// Deletes every key of this queue's namespace (benchmarks and tests clean up with it).
    /// Returns how many keys were deleted.
    pub fn purge(&self) -> Result<usize, QueueError> {
        let pattern = format!("{}*", self.prefix);
        let mut cursor = 0u64;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self.call("purge", true, |conn| {
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query(conn)
            })?;
            if !keys.is_empty() {
                deleted += self.call("purge", true, |conn| redis::cmd("UNLINK").arg(&keys).query::<usize>(conn))?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// The key of one artifact chunk: `<prefix>chunk:<id>:<token>:<index>:<artifact>` (the
    /// artifact path last, so that a `:` in it cannot make two keys collide).
    pub fn chunk_key(&self, id: &str, token: u64, artifact: &str, index: u32) -> String {
        format!("{}chunk:{id}:{token}:{index}:{artifact}", self.prefix)
    }

    fn check_url(url: &str, config: &QueueConfig) -> Result<String, QueueError> {
        let shown = redact_url(url);
        config.validate(&shown)?;
        if url.starts_with("rediss://") {
            // rustls needs one process-wide crypto provider; ring is the one we build. An error
            // only means that one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        } else if !url.starts_with("redis://") {
            return Err(QueueError::Invalid {
                url: shown,
                message: "the queue URL must start with redis:// or rediss:// (TLS)".into(),
            });
        }
        Ok(shown)
    }

    fn with_client(url: String, client: Client, config: QueueConfig) -> Self {
        let prefix = format!("sera:{{{}}}:", config.namespace);
        let keys = KEY_NAMES.iter().map(|k| format!("{prefix}{k}")).collect();
        RedisQueue {
            url,
            client,
            config,
            prefix,
            keys,
            scripts: Scripts::new(),
            idle: Mutex::new(Vec::new()),
            warned_policy: AtomicBool::new(false),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        // The pool holds no invariant a panicking thread could break.
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on a pooled (or new) connection within the call's time budget. `repeatable`
    /// calls are atomic scripts or reads whose repetition is harmless: if a pooled connection
    /// turns out to have died while idle (a restarted server), they are sent once more on a new one.
    fn call<T>(
        &self,
        what: &str,
        repeatable: bool,
        mut f: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, QueueError> {
        let deadline = Instant::now() + self.config.timeout;
        let pooled = self.idle().pop();
        let (mut conn, mut reused) = match pooled {
            Some(conn) => (conn, true),
            None => (self.open_connection(deadline, what)?, false),
        };
        loop {
            let remaining = self.remaining(deadline, what)?;
            set_timeouts(&conn, remaining).map_err(|e| self.error(what, &e))?;
            match f(&mut conn) {
                Ok(value) => {
                    self.idle().push(conn);
                    return Ok(value);
                }
                Err(e) if is_connection_error(&e) => {
                    drop(conn);
                    self.idle().clear();
                    if reused && repeatable && !e.is_timeout() && Instant::now() < deadline {
                        tracing::debug!(url = %self.url, "{what}: idle connection was closed ({e}); reconnecting");
                        conn = self.open_connection(deadline, what)?;
                        reused = false;
                        continue;
                    }
                    return Err(self.error(what, &e));
                }
                Err(e) => {
                    // The server answered (with an error), so the connection is still in step.
                    if matches!(e.kind(), ErrorKind::Server(_)) {
                        self.idle().push(conn);
                    }
                    return Err(self.error(what, &e));
                }
            }
        }
    }

    fn open_connection(&self, deadline: Instant, what: &str) -> Result<Connection, QueueError> {
        let remaining = self.remaining(deadline, what)?;
        let mut conn = self.client.get_connection_with_timeout(remaining).map_err(|e| self.error(what, &e))?;
        let remaining = self.remaining(deadline, what)?;
        set_timeouts(&conn, remaining).map_err(|e| self.error(what, &e))?;
        self.ensure_noeviction(&mut conn).map_err(|e| self.error(what, &e))?;
        Ok(conn)
    }

    /// Evicting a job hash would silently lose a job, so the queue's Redis must use
    /// `noeviction`. Checked on every new connection, because a restarted server may have
    /// forgotten a setting made with CONFIG SET. Managed services often forbid CONFIG: then warn.
    fn ensure_noeviction(&self, conn: &mut Connection) -> RedisResult<()> {
        let policy = match redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query::<Vec<String>>(conn) {
            Ok(reply) => reply.get(1).cloned().unwrap_or_default(),
            Err(e) if is_connection_error(&e) => return Err(e),
            Err(e) => {
                self.warn_policy(&format!("could not read maxmemory-policy ({e})"));
                return Ok(());
            }
        };
        if policy == "noeviction" {
            return Ok(());
        }
        match redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("noeviction").query::<()>(conn) {
            Ok(()) => {
                tracing::info!(url = %self.url, "set maxmemory-policy noeviction (was {policy})");
                Ok(())
            }
            Err(e) if is_connection_error(&e) => Err(e),
            Err(e) => {
                self.warn_policy(&format!("maxmemory-policy is {policy} and could not be changed ({e})"));
                Ok(())
            }
        }
    }

    fn warn_policy(&self, problem: &str) {
        if !self.warned_policy.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                url = %self.url,
                "{problem}: set `maxmemory-policy noeviction` on this Redis, or jobs may be evicted under memory pressure"
            );
        }
    }

    fn remaining(&self, deadline: Instant, what: &str) -> Result<Duration, QueueError> {
        let left = deadline.saturating_duration_since(Instant::now());
        // A zero timeout means "block forever" to the socket layer, so never pass one.
        if left < Duration::from_millis(1) {
            return Err(QueueError::Unavailable {
                url: self.url.clone(),
                message: format!("{what}: no answer within the {:?} timeout", self.config.timeout),
            });
        }
        Ok(left)
    }

    fn error(&self, what: &str, e: &RedisError) -> QueueError {
        let url = self.url.clone();
        if is_connection_error(e) || is_transient_server_error(e) {
            let hint = if e.is_timeout() { format!(" (timeout {:?})", self.config.timeout) } else { String::new() };
            QueueError::Unavailable { url, message: format!("{what}: {e}{hint}") }
        } else {
            QueueError::Fatal { url, message: format!("{what}: {e}") }
        }
    }

    /// Invokes `script` with the common keys and arguments followed by `args`.
    fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        what: &str,
        repeatable: bool,
        args: &[&str],
    ) -> Result<T, QueueError> {
        let mut inv = self.invocation(script);
        for arg in args {
            inv.arg(*arg);
        }
        // `ScriptInvocation::invoke` reloads the script after NOSCRIPT (a restarted server).
        self.call(what, repeatable, |conn| inv.invoke(conn))
    }

    /// `script` with the common keys and arguments, ready for the script's own arguments.
    fn invocation<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for key in &self.keys {
            inv.key(key.as_str());
        }
        inv.arg(self.prefix.as_str()).arg(self.config.clock.ms()).arg(self.config.events_maxlen);
        inv
    }

    fn fatal(&self, message: String) -> QueueError {
        QueueError::Fatal { url: self.url.clone(), message }
    }

    fn retention_s(&self) -> String {
        self.config.retention.as_secs().max(1).to_string()
    }

    fn parse_row(&self, now: u64, row: Vec<Option<String>>) -> Result<JobInfo, QueueError> {
        let bad = |field: &str| self.fatal(format!("status: unreadable {field} in job row {row:?}"));
        let num = |i: usize| row.get(i).cloned().flatten();
        let id = num(0).ok_or_else(|| bad("id"))?;
        let state = num(1).as_deref().and_then(JobState::parse).ok_or_else(|| bad("state"))?;
        let parse = |i: usize, field: &str| -> Result<Option<i64>, QueueError> {
            num(i).map(|s| s.parse::<i64>().map_err(|_| bad(field))).transpose()
        };
        Ok(JobInfo {
            state,
            owner: num(2),
            token: parse(3, "token")?.unwrap_or(0).max(0) as u64,
            attempt: parse(4, "attempts")?.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
            progress: num(5),
            last_error: num(6),
            signal: parse(7, "signal")?.and_then(|v| i32::try_from(v).ok()),
            exit_code: parse(8, "exit_code")?.and_then(|v| i32::try_from(v).ok()),
            heartbeat_age: parse(9, "heartbeat")?
                .map(|h| Duration::from_millis(now.saturating_sub(u64::try_from(h).unwrap_or(0)))),
            id,
        })
    }

    fn infos(&self, ids: &[&str]) -> Result<Vec<JobInfo>, QueueError> {
        let (now, rows): (u64, Vec<Vec<Option<String>>>) = self.run(&self.scripts.info, "status", true, ids)?;
        rows.into_iter().map(|row| self.parse_row(now, row)).collect()
    }
}

impl JobQueue for RedisQueue {
    fn location(&self) -> &str {
        &self.url
    }

    fn submit(&self, jobs: &[NewJob]) -> Result<usize, QueueError> {
        for job in jobs {
            check_id(&self.url, &job.id)?;
            check_json(&self.url, "payload", &job.id, &job.payload)?;
        }
        let mut added = 0;
        for batch in jobs.chunks(SUBMIT_BATCH) {
            let n = batch.len().to_string();
            let mut args = Vec::with_capacity(1 + 2 * batch.len());
            args.push(n.as_str());
            for job in batch {
                args.push(job.id.as_str());
                args.push(job.payload.as_str());
            }
            added += self.run::<usize>(&self.scripts.submit, "submit", true, &args)?;
        }
        Ok(added)
    }

    fn claim(&self, worker: &str) -> Result<Option<Claim>, QueueError> {
        check_worker(&self.url, worker)?;
        let lease = duration_ms(self.config.lease).to_string();
        // Not repeatable: a lost reply may have claimed a job, which the reaper recovers.
        let reply: Option<(String, u64, u32, String)> =
            self.run(&self.scripts.claim, "claim", false, &[worker, &lease])?;
        Ok(reply.map(|(id, token, attempt, payload)| Claim { id, token, attempt, payload }))
    }

    fn heartbeat(&self, lease: &Lease, progress: Option<&str>) -> Result<Heartbeat, QueueError> {
        if let Some(p) = progress {
            check_json(&self.url, "progress", &lease.id, p)?;
        }
        let token = lease.token.to_string();
        let lease_ms = duration_ms(self.config.lease).to_string();
        let (flag, progress) = match progress {
            Some(p) => ("1", p),
            None => ("0", ""),
        };
        let reply: String =
            self.run(&self.scripts.heartbeat, "heartbeat", true, &[&lease.id, &token, &lease_ms, flag, progress])?;
        match reply.as_str() {
            "alive" => Ok(Heartbeat::Alive),
            "lost" => Ok(Heartbeat::Lost),
            other => Err(self.fatal(format!("heartbeat: unexpected reply {other:?}"))),
        }
    }

    fn complete(&self, lease: &Lease, result: &str) -> Result<Completion, QueueError> {
        check_json(&self.url, "result", &lease.id, result)?;
        let token = lease.token.to_string();
        let reply: String =
            self.run(&self.scripts.complete, "complete", true, &[&lease.id, &token, result, &self.retention_s()])?;
        match reply.as_str() {
            "committed" => Ok(Completion::Committed),
            "duplicate" => Ok(Completion::Duplicate),
            "rejected" => Ok(Completion::Rejected),
            other => Err(self.fatal(format!("complete: unexpected reply {other:?}"))),
        }
    }

    fn fail(&self, lease: &Lease, failure: &Failure) -> Result<FailOutcome, QueueError> {
        let token = lease.token.to_string();
        let kind = match failure.kind {
            FailureKind::Retryable => "retryable",
            FailureKind::Deterministic => "deterministic",
        };
        let signal = failure.signal.map(|s| s.to_string()).unwrap_or_default();
        let exit_code = failure.exit_code.map(|c| c.to_string()).unwrap_or_default();
        let max = self.config.max_attempts.to_string();
        let retention = self.retention_s();
        // The script knows the attempt count, so it gets the delay for each (capped: the
        // backoff stops growing long before).
        let delays: Vec<String> = (1..=self.config.max_attempts.min(64))
            .map(|a| duration_ms(self.config.backoff_after(a)).to_string())
            .collect();
        let mut args: Vec<&str> =
            vec![&lease.id, &token, kind, &failure.message, &signal, &exit_code, &max, &retention];
        args.extend(delays.iter().map(String::as_str));
        let (outcome, delay_ms): (String, u64) = self.run(&self.scripts.fail, "fail", false, &args)?;
        match outcome.as_str() {
            "retry" => Ok(FailOutcome::Retry { delay: Duration::from_millis(delay_ms) }),
            "dead" => Ok(FailOutcome::Dead),
            "rejected" => Ok(FailOutcome::Rejected),
            other => Err(self.fatal(format!("fail: unexpected reply {other:?}"))),
        }
    }

    fn release(&self, lease: &Lease) -> Result<Release, QueueError> {
        let token = lease.token.to_string();
        let reply: String = self.run(&self.scripts.release, "release", false, &[&lease.id, &token])?;
        match reply.as_str() {
            "released" => Ok(Release::Released),
            "rejected" => Ok(Release::Rejected),
            other => Err(self.fatal(format!("release: unexpected reply {other:?}"))),
        }
    }

    fn reap(&self) -> Result<ReapReport, QueueError> {
        let lease = duration_ms(self.config.lease).to_string();
        let max = self.config.max_attempts.to_string();
        let (gap, requeued, dead): (u64, Vec<String>, Vec<String>) =
            self.run(&self.scripts.reap, "reap", true, &[&lease, &max, &self.retention_s()])?;
        if gap > 0 {
            tracing::warn!(url = %self.url, "no reaper ran for {gap} ms (an outage?): extended every lease by that gap");
        }
        Ok(ReapReport { outage_gap: (gap > 0).then(|| Duration::from_millis(gap)), requeued, dead })
    }

    fn requeue_dead(&self, ids: &[String]) -> Result<usize, QueueError> {
        for id in ids {
            check_id(&self.url, id)?;
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let args: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.run(&self.scripts.requeue, "requeue", false, &args)
    }

    fn status(&self) -> Result<QueueStatus, QueueError> {
        Ok(QueueStatus::from_jobs(self.infos(&["*"])?))
    }

    fn job(&self, id: &str) -> Result<Option<JobInfo>, QueueError> {
        check_id(&self.url, id)?;
        Ok(self.infos(&[id])?.into_iter().next())
    }

    fn result(&self, id: &str) -> Result<Option<String>, QueueError> {
        check_id(&self.url, id)?;
        let key = format!("{}job:{id}", self.prefix);
        let (state, result): (Option<String>, Option<String>) =
            self.call("result", true, |conn| redis::cmd("HMGET").arg(&key).arg("state").arg("result").query(conn))?;
        Ok(result.filter(|_| state.as_deref() == Some("done")))
    }

    fn chunk_max(&self) -> usize {
        self.config.chunk_max
    }

    fn put_chunk(&self, lease: &Lease, artifact: &str, index: u32, bytes: &[u8]) -> Result<ChunkWrite, QueueError> {
        check_chunk(&self.url, &lease.id, artifact, Some((bytes.len(), self.config.chunk_max)))?;
        let mut inv = self.invocation(&self.scripts.chunk_put);
        inv.arg(&lease.id)
            .arg(lease.token.to_string())
            .arg(artifact)
            .arg(index.to_string())
            .arg(bytes)
            .arg(self.retention_s())
            .arg(duration_ms(self.config.lease).to_string());
        let reply: String = self.call("put_chunk", true, |conn| inv.invoke(conn))?;
        match reply.as_str() {
            "stored" => Ok(ChunkWrite::Stored),
            "rejected" => Ok(ChunkWrite::Rejected),
            other => Err(self.fatal(format!("put_chunk: unexpected reply {other:?}"))),
        }
    }

    fn get_chunk(&self, id: &str, token: u64, artifact: &str, index: u32) -> Result<Option<Vec<u8>>, QueueError> {
        check_chunk(&self.url, id, artifact, None)?;
        let key = self.chunk_key(id, token, artifact, index);
        self.call("get_chunk", true, |conn| redis::cmd("GET").arg(&key).query::<Option<Vec<u8>>>(conn))
    }

    fn delete_artifacts(&self, id: &str) -> Result<usize, QueueError> {
        check_id(&self.url, id)?;
        self.run(&self.scripts.delete_chunks, "delete_artifacts", true, &[id])
    }
}

fn set_timeouts(conn: &Connection, timeout: Duration) -> RedisResult<()> {
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))
}

/// The connection is broken or out of step (its reply may still arrive): it must be dropped.
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// The server is up but cannot serve yet (loading its AOF after a restart, a failover).
fn is_transient_server_error(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        )
    )
}
