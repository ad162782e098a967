//! The completion payload: what a worker sends through the queue when a job succeeds, and how
//! the orchestrator verifies it before recording anything.
//!
//! `result.json` always travels in the payload. Each artifact it lists travels either inline
//! (hex, for small files: metrics, classifier and generator weights), through the shared run
//! directory (large files), staged by the worker at `<run>/.incoming/<job-id>.<token>/<path>`,
//! or, when no run directory is shared, through the queue in chunks of bounded size
//! ([`JobQueue::put_chunk`], under the claim's fencing token, each chunk's SHA-256 in the
//! payload). Staging locations and chunk keys are derived from the job id, the token and the
//! checked artifact path, never taken from the payload, so a payload cannot name a path. The
//! orchestrator checks every size and SHA-256 (of each chunk and of each whole file) against
//! result.json before it writes a single final file, and writes each one atomically.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::paths::{check_job_id, check_relative};
use super::run_dir::RunDir;
use crate::error::{Error, Result};
use crate::fsutil::sha256_file;
use crate::queue::{CHUNK_MAX_LIMIT, ChunkWrite, JobQueue, Lease, QueueError};
use crate::train::pipeline::JobResult;

/// Version of the completion payload.
pub const PAYLOAD_SCHEMA: u32 = 1;

/// Default largest artifact sent inline through the queue.
pub const DEFAULT_INLINE_MAX: u64 = 4 << 20;

/// Cap on all inline artifacts of one payload together (hex doubles it in the queue).
pub const INLINE_TOTAL_MAX: u64 = 32 << 20;

/// What a worker sends with `complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionPayload {
    pub schema: u32,
    pub job_id: String,
    /// The worker that ran the job.
    pub worker: String,
    /// The fencing token of the execution (names the staging directory of shared artifacts).
    pub token: u64,
    /// `result.json` exactly as the job wrote it.
    pub result_json: String,
    /// SHA-256 of `result_json`.
    pub result_sha256: String,
    pub artifacts: Vec<ShippedArtifact>,
}

/// One artifact of the result and where its bytes are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShippedArtifact {
    /// Path relative to the job's directory (as in result.json).
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    #[serde(flatten)]
    pub stored: Stored,
}

/// Where an artifact's bytes travel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "store", rename_all = "lowercase")]
pub enum Stored {
    /// Hex-encoded in the payload.
    Inline { hex: String },
    /// Staged in the shared run directory at `.incoming/<job-id>.<token>/<path>`.
    Shared,
    /// In the queue, as chunks `0..chunks.len()` of `chunk_bytes` bytes each (the last may be
    /// shorter) stored by the payload's token; `chunks` holds each chunk's SHA-256.
    Chunked { chunk_bytes: u64, chunks: Vec<String> },
}

impl Stored {
    fn is_chunked(&self) -> bool {
        matches!(self, Stored::Chunked { .. })
    }
}

/// How a worker pushes artifacts through the queue when no run directory is shared.
pub struct ChunkPush<'a> {
    /// The queue the completion goes to.
    pub queue: &'a dyn JobQueue,
    /// The claim whose token fences every chunk write.
    pub lease: &'a Lease,
    /// Bytes per chunk (at most the queue's [`JobQueue::chunk_max`]).
    pub chunk_bytes: usize,
    /// How long to keep trying a chunk while the queue is unreachable.
    pub patience: Duration,
}

/// Where a worker may put artifacts too large for the payload.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    /// The run directory shared with the orchestrator, if there is one.
    pub shared_run_dir: Option<PathBuf>,
    /// Largest artifact sent inline.
    pub inline_max: u64,
}

/// Copies `from` to `to` through a temp file and a rename (nothing partial at `to`).
fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let done = std::fs::copy(from, &tmp)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, to));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(to, e));
    }
    Ok(())
}

impl CompletionPayload {
    /// Builds the payload from a finished job's directory (worker side): reads result.json,
    /// re-checks every artifact against it, inlines the small ones and stages the large ones in
    /// the shared run directory. Fails (deterministically) when an artifact is too large for the
    /// payload and no run directory is shared.
    pub fn build(job_id: &str, worker: &str, token: u64, job_out: &Path, store: &ArtifactStore) -> Result<Self> {
        Self::build_via(job_id, worker, token, job_out, store, None)
    }

    /// [`Self::build`], pushing the artifacts too large for the payload through the queue in
    /// chunks when no run directory is shared and `push` is given. A stale lease fails it (the
    /// chunk write is refused); an unreachable queue fails it retryably.
    pub fn build_via(
        job_id: &str,
        worker: &str,
        token: u64,
        job_out: &Path,
        store: &ArtifactStore,
        push: Option<&ChunkPush<'_>>,
    ) -> Result<Self> {
        check_job_id(job_id)?;
        if let Some(push) = push
            && (push.lease.id != job_id || push.lease.token != token)
        {
            return Err(Error::Job { job: job_id.into(), message: "chunk push for another claim".into() });
        }
        let path = job_out.join("result.json");
        let result_json = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let result: JobResult =
            serde_json::from_str(&result_json).map_err(|e| Error::config(&path, format!("not a sera result: {e}")))?;
        if result.job_id != job_id {
            return Err(Error::Job {
                job: job_id.into(),
                message: format!("result.json is for job {}", result.job_id),
            });
        }
        let mut artifacts = Vec::with_capacity(result.artifacts.len());
        let mut inline_total = 0u64;
        for a in &result.artifacts {
            let rel = check_relative(job_id, &a.path)?;
            let file = job_out.join(&rel);
            // An inlined artifact is read once, so the bytes sent are the bytes hashed.
            let inline = a.bytes <= store.inline_max && inline_total + a.bytes <= INLINE_TOTAL_MAX;
            let data = if inline { Some(std::fs::read(&file).map_err(|e| Error::io(&file, e))?) } else { None };
            let (sha, bytes) = match &data {
                Some(d) => (hex::encode(Sha256::digest(d)), d.len() as u64),
                None => sha256_file(&file)?,
            };
            if sha != a.sha256 || bytes != a.bytes {
                return Err(Error::Job {
                    job: job_id.into(),
                    message: format!(
                        "artifact {} changed after the job listed it (sha256 {sha} ≠ {})",
                        a.path, a.sha256
                    ),
                });
            }
            let stored = if let Some(data) = data {
                inline_total += bytes;
                Stored::Inline { hex: hex::encode(data) }
            } else if let Some(run) = &store.shared_run_dir {
                copy_atomic(&file, &RunDir::new(run).incoming_dir(job_id, token)?.join(&rel))?;
                Stored::Shared
            } else if let Some(push) = push {
                push_chunks(push, &a.path, &file, &sha, bytes)?
            } else {
                return Err(Error::Job {
                    job: job_id.into(),
                    message: format!(
                        "artifact {} is {bytes} bytes, too large to travel through the queue (inline limit {} \
                         bytes): start the worker with --run-dir <the run directory, on a filesystem shared with \
                         the orchestrator>",
                        a.path, store.inline_max
                    ),
                });
            };
            artifacts.push(ShippedArtifact { path: a.path.clone(), sha256: sha, bytes, stored });
        }
        let result_sha256 = hex::encode(Sha256::digest(result_json.as_bytes()));
        Ok(CompletionPayload {
            schema: PAYLOAD_SCHEMA,
            job_id: job_id.into(),
            worker: worker.into(),
            token,
            result_json,
            result_sha256,
            artifacts,
        })
    }

    /// The payload as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// What [`record`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// The result and its artifacts are now in the run directory.
    New(Box<JobResult>),
    /// The run directory already had a result for this job; nothing changed.
    Already,
}

/// Verifies a completion payload against itself and the staged files, then writes the artifacts
/// and `<run>/<id>/result.json` (each atomically, result.json last) and appends the result to
/// `<run>/results.jsonl`. Nothing is written when any check fails. A payload with chunked
/// artifacts needs [`record_from`].
pub fn record(run: &RunDir, id: &str, payload_json: &str) -> Result<Recorded> {
    record_from(run, id, payload_json, None)
}

/// [`record`], fetching chunked artifacts from `queue`: every chunk's and every file's SHA-256
/// is checked while the file is streamed to a temp file in the job's staging directory; only when
/// every artifact checks out is anything moved to a final path. After recording, the job's
/// chunks are deleted from the queue. An unreachable queue gives a retryable (I/O) error.
pub fn record_from(run: &RunDir, id: &str, payload_json: &str, queue: Option<&dyn JobQueue>) -> Result<Recorded> {
    check_job_id(id)?;
    if run.has_result(id) {
        // An orchestrator killed between writing result.json and finishing up: finish now.
        run.complete_record(id)?;
        if let Some(q) = queue
            && serde_json::from_str::<CompletionPayload>(payload_json)
                .is_ok_and(|p| p.artifacts.iter().any(|a| a.stored.is_chunked()))
        {
            drop_chunks(q, id);
        }
        return Ok(Recorded::Already);
    }
    let bad = |message: String| Error::Job { job: id.into(), message };
    let p: CompletionPayload =
        serde_json::from_str(payload_json).map_err(|e| bad(format!("completion payload is unreadable: {e}")))?;
    if p.schema != PAYLOAD_SCHEMA {
        return Err(bad(format!(
            "completion payload schema {} is not {PAYLOAD_SCHEMA}: mixed sera versions",
            p.schema
        )));
    }
    if p.job_id != id {
        return Err(bad(format!("completion payload is for job {:?}", p.job_id)));
    }
    let sha = hex::encode(Sha256::digest(p.result_json.as_bytes()));
    if sha != p.result_sha256 {
        return Err(bad(format!("result.json checksum mismatch ({sha} ≠ {})", p.result_sha256)));
    }
    let result: JobResult =
        serde_json::from_str(&p.result_json).map_err(|e| bad(format!("result.json is not a sera result: {e}")))?;
    if result.job_id != id {
        return Err(bad(format!("result.json is for job {}", result.job_id)));
    }
    let listed: Vec<(&str, &str, u64)> =
        result.artifacts.iter().map(|a| (a.path.as_str(), a.sha256.as_str(), a.bytes)).collect();
    let shipped: Vec<(&str, &str, u64)> =
        p.artifacts.iter().map(|a| (a.path.as_str(), a.sha256.as_str(), a.bytes)).collect();
    if listed != shipped {
        return Err(bad("the shipped artifacts differ from those result.json lists".into()));
    }

    // Verify everything first, then write: a failed check leaves the run directory untouched.
    let job_dir = run.job_dir(id)?;
    let incoming = run.incoming_dir(id, p.token)?;
    let mut inline = Vec::new();
    let mut fetched = Fetched::default();
    let verified = verify_all(id, &p, &job_dir, &incoming, queue, &mut inline, &mut fetched);
    if let Err(e) = verified {
        fetched.remove();
        return Err(e);
    }
    for (target, data) in inline {
        crate::fsutil::write_atomic(&target, &data)?;
    }
    for a in p.artifacts.iter().filter(|a| matches!(a.stored, Stored::Shared | Stored::Chunked { .. })) {
        let rel = check_relative(id, &a.path)?;
        let (staged, target) = (incoming.join(&rel), job_dir.join(&rel));
        if staged.is_file() {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            std::fs::rename(&staged, &target).map_err(|e| Error::io(&target, e))?;
        }
    }
    crate::fsutil::write_atomic(&job_dir.join("result.json"), p.result_json.as_bytes())?;
    run.append_result(&result)?;
    run.clear_incoming(id);
    if let Some(q) = queue
        && p.artifacts.iter().any(|a| a.stored.is_chunked())
    {
        drop_chunks(q, id);
    }
    Ok(Recorded::New(Box::new(result)))
}

/// Files [`record_from`] staged from chunks, removed again when a later check fails.
#[derive(Default)]
struct Fetched(Vec<PathBuf>);

impl Fetched {
    fn remove(&self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Checks every artifact of `p` (inline ones are decoded into `inline`, chunked ones fetched into
/// the staging directory); writes nothing at a final path.
fn verify_all(
    id: &str,
    p: &CompletionPayload,
    job_dir: &Path,
    incoming: &Path,
    queue: Option<&dyn JobQueue>,
    inline: &mut Vec<(PathBuf, Vec<u8>)>,
    fetched: &mut Fetched,
) -> Result<()> {
    let bad = |message: String| Error::Job { job: id.into(), message };
    for a in &p.artifacts {
        let rel = check_relative(id, &a.path)?;
        let target = job_dir.join(&rel);
        match &a.stored {
            Stored::Inline { hex: text } => {
                let data = hex::decode(text).map_err(|e| bad(format!("artifact {}: bad hex ({e})", a.path)))?;
                let got = hex::encode(Sha256::digest(&data));
                if got != a.sha256 || data.len() as u64 != a.bytes {
                    return Err(bad(format!("artifact {}: checksum mismatch ({got} ≠ {})", a.path, a.sha256)));
                }
                inline.push((target, data));
            }
            Stored::Shared => {
                // A restarted orchestrator may have moved it into place already.
                if target.is_file() && sha256_file(&target)? == (a.sha256.clone(), a.bytes) {
                    continue;
                }
                let staged = incoming.join(&rel);
                if !staged.is_file() {
                    return Err(bad(format!(
                        "artifact {} was not found at {}: the worker's --run-dir must be this run directory, on \
                         a filesystem shared with the orchestrator",
                        a.path,
                        staged.display()
                    )));
                }
                let got = sha256_file(&staged)?;
                if got != (a.sha256.clone(), a.bytes) {
                    return Err(bad(format!("artifact {}: checksum mismatch ({} ≠ {})", a.path, got.0, a.sha256)));
                }
            }
            Stored::Chunked { chunk_bytes, chunks } => {
                if target.is_file() && sha256_file(&target)? == (a.sha256.clone(), a.bytes) {
                    continue;
                }
                let Some(queue) = queue else {
                    return Err(bad(format!(
                        "artifact {} travelled through the queue in chunks, but no queue was given",
                        a.path
                    )));
                };
                if *chunk_bytes == 0 || *chunk_bytes > CHUNK_MAX_LIMIT as u64 {
                    return Err(bad(format!("artifact {}: chunk size {chunk_bytes} is out of range", a.path)));
                }
                if chunks.len() as u64 != a.bytes.div_ceil(*chunk_bytes) {
                    return Err(bad(format!(
                        "artifact {}: {} chunks listed for {} bytes in chunks of {chunk_bytes}",
                        a.path,
                        chunks.len(),
                        a.bytes
                    )));
                }
                let staged = incoming.join(&rel);
                fetch_chunks(queue, id, p.token, a, *chunk_bytes, chunks, &staged, fetched)?;
            }
        }
    }
    Ok(())
}

/// Cuts `file` into chunks and stores them in the queue under the lease's token, re-hashing the
/// file as it goes (it must still be what result.json lists).
fn push_chunks(push: &ChunkPush<'_>, path: &str, file: &Path, sha: &str, bytes: u64) -> Result<Stored> {
    let job = &push.lease.id;
    let size = push.chunk_bytes.clamp(1, push.queue.chunk_max());
    let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let mut whole = Sha256::new();
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; size];
    let mut total = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf).map_err(|e| Error::io(file, e))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        whole.update(chunk);
        total += n as u64;
        let index = u32::try_from(chunks.len())
            .map_err(|_| Error::Job { job: job.clone(), message: format!("artifact {path}: too many chunks") })?;
        match with_patience(push.patience, || push.queue.put_chunk(push.lease, path, index, chunk)) {
            Ok(ChunkWrite::Stored) => {}
            Ok(ChunkWrite::Rejected) => {
                return Err(Error::Job {
                    job: job.clone(),
                    message: format!("lease lost while pushing chunk {index} of artifact {path}: nothing is committed"),
                });
            }
            Err(e) => return Err(queue_error(job, e)),
        }
        chunks.push(hex::encode(Sha256::digest(chunk)));
        if n < size {
            break;
        }
    }
    let got = hex::encode(whole.finalize());
    if got != sha || total != bytes {
        return Err(Error::Job {
            job: job.clone(),
            message: format!("artifact {path} changed while it was pushed (sha256 {got} ≠ {sha})"),
        });
    }
    tracing::debug!(artifact = %path, bytes, chunks = chunks.len(), "pushed through the queue");
    Ok(Stored::Chunked { chunk_bytes: size as u64, chunks })
}

/// Fetches the chunks of artifact `a`, checking each chunk's size and SHA-256 and the whole
/// file's, into a temp file that is renamed to `staged` only when everything matched.
#[allow(clippy::too_many_arguments)]
fn fetch_chunks(
    queue: &dyn JobQueue,
    id: &str,
    token: u64,
    a: &ShippedArtifact,
    chunk_bytes: u64,
    chunks: &[String],
    staged: &Path,
    fetched: &mut Fetched,
) -> Result<()> {
    let bad = |message: String| Error::Job { job: id.into(), message };
    let dir = staged.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = staged.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| -> Result<()> {
        let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut whole = Sha256::new();
        let mut left = a.bytes;
        for (index, want) in chunks.iter().enumerate() {
            let i = u32::try_from(index).map_err(|_| bad(format!("artifact {}: too many chunks", a.path)))?;
            let data = with_patience(Duration::from_secs(30), || queue.get_chunk(id, token, &a.path, i))
                .map_err(|e| queue_error(id, e))?
                .ok_or_else(|| {
                    bad(format!(
                        "artifact {}: chunk {i} of token {token} is not in the queue (expired or deleted)",
                        a.path
                    ))
                })?;
            let expected = left.min(chunk_bytes);
            let got = hex::encode(Sha256::digest(&data));
            if data.len() as u64 != expected || got != *want {
                return Err(bad(format!(
                    "artifact {}: chunk {i} checksum mismatch ({got}, {} bytes ≠ {want}, {expected} bytes)",
                    a.path,
                    data.len()
                )));
            }
            left -= expected;
            whole.update(&data);
            out.write_all(&data).map_err(|e| Error::io(&tmp, e))?;
        }
        let got = hex::encode(whole.finalize());
        if got != a.sha256 {
            return Err(bad(format!("artifact {}: checksum mismatch ({got} ≠ {})", a.path, a.sha256)));
        }
        out.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, staged).map_err(|e| Error::io(staged, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        fetched.0.push(staged.to_path_buf());
    }
    written
}

/// Deletes the job's chunks from the queue; a failure only leaves them to expire.
fn drop_chunks(queue: &dyn JobQueue, id: &str) {
    match queue.delete_artifacts(id) {
        Ok(n) => tracing::debug!(job = %id, chunks = n, "artifact chunks deleted from the queue"),
        Err(e) => tracing::warn!(job = %id, "cannot delete the artifact chunks ({e}); they expire after the retention"),
    }
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Repeats `f` while the queue is unreachable, for up to `patience`.
fn with_patience<T>(patience: Duration, mut f: impl FnMut() -> Result<T, QueueError>) -> Result<T, QueueError> {
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(200);
    loop {
        match f() {
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tracing::warn!("artifact chunks: {e} (retrying)");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// A queue error as a library error: retryable (I/O) when the queue may come back, else a
/// deterministic job error.
fn queue_error(job: &str, e: QueueError) -> Error {
    if e.is_retryable() {
        Error::io(PathBuf::from(format!("queue for job {job}")), std::io::Error::other(e.to_string()))
    } else {
        Error::Job { job: job.into(), message: format!("artifact chunks: {e}") }
    }
}
