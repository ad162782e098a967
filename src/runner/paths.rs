//! Path safety: every directory a worker or the orchestrator writes to is derived from a job id
//! that must be exactly 16 lowercase hex digits (the hash `sera plan` gives), and every artifact
//! path in a payload must be a plain relative path inside the job's directory.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Length of a job id (the first 16 hex digits of the spec's SHA-256).
pub const JOB_ID_LEN: usize = 16;

/// Checks that `id` is a job id as `sera plan` makes them: 16 lowercase hex digits. Anything
/// else (`..`, `/`, an absolute path) would let a payload choose where we write.
pub fn check_job_id(id: &str) -> Result<()> {
    if id.len() == JOB_ID_LEN && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(Error::Job {
            job: id.escape_debug().to_string(),
            message: format!("a job id must be {JOB_ID_LEN} lowercase hex digits; refusing to use it in a path"),
        })
    }
}

/// `<root>/<id>`, after checking the id.
pub fn job_dir(root: &Path, id: &str) -> Result<PathBuf> {
    check_job_id(id)?;
    Ok(root.join(id))
}

/// Checks an artifact path from a payload: relative, only plain components (no `..`, no root,
/// no `.`), no empty or hidden components (temp files start with a dot), at most 8 levels, and
/// printable. Returns it as a path to join under a job directory.
pub fn check_relative(job: &str, rel: &str) -> Result<PathBuf> {
    let bad = |why: &str| Error::Job {
        job: job.to_string(),
        message: format!("artifact path {rel:?} {why}; refusing to write it"),
    };
    if rel.is_empty() || rel.len() > 512 {
        return Err(bad("is empty or too long"));
    }
    if rel.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad("contains control characters or backslashes"));
    }
    // `Path::components` silently drops `.` and repeated slashes, so look at the raw parts too.
    if rel.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(bad("has an empty, `.` or `..` component"));
    }
    let path = Path::new(rel);
    let mut depth = 0;
    for c in path.components() {
        match c {
            Component::Normal(name) => {
                if name.to_string_lossy().starts_with('.') {
                    return Err(bad("has a hidden component"));
                }
                depth += 1;
            }
            Component::ParentDir => return Err(bad("leaves its directory (`..`)")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("is absolute")),
            Component::CurDir => return Err(bad("has a `.` component")),
        }
    }
    if depth == 0 || depth > 8 {
        return Err(bad("is not a plain relative file path"));
    }
    Ok(path.to_path_buf())
}
