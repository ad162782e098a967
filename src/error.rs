//! The library's error type. Every variant that concerns input names the file (and line, where
//! there is one) and says how to fix it, because the people reading these errors run overnight
//! sweeps and cannot afford a second guess.

use std::path::PathBuf;

use crate::data::Problem;

/// Errors raised by the sera library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A configuration file (dataset spec, experiment, fold file) is invalid.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    /// The corpus has problems and its spec does not allow skipping bad rows.
    #[error("{}", format_problems(.dataset, .problems))]
    InvalidData { dataset: String, problems: Vec<Problem> },

    /// An audio file could not be decoded.
    #[error("{path}: {message}")]
    Audio { path: PathBuf, message: String },

    /// A job spec is inconsistent with the data it names.
    #[error("job {job}: {message}")]
    Job { job: String, message: String },

    /// Training failed (NaN/Inf, collapse) and was not recovered by retries.
    #[error("stage {stage}, epoch {epoch}: {message}")]
    Train { stage: u8, epoch: usize, message: String },

    /// A stage was stopped by its caller after an epoch (its checkpoint stays for a resume).
    #[error("stage {stage} interrupted after epoch {epoch}")]
    Interrupted { stage: u8, epoch: usize },

    /// Anything from libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A configuration error in `path`.
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config { path: path.into(), message: message.into() }
    }

    /// True for errors that will recur on every retry (bad config, bad data, a job that does not
    /// match its data); false for those a retry may fix (I/O hiccups, libtorch, diverged training,
    /// which retries with another attempt).
    pub fn is_deterministic(&self) -> bool {
        matches!(self, Error::Config { .. } | Error::InvalidData { .. } | Error::Audio { .. } | Error::Job { .. })
    }

    /// An audio decoding error in `path`.
    pub fn audio(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Audio { path: path.into(), message: message.into() }
    }
}

/// How many problems an error message lists before it summarises the rest.
const SHOWN_PROBLEMS: usize = 20;

fn format_problems(dataset: &str, problems: &[Problem]) -> String {
    let mut s = format!("dataset '{dataset}': {} problem(s) found", problems.len());
    for p in problems.iter().take(SHOWN_PROBLEMS) {
        s.push_str("\n  ");
        s.push_str(&p.to_string());
    }
    if problems.len() > SHOWN_PROBLEMS {
        s.push_str(&format!(
            "\n  … and {} more (run `sera data inspect` to list them all)",
            problems.len() - SHOWN_PROBLEMS
        ));
    }
    s.push_str("\n  To drop such rows instead of failing, set `bad_rows = \"skip\"` in the dataset spec.");
    s
}
