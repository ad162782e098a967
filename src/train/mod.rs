//! The paper's three stages. Stage 1 fine-tunes the audio encoder with cross-modal alignment;
//! stage 2 trains the InfoGAN on its features; stage 3 retrains the classifier on real plus
//! generated features.

pub mod classifier;
pub mod heads;
pub mod inputs;
pub mod losses;
pub mod pipeline;
pub mod stage0;
pub mod stage1;
pub mod stage2;
pub mod stage3;
