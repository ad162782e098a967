//! The completion payload: what a worker sends through the queue when a job succeeds, and how
//! the orchestrator verifies it before recording anything.
//!
//! `result.json` always travels in the payload. Each artifact it lists travels either inline
//! (hex, for small files: metrics, classifier and generator weights) or through the shared run
//! directory (large files), staged by the worker at `<run>/.incoming/<job-id>.<token>/<path>`;
//! that location is derived from the job id and the fencing token, never taken from the payload,
//! so a payload cannot name a path. The orchestrator checks every size and SHA-256 against
//! result.json before it writes a single final file, and writes each one atomically.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::paths::{check_job_id, check_relative};
use super::run_dir::RunDir;
use crate::error::{Error, Result};
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
}

/// Where a worker may put artifacts too large for the payload.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    /// The run directory shared with the orchestrator, if there is one.
    pub shared_run_dir: Option<PathBuf>,
    /// Largest artifact sent inline.
    pub inline_max: u64,
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(hasher.finalize()), n))
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
        check_job_id(job_id)?;
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
            let (sha, bytes) = sha256_file(&file)?;
            if sha != a.sha256 || bytes != a.bytes {
                return Err(Error::Job {
                    job: job_id.into(),
                    message: format!(
                        "artifact {} changed after the job listed it (sha256 {sha} ≠ {})",
                        a.path, a.sha256
                    ),
                });
            }
            let stored = if bytes <= store.inline_max && inline_total + bytes <= INLINE_TOTAL_MAX {
                inline_total += bytes;
                let data = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
                Stored::Inline { hex: hex::encode(data) }
            } else if let Some(run) = &store.shared_run_dir {
                copy_atomic(&file, &RunDir::new(run).incoming_dir(job_id, token)?.join(&rel))?;
                Stored::Shared
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
/// `<run>/results.jsonl`. Nothing is written when any check fails.
pub fn record(run: &RunDir, id: &str, payload_json: &str) -> Result<Recorded> {
    check_job_id(id)?;
    if run.has_result(id) {
        // An orchestrator killed between writing result.json and finishing up: finish now.
        run.complete_record(id)?;
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
        }
    }
    for (target, data) in inline {
        crate::fsutil::write_atomic(&target, &data)?;
    }
    for a in p.artifacts.iter().filter(|a| a.stored == Stored::Shared) {
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
    Ok(Recorded::New(Box::new(result)))
}
