//! wav2vec2 in tch, computing what transformers' `Wav2Vec2Model` computes (transformers 5.24.0,
//! `models/wav2vec2/modeling_wav2vec2.py`), plus the `Wav2Vec2FeatureExtractor` front end
//! (`do_normalize=True, return_attention_mask=True`) and masked mean pooling.
//!
//! Both architectures the paper's backbones use are covered:
//! - base (`feat_extract_norm = "group"`, `do_stable_layer_norm = false`): group norm on the first
//!   conv layer only, post-LN transformer layers with a LayerNorm *before* the stack;
//! - large-robust, e.g. audeering's `wav2vec2-large-robust-12-ft-emotion-msp-dim`
//!   (`"layer"`, `true`): layer norm after every conv, pre-LN layers with a LayerNorm *after* the stack.
//!
//! Inference (`train = false`) is deterministic: no dropout, no layerdrop, no SpecAugment. In training,
//! dropout, layerdrop and SpecAugment time/feature masking follow the config like HF does.
//!
//! VarStore paths equal HF's `Wav2Vec2Model` keys (`feature_extractor.conv_layers.0.conv.weight`, …),
//! so checkpoints saved from `Wav2Vec2Model` or from a wrapper (`wav2vec2.` prefix) load as they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, TchError, Tensor};

use crate::error::{Error, Result};
use crate::models::hf::HfDir;
use crate::models::nn::{Activation, LayerNorm, Linear, attention, dropout};
use crate::spec::model::{ModelKind, ModelSpec};

/// The prefix of the backbone in checkpoints saved from HF's task wrappers and audeering's `EmotionModel`.
pub const CHECKPOINT_PREFIX: &str = "wav2vec2.";

/// Heads of task wrappers (`ForSequenceClassification`, `ForCTC`, `ForPreTraining`, audeering's
/// regression head `classifier.dense`/`classifier.out_proj`) that a backbone does not build.
pub const IGNORED_HEADS: [&str; 7] =
    ["classifier.", "projector.", "lm_head.", "quantizer.", "project_hid.", "project_q.", "layer_weights"];

/// `Wav2Vec2FeatureExtractor`'s variance floor in the per-utterance normalisation.
pub const NORM_EPS: f64 = 1e-7;

/// Epsilon of the conv-layer norms: HF builds them with PyTorch's default, not `layer_norm_eps`.
const CONV_NORM_EPS: f64 = 1e-5;

/// Which normalisation the conv feature encoder uses (`feat_extract_norm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatExtractNorm {
    /// GroupNorm with one group per channel on the first conv layer only (wav2vec2-base).
    Group,
    /// LayerNorm over channels after every conv layer (large-robust, XLS-R).
    Layer,
}

/// `config.json` of a wav2vec2 model, field for field as `Wav2Vec2Config` (transformers 5.24.0);
/// absent fields take HF's defaults. Fields that only matter to heads we do not build (CTC,
/// quantizer, x-vector) are left out and ignored when present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Wav2Vec2Config {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    /// Activation of the feed-forward blocks.
    pub hidden_act: String,
    /// Dropout after attention and feed-forward outputs, and after the positional embedding.
    pub hidden_dropout: f64,
    /// Dropout inside the feed-forward block (after the activation).
    pub activation_dropout: f64,
    /// Dropout on the attention probabilities.
    pub attention_dropout: f64,
    /// Dropout after the feature projection.
    pub feat_proj_dropout: f64,
    /// Dropout of task heads (kept for completeness; the backbone does not use it).
    pub final_dropout: f64,
    /// Probability of skipping a whole transformer layer in training.
    pub layerdrop: f64,
    /// Std of the normal initialisation of linear layers (from-scratch models).
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub feat_extract_norm: FeatExtractNorm,
    /// Activation of the conv feature encoder and of the positional conv.
    pub feat_extract_activation: String,
    pub conv_dim: Vec<i64>,
    pub conv_stride: Vec<i64>,
    pub conv_kernel: Vec<i64>,
    pub conv_bias: bool,
    /// Taps of the positional conv (128 in released models).
    pub num_conv_pos_embeddings: i64,
    pub num_conv_pos_embedding_groups: i64,
    /// Pre-LN layers and a final LayerNorm (true) or post-LN layers and a LayerNorm first (false).
    pub do_stable_layer_norm: bool,
    /// Master switch of SpecAugment masking in training.
    pub apply_spec_augment: bool,
    pub mask_time_prob: f64,
    pub mask_time_length: i64,
    pub mask_time_min_masks: i64,
    pub mask_feature_prob: f64,
    pub mask_feature_length: i64,
    pub mask_feature_min_masks: i64,
    /// Written by HF as `len(conv_dim)`; checked when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_feat_extract_layers: Option<i64>,
    /// The conv adapter of encoder-decoder setups; not supported.
    pub add_adapter: bool,
    /// The MMS attention adapters; not supported.
    pub adapter_attn_dim: Option<i64>,
}

impl Default for Wav2Vec2Config {
    /// `Wav2Vec2Config()` (facebook/wav2vec2-base geometry).
    fn default() -> Self {
        Wav2Vec2Config {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout: 0.1,
            activation_dropout: 0.1,
            attention_dropout: 0.1,
            feat_proj_dropout: 0.0,
            final_dropout: 0.1,
            layerdrop: 0.1,
            initializer_range: 0.02,
            layer_norm_eps: 1e-5,
            feat_extract_norm: FeatExtractNorm::Group,
            feat_extract_activation: "gelu".into(),
            conv_dim: vec![512; 7],
            conv_stride: vec![5, 2, 2, 2, 2, 2, 2],
            conv_kernel: vec![10, 3, 3, 3, 3, 2, 2],
            conv_bias: false,
            num_conv_pos_embeddings: 128,
            num_conv_pos_embedding_groups: 16,
            do_stable_layer_norm: false,
            apply_spec_augment: true,
            mask_time_prob: 0.05,
            mask_time_length: 10,
            mask_time_min_masks: 2,
            mask_feature_prob: 0.0,
            mask_feature_length: 10,
            mask_feature_min_masks: 0,
            num_feat_extract_layers: None,
            add_adapter: false,
            adapter_attn_dim: None,
        }
    }
}

impl Wav2Vec2Config {
    /// Checks what serde cannot: consistent conv lists, divisible widths, supported options.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.conv_dim.len();
        if n == 0 || self.conv_kernel.len() != n || self.conv_stride.len() != n {
            return Err(format!(
                "conv_dim, conv_kernel and conv_stride must have the same non-zero length (got {}, {}, {})",
                n,
                self.conv_kernel.len(),
                self.conv_stride.len()
            ));
        }
        if let Some(layers) = self.num_feat_extract_layers
            && layers != n as i64
        {
            return Err(format!("num_feat_extract_layers = {layers} but conv_dim has {n} entries"));
        }
        let positive =
            |name: &str, v: i64| if v > 0 { Ok(()) } else { Err(format!("{name} must be positive (got {v})")) };
        for (i, ((&d, &k), &s)) in self.conv_dim.iter().zip(&self.conv_kernel).zip(&self.conv_stride).enumerate() {
            positive(&format!("conv_dim[{i}]"), d)?;
            positive(&format!("conv_kernel[{i}]"), k)?;
            positive(&format!("conv_stride[{i}]"), s)?;
        }
        positive("hidden_size", self.hidden_size)?;
        positive("num_attention_heads", self.num_attention_heads)?;
        positive("intermediate_size", self.intermediate_size)?;
        positive("num_conv_pos_embeddings", self.num_conv_pos_embeddings)?;
        positive("num_conv_pos_embedding_groups", self.num_conv_pos_embedding_groups)?;
        if self.num_hidden_layers < 0 {
            return Err(format!("num_hidden_layers must not be negative (got {})", self.num_hidden_layers));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.hidden_size % self.num_conv_pos_embedding_groups != 0 {
            return Err(format!(
                "hidden_size {} is not divisible by num_conv_pos_embedding_groups {}",
                self.hidden_size, self.num_conv_pos_embedding_groups
            ));
        }
        for (name, p) in [
            ("hidden_dropout", self.hidden_dropout),
            ("activation_dropout", self.activation_dropout),
            ("attention_dropout", self.attention_dropout),
            ("feat_proj_dropout", self.feat_proj_dropout),
            ("layerdrop", self.layerdrop),
            ("mask_time_prob", self.mask_time_prob),
            ("mask_feature_prob", self.mask_feature_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1] (got {p})"));
            }
        }
        if self.add_adapter {
            return Err("add_adapter = true (the conv adapter) is not supported".into());
        }
        if self.adapter_attn_dim.is_some() {
            return Err("adapter_attn_dim (MMS attention adapters) is not supported".into());
        }
        Activation::parse(&self.hidden_act)?;
        Activation::parse(&self.feat_extract_activation).map_err(|e| format!("feat_extract_activation: {e}"))?;
        Ok(())
    }

    /// Number of frames the conv stack makes of `samples` samples (HF's
    /// `_get_feat_extract_output_lengths`, no adapter); ≤ 0 when the input is too short.
    pub fn frames_for(&self, samples: i64) -> i64 {
        self.conv_kernel.iter().zip(&self.conv_stride).fold(samples, |n, (&k, &s)| (n - k).div_euclid(s) + 1)
    }

    /// The fewest samples that give one frame (400 for the released models).
    pub fn receptive_field(&self) -> i64 {
        // Walk back from one output frame: a conv needs `(n − 1)·s + k` inputs for `n` outputs.
        self.conv_kernel.iter().zip(&self.conv_stride).rev().fold(1, |n, (&k, &s)| (n - 1) * s + k)
    }

    /// Whether the model owns `masked_spec_embed` (HF creates it only when some masking is configured).
    fn has_masked_spec_embed(&self) -> bool {
        self.mask_time_prob > 0.0 || self.mask_feature_prob > 0.0
    }
}

/// A 1-d convolution with parameters at `<path>.weight` `[out, in/groups, k]` and `<path>.bias`.
/// HF: `nn.Conv1d` inside the conv layers.
#[derive(Debug)]
struct Conv1d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
}

impl Conv1d {
    /// Kaiming-normal weights and uniform bias, as `Wav2Vec2PreTrainedModel._init_weights`.
    fn new(p: &tch::nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, bias: bool) -> Result<Self> {
        let fan_in = (c_in * kernel) as f64;
        let weight =
            p.f_var("weight", &[c_out, c_in, kernel], Init::Randn { mean: 0.0, stdev: (2.0 / fan_in).sqrt() })?;
        let bound = (1.0 / fan_in).sqrt();
        let bias = if bias { Some(p.f_var("bias", &[c_out], Init::Uniform { lo: -bound, up: bound })?) } else { None };
        Ok(Conv1d { weight, bias, stride })
    }

    /// `[batch, in, time]` → `[batch, out, frames]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.f_conv1d(&self.weight, self.bias.as_ref(), [self.stride], [0], [1], 1)?)
    }
}

/// The norm of one conv layer.
#[derive(Debug)]
enum ConvNorm {
    None,
    /// GroupNorm with one group per channel: each channel normalised over time (and so over padding).
    Group {
        weight: Tensor,
        bias: Tensor,
        channels: i64,
    },
    /// LayerNorm over the channels of each frame.
    Layer(LayerNorm),
}

/// One conv layer of the feature encoder.
/// HF: `Wav2Vec2NoLayerNormConvLayer`, `Wav2Vec2LayerNormConvLayer`, `Wav2Vec2GroupNormConvLayer`.
#[derive(Debug)]
struct ConvLayer {
    conv: Conv1d,
    norm: ConvNorm,
    activation: Activation,
}

impl ConvLayer {
    fn new(p: &tch::nn::Path, config: &Wav2Vec2Config, layer: usize, activation: Activation) -> Result<Self> {
        let c_in = if layer == 0 { 1 } else { config.conv_dim[layer - 1] };
        let c_out = config.conv_dim[layer];
        let conv = Conv1d::new(
            &(p / "conv"),
            c_in,
            c_out,
            config.conv_kernel[layer],
            config.conv_stride[layer],
            config.conv_bias,
        )?;
        let norm = match config.feat_extract_norm {
            FeatExtractNorm::Group if layer == 0 => {
                let q = p / "layer_norm";
                ConvNorm::Group {
                    weight: q.f_var("weight", &[c_out], Init::Const(1.0))?,
                    bias: q.f_var("bias", &[c_out], Init::Const(0.0))?,
                    channels: c_out,
                }
            }
            FeatExtractNorm::Group => ConvNorm::None,
            FeatExtractNorm::Layer => ConvNorm::Layer(LayerNorm::new(&(p / "layer_norm"), c_out, CONV_NORM_EPS)?),
        };
        Ok(ConvLayer { conv, norm, activation })
    }

    /// `[batch, in, time]` → `[batch, out, frames]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.conv.forward(xs)?;
        let xs = match &self.norm {
            ConvNorm::None => xs,
            ConvNorm::Group { weight, bias, channels } => {
                xs.f_group_norm(*channels, Some(weight), Some(bias), CONV_NORM_EPS, true)?
            }
            ConvNorm::Layer(ln) => ln.forward(&xs.f_transpose(1, 2)?)?.f_transpose(1, 2)?,
        };
        self.activation.forward(&xs)
    }
}

/// The conv feature encoder. HF: `Wav2Vec2FeatureEncoder` (`feature_extractor`).
#[derive(Debug)]
pub struct FeatureEncoder {
    conv_layers: Vec<ConvLayer>,
}

impl FeatureEncoder {
    fn new(p: &tch::nn::Path, config: &Wav2Vec2Config) -> Result<Self> {
        let activation = Activation::parse(&config.feat_extract_activation).map_err(TchError::Convert)?;
        let p = p / "conv_layers";
        let conv_layers = (0..config.conv_dim.len())
            .map(|i| ConvLayer::new(&(&p / i), config, i, activation))
            .collect::<Result<Vec<_>>>()?;
        Ok(FeatureEncoder { conv_layers })
    }

    /// Waveforms `[batch, samples]` → conv features `[batch, conv_dim[-1], frames]`.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let mut xs = input.f_unsqueeze(1)?;
        for layer in &self.conv_layers {
            xs = layer.forward(&xs)?;
        }
        Ok(xs)
    }
}

/// LayerNorm and linear projection of conv features to the model width.
/// HF: `Wav2Vec2FeatureProjection` (`feature_projection`).
#[derive(Debug)]
struct FeatureProjection {
    layer_norm: LayerNorm,
    projection: Linear,
    dropout: f64,
}

impl FeatureProjection {
    fn new(p: &tch::nn::Path, config: &Wav2Vec2Config) -> Result<Self> {
        let c = *config.conv_dim.last().unwrap_or(&1);
        let layer_norm = LayerNorm::new(&(p / "layer_norm"), c, config.layer_norm_eps)?;
        // HF initialises this projection uniformly in ±1/√fan_in rather than with the linear default.
        let q = p / "projection";
        let bound = (1.0 / c as f64).sqrt();
        let projection = Linear {
            weight: q.f_var("weight", &[config.hidden_size, c], Init::Uniform { lo: -bound, up: bound })?,
            bias: Some(q.f_var("bias", &[config.hidden_size], Init::Uniform { lo: -bound, up: bound })?),
        };
        Ok(FeatureProjection { layer_norm, projection, dropout: config.feat_proj_dropout })
    }

    /// `[batch, frames, conv_dim[-1]]` → (`[batch, frames, hidden]`, the normalised input).
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let normed = self.layer_norm.forward(xs)?;
        let hidden = dropout(&self.projection.forward(&normed)?, self.dropout, train)?;
        Ok((hidden, normed))
    }
}

/// The grouped positional convolution with weight norm over the kernel axis (`dim=2`).
/// HF: `Wav2Vec2PositionalConvEmbedding` + `Wav2Vec2SamePadLayer` (`encoder.pos_conv_embed`).
#[derive(Debug)]
struct PositionalConvEmbedding {
    /// `[1, 1, k]`: one magnitude per tap (HF's `parametrizations.weight.original0`).
    weight_g: Tensor,
    /// `[hidden, hidden/groups, k]`: the direction (`original1`).
    weight_v: Tensor,
    bias: Tensor,
    kernel: i64,
    groups: i64,
    activation: Activation,
}

impl PositionalConvEmbedding {
    fn new(p: &tch::nn::Path, config: &Wav2Vec2Config, activation: Activation) -> Result<Self> {
        let (h, k, g) = (config.hidden_size, config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups);
        let p = p / "conv";
        let std = 2.0 * (1.0 / (k * (h / g)) as f64).sqrt();
        let weight_v = p.f_var("weight_v", &[h, h / g, k], Init::Randn { mean: 0.0, stdev: std })?;
        // weight_norm starts with g = ‖v‖, so the effective weight equals the initial v.
        let g_init = tch::no_grad(|| weight_v.f_norm_scalaropt_dim(2, [0, 1], true))?;
        let weight_g = p.f_var_copy("weight_g", &g_init)?;
        let bias = p.f_var("bias", &[h], Init::Const(0.0))?;
        Ok(PositionalConvEmbedding { weight_g, weight_v, bias, kernel: k, groups: g, activation })
    }

    /// `[batch, frames, hidden]` → `[batch, frames, hidden]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // torch's _weight_norm(v, g, dim=2): w = v · g / ‖v‖, the norm taken over every axis but 2.
        let norm = self.weight_v.f_norm_scalaropt_dim(2, [0, 1], true)?;
        let weight = self.weight_v.f_mul(&self.weight_g.f_div(&norm)?)?;
        let ys = xs.f_transpose(1, 2)?.f_conv1d(&weight, Some(&self.bias), [1], [self.kernel / 2], [1], self.groups)?;
        // With an even kernel, padding k/2 on both sides yields one frame too many; HF drops the last.
        let ys = if self.kernel % 2 == 0 {
            let t = ys.size().last().copied().unwrap_or(0);
            ys.f_narrow(2, 0, t - 1)?
        } else {
            ys
        };
        Ok(self.activation.forward(&ys)?.f_transpose(1, 2)?)
    }
}

/// Self-attention with q/k/v/out projections. HF: `Wav2Vec2Attention` (`attention`).
#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: i64,
    dropout: f64,
}

impl Attention {
    fn new(p: &tch::nn::Path, config: &Wav2Vec2Config) -> Result<Self> {
        let (h, std) = (config.hidden_size, config.initializer_range);
        Ok(Attention {
            q_proj: Linear::new(&(p / "q_proj"), h, h, true, std)?,
            k_proj: Linear::new(&(p / "k_proj"), h, h, true, std)?,
            v_proj: Linear::new(&(p / "v_proj"), h, h, true, std)?,
            out_proj: Linear::new(&(p / "out_proj"), h, h, true, std)?,
            heads: config.num_attention_heads,
            dropout: config.attention_dropout,
        })
    }

    /// `[batch, frames, hidden]` with key mask `[batch, frames]` → `[batch, frames, hidden]`.
    fn forward_t(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let q = self.q_proj.forward(xs)?;
        let k = self.k_proj.forward(xs)?;
        let v = self.v_proj.forward(xs)?;
        let out = attention(&q, &k, &v, self.heads, mask, self.dropout, train)?;
        self.out_proj.forward(&out)
    }
}

/// HF: `Wav2Vec2FeedForward` (`feed_forward`).
#[derive(Debug)]
struct FeedForward {
    intermediate_dense: Linear,
    output_dense: Linear,
    activation: Activation,
    activation_dropout: f64,
    hidden_dropout: f64,
}

impl FeedForward {
    fn new(p: &tch::nn::Path, config: &Wav2Vec2Config) -> Result<Self> {
        let (h, f, std) = (config.hidden_size, config.intermediate_size, config.initializer_range);
        Ok(FeedForward {
            intermediate_dense: Linear::new(&(p / "intermediate_dense"), h, f, true, std)?,
            output_dense: Linear::new(&(p / "output_dense"), f, h, true, std)?,
            activation: Activation::parse(&config.hidden_act).map_err(TchError::Convert)?,
            activation_dropout: config.activation_dropout,
            hidden_dropout: config.hidden_dropout,
        })
    }

    /// `[batch, frames, hidden]` → `[batch, frames, hidden]`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let ys = self.activation.forward(&self.intermediate_dense.forward(xs)?)?;
        let ys = dropout(&ys, self.activation_dropout, train)?;
        dropout(&self.output_dense.forward(&ys)?, self.hidden_dropout, train)
    }
}

/// One transformer layer. HF: `Wav2Vec2EncoderLayer` (post-LN) and
/// `Wav2Vec2EncoderLayerStableLayerNorm` (pre-LN); both have the same parameters.
#[derive(Debug)]
struct EncoderLayer {
    attention: Attention,
    layer_norm: LayerNorm,
    feed_forward: FeedForward,
    final_layer_norm: LayerNorm,
    hidden_dropout: f64,
    stable: bool,
}

impl EncoderLayer {
    fn new(p: &tch::nn::Path, config: &Wav2Vec2Config) -> Result<Self> {
        Ok(EncoderLayer {
            attention: Attention::new(&(p / "attention"), config)?,
            layer_norm: LayerNorm::new(&(p / "layer_norm"), config.hidden_size, config.layer_norm_eps)?,
            feed_forward: FeedForward::new(&(p / "feed_forward"), config)?,
            final_layer_norm: LayerNorm::new(&(p / "final_layer_norm"), config.hidden_size, config.layer_norm_eps)?,
            hidden_dropout: config.hidden_dropout,
            stable: config.do_stable_layer_norm,
        })
    }

    /// `[batch, frames, hidden]` → `[batch, frames, hidden]`.
    fn forward_t(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        if self.stable {
            let attn = self.attention.forward_t(&self.layer_norm.forward(xs)?, mask, train)?;
            let xs = xs.f_add(&dropout(&attn, self.hidden_dropout, train)?)?;
            let ff = self.feed_forward.forward_t(&self.final_layer_norm.forward(&xs)?, train)?;
            Ok(xs.f_add(&ff)?)
        } else {
            let attn = self.attention.forward_t(xs, mask, train)?;
            let xs = self.layer_norm.forward(&xs.f_add(&dropout(&attn, self.hidden_dropout, train)?)?)?;
            let ff = self.feed_forward.forward_t(&xs, train)?;
            self.final_layer_norm.forward(&xs.f_add(&ff)?)
        }
    }
}

/// The transformer stack. HF: `Wav2Vec2Encoder` / `Wav2Vec2EncoderStableLayerNorm` (`encoder`).
#[derive(Debug)]
struct Encoder {
    pos_conv_embed: PositionalConvEmbedding,
    layer_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    hidden_dropout: f64,
    layerdrop: f64,
    stable: bool,
}

impl Encoder {
    fn new(p: &tch::nn::Path, config: &Wav2Vec2Config) -> Result<Self> {
        let activation = Activation::parse(&config.feat_extract_activation).map_err(TchError::Convert)?;
        let layers_path = p / "layers";
        Ok(Encoder {
            pos_conv_embed: PositionalConvEmbedding::new(&(p / "pos_conv_embed"), config, activation)?,
            layer_norm: LayerNorm::new(&(p / "layer_norm"), config.hidden_size, config.layer_norm_eps)?,
            layers: (0..config.num_hidden_layers)
                .map(|i| EncoderLayer::new(&(&layers_path / i), config))
                .collect::<Result<Vec<_>>>()?,
            hidden_dropout: config.hidden_dropout,
            layerdrop: config.layerdrop,
            stable: config.do_stable_layer_norm,
        })
    }

    /// `[batch, frames, hidden]` with frame mask `[batch, frames]` (bool) → `[batch, frames, hidden]`.
    fn forward_t(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        // Padded frames are zeroed so that the positional conv sees the same zeros near the end of
        // a short utterance as it does when the utterance is alone (its own zero padding).
        let xs = match mask {
            Some(m) => xs.f_where_self(&m.f_unsqueeze(-1)?, &xs.f_zeros_like()?)?,
            None => xs.shallow_clone(),
        };
        let mut xs = xs.f_add(&self.pos_conv_embed.forward(&xs)?)?;
        if !self.stable {
            xs = self.layer_norm.forward(&xs)?;
        }
        xs = dropout(&xs, self.hidden_dropout, train)?;
        for layer in &self.layers {
            if train && self.layerdrop > 0.0 {
                let draw = f64::try_from(Tensor::f_rand([] as [i64; 0], (Kind::Float, Device::Cpu))?)?;
                if draw < self.layerdrop {
                    continue;
                }
            }
            xs = layer.forward_t(&xs, mask, train)?;
        }
        if self.stable { self.layer_norm.forward(&xs) } else { Ok(xs) }
    }
}

/// What [`Wav2Vec2Model::forward_t`] returns.
#[derive(Debug)]
pub struct Wav2Vec2Output {
    /// `[batch, frames, hidden]`; rows past a frame length hold values that are not comparable
    /// with anything (use [`Wav2Vec2Output::pooled`] or `frame_mask`).
    pub last_hidden_state: Tensor,
    /// The normalised conv features `[batch, frames, conv_dim[-1]]` (HF's `extract_features`).
    pub extract_features: Tensor,
    /// `[batch, frames]` bool, true on frames computed from real samples; `None` without an input mask.
    pub frame_mask: Option<Tensor>,
}

impl Wav2Vec2Output {
    /// Mean of `last_hidden_state` over the valid frames: `[batch, hidden]`.
    pub fn pooled(&self) -> Result<Tensor> {
        masked_mean(&self.last_hidden_state, self.frame_mask.as_ref())
    }
}

/// Mean over frames of `hidden` `[batch, frames, dim]`, counting only frames where `mask`
/// `[batch, frames]` is true (all frames without a mask): `[batch, dim]`.
pub fn masked_mean(hidden: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let Some(mask) = mask else { return Ok(hidden.f_mean_dim(1, false, None::<Kind>)?) };
    let m = mask.f_to_kind(hidden.kind())?.f_unsqueeze(-1)?;
    // `where` rather than a product, so that non-finite values in padded frames cannot leak in.
    let kept = hidden.f_where_self(&mask.f_unsqueeze(-1)?.f_to_kind(Kind::Bool)?, &hidden.f_zeros_like()?)?;
    let count = m.f_sum_dim_intlist(1, false, None::<Kind>)?.f_clamp_min(1.0)?;
    Ok(kept.f_sum_dim_intlist(1, false, None::<Kind>)?.f_div(&count)?)
}

/// The wav2vec2 backbone. HF: `Wav2Vec2Model`.
#[derive(Debug)]
pub struct Wav2Vec2Model {
    pub config: Wav2Vec2Config,
    feature_extractor: FeatureEncoder,
    feature_projection: FeatureProjection,
    /// `[hidden]`: what SpecAugment writes into masked frames (present when masking is configured).
    masked_spec_embed: Option<Tensor>,
    encoder: Encoder,
}

impl Wav2Vec2Model {
    /// Builds the model under `p` (the VarStore root for HF's key layout), randomly initialised as HF does.
    /// Call [`Wav2Vec2Config::validate`] first; this only reports tensor errors.
    pub fn new(p: &tch::nn::Path, config: &Wav2Vec2Config) -> Result<Self> {
        let masked_spec_embed = if config.has_masked_spec_embed() {
            Some(p.f_var("masked_spec_embed", &[config.hidden_size], Init::Uniform { lo: 0.0, up: 1.0 })?)
        } else {
            None
        };
        Ok(Wav2Vec2Model {
            config: config.clone(),
            feature_extractor: FeatureEncoder::new(&(p / "feature_extractor"), config)?,
            feature_projection: FeatureProjection::new(&(p / "feature_projection"), config)?,
            masked_spec_embed,
            encoder: Encoder::new(&(p / "encoder"), config)?,
        })
    }

    /// Frame mask `[batch, frames]` (bool) from a sample mask `[batch, samples]` (nonzero = real
    /// sample, left-aligned as the feature extractor pads): the sample counts go through the conv
    /// length formula exactly as HF's `_get_feature_vector_attention_mask`.
    pub fn frame_mask(&self, sample_mask: &Tensor, frames: i64) -> Result<Tensor> {
        let mut lengths = sample_mask.f_ne(0)?.f_sum_dim_intlist(-1, false, Kind::Int64)?;
        for (&k, &s) in self.config.conv_kernel.iter().zip(&self.config.conv_stride) {
            lengths = lengths.f_sub_scalar(k)?.f_div_scalar_mode(s, "floor")?.f_add_scalar(1)?;
        }
        let shortest = i64::try_from(lengths.f_min()?)?;
        if shortest < 1 {
            return Err(shape_error(format!(
                "an utterance in the batch is shorter than the {} samples that make one wav2vec2 frame; pad or \
                 drop such clips",
                self.config.receptive_field()
            )));
        }
        let positions = Tensor::f_arange(frames, (Kind::Int64, lengths.device()))?.f_unsqueeze(0)?;
        Ok(positions.f_lt_tensor(&lengths.f_unsqueeze(-1)?)?)
    }

    /// Normalised waveforms `[batch, samples]` (see [`normalize`]) with an optional sample mask
    /// `[batch, samples]` → hidden states. `train` turns on dropout, layerdrop and SpecAugment.
    pub fn forward_t(&self, input: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Wav2Vec2Output> {
        let size = input.size();
        let [batch, samples] = size[..] else {
            return Err(shape_error(format!("wav2vec2 input must be [batch, samples], got {size:?}")));
        };
        if let Some(m) = mask
            && m.size() != size
        {
            return Err(shape_error(format!(
                "wav2vec2 attention mask {:?} does not match the input {size:?}",
                m.size()
            )));
        }
        if self.config.frames_for(samples) < 1 {
            return Err(shape_error(format!(
                "wav2vec2 input has {samples} samples; at least {} are needed for one frame",
                self.config.receptive_field()
            )));
        }
        // The front end yields float32; a model kept in bf16 (rather than under autocast) needs its own kind.
        let input = match self.feature_extractor.conv_layers.first() {
            Some(first) if first.conv.weight.kind() != input.kind() => input.f_to_kind(first.conv.weight.kind())?,
            _ => input.shallow_clone(),
        };
        let features = self.feature_extractor.forward(&input)?.f_transpose(1, 2)?;
        let frames = features.size()[1];
        let frame_mask = mask.map(|m| self.frame_mask(m, frames)).transpose()?;
        let (hidden, extract_features) = self.feature_projection.forward_t(&features, train)?;
        let hidden = if train { self.spec_augment(&hidden, frame_mask.as_ref(), batch)? } else { hidden };
        let last_hidden_state = self.encoder.forward_t(&hidden, frame_mask.as_ref(), train)?;
        Ok(Wav2Vec2Output { last_hidden_state, extract_features, frame_mask })
    }

    /// SpecAugment as `Wav2Vec2Model._mask_hidden_states` in training: spans of frames replaced by
    /// `masked_spec_embed`, spans of channels zeroed. `hidden`: `[batch, frames, hidden]`.
    fn spec_augment(&self, hidden: &Tensor, frame_mask: Option<&Tensor>, batch: i64) -> Result<Tensor> {
        let c = &self.config;
        if !c.apply_spec_augment {
            return Ok(hidden.shallow_clone());
        }
        let (_, frames, width) = hidden.size3()?;
        let mut hidden = hidden.shallow_clone();
        if c.mask_time_prob > 0.0
            && let Some(embed) = &self.masked_spec_embed
        {
            let lengths: Vec<i64> = match frame_mask {
                Some(m) => {
                    Vec::<i64>::try_from(m.f_sum_dim_intlist(-1, false, Kind::Int64)?.f_to_device(Device::Cpu)?)?
                }
                None => vec![frames; batch as usize],
            };
            let spans = span_mask(&lengths, frames, c.mask_time_prob, c.mask_time_length, c.mask_time_min_masks)?;
            let spans = spans.f_to_device(hidden.device())?.f_unsqueeze(-1)?;
            hidden = embed.f_to_kind(hidden.kind())?.f_expand_as(&hidden)?.f_where_self(&spans, &hidden)?;
        }
        if c.mask_feature_prob > 0.0 {
            let lengths = vec![width; batch as usize];
            let spans =
                span_mask(&lengths, width, c.mask_feature_prob, c.mask_feature_length, c.mask_feature_min_masks)?;
            let spans = spans.f_to_device(hidden.device())?.f_unsqueeze(1)?;
            hidden = hidden.f_masked_fill(&spans, 0.0)?;
        }
        Ok(hidden)
    }
}

/// HF's `_compute_mask_indices`: for each row of valid length `L`, `⌊p·L/len + ε⌋` spans (at least
/// `min_masks`, at most what fits) of `len` positions, starts drawn without replacement; one ε per
/// call. Draws from torch's generator, so `tch::manual_seed` makes it repeatable. `[rows, size]` bool.
fn span_mask(lengths: &[i64], size: i64, prob: f64, len: i64, min_masks: i64) -> Result<Tensor> {
    let rows = lengths.len();
    let mut mask = vec![false; rows * size as usize];
    // HF raises when a span is longer than the sequence; a too-short batch is just left unmasked here.
    if len >= 1 && len <= size {
        let epsilon = f64::try_from(Tensor::f_rand([] as [i64; 0], (Kind::Double, Device::Cpu))?)?;
        for (row, &length) in lengths.iter().enumerate() {
            let mut spans = ((prob * length as f64 / len as f64 + epsilon) as i64).max(min_masks);
            if spans * len > size {
                spans = size / len;
            }
            let starts = length - (len - 1);
            spans = spans.min(starts.max(0));
            if spans == 0 {
                continue;
            }
            let order = Vec::<i64>::try_from(Tensor::f_randperm(starts, (Kind::Int64, Device::Cpu))?)?;
            for &s in order.iter().take(spans as usize) {
                for t in s..(s + len).min(size) {
                    mask[row * size as usize + t as usize] = true;
                }
            }
        }
    }
    Ok(Tensor::f_from_slice(&mask)?.f_view([rows as i64, size])?)
}

fn shape_error(message: String) -> Error {
    Error::Torch(TchError::Shape(message))
}

/// `Wav2Vec2FeatureExtractor`'s per-utterance normalisation `(x − mean) / √(var + 1e-7)` over the
/// real samples, population variance, padding left at 0. `input` `[batch, samples]`, `mask`
/// `[batch, samples]` (nonzero = real sample; `None` = no padding) → `[batch, samples]` float32.
/// The statistics are accumulated in float64, since a long utterance in float32 loses digits.
pub fn normalize(input: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let x = input.f_to_kind(Kind::Double)?;
    let valid = match mask {
        Some(m) => m.f_ne(0)?,
        None => x.f_ones_like()?.f_to_kind(Kind::Bool)?,
    };
    let w = valid.f_to_kind(Kind::Double)?;
    let n = w.f_sum_dim_intlist(-1, true, None::<Kind>)?.f_clamp_min(1.0)?;
    let mean = x.f_mul(&w)?.f_sum_dim_intlist(-1, true, None::<Kind>)?.f_div(&n)?;
    let centred = x.f_sub(&mean)?;
    let var = centred.f_square()?.f_mul(&w)?.f_sum_dim_intlist(-1, true, None::<Kind>)?.f_div(&n)?;
    let normed = centred.f_div(&var.f_add_scalar(NORM_EPS)?.f_sqrt()?)?;
    Ok(normed.f_where_self(&valid, &normed.f_zeros_like()?)?.f_to_kind(Kind::Float)?)
}

/// Zero-pads waveforms into `[batch, max_len]` and returns it with the sample mask `[batch,
/// max_len]` (int64, 1 on real samples), on `device`.
pub fn pad_batch(waves: &[&[f32]], device: Device) -> Result<(Tensor, Tensor)> {
    let longest = waves.iter().map(|w| w.len()).max().unwrap_or(0);
    let mut data = vec![0f32; waves.len() * longest];
    let mut mask = vec![0i64; waves.len() * longest];
    for (i, w) in waves.iter().enumerate() {
        data[i * longest..i * longest + w.len()].copy_from_slice(w);
        mask[i * longest..i * longest + w.len()].fill(1);
    }
    let shape = [waves.len() as i64, longest as i64];
    let data = Tensor::f_from_slice(&data)?.f_view(shape)?.f_to_device(device)?;
    let mask = Tensor::f_from_slice(&mask)?.f_view(shape)?.f_to_device(device)?;
    Ok((data, mask))
}

/// A wav2vec2 backbone with its own VarStore (one per separately optimised network).
#[derive(Debug)]
pub struct Wav2Vec2 {
    pub vs: VarStore,
    pub model: Wav2Vec2Model,
}

impl Wav2Vec2 {
    /// A randomly initialised model (HF's initialisation) on `device`. `source` names where the
    /// config came from in error messages.
    pub fn from_config(config: Wav2Vec2Config, device: Device, source: &Path) -> Result<Self> {
        config.validate().map_err(|m| Error::config(source, m))?;
        let vs = VarStore::new(device);
        let model = Wav2Vec2Model::new(&vs.root(), &config)?;
        Ok(Wav2Vec2 { vs, model })
    }

    /// Loads a HuggingFace checkpoint directory (`Wav2Vec2Model`, a task wrapper with the
    /// `wav2vec2.` prefix, or audeering's `EmotionModel`; heads are skipped), with `overrides` of
    /// config.json fields (e.g. dropouts for fine-tuning).
    pub fn from_pretrained(
        dir: &Path,
        hf_id: Option<&str>,
        overrides: &BTreeMap<String, serde_json::Value>,
        device: Device,
    ) -> Result<Self> {
        let hf = HfDir::open(dir, hf_id)?;
        let config: Wav2Vec2Config = hf.config_with(overrides)?;
        let mut model = Wav2Vec2::from_config(config, device, &hf.config_path())?;
        // `masked_spec_embed` is only a training parameter: a checkpoint may carry it even when the
        // (overridden) config turns masking off.
        let ignore_suffixes: &[&str] =
            if model.model.masked_spec_embed.is_some() { &[] } else { &["masked_spec_embed"] };
        hf.load_weights(&mut model.vs, &[CHECKPOINT_PREFIX], &IGNORED_HEADS, ignore_suffixes)?;
        Ok(model)
    }

    /// Builds the backbone a model spec names: a checkpoint directory, or from scratch with `[config]`.
    pub fn from_spec(spec: &ModelSpec, device: Device) -> Result<Self> {
        let source = PathBuf::from(format!("model spec '{}'", spec.name));
        if spec.kind != ModelKind::Wav2vec2 {
            return Err(Error::config(source, format!("expected kind = \"wav2vec2\", got {:?}", spec.kind)));
        }
        if spec.from_scratch {
            let config = serde_json::Value::Object(spec.config.clone().into_iter().collect());
            let config: Wav2Vec2Config =
                serde_json::from_value(config).map_err(|e| Error::config(&source, format!("[config]: {e}")))?;
            return Wav2Vec2::from_config(config, device, &source);
        }
        let Some(dir) = &spec.path else {
            return Err(Error::config(source, "needs `path` (a checkpoint directory) or from_scratch = true"));
        };
        Wav2Vec2::from_pretrained(dir, spec.hf_id.as_deref(), &spec.config, device)
    }

    /// The model's configuration.
    pub fn config(&self) -> &Wav2Vec2Config {
        &self.model.config
    }

    /// Width of the pooled feature.
    pub fn hidden_size(&self) -> i64 {
        self.model.config.hidden_size
    }

    /// See [`Wav2Vec2Model::forward_t`]: normalised `[batch, samples]` + sample mask → hidden states.
    pub fn forward_t(&self, input: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Wav2Vec2Output> {
        self.model.forward_t(input, mask, train)
    }

    /// Pooled features `[batch, hidden]` of raw waveforms (16 kHz, any lengths): pads, normalises,
    /// runs in inference mode without gradients, and mean-pools the valid frames.
    pub fn embed(&self, waves: &[&[f32]]) -> Result<Tensor> {
        let (raw, mask) = pad_batch(waves, self.vs.device())?;
        tch::no_grad(|| {
            let input = normalize(&raw, Some(&mask))?;
            self.forward_t(&input, Some(&mask), false)?.pooled()
        })
    }
}
