//! The stage-1 heads that later stages reuse: the emotion classifier `W_y h + b_y` (eq. 2) and
//! the text projection `W_t h + b_t` (eq. 6). Stage 2 uses them as the InfoGAN mutual-information
//! heads (eq. 15–18), and stage 3 retrains the classifier. They live in their own VarStore so
//! that each stage can load, freeze or fine-tune them independently.

use std::path::Path;

use tch::nn::{self, Module};
use tch::{Device, Tensor};

use crate::error::{Error, Result};

/// Classifier and text projection over audio features of dimension `audio_dim`.
#[derive(Debug)]
pub struct Heads {
    pub vs: nn::VarStore,
    /// `W_y`, `b_y`: `[audio_dim] → [classes]`.
    pub classifier: nn::Linear,
    /// `W_t`, `b_t`: `[audio_dim] → [text_dim]`; None without text features.
    pub text_proj: Option<nn::Linear>,
    pub audio_dim: i64,
    pub classes: i64,
    pub text_dim: Option<i64>,
}

impl Heads {
    /// Fresh heads (PyTorch's default Linear initialisation).
    pub fn new(audio_dim: i64, classes: i64, text_dim: Option<i64>, device: Device) -> Heads {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let classifier = nn::linear(&root / "classifier", audio_dim, classes, Default::default());
        let text_proj = text_dim.map(|d| nn::linear(&root / "text_proj", audio_dim, d, Default::default()));
        Heads { vs, classifier, text_proj, audio_dim, classes, text_dim }
    }

    /// Class logits `[batch, classes]` of features `[batch, audio_dim]`.
    pub fn logits(&self, h: &Tensor) -> Tensor {
        self.classifier.forward(h)
    }

    /// Projected text features `t̂ = W_t h + b_t`: `[batch, text_dim]`.
    pub fn project_text(&self, h: &Tensor) -> Option<Tensor> {
        self.text_proj.as_ref().map(|p| p.forward(h))
    }

    /// Copies all weights into a new, independent set of heads.
    pub fn duplicate(&self) -> Result<Heads> {
        let mut copy = Heads::new(self.audio_dim, self.classes, self.text_dim, self.vs.device());
        copy.vs.copy(&self.vs)?;
        Ok(copy)
    }

    /// Saves the heads as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.vs.save(path).map_err(|e| Error::config(path, format!("cannot save heads: {e}")))
    }

    /// Loads heads saved by [`Heads::save`] into heads of the same shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        self.vs.load(path).map_err(|e| Error::config(path, format!("cannot load heads: {e}")))
    }
}
