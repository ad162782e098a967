//! Stage 1: fine-tune the audio encoder with a linear emotion classifier (eq. 1–3) and
//! cross-modal alignment to frozen text features (eq. 4–7):
//! `L = L_SER + λ_CL · L_CL(t, h) + λ_MI · L_MI(t, W_t h + b_t)`.
//! When `t` and `h` differ in width, `L_CL` compares `t` with a learned linear projection of `h`
//! (`align.weight`, saved with the stage's artifacts); the paper's AST + BERT pair is 768/768 and
//! needs none. AdamW with separate learning rates for the encoder and the heads, linear warm-up
//! then linear decay, global gradient-norm clipping. The epoch is chosen on validation UAR, never
//! on the test fold. A checkpoint after every epoch lets a killed job resume at the next epoch
//! (optimiser moments restart from zero on resume).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Kind, Tensor};

use super::classifier::indices;
use super::heads::Heads;
use super::losses::{cross_entropy, info_nce};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::spec::stages::{Precision, Stage1};

/// An audio encoder that stage 1 fine-tunes: pooled features of a batch of utterances.
pub trait AudioEncoder {
    /// Pooled features `[batch, dim]` of the utterances `rows` of the prepared inputs.
    fn encode(&self, rows: &[i64], train: bool) -> Result<Tensor>;
    /// Feature width.
    fn dim(&self) -> i64;
    /// The encoder's parameters.
    fn var_store(&self) -> &nn::VarStore;
    /// Mutable parameters (to load checkpoints).
    fn var_store_mut(&mut self) -> &mut nn::VarStore;
}

/// Labels, text features and the fold's split, by row of the encoder's prepared inputs.
pub struct Stage1Data<'a> {
    /// Class index of every row `[n]`.
    pub y: &'a Tensor,
    /// Frozen text feature of every row `[n, text_dim]`, if any.
    pub t: Option<&'a Tensor>,
    pub train: &'a [i64],
    pub validation: &'a [i64],
    pub test: &'a [i64],
    pub classes: i64,
}

/// One epoch of stage 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage1Epoch {
    pub epoch: usize,
    pub loss: f64,
    pub l_ser: f64,
    pub l_cl: Option<f64>,
    pub l_mi: Option<f64>,
    pub validation_uar: Option<f64>,
}

/// What stage 1 produces.
pub struct Stage1Output {
    /// Classifier and text projection of the selected epoch.
    pub heads: Heads,
    /// Pooled features of every row with the selected weights, in inference mode: `[n, dim]`.
    pub features: Tensor,
    pub curve: Vec<Stage1Epoch>,
    pub best_epoch: usize,
    pub validation_uar: Option<f64>,
    /// The stage-1 model on the test fold ("before augmentation").
    pub test: Metrics,
}

#[derive(Serialize, Deserialize)]
struct Progress {
    epoch: usize,
    best_epoch: usize,
    best_uar: Option<f64>,
    curve: Vec<Stage1Epoch>,
}

/// Trains stage 1. `dir` holds the per-epoch checkpoint (resumed from if present) and the
/// selected weights; `on_epoch` runs after each epoch's checkpoint is written.
pub fn train(
    enc: &mut dyn AudioEncoder,
    data: &Stage1Data,
    s: &Stage1,
    seed: u64,
    dir: &Path,
    on_epoch: super::EpochHook,
) -> Result<Stage1Output> {
    tch::manual_seed(seed as i64);
    let device = enc.var_store().device();
    let text_dim = data.t.map(|t| t.size()[1]);
    let uses_mi = s.lambda_mi > 0.0 && text_dim.is_some();
    let uses_cl = s.lambda_cl > 0.0 && text_dim.is_some();
    let mut heads = Heads::new(enc.dim(), data.classes, text_dim, device);
    let mut align_vs = nn::VarStore::new(device);
    let align = match text_dim {
        Some(d) if d != enc.dim() => Some(nn::linear(align_vs.root() / "align", enc.dim(), d, Default::default())),
        _ => None,
    };
    let ckpt = Checkpoint::new(dir);
    let mut progress = Progress { epoch: 0, best_epoch: 0, best_uar: None, curve: Vec::new() };
    if let Some(p) = ckpt.resume(enc, &mut heads, &mut align_vs)? {
        tracing::info!(epoch = p.epoch, "stage 1 resumes after a finished epoch");
        progress = p;
    }
    let adamw = nn::AdamW { wd: s.weight_decay, ..Default::default() };
    let mut opt_enc = adamw.build(enc.var_store(), s.lr_backbone)?;
    let mut opt_heads = adamw.build(&heads.vs, s.lr_head)?;
    let mut opt_align = adamw.build(&align_vs, s.lr_head)?;
    let n = data.train.len();
    let bs = s.batch_size.clamp(1, n.max(1));
    let steps_per_epoch = n.div_ceil(bs);
    let total = (steps_per_epoch * s.epochs).max(1);
    let warmup = ((total as f64) * s.warmup_ratio).round() as usize;
    let train_idx = Tensor::from_slice(data.train);
    for epoch in progress.epoch + 1..=s.epochs {
        tch::manual_seed(seed as i64 + epoch as i64);
        let perm = Vec::<i64>::try_from(
            train_idx.index_select(0, &Tensor::randperm(n as i64, (Kind::Int64, tch::Device::Cpu))),
        )?;
        let (mut sums, mut count) = ([0.0f64; 4], 0usize);
        for (b, rows) in perm.chunks(bs).enumerate() {
            let step = (epoch - 1) * steps_per_epoch + b;
            let scale = lr_scale(step, warmup, total);
            opt_enc.set_lr(s.lr_backbone * scale);
            opt_heads.set_lr(s.lr_head * scale);
            opt_align.set_lr(s.lr_head * scale);
            let idx = Tensor::from_slice(rows).to_device(device);
            let y = data.y.index_select(0, &idx);
            let step = || -> Result<_> {
                let h = enc.encode(rows, true)?.to_kind(Kind::Float);
                let l_ser = cross_entropy(&heads.logits(&h), &y);
                // A copy (autograd passes through it): the in-place `+=` below must not change
                // the logged L_SER, as it would through a shallow clone sharing its storage.
                let mut loss = l_ser.copy();
                let (mut l_cl, mut l_mi) = (None, None);
                if let Some(t) = data.t.map(|t| t.index_select(0, &idx)) {
                    if uses_cl {
                        let ha = align.as_ref().map_or_else(|| h.shallow_clone(), |a| a.forward(&h));
                        let l = info_nce(&t, &ha, s.temperature);
                        loss += s.lambda_cl * &l;
                        l_cl = Some(l.double_value(&[]));
                    }
                    if uses_mi {
                        let t_hat = heads.project_text(&h).ok_or_else(|| Error::config("stage 1", "no text head"))?;
                        let l = info_nce(&t, &t_hat, s.temperature);
                        loss += s.lambda_mi * &l;
                        l_mi = Some(l.double_value(&[]));
                    }
                }
                Ok((loss, [l_ser.double_value(&[]), l_cl.unwrap_or(f64::NAN), l_mi.unwrap_or(f64::NAN)]))
            };
            // bf16 autocast covers the forward pass; backward follows the recorded dtypes.
            let (loss, parts) = match s.precision {
                Precision::Bf16 => crate::precision::bf16_autocast(device, step)?,
                Precision::Fp32 => step()?,
            };
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                return Err(Error::Train {
                    stage: 1,
                    epoch,
                    message: format!("loss became {value} at step {}", b + 1),
                });
            }
            for o in [&mut opt_enc, &mut opt_heads, &mut opt_align] {
                o.zero_grad();
            }
            loss.backward();
            clip_global_norm(&[enc.var_store(), &heads.vs, &align_vs], s.grad_clip);
            for o in [&mut opt_enc, &mut opt_heads, &mut opt_align] {
                o.step();
            }
            sums[0] += value;
            for (k, p) in parts.iter().enumerate() {
                sums[k + 1] += p;
            }
            count += 1;
        }
        let avg = |k: usize| sums[k] / count.max(1) as f64;
        let validation_uar =
            if data.validation.is_empty() { None } else { Some(evaluate(enc, &heads, data, data.validation)?.uar) };
        let log = Stage1Epoch {
            epoch,
            loss: avg(0),
            l_ser: avg(1),
            l_cl: uses_cl.then(|| avg(2)),
            l_mi: uses_mi.then(|| avg(3)),
            validation_uar,
        };
        tracing::info!(epoch, loss = log.loss, l_ser = log.l_ser, val_uar = ?log.validation_uar, "stage 1");
        progress.curve.push(log);
        let better = match (validation_uar, progress.best_uar) {
            (Some(v), Some(b)) => v > b,
            (Some(_), None) => true,
            (None, _) => true, // no validation data: the last epoch is kept
        };
        if better {
            progress.best_epoch = epoch;
            progress.best_uar = validation_uar;
            ckpt.save_best(enc, &heads, &align_vs)?;
        }
        progress.epoch = epoch;
        ckpt.save_epoch(enc, &heads, &align_vs, &progress)?;
        if !on_epoch(epoch) {
            return Err(Error::Interrupted { stage: 1, epoch });
        }
    }
    if progress.best_epoch == 0 {
        return Err(Error::Train { stage: 1, epoch: 0, message: "stage1.epochs is 0".into() });
    }
    ckpt.load_best(enc, &mut heads, &mut align_vs)?;
    let all: Vec<i64> = (0..data.y.size()[0]).collect();
    let features = tch::no_grad(|| encode_rows(enc, &all))?;
    let test = evaluate(enc, &heads, data, data.test)?;
    Ok(Stage1Output {
        heads,
        features,
        curve: progress.curve,
        best_epoch: progress.best_epoch,
        validation_uar: progress.best_uar,
        test,
    })
}

/// Warm-up from 0 to 1 over `warmup` steps, then linear decay to 0 at `total`.
fn lr_scale(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let rest = (total - warmup).max(1) as f64;
    (1.0 - (step - warmup) as f64 / rest).max(0.0)
}

/// Scales all gradients so their global L2 norm is at most `max` (0 disables).
fn clip_global_norm(stores: &[&nn::VarStore], max: f64) {
    if max <= 0.0 {
        return;
    }
    let grads: Vec<Tensor> =
        stores.iter().flat_map(|vs| vs.trainable_variables()).map(|v| v.grad()).filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return;
    }
    // One read-back for all gradients (each would be a device sync on a GPU).
    let squares: Vec<Tensor> = grads.iter().map(|g| g.pow_tensor_scalar(2).sum(Kind::Double)).collect();
    let total = Tensor::stack(&squares, 0).sum(Kind::Double).double_value(&[]).sqrt();
    if total > max {
        let factor = max / (total + 1e-6);
        tch::no_grad(|| {
            for mut g in grads {
                let _ = g.g_mul_scalar_(factor);
            }
        });
    }
}

/// Pooled features of `rows` in inference mode, in batches of 32.
fn encode_rows(enc: &dyn AudioEncoder, rows: &[i64]) -> Result<Tensor> {
    let parts: Vec<Tensor> =
        rows.chunks(32).map(|r| enc.encode(r, false).map(|h| h.to_kind(Kind::Float))).collect::<Result<_>>()?;
    Ok(Tensor::cat(&parts, 0))
}

fn evaluate(enc: &dyn AudioEncoder, heads: &Heads, data: &Stage1Data, rows: &[i64]) -> Result<Metrics> {
    tch::no_grad(|| {
        let h = encode_rows(enc, rows)?;
        let pred = indices(&heads.logits(&h).argmax(-1, false));
        let idx = Tensor::from_slice(rows).to_device(data.y.device());
        Ok(Metrics::compute(&indices(&data.y.index_select(0, &idx)), &pred, data.classes as usize))
    })
}

/// The stage's checkpoint files.
struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    fn new(dir: &Path) -> Self {
        Checkpoint { dir: dir.to_path_buf() }
    }

    fn path(&self, what: &str) -> PathBuf {
        self.dir.join(what)
    }

    fn save_set(&self, tag: &str, enc: &dyn AudioEncoder, heads: &Heads, align: &nn::VarStore) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for (name, vs) in [("encoder", enc.var_store()), ("heads", &heads.vs), ("align", align)] {
            let final_path = self.path(&format!("{tag}-{name}.safetensors"));
            // tch picks the format from the extension, so the temp name must end in .safetensors.
            let tmp = self.path(&format!(".{tag}-{name}.tmp.safetensors"));
            vs.save(&tmp)?;
            std::fs::rename(&tmp, &final_path).map_err(|e| Error::io(&final_path, e))?;
        }
        Ok(())
    }

    fn load_set(
        &self,
        tag: &str,
        enc: &mut dyn AudioEncoder,
        heads: &mut Heads,
        align: &mut nn::VarStore,
    ) -> Result<()> {
        enc.var_store_mut().load(self.path(&format!("{tag}-encoder.safetensors")))?;
        heads.vs.load(self.path(&format!("{tag}-heads.safetensors")))?;
        align.load(self.path(&format!("{tag}-align.safetensors")))?;
        Ok(())
    }

    fn save_best(&self, enc: &dyn AudioEncoder, heads: &Heads, align: &nn::VarStore) -> Result<()> {
        self.save_set("best", enc, heads, align)
    }

    fn load_best(&self, enc: &mut dyn AudioEncoder, heads: &mut Heads, align: &mut nn::VarStore) -> Result<()> {
        self.load_set("best", enc, heads, align)
    }

    fn save_epoch(&self, enc: &dyn AudioEncoder, heads: &Heads, align: &nn::VarStore, p: &Progress) -> Result<()> {
        self.save_set("last", enc, heads, align)?;
        let json =
            serde_json::to_vec_pretty(p).map_err(|e| Error::config(self.path("progress.json"), e.to_string()))?;
        crate::fsutil::write_atomic(&self.path("progress.json"), &json)
    }

    fn resume(
        &self,
        enc: &mut dyn AudioEncoder,
        heads: &mut Heads,
        align: &mut nn::VarStore,
    ) -> Result<Option<Progress>> {
        let path = self.path("progress.json");
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
        let p: Progress = serde_json::from_str(&text).map_err(|e| Error::config(&path, e.to_string()))?;
        self.load_set("last", enc, heads, align)?;
        Ok(Some(p))
    }
}
