//! Stage 0 (multimodal experiments, paper 4.4): fine-tune the text encoder (BERT/RoBERTa) with a
//! linear emotion classifier on the fold's training transcripts, choose the epoch on validation
//! UAR, then freeze it. Its pooled features of every utterance become the text features `t` of the
//! later stages.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::classifier::indices;
use super::losses::cross_entropy;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::models::bert::TextEncoder;
use crate::spec::model::ModelSpec;
use crate::spec::stages::Stage0;

/// One epoch of stage 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage0Epoch {
    pub epoch: usize,
    pub loss: f64,
    pub validation_uar: Option<f64>,
}

/// What stage 0 produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage0Summary {
    pub curve: Vec<Stage0Epoch>,
    pub best_epoch: usize,
    pub validation_uar: Option<f64>,
    /// The fine-tuned text classifier on the test fold.
    pub test: Metrics,
}

/// Texts and labels in row order, and the fold's rows.
pub struct TextData<'a> {
    pub texts: &'a [&'a str],
    /// `[n]` int64 on any device.
    pub y: &'a Tensor,
    pub train: &'a [i64],
    pub validation: &'a [i64],
    pub test: &'a [i64],
    pub classes: i64,
}

/// Fine-tunes `model` on `data`; returns the frozen encoder's pooled features of every row
/// `[n, hidden]` and the summary. `dir` holds the selected weights while training.
pub fn train(
    model: &ModelSpec,
    data: &TextData,
    s: &Stage0,
    seed: u64,
    device: Device,
    dir: &Path,
) -> Result<(Tensor, Stage0Summary)> {
    tch::manual_seed(seed as i64);
    let mut enc = TextEncoder::from_spec(model, device)?;
    let hidden = enc.model.config.hidden_size;
    let mut head_vs = nn::VarStore::new(device);
    let head = nn::linear(head_vs.root() / "classifier", hidden, data.classes, Default::default());
    let mut opt_enc = nn::AdamW::default().build(&enc.vs, s.lr)?;
    let mut opt_head = nn::AdamW::default().build(&head_vs, s.lr.max(1e-3))?;
    let y_cpu = data.y.to_device(Device::Cpu);
    let labels = |rows: &[i64]| y_cpu.index_select(0, &Tensor::from_slice(rows)).to_device(device);
    let texts_of = |rows: &[i64]| rows.iter().map(|&r| data.texts[r as usize]).collect::<Vec<&str>>();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (best_enc, best_head) = (dir.join("stage0-encoder.safetensors"), dir.join("stage0-head.safetensors"));
    let mut curve = Vec::new();
    let mut best: Option<(usize, Option<f64>)> = None;
    let bs = s.batch_size.max(1);
    for epoch in 1..=s.epochs.max(1) {
        tch::manual_seed(seed as i64 + epoch as i64);
        let perm = Vec::<i64>::try_from(
            Tensor::from_slice(data.train)
                .index_select(0, &Tensor::randperm(data.train.len() as i64, (Kind::Int64, Device::Cpu))),
        )?;
        let (mut sum, mut steps) = (0.0, 0usize);
        for rows in perm.chunks(bs) {
            let feats = enc.embed_texts_t(&texts_of(rows), true)?;
            let loss = cross_entropy(&head.forward(&feats), &labels(rows));
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                return Err(Error::Train { stage: 0, epoch, message: format!("loss became {value}") });
            }
            opt_enc.zero_grad();
            opt_head.zero_grad();
            loss.backward();
            opt_enc.step();
            opt_head.step();
            sum += value;
            steps += 1;
        }
        let validation_uar = if data.validation.is_empty() {
            None
        } else {
            Some(evaluate(&enc, &head, data, data.validation, &texts_of)?.uar)
        };
        tracing::info!(epoch, loss = sum / steps.max(1) as f64, val_uar = ?validation_uar, "stage 0");
        curve.push(Stage0Epoch { epoch, loss: sum / steps.max(1) as f64, validation_uar });
        let better = match (validation_uar, best) {
            (Some(v), Some((_, Some(b)))) => v > b,
            _ => true,
        };
        if better {
            best = Some((epoch, validation_uar));
            enc.vs.save(&best_enc)?;
            head_vs.save(&best_head)?;
        }
    }
    enc.vs.load(&best_enc)?;
    head_vs.load(&best_head)?;
    let test = evaluate(&enc, &head, data, data.test, &texts_of)?;
    let all: Vec<i64> = (0..data.texts.len() as i64).collect();
    let features = embed_rows(&enc, &all, &texts_of)?;
    let (best_epoch, validation_uar) = best.unwrap_or((0, None));
    Ok((features, Stage0Summary { curve, best_epoch, validation_uar, test }))
}

fn embed_rows<'a>(enc: &TextEncoder, rows: &[i64], texts_of: &dyn Fn(&[i64]) -> Vec<&'a str>) -> Result<Tensor> {
    tch::no_grad(|| {
        let parts: Vec<Tensor> =
            rows.chunks(64).map(|r| enc.embed_texts_t(&texts_of(r), false)).collect::<Result<_>>()?;
        Ok(Tensor::cat(&parts, 0).to_kind(Kind::Float))
    })
}

fn evaluate<'a>(
    enc: &TextEncoder,
    head: &nn::Linear,
    data: &TextData,
    rows: &[i64],
    texts_of: &dyn Fn(&[i64]) -> Vec<&'a str>,
) -> Result<Metrics> {
    let feats = embed_rows(enc, rows, texts_of)?;
    let pred = tch::no_grad(|| indices(&head.forward(&feats).argmax(-1, false)));
    let truth = indices(&data.y.to_device(Device::Cpu).index_select(0, &Tensor::from_slice(rows)));
    Ok(Metrics::compute(&truth, &pred, data.classes as usize))
}
