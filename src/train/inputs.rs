//! Everything a job feeds its stages, in one row order (train, then validation, then test): class
//! indices, frozen text features (computed once per corpus and text encoder, then cached), and
//! the prepared audio inputs behind an [`AudioEncoder`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::stage0::{self, Stage0Summary, TextData};
use super::stage1::AudioEncoder;
use crate::audio;
use crate::data::folds::{Fold, canonical_json, sha256_hex};
use crate::data::{Corpus, Utterance};
use crate::error::{Error, Result};
use crate::features::{self, Extractor, Modality};
use crate::models::ast::Ast;
use crate::models::wav2vec2::{self, Wav2Vec2};
use crate::spec::JobSpec;
use crate::spec::model::{ModelKind, ModelSpec};
use crate::spec::stages::Precision;

/// Row indices of the fold's splits.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub train: Vec<i64>,
    pub validation: Vec<i64>,
    pub test: Vec<i64>,
}

/// A fold's inputs.
pub struct FoldInputs {
    /// Class index per row `[n]`.
    pub y: Tensor,
    /// Text feature per row `[n, text_dim]`.
    pub t: Option<Tensor>,
    pub rows: Rows,
    pub classes: i64,
    /// The audio encoder over this fold's prepared audio (None from [`FoldInputs::labels_only`]).
    pub encoder: Option<Box<dyn AudioEncoder>>,
    /// Stage 0, when the text encoder was fine-tuned first.
    pub stage0: Option<Stage0Summary>,
}

impl FoldInputs {
    /// Labels and text features only (for a job whose stage 1 is cached).
    pub fn labels_only(corpus: &Corpus, fold: &Fold, spec: &JobSpec, cache: &Path, device: Device) -> Result<Self> {
        let (utts, rows) = ordered(corpus, fold)?;
        let index: HashMap<&str, usize> = corpus.classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
        let y: Vec<i64> = utts.iter().map(|u| index[u.label.as_str()] as i64).collect();
        let y = Tensor::from_slice(&y).to_device(device);
        let classes = corpus.classes.len() as i64;
        let (t, stage0) = match &spec.text_encoder {
            Some(m) if spec.stages.stage0.enabled => {
                let (t, summary) = fine_tuned_text_features(m, spec, &utts, &y, &rows, classes, cache, device)?;
                (Some(t), Some(summary))
            }
            Some(m) => (Some(text_features(m, &utts, cache, device)?), None),
            None => (None, None),
        };
        Ok(FoldInputs { y, t, rows, classes, encoder: None, stage0 })
    }

    /// Labels, text features, and the audio encoder with the fold's audio prepared.
    pub fn load(corpus: &Corpus, fold: &Fold, spec: &JobSpec, cache: &Path, device: Device) -> Result<Self> {
        let mut inputs = Self::labels_only(corpus, fold, spec, cache, device)?;
        let (utts, _) = ordered(corpus, fold)?;
        let waves: Vec<Vec<f32>> =
            utts.par_iter().map(|u| audio::load_16k(&u.audio).map(|a| a.samples)).collect::<Result<_>>()?;
        // From-scratch weights come from libtorch's global generator: seed it so that the same job
        // always starts from the same weights, whatever ran before in this process.
        tch::manual_seed(spec.seed as i64);
        inputs.encoder = Some(audio_encoder(&spec.backbone, waves, device)?);
        Ok(inputs)
    }
}

/// The fold's utterances in row order, and the row indices of each split.
fn ordered<'a>(corpus: &'a Corpus, fold: &Fold) -> Result<(Vec<&'a Utterance>, Rows)> {
    let by_id: HashMap<&str, &Utterance> = corpus.utterances.iter().map(|u| (u.id.as_str(), u)).collect();
    let mut utts = Vec::with_capacity(fold.train.len() + fold.validation.len() + fold.test.len());
    let mut rows = Rows::default();
    for (ids, out) in
        [(&fold.train, &mut rows.train), (&fold.validation, &mut rows.validation), (&fold.test, &mut rows.test)]
    {
        for id in ids {
            let u = by_id
                .get(id.as_str())
                .ok_or_else(|| Error::config(&corpus.name, format!("fold names unknown utterance '{id}'")))?;
            out.push(utts.len() as i64);
            utts.push(*u);
        }
    }
    Ok((utts, rows))
}

/// Builds the audio encoder a model spec names over the fold's waveforms (16 kHz, row order).
fn audio_encoder(spec: &ModelSpec, waves: Vec<Vec<f32>>, device: Device) -> Result<Box<dyn AudioEncoder>> {
    match spec.kind {
        ModelKind::Wav2vec2 => Ok(Box::new(Wav2Vec2Encoder { model: Wav2Vec2::from_spec(spec, device)?, waves })),
        ModelKind::Ast => ast_encoder(spec, &waves, device),
        other => Err(Error::config(
            format!("model spec '{}'", spec.name),
            format!("{other:?} is not an audio backbone (use ast or wav2vec2)"),
        )),
    }
}

/// wav2vec2 over raw waveforms: each batch is padded, normalised per utterance, and mean-pooled
/// over its valid frames.
struct Wav2Vec2Encoder {
    model: Wav2Vec2,
    waves: Vec<Vec<f32>>,
}

impl AudioEncoder for Wav2Vec2Encoder {
    fn encode(&self, rows: &[i64], train: bool) -> Result<Tensor> {
        let batch: Vec<&[f32]> = rows.iter().map(|&r| self.waves[r as usize].as_slice()).collect();
        let (raw, mask) = wav2vec2::pad_batch(&batch, self.model.vs.device())?;
        let input = wav2vec2::normalize(&raw, Some(&mask))?;
        self.model.forward_t(&input, Some(&mask), train)?.pooled()
    }
    fn dim(&self) -> i64 {
        self.model.hidden_size()
    }
    fn var_store(&self) -> &VarStore {
        &self.model.vs
    }
    fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.model.vs
    }
}

/// Frozen text features of `utts` `[n, dim]`, cached under `cache/text/<key>.safetensors` where the
/// key hashes the encoder's identity (without machine-local paths) and the utterance texts.
pub fn text_features(model: &ModelSpec, utts: &[&Utterance], cache: &Path, device: Device) -> Result<Tensor> {
    if model.kind == ModelKind::Precomputed {
        return precomputed(model, utts, device);
    }
    let texts = features::transcripts(utts)?;
    let ids: Vec<&str> = utts.iter().map(|u| u.id.as_str()).collect();
    // The same key as `sera features` uses: it hashes the checkpoint files, so replacing the
    // weights at the same path never serves stale features.
    let key = features::cache_key(model, Modality::Text, &ids, Some(&texts), Precision::Fp32)?;
    let key = sha256_hex(&canonical_json(&key))[..16].to_string();
    let path = cache.join("text").join(format!("{}-{key}.safetensors", model.name));
    if path.is_file() {
        let named = Tensor::read_safetensors(&path)?;
        if let Some((_, t)) = named.into_iter().find(|(n, _)| n == "features") {
            return Ok(t.to_device(device));
        }
    }
    let encoder = Extractor::from_spec(model, Modality::Text, device)?;
    let parts: Vec<Tensor> = texts.chunks(64).map(|chunk| encoder.embed_texts(chunk)).collect::<Result<_>>()?;
    let features = Tensor::cat(&parts, 0);
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).map_err(|e| Error::io(&path, e))?;
    let tmp = path.with_extension("partial");
    Tensor::write_safetensors(&[("features", &features)], &tmp)?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(features.to_device(device))
}

/// Stage 0: text features from the encoder fine-tuned on this fold's training transcripts, cached
/// under `cache/stage0/<key>` (the key hashes the encoder, stage-0 settings, seed and fold).
#[allow(clippy::too_many_arguments)]
fn fine_tuned_text_features(
    model: &ModelSpec,
    spec: &JobSpec,
    utts: &[&Utterance],
    y: &Tensor,
    rows: &Rows,
    classes: i64,
    cache: &Path,
    device: Device,
) -> Result<(Tensor, Stage0Summary)> {
    let mut identity = serde_json::to_value(model).unwrap_or_default();
    if let Some(o) = identity.as_object_mut() {
        o.remove("path");
    }
    let key_src = serde_json::json!({
        "model": identity, "stage0": spec.stages.stage0, "seed": spec.seed,
        "dataset": spec.dataset.name, "fold": spec.fold.checksum,
    });
    let key = sha256_hex(&canonical_json(&key_src))[..16].to_string();
    let dir = cache.join("stage0").join(&key);
    let (feats_path, summary_path) = (dir.join("features.safetensors"), dir.join("stage0.json"));
    if feats_path.is_file() && summary_path.is_file() {
        let named = Tensor::read_safetensors(&feats_path)?;
        let text = std::fs::read_to_string(&summary_path).map_err(|e| Error::io(&summary_path, e))?;
        let summary: Stage0Summary =
            serde_json::from_str(&text).map_err(|e| Error::config(&summary_path, e.to_string()))?;
        if let Some((_, t)) = named.into_iter().find(|(n, _)| n == "features") {
            return Ok((t.to_device(device), summary));
        }
    }
    let texts = features::transcripts(utts)?;
    let data =
        TextData { texts: &texts, y, train: &rows.train, validation: &rows.validation, test: &rows.test, classes };
    let tmp = cache.join("stage0").join(format!(".{key}.partial-{}", std::process::id()));
    let (features, summary) = stage0::train(model, &data, &spec.stages.stage0, spec.seed, device, &tmp)?;
    Tensor::write_safetensors(&[("features", features.to_device(Device::Cpu))], tmp.join("features.safetensors"))?;
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::config(&summary_path, e.to_string()))?;
    crate::fsutil::write_atomic(&tmp.join("stage0.json"), &json)?;
    for f in ["stage0-encoder.safetensors", "stage0-head.safetensors"] {
        let _ = std::fs::remove_file(tmp.join(f));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    Ok((features, summary))
}

/// Rows of a precomputed feature file (`features.safetensors` `[N, D]` + `ids.json`) by utterance id.
fn precomputed(model: &ModelSpec, utts: &[&Utterance], device: Device) -> Result<Tensor> {
    let dir = model.features.clone().unwrap_or_else(|| PathBuf::from("."));
    let (all, ids) = features::read(&dir)?;
    let pos: HashMap<&str, i64> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i as i64)).collect();
    let rows: Vec<i64> = utts
        .iter()
        .map(|u| {
            pos.get(u.id.as_str())
                .copied()
                .ok_or_else(|| Error::config(dir.join("ids.json"), format!("no features for utterance '{}'", u.id)))
        })
        .collect::<Result<_>>()?;
    Ok(all.index_select(0, &Tensor::from_slice(&rows)).to_kind(Kind::Float).to_device(device))
}

/// AST over precomputed spectrograms: the fbank of every row is computed once (the front end
/// is frozen), so each training step only runs the transformer.
struct AstEncoder {
    model: Ast,
    /// `[n, max_length, num_mel_bins]` on the model's device.
    features: Tensor,
}

fn ast_encoder(spec: &ModelSpec, waves: &[Vec<f32>], device: Device) -> Result<Box<dyn AudioEncoder>> {
    let model = Ast::from_spec(spec, device)?;
    let parts: Vec<Tensor> = tch::no_grad(|| {
        waves
            .chunks(32)
            .map(|chunk| {
                let clips: Vec<&[f32]> = chunk.iter().map(Vec::as_slice).collect();
                model.front_end.forward_clips(&clips, device)
            })
            .collect::<Result<_>>()
    })?;
    let long = waves
        .iter()
        .filter(|w| model.front_end.fbank().num_frames(w.len() as i64) > model.front_end.config().max_length)
        .count();
    if long > 0 {
        tracing::info!(
            truncated = long,
            max_frames = model.front_end.config().max_length,
            "utterances longer than AST's window are cut"
        );
    }
    Ok(Box::new(AstEncoder { model, features: Tensor::cat(&parts, 0) }))
}

impl AudioEncoder for AstEncoder {
    fn encode(&self, rows: &[i64], train: bool) -> Result<Tensor> {
        let idx = Tensor::from_slice(rows).to_device(self.features.device());
        Ok(self.model.model.forward_t(&self.features.index_select(0, &idx), train)?.pooled)
    }
    fn dim(&self) -> i64 {
        self.model.model.config.hidden_size
    }
    fn var_store(&self) -> &VarStore {
        &self.model.vs
    }
    fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.model.vs
    }
}
