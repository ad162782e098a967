//! The one integration-test binary (each extra test binary would re-link libtorch).

mod audio;
mod cli;
mod cluster;
mod common;
mod data_iemocap;
mod data_manifest;
mod data_msp;
mod demo;
mod features;
mod folds;
mod models_ast;
mod models_fbank;
mod models_text;
mod models_util;
mod models_wav2vec2;
mod pipeline;
mod plan;
mod queue;
mod queue_support;
mod train;
