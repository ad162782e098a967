//! The run directory, the system of record of a sweep: `<run>/<job-id>/result.json` (written
//! atomically, after every checksum was verified) and `<run>/results.jsonl` (one line per
//! recorded result, appended). The queue only coordinates; a sweep resumed after Redis lost its
//! data re-runs exactly the jobs with no result.json here.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::paths::{check_job_id, job_dir};
use super::status::StatusView;
use crate::error::{Error, Result};
use crate::train::pipeline::JobResult;

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory at `root` (nothing is created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<run>/<id>`, after checking the id.
    pub fn job_dir(&self, id: &str) -> Result<PathBuf> {
        job_dir(&self.root, id)
    }

    /// Whether the job has a recorded result.
    pub fn has_result(&self, id: &str) -> bool {
        check_job_id(id).is_ok() && self.root.join(id).join("result.json").is_file()
    }

    /// How many jobs have a recorded result.
    pub fn count_results(&self) -> usize {
        std::fs::read_dir(&self.root)
            .map(|d| d.filter_map(|e| e.ok()).filter(|e| self.has_result(&e.file_name().to_string_lossy())).count())
            .unwrap_or(0)
    }

    /// Where a worker stages the large artifacts of one execution (`.incoming/<id>.<token>`).
    pub fn incoming_dir(&self, id: &str, token: u64) -> Result<PathBuf> {
        check_job_id(id)?;
        Ok(self.root.join(".incoming").join(format!("{id}.{token}")))
    }

    /// Appends one result as a line of `results.jsonl`.
    pub fn append_result(&self, result: &JobResult) -> Result<()> {
        let path = self.root.join("results.jsonl");
        let mut line = serde_json::to_string(result).map_err(|e| Error::config(&path, e.to_string()))?;
        line.push('\n');
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        // One write of the whole line: with O_APPEND it cannot interleave with another.
        f.write_all(line.as_bytes()).and_then(|()| f.sync_data()).map_err(|e| Error::io(&path, e))
    }

    /// Whether `results.jsonl` has a line for the job.
    pub fn jsonl_has(&self, id: &str) -> bool {
        let needle = format!("\"job_id\":\"{id}\"");
        std::fs::read_to_string(self.root.join("results.jsonl")).is_ok_and(|t| t.lines().any(|l| l.contains(&needle)))
    }

    /// Makes a recorded job's bookkeeping whole after a crash: its line in `results.jsonl` and no
    /// staged artifacts left in `.incoming`.
    pub fn complete_record(&self, id: &str) -> Result<()> {
        if !self.jsonl_has(id) {
            let path = self.job_dir(id)?.join("result.json");
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let result: JobResult =
                serde_json::from_str(&text).map_err(|e| Error::config(&path, format!("not a sera result: {e}")))?;
            self.append_result(&result)?;
        }
        self.clear_incoming(id);
        Ok(())
    }

    /// [`Self::complete_record`] for every job among `ids` that has a result, reading
    /// `results.jsonl` once (a restarted orchestrator calls it before following the queue).
    pub fn repair(&self, ids: &[&str]) -> Result<()> {
        let text = std::fs::read_to_string(self.root.join("results.jsonl")).unwrap_or_default();
        let logged: std::collections::HashSet<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("job_id").and_then(|i| i.as_str()).map(str::to_string))
            .collect();
        for id in ids.iter().filter(|id| self.has_result(id)) {
            if !logged.contains(*id) {
                self.complete_record(id)?;
            }
            self.clear_incoming(id);
        }
        Ok(())
    }

    /// Removes every staging directory of the job (`.incoming/<id>.<token>`, any token).
    pub fn clear_incoming(&self, id: &str) {
        if check_job_id(id).is_err() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.root.join(".incoming")) else { return };
        let prefix = format!("{id}.");
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Writes the latest queue status (what `sera status --run` shows for an embedded run).
    pub fn write_status(&self, status: &StatusView) -> Result<()> {
        let path = self.root.join("status.json");
        let text = serde_json::to_string(status).map_err(|e| Error::config(&path, e.to_string()))?;
        crate::fsutil::write_atomic(&path, text.as_bytes())
    }

    /// The status the orchestrator last wrote.
    pub fn read_status(&self) -> Result<StatusView> {
        let path = self.root.join("status.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::config(&path, e.to_string()))
    }
}
