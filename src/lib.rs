//! sera: speech emotion recognition improved by generated training data.
//!
//! The library behind the `sera` orchestrator and the `sera-worker` binary. One concept per
//! module: `data` (corpora, folds), `audio` (wav, resampling), `spec` (experiments → jobs),
//! `device` (CPU/CUDA selection).

pub mod audio;
pub mod bench;
pub mod data;
pub mod device;
pub mod error;
pub mod features;
pub mod fsutil;
pub mod metrics;
pub mod models;
pub mod precision;
pub mod queue;
pub mod report;
pub mod runner;
pub mod spec;
pub mod train;

pub use error::{Error, Result};
