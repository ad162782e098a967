//! The paper's three stages. Stage 1 fine-tunes the audio encoder with cross-modal alignment;
//! stage 2 trains the InfoGAN on its features; stage 3 retrains the classifier on real plus
//! generated features.

pub mod adam;
pub mod classifier;
pub mod gan_grads;
pub mod heads;
pub mod inputs;
pub mod losses;
pub mod pipeline;
pub mod stage0;
pub mod stage1;
pub mod stage2;
pub mod stage3;

/// Called after every finished epoch with its number; returning false stops the stage at once
/// with [`crate::Error::Interrupted`] (the worker reports progress through it; tests simulate a
/// kill with it).
pub type EpochHook<'a> = &'a mut dyn FnMut(usize) -> bool;
