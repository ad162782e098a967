//! `sera bench stages`: seconds per stage-2 (InfoGAN) and stage-3 (classifier) epoch on synthetic
//! features of the paper's size, beside `tools/bench_reference.py` (the same loop written plainly
//! in PyTorch) measured in the same run, so the ratio compares like with like on one machine.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::spec::stages::Stage2;
use crate::train::classifier::{FitSettings, Labelled, fit};
use crate::train::heads::Heads;
use crate::train::stage2::{GanData, train};

/// Sizes of the benchmark (the reference figures in libtorch.md use 5000 × 768, batch 64).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct BenchSize {
    pub n: i64,
    pub dim: i64,
    pub text_dim: i64,
    pub classes: i64,
    pub batch: usize,
    pub epochs: usize,
}

impl Default for BenchSize {
    fn default() -> Self {
        BenchSize { n: 5000, dim: 768, text_dim: 768, classes: 4, batch: 64, epochs: 3 }
    }
}

/// Seconds per epoch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct EpochTimes {
    pub stage2_epoch_s: f64,
    pub stage3_epoch_s: f64,
}

/// Times sera's stage-2 and stage-3 epochs on `device` (one warm-up epoch excluded).
pub fn stages(size: BenchSize, device: Device) -> Result<EpochTimes> {
    tch::manual_seed(0);
    let h = Tensor::randn([size.n, size.dim], (Kind::Float, device));
    let t = Tensor::randn([size.n, size.text_dim], (Kind::Float, device));
    let y = Tensor::randint(size.classes, [size.n], (Kind::Int64, device));
    let heads = Heads::new(size.dim, size.classes, Some(size.text_dim), device);
    let data = GanData { h: &h, y: &y, t: Some(&t), classes: size.classes, temperature: 0.07 };
    let s2 = |epochs| Stage2 { epochs, batch_size: size.batch, z_dim: 128, ..Stage2::default() };
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let t0 = Instant::now();
        f()?;
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    // Warm-up, then the difference between 1 + E epochs and 1 epoch is E epochs of steady state.
    let one = time(&mut || train(&data, &heads, &s2(1), 0, &mut |_| true).map(|_| ()))?;
    let many = time(&mut || train(&data, &heads, &s2(1 + size.epochs), 0, &mut |_| true).map(|_| ()))?;
    let stage2_epoch_s = (many - one).max(0.0) / size.epochs as f64;

    let x3 = Tensor::cat(&[&h, &h], 0);
    let y3 = Tensor::cat(&[&y, &y], 0);
    let fs = |epochs| FitSettings { epochs, batch_size: size.batch, lr: 1e-3, seed: 0 };
    let one = time(&mut || fit(&Labelled { x: &x3, y: &y3 }, None, size.classes, None, fs(1)).map(|_| ()))?;
    let many =
        time(&mut || fit(&Labelled { x: &x3, y: &y3 }, None, size.classes, None, fs(1 + size.epochs)).map(|_| ()))?;
    Ok(EpochTimes { stage2_epoch_s, stage3_epoch_s: (many - one).max(0.0) / size.epochs as f64 })
}

/// Runs `tools/bench_reference.py` with `python` and parses its JSON line.
pub fn reference(python: &Path, script: &Path, size: BenchSize) -> Result<EpochTimes> {
    let out = Command::new(python)
        .arg(script)
        .args(["--n", &size.n.to_string(), "--dim", &size.dim.to_string(), "--text-dim", &size.text_dim.to_string()])
        .args([
            "--classes",
            &size.classes.to_string(),
            "--batch",
            &size.batch.to_string(),
            "--epochs",
            &size.epochs.to_string(),
        ])
        .output()
        .map_err(|e| Error::io(python, e))?;
    if !out.status.success() {
        return Err(Error::config(script, format!("reference failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).map_err(|e| Error::config(script, format!("unexpected output '{line}': {e}")))
}
