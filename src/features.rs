//! Pooled features of a whole corpus from a frozen encoder (`sera features`), stored so that both
//! sera and Python read them directly: `features.safetensors` (one float32 tensor `features`,
//! `[N, D]`), `ids.json` (the N utterance ids, same order) and `meta.json` (the cache key).
//!
//! The output directory is a cache. Its key is the model's identity (the sha256 of every file of
//! the checkpoint directory that changes the features, or the from-scratch config and seed), the
//! front end's configuration, the precision and the utterance ids (and, for text, the
//! transcripts). A run whose key equals the one in `meta.json` returns without loading the model;
//! any difference recomputes. The three files are written into a temp directory next to the
//! output and renamed into place, so readers see the old set or the new one, never a mix.
//!
//! Audio is read at 16 kHz. AST: Kaldi fbank front end, the mean of the CLS and distillation
//! tokens. wav2vec2: per-utterance normalisation, mean over valid frames; clips are batched in
//! order of length to limit padding (features do not depend on the batch: padding is masked).
//! Text (BERT/RoBERTa): the spec's pooling (`cls`, `mean` or `pooler`) over the transcripts.
//! Everything runs without gradients in evaluation mode (no dropout); tch 0.24 has no
//! `inference_mode` guard, so `no_grad` is the closest.
//!
//! Precision: fp32 only. bf16 autocast exists for training (`crate::precision`, stage 1), but
//! extracted features are a cache that later runs and Python users take for the checkpoint's own
//! fp32 outputs, so `bf16` is refused here rather than silently changed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use crate::audio;
use crate::data::folds::sha256_hex;
use crate::data::{Corpus, Utterance};
use crate::error::{Error, Result};
use crate::models::ast::{Ast, AstConfig};
use crate::models::bert::TextEncoder;
use crate::models::hf::HfDir;
use crate::models::wav2vec2::{NORM_EPS, Wav2Vec2};
use crate::spec::model::{ModelKind, ModelSpec, Pooling};
use crate::spec::stages::Precision;

/// Bumped whenever what a key maps to changes (pooling, front end, file layout).
pub const FORMAT_VERSION: u32 = 1;
/// Seed of libtorch's generator before a from-scratch model is built, so its weights (and thus
/// its features) follow from its config alone.
pub const FROM_SCRATCH_SEED: i64 = 0;
/// The tensor name in `features.safetensors`.
pub const TENSOR_NAME: &str = "features";
/// File names in the output directory.
pub const FEATURES_FILE: &str = "features.safetensors";
pub const IDS_FILE: &str = "ids.json";
pub const META_FILE: &str = "meta.json";

/// Which input of the corpus is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Audio,
    Text,
}

/// Everything the features depend on; equal keys mean equal features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    pub format: u32,
    pub modality: Modality,
    /// Model identity: kind, config overrides, pooling, and file hashes or the from-scratch seed.
    pub model: Value,
    /// Front-end configuration (fbank + AST padding/normalisation, wav2vec2 normalisation, or the
    /// transcripts' hash for text).
    pub front_end: Value,
    pub precision: Precision,
    /// Number of utterances and the sha256 of their ids, newline-joined in output order.
    pub n: usize,
    pub ids_sha256: String,
}

/// What `meta.json` holds: the key plus facts about the run (not part of the key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub key: CacheKey,
    pub model_name: String,
    pub dataset: String,
    pub dim: i64,
    pub device: String,
    pub seconds: f64,
    pub sera_version: String,
}

/// The result of [`extract`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `meta.json` held the same key: nothing was computed.
    Cached { n: usize, dim: i64 },
    /// Features were computed and written.
    Computed { n: usize, dim: i64, seconds: f64 },
}

/// One extraction: which encoder over which corpus, written where.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub model: &'a ModelSpec,
    pub modality: Modality,
    pub corpus: &'a Corpus,
    pub out: &'a Path,
    pub device: Device,
    pub precision: Precision,
    /// Clips (or texts) per batch; `None`: the model's default ([`default_batch_size`]).
    pub batch_size: Option<usize>,
}

/// Clips/texts per batch when none is given: what fits comfortably on a GPU and keeps CPU memory
/// modest.
pub fn default_batch_size(kind: ModelKind, device: Device) -> usize {
    match (kind, device.is_cuda()) {
        (ModelKind::Ast, true) => 32,
        (ModelKind::Ast, false) => 8,
        (ModelKind::Wav2vec2, true) => 16,
        (ModelKind::Wav2vec2, false) => 4,
        _ => 64,
    }
}

/// A frozen encoder ready to embed batches.
#[derive(Debug)]
pub enum Extractor {
    Ast(Box<Ast>),
    Wav2Vec2(Box<Wav2Vec2>),
    Text(Box<TextEncoder>),
}

impl Extractor {
    /// Builds the encoder a spec names for `modality` (from-scratch weights seeded with
    /// [`FROM_SCRATCH_SEED`]).
    pub fn from_spec(spec: &ModelSpec, modality: Modality, device: Device) -> Result<Self> {
        check_kind(spec, modality)?;
        if spec.from_scratch {
            tch::manual_seed(FROM_SCRATCH_SEED);
        }
        Ok(match spec.kind {
            ModelKind::Ast => Extractor::Ast(Box::new(Ast::from_spec(spec, device)?)),
            ModelKind::Wav2vec2 => Extractor::Wav2Vec2(Box::new(Wav2Vec2::from_spec(spec, device)?)),
            _ => Extractor::Text(Box::new(TextEncoder::from_spec(spec, device)?)),
        })
    }

    /// Width of the pooled feature.
    pub fn dim(&self) -> i64 {
        match self {
            Extractor::Ast(m) => m.model.config.hidden_size,
            Extractor::Wav2Vec2(m) => m.hidden_size(),
            Extractor::Text(m) => m.model.config.hidden_size,
        }
    }

    fn device(&self) -> Device {
        match self {
            Extractor::Ast(m) => m.vs.device(),
            Extractor::Wav2Vec2(m) => m.vs.device(),
            Extractor::Text(m) => m.vs.device(),
        }
    }

    /// Pooled features of 16 kHz clips (any lengths), in evaluation mode without gradients:
    /// `[clips, dim]` float32 on the CPU.
    pub fn embed_audio(&self, clips: &[&[f32]]) -> Result<Tensor> {
        let device = self.device();
        let pooled = match self {
            Extractor::Ast(m) => tch::no_grad(|| -> Result<Tensor> {
                let feats = m.front_end.forward_clips(clips, device)?; // [B, max_length, mel]
                Ok(m.model.forward_t(&feats, false)?.pooled)
            })?,
            Extractor::Wav2Vec2(m) => m.embed(clips)?,
            Extractor::Text(_) => return Err(Error::config("(features)", "a text encoder cannot embed audio")),
        };
        Ok(pooled.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?)
    }

    /// Pooled features of texts, in evaluation mode without gradients: `[texts, dim]` float32 on the CPU.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Tensor> {
        let Extractor::Text(m) = self else {
            return Err(Error::config("(features)", "an audio backbone cannot embed text"));
        };
        let pooled = tch::no_grad(|| m.embed_texts_t(texts, false))?;
        Ok(pooled.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?)
    }
}

fn check_kind(spec: &ModelSpec, modality: Modality) -> Result<()> {
    let ok = match modality {
        Modality::Audio => matches!(spec.kind, ModelKind::Ast | ModelKind::Wav2vec2),
        Modality::Text => matches!(spec.kind, ModelKind::Bert | ModelKind::Roberta),
    };
    if ok {
        return Ok(());
    }
    let want = match modality {
        Modality::Audio => "an audio backbone (kind ast or wav2vec2) for --backbone",
        Modality::Text => "a text encoder (kind bert or roberta) for --text-encoder",
    };
    Err(Error::config(format!("model spec '{}'", spec.name), format!("kind {:?} given; need {want}", spec.kind)))
}

/// Refuses what this module cannot compute honestly.
pub fn check_precision(precision: Precision) -> Result<()> {
    if precision == Precision::Bf16 {
        return Err(Error::config(
            "--precision",
            "bf16 features are not offered: the cache stands for the checkpoint's fp32 outputs \
             (bf16 autocast is for training, stage1.precision); use --precision fp32",
        ));
    }
    Ok(())
}

/// The model part of the key: kind, config overrides and pooling, plus the sha256 of the
/// checkpoint's files that change the features (config, weights, preprocessor, tokenizer) or,
/// from scratch, the seed. Machine-local paths and the spec's name are left out, so a moved
/// checkpoint keeps its cache.
pub fn model_identity(spec: &ModelSpec) -> Result<Value> {
    let mut id = json!({
        "kind": spec.kind,
        "config": spec.config,
        "pooling": text_pooling(spec),
    });
    if spec.from_scratch {
        id["from_scratch"] = json!({ "seed": FROM_SCRATCH_SEED });
        return Ok(id);
    }
    let Some(dir) = &spec.path else {
        return Err(Error::config(format!("model spec '{}'", spec.name), "needs `path` or from_scratch = true"));
    };
    let hf = HfDir::open(dir, spec.hf_id.as_deref())?;
    let mut files = BTreeMap::new();
    let weights = hf.weights_path()?;
    for path in [hf.config_path(), weights, dir.join("preprocessor_config.json"), hf.tokenizer_path()] {
        if path.is_file() {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            files.insert(name, crate::fsutil::sha256_file(&path)?.0);
        }
    }
    id["files"] = json!(files);
    Ok(id)
}

/// The pooling a text encoder uses (CLS unless the spec says otherwise); `None` for audio.
fn text_pooling(spec: &ModelSpec) -> Option<Pooling> {
    matches!(spec.kind, ModelKind::Bert | ModelKind::Roberta).then(|| spec.pooling.unwrap_or(Pooling::Cls))
}

/// The front-end part of the key. AST: the resolved fbank/padding/normalisation config (from
/// config.json; preprocessor_config.json is hashed in the model identity). wav2vec2: its
/// normalisation. Text: the hash of the transcripts (the input itself).
pub fn front_end_identity(spec: &ModelSpec, texts: Option<&[&str]>) -> Result<Value> {
    let origin = format!("model spec '{}'", spec.name);
    Ok(match spec.kind {
        ModelKind::Ast => {
            let config: AstConfig = if spec.from_scratch {
                let value = Value::Object(spec.config.clone().into_iter().collect());
                serde_json::from_value(value).map_err(|e| Error::config(&origin, e.to_string()))?
            } else {
                let dir = spec.path.as_deref().unwrap_or(Path::new("."));
                HfDir::open(dir, spec.hf_id.as_deref())?.config_with(&spec.config)?
            };
            json!({ "type": "ast", "sample_rate": audio::SAMPLE_RATE, "config": config.front_end_config() })
        }
        ModelKind::Wav2vec2 => json!({
            "type": "wav2vec2",
            "sample_rate": audio::SAMPLE_RATE,
            "normalize_eps": NORM_EPS,
            "pooling": "masked-mean",
        }),
        _ => json!({
            "type": "text",
            "texts_sha256": sha256_hex(&texts.unwrap_or_default().join("\n")),
        }),
    })
}

/// The full key of a request (reads and hashes the checkpoint files, not the audio).
pub fn cache_key(
    spec: &ModelSpec,
    modality: Modality,
    ids: &[&str],
    texts: Option<&[&str]>,
    precision: Precision,
) -> Result<CacheKey> {
    check_kind(spec, modality)?;
    Ok(CacheKey {
        format: FORMAT_VERSION,
        modality,
        model: model_identity(spec)?,
        front_end: front_end_identity(spec, texts)?,
        precision,
        n: ids.len(),
        ids_sha256: sha256_hex(&ids.join("\n")),
    })
}

/// The key recorded in `dir/meta.json` when all three files are there.
pub fn cached_key(dir: &Path) -> Option<CacheKey> {
    if !(dir.join(FEATURES_FILE).is_file() && dir.join(IDS_FILE).is_file()) {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(META_FILE)).ok()?;
    serde_json::from_str::<Meta>(&text).ok().map(|m| m.key)
}

/// Reads a features directory: (`[N, D]` float32 features, the N ids).
pub fn read(dir: &Path) -> Result<(Tensor, Vec<String>)> {
    let ids_path = dir.join(IDS_FILE);
    let text = std::fs::read_to_string(&ids_path).map_err(|e| Error::io(&ids_path, e))?;
    let ids: Vec<String> = serde_json::from_str(&text).map_err(|e| Error::config(&ids_path, e.to_string()))?;
    let path = dir.join(FEATURES_FILE);
    let features = Tensor::read_safetensors(&path)?
        .into_iter()
        .find(|(n, _)| n == TENSOR_NAME)
        .map(|(_, t)| t)
        .ok_or_else(|| Error::config(&path, format!("no tensor named '{TENSOR_NAME}'")))?;
    if features.size().first() != Some(&(ids.len() as i64)) {
        return Err(Error::config(&path, format!("{:?} rows but {} ids", features.size(), ids.len())));
    }
    Ok((features, ids))
}

/// The transcripts of `utts`, or an error naming the first utterance without one.
pub fn transcripts<'a>(utts: &[&'a Utterance]) -> Result<Vec<&'a str>> {
    utts.iter()
        .map(|u| {
            u.text.as_deref().filter(|t| !t.trim().is_empty()).ok_or_else(|| {
                Error::config(&u.audio, format!("utterance '{}' has no transcript, which the text encoder needs", u.id))
            })
        })
        .collect()
}

/// Extracts the features of every utterance of the corpus into `req.out`, unless it already
/// holds them under the same key. `progress(done, total)` is called after each batch.
pub fn extract(req: &Request, progress: &mut dyn FnMut(usize, usize)) -> Result<Outcome> {
    check_precision(req.precision)?;
    let utts: Vec<&Utterance> = req.corpus.utterances.iter().collect();
    let ids: Vec<&str> = utts.iter().map(|u| u.id.as_str()).collect();
    let texts = match req.modality {
        Modality::Text => Some(transcripts(&utts)?),
        Modality::Audio => None,
    };
    let key = cache_key(req.model, req.modality, &ids, texts.as_deref(), req.precision)?;
    if cached_key(req.out).as_ref() == Some(&key) {
        let (features, _) = read(req.out)?;
        let n = ids.len();
        progress(n, n);
        return Ok(Outcome::Cached { n, dim: features.size().get(1).copied().unwrap_or(0) });
    }
    let started = Instant::now();
    let extractor = Extractor::from_spec(req.model, req.modality, req.device)?;
    let batch = req.batch_size.unwrap_or_else(|| default_batch_size(req.model.kind, req.device)).max(1);
    let features = match &texts {
        Some(texts) => text_corpus(&extractor, texts, batch, progress)?,
        None => audio_corpus(&extractor, &utts, batch, progress)?,
    };
    let seconds = started.elapsed().as_secs_f64();
    let dim = extractor.dim();
    let meta = Meta {
        key,
        model_name: req.model.name.clone(),
        dataset: req.corpus.name.clone(),
        dim,
        device: format!("{:?}", req.device),
        seconds,
        sera_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    write_dir(req.out, &features, &ids, &meta)?;
    Ok(Outcome::Computed { n: ids.len(), dim, seconds })
}

/// Text features in corpus order, `batch` texts at a time: `[n, dim]`.
fn text_corpus(ex: &Extractor, texts: &[&str], batch: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(texts.len().div_ceil(batch));
    let mut done = 0;
    for chunk in texts.chunks(batch) {
        parts.push(ex.embed_texts(chunk)?);
        done += chunk.len();
        progress(done, texts.len());
    }
    cat_rows(&parts, ex.dim())
}

/// Audio features in corpus order: `[n, dim]`. wav2vec2 batches go by length (longest first, so
/// memory trouble shows at once), lengths read from the WAV headers; each batch's clips are read
/// and resampled in parallel.
fn audio_corpus(
    ex: &Extractor,
    utts: &[&Utterance],
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    let n = utts.len();
    let mut order: Vec<usize> = (0..n).collect();
    if matches!(ex, Extractor::Wav2Vec2(_)) {
        let lengths: Vec<f64> =
            utts.par_iter().map(|u| audio::wav_info(&u.audio).map(|i| i.duration_s)).collect::<Result<_>>()?;
        order.sort_by(|&a, &b| lengths[b].total_cmp(&lengths[a]));
    }
    let mut parts = Vec::with_capacity(n.div_ceil(batch));
    let mut done = 0;
    for rows in order.chunks(batch) {
        let waves: Vec<Vec<f32>> =
            rows.par_iter().map(|&r| audio::load_16k(&utts[r].audio).map(|a| a.samples)).collect::<Result<_>>()?;
        let clips: Vec<&[f32]> = waves.iter().map(Vec::as_slice).collect();
        parts.push(ex.embed_audio(&clips).map_err(|e| match e {
            Error::Torch(t) => Error::config(
                &utts[rows[0]].audio,
                format!("encoding the batch starting with '{}': {t}", utts[rows[0]].id),
            ),
            other => other,
        })?);
        done += rows.len();
        progress(done, n);
    }
    let sorted = cat_rows(&parts, ex.dim())?;
    // Row i of `sorted` is utterance order[i]: scatter back with the inverse permutation.
    let mut inverse = vec![0i64; n];
    for (i, &r) in order.iter().enumerate() {
        inverse[r] = i as i64;
    }
    Ok(sorted.f_index_select(0, &Tensor::f_from_slice(&inverse)?)?)
}

fn cat_rows(parts: &[Tensor], dim: i64) -> Result<Tensor> {
    if parts.is_empty() {
        return Ok(Tensor::f_zeros([0, dim], (Kind::Float, Device::Cpu))?);
    }
    Ok(Tensor::f_cat(parts, 0)?)
}

/// Writes the three files into a temp directory beside `out` and renames it into place. An
/// existing `out` is replaced only if it is empty or a features directory (has `meta.json`), so a
/// mistyped `--out` cannot delete unrelated files.
fn write_dir(out: &Path, features: &Tensor, ids: &[&str], meta: &Meta) -> Result<()> {
    if out.exists() {
        let is_ours = out.join(META_FILE).is_file();
        let is_empty = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
        if !out.is_dir() || !(is_ours || is_empty) {
            return Err(Error::config(
                out,
                "exists and is not a features directory (no meta.json); choose another --out or remove it",
            ));
        }
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "features".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let result = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let features = features.f_to_kind(Kind::Float)?.f_contiguous()?;
        let features_path = tmp.join(FEATURES_FILE);
        Tensor::write_safetensors(&[(TENSOR_NAME, &features)], &features_path)?;
        // The directory rename below is only atomic for data already on disk.
        std::fs::File::open(&features_path).and_then(|f| f.sync_all()).map_err(|e| Error::io(&features_path, e))?;
        let ids_json = serde_json::to_string(ids).map_err(|e| Error::config(&tmp, e.to_string()))?;
        write_synced(&tmp.join(IDS_FILE), ids_json.as_bytes())?;
        let meta_json = serde_json::to_string_pretty(meta).map_err(|e| Error::config(&tmp, e.to_string()))?;
        write_synced(&tmp.join(META_FILE), meta_json.as_bytes())?;
        if out.exists() {
            std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        }
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Writes and fsyncs one file.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))
}
