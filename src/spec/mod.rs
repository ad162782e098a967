//! From experiment files to jobs: model specs, stage settings, job specs and planning.

pub mod experiment;
pub mod job;
pub mod model;
pub mod stages;

pub use experiment::{Experiment, Plan, RootOverrides, plan};
pub use job::{JOB_SCHEMA, Job, JobSpec};
pub use model::ModelSpec;
pub use stages::StageSettings;
