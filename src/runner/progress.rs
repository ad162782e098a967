//! Job progress as heartbeats carry it and `sera status` shows it.

use serde::{Deserialize, Serialize};

/// What a job's `progress.json` holds (written by the pipeline as it moves through stages).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageProgress {
    /// `stage1`, `stage2`, `stage3`, `done` (or `starting` before the child wrote anything).
    pub stage: String,
    pub epoch: usize,
    pub epochs: usize,
}

/// The progress JSON a worker sends with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    #[serde(flatten)]
    pub stage: StageProgress,
    /// The device the job runs on.
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub dataset: String,
    #[serde(default)]
    pub fold: String,
    #[serde(default)]
    pub variant: String,
    /// Seconds since this execution started.
    #[serde(default)]
    pub elapsed_s: f64,
    /// Seconds since the current stage started.
    #[serde(default)]
    pub stage_elapsed_s: f64,
}

impl Progress {
    /// Parses a heartbeat's progress JSON (`None` if it is not ours).
    pub fn parse(json: &str) -> Option<Progress> {
        serde_json::from_str(json).ok()
    }

    /// `stage2 3/10`, the stage alone when it has no epoch count, or `starting` before any stage.
    pub fn describe(&self) -> String {
        if self.stage.stage.is_empty() {
            "starting".into()
        } else if self.stage.epochs > 0 {
            format!("{} {}/{}", self.stage.stage, self.stage.epoch, self.stage.epochs)
        } else {
            self.stage.stage.clone()
        }
    }

    /// Estimated seconds left: from the typical duration of finished jobs when known, else from
    /// the current stage's epoch rate (None when neither says anything).
    pub fn eta_s(&self, typical_total_s: Option<f64>) -> Option<f64> {
        if let Some(total) = typical_total_s {
            return Some((total - self.elapsed_s).max(0.0));
        }
        let s = &self.stage;
        (s.epoch > 0 && s.epochs >= s.epoch)
            .then(|| self.stage_elapsed_s * (s.epochs - s.epoch) as f64 / s.epoch as f64)
    }
}

/// `1h02m`, `3m05s`, `12s`.
pub fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
