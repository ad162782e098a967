//! Audio Spectrogram Transformer (Gong et al., 2021), as transformers implements it
//! (`models/audio_spectrogram_transformer/modeling_audio_spectrogram_transformer.py`, v5.24).
//!
//! A DeiT-style pre-LN ViT over 16×16 patches of the log-mel spectrogram, taken with stride 10 in
//! both axes, plus CLS and distillation tokens. The pooled feature is the mean of those two tokens
//! after the final LayerNorm. VarStore paths are the checkpoint keys (`embeddings.cls_token`,
//! `encoder.layer.3.attention.attention.query.weight`, …) that `save_pretrained` writes and the
//! MIT checkpoints on the Hub use; the `audio_spectrogram_transformer.` prefix of
//! `ASTForAudioClassification` checkpoints is accepted, its `classifier.` head ignored.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

use super::fbank::{AstFrontEnd, AstFrontEndConfig};
use super::hf::HfDir;
use super::nn::{Activation, LayerNorm, Linear, attention, dropout};
use crate::error::{Error, Result};
use crate::spec::model::{ModelKind, ModelSpec};

/// Prefix of the encoder inside `ASTForAudioClassification` checkpoints.
pub const PREFIX: &str = "audio_spectrogram_transformer.";
/// The classification head of `ASTForAudioClassification`, which sera does not use.
pub const HEAD_PREFIXES: [&str; 1] = ["classifier."];

/// `config.json` of an AST checkpoint (transformers' `ASTConfig`); absent fields take the
/// defaults of `MIT/ast-finetuned-audioset-10-10-0.4593`. Other keys (labels, architectures) are
/// ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AstConfig {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub patch_size: i64,
    pub qkv_bias: bool,
    pub frequency_stride: i64,
    pub time_stride: i64,
    /// Frames per input spectrogram (1024 = 10.24 s).
    pub max_length: i64,
    pub num_mel_bins: i64,
}

impl Default for AstConfig {
    fn default() -> Self {
        AstConfig {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            patch_size: 16,
            qkv_bias: true,
            frequency_stride: 10,
            time_stride: 10,
            max_length: 1024,
            num_mel_bins: 128,
        }
    }
}

impl AstConfig {
    /// Patches along frequency and time: `(128 − 16)/10 + 1 = 12` and `(1024 − 16)/10 + 1 = 101`.
    pub fn patch_grid(&self) -> (i64, i64) {
        (
            (self.num_mel_bins - self.patch_size) / self.frequency_stride + 1,
            (self.max_length - self.patch_size) / self.time_stride + 1,
        )
    }

    /// Tokens per clip: patches plus CLS and distillation (1214 for the AudioSet model).
    pub fn seq_len(&self) -> i64 {
        let (f, t) = self.patch_grid();
        f * t + 2
    }

    /// Checks the sizes fit together; the message names the offending fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("patch_size", self.patch_size),
            ("frequency_stride", self.frequency_stride),
            ("time_stride", self.time_stride),
        ];
        if let Some((k, v)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("{k} = {v} must be positive"));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_mel_bins < self.patch_size || self.max_length < self.patch_size {
            return Err(format!(
                "num_mel_bins {} and max_length {} must be at least patch_size {}",
                self.num_mel_bins, self.max_length, self.patch_size
            ));
        }
        Activation::parse(&self.hidden_act)?;
        Ok(())
    }

    /// The front end matching this model (fbank with `num_mel_bins`, padded to `max_length`).
    pub fn front_end_config(&self) -> AstFrontEndConfig {
        let mut fe = AstFrontEndConfig { max_length: self.max_length, ..Default::default() };
        fe.fbank.num_mel_bins = self.num_mel_bins;
        fe
    }
}

/// `embeddings.patch_embeddings` (ASTPatchEmbeddings): a strided conv over the spectrogram.
#[derive(Debug)]
pub struct AstPatchEmbeddings {
    /// `projection.weight`: `[hidden, 1, patch, patch]`.
    pub weight: Tensor,
    /// `projection.bias`: `[hidden]`.
    pub bias: Tensor,
    stride: [i64; 2],
}

impl AstPatchEmbeddings {
    pub fn new(p: &tch::nn::Path, c: &AstConfig) -> Result<Self> {
        let p = p / "projection";
        let init = Init::Randn { mean: 0.0, stdev: c.initializer_range };
        let weight = p.f_var("weight", &[c.hidden_size, 1, c.patch_size, c.patch_size], init)?;
        let bias = p.f_var("bias", &[c.hidden_size], Init::Const(0.0))?;
        Ok(AstPatchEmbeddings { weight, bias, stride: [c.frequency_stride, c.time_stride] })
    }

    /// `[batch, frames, mel]` → `[batch, f_patches·t_patches, hidden]`, frequency-major as in HF.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // The conv sees the spectrogram as an image with frequency as height and time as width.
        let xs = xs.f_to_kind(self.weight.kind())?.f_unsqueeze(1)?.f_transpose(2, 3)?;
        let ys = xs.f_conv2d(&self.weight, Some(&self.bias), self.stride, [0, 0], [1, 1], 1)?;
        Ok(ys.f_flatten(2, -1)?.f_transpose(1, 2)?)
    }
}

/// `embeddings` (ASTEmbeddings): patches, CLS and distillation tokens, learned positions.
#[derive(Debug)]
pub struct AstEmbeddings {
    /// `[1, 1, hidden]`.
    pub cls_token: Tensor,
    /// `[1, 1, hidden]`.
    pub distillation_token: Tensor,
    /// `[1, patches + 2, hidden]`.
    pub position_embeddings: Tensor,
    pub patch_embeddings: AstPatchEmbeddings,
    dropout: f64,
}

impl AstEmbeddings {
    pub fn new(p: &tch::nn::Path, c: &AstConfig) -> Result<Self> {
        // HF initialises the tokens and positions to zeros; they are learned.
        let h = c.hidden_size;
        Ok(AstEmbeddings {
            cls_token: p.f_var("cls_token", &[1, 1, h], Init::Const(0.0))?,
            distillation_token: p.f_var("distillation_token", &[1, 1, h], Init::Const(0.0))?,
            position_embeddings: p.f_var("position_embeddings", &[1, c.seq_len(), h], Init::Const(0.0))?,
            patch_embeddings: AstPatchEmbeddings::new(&(p / "patch_embeddings"), c)?,
            dropout: c.hidden_dropout_prob,
        })
    }

    /// `[batch, frames, mel]` → `[batch, seq, hidden]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let patches = self.patch_embeddings.forward(xs)?;
        let b = patches.size()[0];
        let kind = patches.kind();
        let cls = self.cls_token.f_expand([b, -1, -1], false)?.f_to_kind(kind)?;
        let dist = self.distillation_token.f_expand([b, -1, -1], false)?.f_to_kind(kind)?;
        let tokens = Tensor::f_cat(&[cls, dist, patches], 1)?;
        let xs = tokens.f_add(&self.position_embeddings)?;
        dropout(&xs, self.dropout, train)
    }
}

/// `encoder.layer.N.attention` (ASTAttention: `attention.{query,key,value}` + `output.dense`).
#[derive(Debug)]
pub struct AstAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    /// `output.dense`.
    pub output: Linear,
    heads: i64,
    attention_dropout: f64,
    hidden_dropout: f64,
}

impl AstAttention {
    pub fn new(p: &tch::nn::Path, c: &AstConfig) -> Result<Self> {
        let (h, std) = (c.hidden_size, c.initializer_range);
        let a = p / "attention";
        Ok(AstAttention {
            query: Linear::new(&(&a / "query"), h, h, c.qkv_bias, std)?,
            key: Linear::new(&(&a / "key"), h, h, c.qkv_bias, std)?,
            value: Linear::new(&(&a / "value"), h, h, c.qkv_bias, std)?,
            output: Linear::new(&(p / "output" / "dense"), h, h, true, std)?,
            heads: c.num_attention_heads,
            attention_dropout: c.attention_probs_dropout_prob,
            hidden_dropout: c.hidden_dropout_prob,
        })
    }

    /// `[batch, seq, hidden]` → `[batch, seq, hidden]` (before the residual).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (q, k, v) = (self.query.forward(xs)?, self.key.forward(xs)?, self.value.forward(xs)?);
        let ctx = attention(&q, &k, &v, self.heads, None, self.attention_dropout, train)?;
        dropout(&self.output.forward(&ctx)?, self.hidden_dropout, train)
    }
}

/// `encoder.layer.N` (ASTLayer): pre-LN attention and MLP blocks with residuals.
#[derive(Debug)]
pub struct AstLayer {
    pub attention: AstAttention,
    /// `intermediate.dense`.
    pub intermediate: Linear,
    /// `output.dense`.
    pub output: Linear,
    pub layernorm_before: LayerNorm,
    pub layernorm_after: LayerNorm,
    act: Activation,
    hidden_dropout: f64,
}

impl AstLayer {
    pub fn new(p: &tch::nn::Path, c: &AstConfig) -> Result<Self> {
        let act = Activation::parse(&c.hidden_act).map_err(|m| Error::config("(AST config)", m))?;
        let (h, i, std) = (c.hidden_size, c.intermediate_size, c.initializer_range);
        Ok(AstLayer {
            attention: AstAttention::new(&(p / "attention"), c)?,
            intermediate: Linear::new(&(p / "intermediate" / "dense"), h, i, true, std)?,
            output: Linear::new(&(p / "output" / "dense"), i, h, true, std)?,
            layernorm_before: LayerNorm::new(&(p / "layernorm_before"), h, c.layer_norm_eps)?,
            layernorm_after: LayerNorm::new(&(p / "layernorm_after"), h, c.layer_norm_eps)?,
            act,
            hidden_dropout: c.hidden_dropout_prob,
        })
    }

    /// `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let xs = self.attention.forward_t(&self.layernorm_before.forward(xs)?, train)?.f_add(xs)?;
        let ys = self.act.forward(&self.intermediate.forward(&self.layernorm_after.forward(&xs)?)?)?;
        dropout(&self.output.forward(&ys)?, self.hidden_dropout, train)?.f_add(&xs).map_err(Into::into)
    }
}

/// What [`AstModel::forward_t`] returns.
#[derive(Debug)]
pub struct AstModelOutput {
    /// After the final LayerNorm: `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor,
    /// Mean of the CLS and distillation tokens of `last_hidden_state`: `[batch, hidden]`.
    pub pooled: Tensor,
    /// Embedding output, then each layer's output (before the final LayerNorm), as HF's
    /// `output_hidden_states`; empty unless asked for with [`AstModel::forward_all_t`].
    pub hidden_states: Vec<Tensor>,
}

/// The encoder (ASTModel): embeddings, `encoder.layer.*`, final `layernorm`.
#[derive(Debug)]
pub struct AstModel {
    pub config: AstConfig,
    pub embeddings: AstEmbeddings,
    /// `encoder.layer.N`.
    pub layers: Vec<AstLayer>,
    pub layernorm: LayerNorm,
}

impl AstModel {
    /// Creates the variables under `p` (use the VarStore root: paths are the checkpoint keys).
    pub fn new(p: &tch::nn::Path, config: &AstConfig) -> Result<Self> {
        config.validate().map_err(|m| Error::config("(AST config)", m))?;
        let enc = p / "encoder" / "layer";
        let layers =
            (0..config.num_hidden_layers).map(|i| AstLayer::new(&(&enc / i), config)).collect::<Result<Vec<_>>>()?;
        Ok(AstModel {
            config: config.clone(),
            embeddings: AstEmbeddings::new(&(p / "embeddings"), config)?,
            layers,
            layernorm: LayerNorm::new(&(p / "layernorm"), config.hidden_size, config.layer_norm_eps)?,
        })
    }

    /// Spectrogram features `[batch, max_length, num_mel_bins]` (from [`AstFrontEnd`]) → outputs.
    /// Dropout is active only when `train` is set.
    pub fn forward_t(&self, input_values: &Tensor, train: bool) -> Result<AstModelOutput> {
        self.run(input_values, train, false)
    }

    /// Like [`AstModel::forward_t`], also keeping every layer's hidden states (memory-hungry).
    pub fn forward_all_t(&self, input_values: &Tensor, train: bool) -> Result<AstModelOutput> {
        self.run(input_values, train, true)
    }

    fn run(&self, input_values: &Tensor, train: bool, keep: bool) -> Result<AstModelOutput> {
        let size = input_values.size();
        let c = &self.config;
        if size.len() != 3 || size[1] != c.max_length || size[2] != c.num_mel_bins {
            return Err(Error::config(
                "(AST input)",
                format!(
                    "expected spectrograms [batch, {}, {}] (max_length, num_mel_bins of the model), got {size:?}",
                    c.max_length, c.num_mel_bins
                ),
            ));
        }
        let mut xs = self.embeddings.forward_t(input_values, train)?;
        let mut hidden_states = Vec::new();
        for layer in &self.layers {
            if keep {
                hidden_states.push(xs.shallow_clone());
            }
            xs = layer.forward_t(&xs, train)?;
        }
        if keep {
            hidden_states.push(xs.shallow_clone());
        }
        let last_hidden_state = self.layernorm.forward(&xs)?;
        let pooled = last_hidden_state.f_narrow(1, 0, 2)?.f_mean_dim(1, false, None::<Kind>)?;
        Ok(AstModelOutput { last_hidden_state, pooled, hidden_states })
    }
}

/// An AST backbone ready to use: its VarStore (one per separately optimised network), the
/// encoder and the matching front end.
#[derive(Debug)]
pub struct Ast {
    pub vs: VarStore,
    pub model: AstModel,
    pub front_end: AstFrontEnd,
}

impl Ast {
    /// A randomly initialised AST (HF's initialisation) on `device`.
    pub fn from_config(config: &AstConfig, device: Device) -> Result<Self> {
        let vs = VarStore::new(device);
        let model = AstModel::new(&vs.root(), config)?;
        let front_end = AstFrontEnd::new(config.front_end_config(), device)?;
        Ok(Ast { vs, model, front_end })
    }

    /// Loads a HuggingFace AST directory strictly (`config.json` + weights), with `overrides`
    /// merged over its config. The front end follows `preprocessor_config.json` when present.
    pub fn from_dir(
        dir: &Path,
        hf_id: Option<&str>,
        overrides: &std::collections::BTreeMap<String, serde_json::Value>,
        device: Device,
    ) -> Result<Self> {
        let hf = HfDir::open(dir, hf_id)?;
        let config: AstConfig = hf.config_with(overrides)?;
        config.validate().map_err(|m| Error::config(hf.config_path(), m))?;
        let mut ast = Ast::from_config(&config, device)?;
        hf.load_weights(&mut ast.vs, &[PREFIX], &HEAD_PREFIXES, &[])?;
        let fe = read_preprocessor_config(dir, config.front_end_config())?;
        ast.front_end = AstFrontEnd::new(fe, device)?;
        Ok(ast)
    }

    /// Builds the backbone a model spec names: from scratch (its `[config]` over the defaults) or
    /// from its checkpoint directory.
    pub fn from_spec(spec: &ModelSpec, device: Device) -> Result<Self> {
        let origin = format!("(model spec '{}')", spec.name);
        if spec.kind != ModelKind::Ast {
            return Err(Error::config(origin, format!("kind {:?} is not an AST", spec.kind)));
        }
        if spec.from_scratch {
            let value = serde_json::Value::Object(spec.config.clone().into_iter().collect());
            let config: AstConfig = serde_json::from_value(value).map_err(|e| Error::config(&origin, e.to_string()))?;
            config.validate().map_err(|m| Error::config(&origin, m))?;
            return Ast::from_config(&config, device);
        }
        let Some(dir) = &spec.path else {
            return Err(Error::config(origin, "needs `path` (a checkpoint directory) or from_scratch = true"));
        };
        Ast::from_dir(dir, spec.hf_id.as_deref(), &spec.config, device)
    }

    /// Pooled features of a zero-padded waveform batch `[batch, samples]` with real `lengths`:
    /// → `[batch, hidden]`.
    pub fn embed_t(&self, waveforms: &Tensor, lengths: Option<&[i64]>, train: bool) -> Result<Tensor> {
        let feats = self.front_end.forward(waveforms, lengths)?;
        Ok(self.model.forward_t(&feats, train)?.pooled)
    }
}

/// The fields of `preprocessor_config.json` (ASTFeatureExtractor) that change the features.
#[derive(Debug, Deserialize)]
struct Preprocessor {
    max_length: Option<i64>,
    num_mel_bins: Option<i64>,
    sampling_rate: Option<f64>,
    mean: Option<f64>,
    std: Option<f64>,
    do_normalize: Option<bool>,
}

fn read_preprocessor_config(dir: &Path, mut fe: AstFrontEndConfig) -> Result<AstFrontEndConfig> {
    let path = dir.join("preprocessor_config.json");
    if !path.is_file() {
        return Ok(fe);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let p: Preprocessor = serde_json::from_str(&text).map_err(|e| Error::config(&path, e.to_string()))?;
    if let Some(v) = p.max_length.filter(|&v| v != fe.max_length) {
        return Err(Error::config(
            &path,
            format!("max_length {v} differs from the model's max_length {} in config.json", fe.max_length),
        ));
    }
    if let Some(v) = p.num_mel_bins {
        fe.fbank.num_mel_bins = v;
    }
    if let Some(v) = p.sampling_rate {
        fe.fbank.sample_rate = v;
    }
    if let Some(v) = p.mean {
        fe.mean = v;
    }
    if let Some(v) = p.std {
        fe.std = v;
    }
    if let Some(v) = p.do_normalize {
        fe.do_normalize = v;
    }
    Ok(fe)
}
