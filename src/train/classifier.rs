//! Training a linear classifier on fixed features: stage 3 (paper 3.3, 4.4), where everything but
//! the classifier is frozen. The epoch is chosen on validation UAR, never on the test fold.

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::losses::cross_entropy;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Features with class indices.
pub struct Labelled<'a> {
    /// `[n, dim]`.
    pub x: &'a Tensor,
    /// `[n]` int64.
    pub y: &'a Tensor,
}

/// Optimisation settings of a linear fit.
#[derive(Debug, Clone, Copy)]
pub struct FitSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

/// A trained linear classifier and how its epoch was chosen.
#[derive(Debug)]
pub struct Fitted {
    pub vs: nn::VarStore,
    pub linear: nn::Linear,
    /// Epoch whose weights were kept (1-based).
    pub best_epoch: usize,
    /// Validation UAR of the kept epoch (None without validation data: the last epoch is kept).
    pub validation_uar: Option<f64>,
}

impl Fitted {
    /// Predicted class indices of `x`.
    pub fn predict(&self, x: &Tensor) -> Vec<usize> {
        tch::no_grad(|| predict(&self.linear, x))
    }

    /// Metrics on labelled data.
    pub fn evaluate(&self, data: &Labelled, classes: usize) -> Metrics {
        Metrics::compute(&indices(data.y), &self.predict(data.x), classes)
    }
}

/// Class indices of a `[n]` int64 tensor.
pub fn indices(y: &Tensor) -> Vec<usize> {
    Vec::<i64>::try_from(y.to_device(Device::Cpu)).unwrap_or_default().into_iter().map(|v| v as usize).collect()
}

fn predict(linear: &nn::Linear, x: &Tensor) -> Vec<usize> {
    indices(&linear.forward(x).argmax(-1, false))
}

/// Fits `W x + b` on `train` with Adam and cross-entropy, starting from `init` (weights `[classes,
/// dim]`, bias `[classes]`) or from PyTorch's default initialisation, and keeps the epoch with the
/// best validation UAR (ties: the earliest).
pub fn fit(
    train: &Labelled,
    validation: Option<&Labelled>,
    classes: i64,
    init: Option<(&Tensor, &Tensor)>,
    s: FitSettings,
) -> Result<Fitted> {
    tch::manual_seed(s.seed as i64);
    let device = train.x.device();
    let dim = train.x.size()[1];
    let n = train.x.size()[0];
    if n == 0 {
        return Err(Error::Train { stage: 3, epoch: 0, message: "no training features".into() });
    }
    let mut vs = nn::VarStore::new(device);
    let linear = nn::linear(vs.root() / "classifier", dim, classes, Default::default());
    if let Some((w, b)) = init {
        tch::no_grad(|| {
            linear.ws.shallow_clone().copy_(w);
            if let Some(bias) = &linear.bs {
                bias.shallow_clone().copy_(b);
            }
        });
    }
    let mut opt = nn::Adam::default().build(&vs, s.lr)?;
    let bs = (s.batch_size as i64).clamp(1, n);
    let mut best: Option<(f64, usize, nn::VarStore)> = None;
    for epoch in 1..=s.epochs.max(1) {
        let perm = Tensor::randperm(n, (Kind::Int64, device));
        for start in (0..n).step_by(bs as usize) {
            let idx = perm.narrow(0, start, bs.min(n - start));
            let loss = cross_entropy(&linear.forward(&train.x.index_select(0, &idx)), &train.y.index_select(0, &idx));
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                return Err(Error::Train { stage: 3, epoch, message: format!("classifier loss became {value}") });
            }
            opt.backward_step(&loss);
        }
        if let Some(v) = validation {
            let uar = Metrics::compute(&indices(v.y), &tch::no_grad(|| predict(&linear, v.x)), classes as usize).uar;
            if best.as_ref().is_none_or(|(b, _, _)| uar > *b) {
                let mut snapshot = nn::VarStore::new(device);
                let _ = nn::linear(snapshot.root() / "classifier", dim, classes, Default::default());
                snapshot.copy(&vs)?;
                best = Some((uar, epoch, snapshot));
            }
        }
    }
    match best {
        Some((uar, epoch, snapshot)) => {
            vs.copy(&snapshot)?;
            Ok(Fitted { vs, linear, best_epoch: epoch, validation_uar: Some(uar) })
        }
        None => Ok(Fitted { vs, linear, best_epoch: s.epochs.max(1), validation_uar: None }),
    }
}
