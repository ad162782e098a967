//! BERT and RoBERTa text encoders, as transformers implements them (`models/bert/modeling_bert.py`,
//! `models/roberta/modeling_roberta.py`, v5.24).
//!
//! RoBERTa is the BERT encoder behind its own embeddings: the same parameters, but position ids
//! that skip padding and start at `padding_idx + 1` (`create_position_ids_from_input_ids`), so
//! loading RoBERTa "as BERT" would silently shift every position by two. VarStore paths are the
//! checkpoint keys (`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`,
//! `pooler.dense.weight`, …); the `bert.`/`roberta.` prefixes of task checkpoints are accepted and
//! their heads (`cls.`, `lm_head.`, `classifier.`) ignored.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

use super::hf::HfDir;
use super::nn::{Activation, LayerNorm, Linear, attention, dropout};
use super::text::{Encoded, TextTokenizer};
use crate::error::{Error, Result};
use crate::spec::model::{ModelKind, ModelSpec, Pooling};

/// Heads of BERT/RoBERTa task checkpoints that a feature extractor never builds.
pub const HEAD_PREFIXES: [&str; 5] = ["cls.", "lm_head.", "classifier.", "qa_outputs.", "qa_output."];
/// Buffers some checkpoints carry (`embeddings.position_ids`, `embeddings.token_type_ids`).
pub const BUFFER_SUFFIXES: [&str; 2] = ["position_ids", "token_type_ids"];

/// Which embedding scheme: BERT's positions 0, 1, … or RoBERTa's padding-offset positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Bert,
    Roberta,
}

impl Flavor {
    /// The checkpoint prefix of task models (`BertForPreTraining`, `RobertaForMaskedLM`, …).
    pub fn prefix(self) -> &'static str {
        match self {
            Flavor::Bert => "bert.",
            Flavor::Roberta => "roberta.",
        }
    }
}

/// `config.json` of a BERT or RoBERTa checkpoint (`BertConfig` / `RobertaConfig`); absent fields
/// take bert-base-uncased's defaults. Other keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
    /// Only "absolute" is supported (what BERT and RoBERTa checkpoints use).
    pub position_embedding_type: String,
    /// "bert" or "roberta" in real configs; decides the embeddings unless the spec's kind does.
    pub model_type: String,
}

impl Default for BertConfig {
    fn default() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            model_type: "bert".into(),
        }
    }
}

impl BertConfig {
    /// The flavour `model_type` names (anything but "roberta" is BERT).
    pub fn flavor(&self) -> Flavor {
        if self.model_type == "roberta" { Flavor::Roberta } else { Flavor::Bert }
    }

    /// Checks the sizes fit together; the message names the offending fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden_size <= 0 || self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} must be a positive multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type \"{}\" is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        Activation::parse(&self.hidden_act)?;
        Ok(())
    }

    /// How many tokens one input may have: all positions for BERT; RoBERTa loses
    /// `pad_token_id + 1` of them to its position offset (512 of 514).
    pub fn max_tokens(&self, flavor: Flavor) -> i64 {
        match flavor {
            Flavor::Bert => self.max_position_embeddings,
            Flavor::Roberta => self.max_position_embeddings - self.pad_token_id - 1,
        }
    }
}

/// An embedding table at `p.weight`, `[rows, dim]`.
fn embedding_table(p: &tch::nn::Path, rows: i64, dim: i64, std: f64) -> Result<Tensor> {
    Ok(p.f_var("weight", &[rows, dim], Init::Randn { mean: 0.0, stdev: std })?)
}

/// `embeddings` of BERT (BertEmbeddings) and RoBERTa (RobertaEmbeddings): the same tables, a
/// different position rule.
#[derive(Debug)]
pub struct BertEmbeddings {
    /// `[vocab, hidden]`.
    pub word_embeddings: Tensor,
    /// `[max_positions, hidden]`.
    pub position_embeddings: Tensor,
    /// `[type_vocab, hidden]`.
    pub token_type_embeddings: Tensor,
    /// `LayerNorm` (the checkpoint's capitalisation).
    pub layer_norm: LayerNorm,
    flavor: Flavor,
    padding_idx: i64,
    max_positions: i64,
    dropout: f64,
}

impl BertEmbeddings {
    pub fn new(p: &tch::nn::Path, c: &BertConfig, flavor: Flavor) -> Result<Self> {
        let (h, std) = (c.hidden_size, c.initializer_range);
        let word_embeddings = embedding_table(&(p / "word_embeddings"), c.vocab_size, h, std)?;
        let position_embeddings = embedding_table(&(p / "position_embeddings"), c.max_position_embeddings, h, std)?;
        // HF zeroes the padding rows of freshly initialised tables (nn.Embedding(padding_idx=…)).
        tch::no_grad(|| -> Result<()> {
            if (0..c.vocab_size).contains(&c.pad_token_id) {
                let _ = word_embeddings.f_get(c.pad_token_id)?.f_zero_()?;
            }
            if flavor == Flavor::Roberta && (0..c.max_position_embeddings).contains(&c.pad_token_id) {
                let _ = position_embeddings.f_get(c.pad_token_id)?.f_zero_()?;
            }
            Ok(())
        })?;
        Ok(BertEmbeddings {
            word_embeddings,
            position_embeddings,
            token_type_embeddings: embedding_table(&(p / "token_type_embeddings"), c.type_vocab_size, h, std)?,
            layer_norm: LayerNorm::new(&(p / "LayerNorm"), h, c.layer_norm_eps)?,
            flavor,
            padding_idx: c.pad_token_id,
            max_positions: c.max_position_embeddings,
            dropout: c.hidden_dropout_prob,
        })
    }

    /// Position ids `[batch, tokens]`: `0, 1, …` for BERT; for RoBERTa `padding_idx + 1, …` over
    /// the real tokens and `padding_idx` on padding (HF's `create_position_ids_from_input_ids`,
    /// which looks at the ids, not at the attention mask).
    pub fn position_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids.size2()?;
        let device = input_ids.device();
        Ok(match self.flavor {
            Flavor::Bert => Tensor::f_arange(l, (Kind::Int64, device))?.f_unsqueeze(0)?.f_expand([b, l], false)?,
            Flavor::Roberta => {
                let real = input_ids.f_ne(self.padding_idx)?.f_to_kind(Kind::Int64)?;
                real.f_cumsum(1, Kind::Int64)?.f_mul(&real)?.f_add_scalar(self.padding_idx)?
            }
        })
    }

    /// `input_ids`, `token_type_ids` (`None`: all 0) `[batch, tokens]` → `[batch, tokens, hidden]`.
    pub fn forward_t(&self, input_ids: &Tensor, token_type_ids: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let position_ids = self.position_ids(input_ids)?;
        let max_pos = position_ids.f_max()?.int64_value(&[]);
        if max_pos >= self.max_positions {
            return Err(Error::config(
                "(text encoder input)",
                format!(
                    "{} tokens need position {max_pos}, but the model has {} positions; truncate the input",
                    input_ids.size()[1],
                    self.max_positions
                ),
            ));
        }
        let token_types = match token_type_ids {
            Some(t) => t.shallow_clone(),
            None => input_ids.f_zeros_like()?,
        };
        let words = Tensor::f_embedding(&self.word_embeddings, input_ids, -1, false, false)?;
        let types = Tensor::f_embedding(&self.token_type_embeddings, &token_types, -1, false, false)?;
        let positions = Tensor::f_embedding(&self.position_embeddings, &position_ids, -1, false, false)?;
        let xs = self.layer_norm.forward(&words.f_add(&types)?.f_add(&positions)?)?;
        dropout(&xs, self.dropout, train)
    }
}

/// `encoder.layer.N.attention` (BertAttention): `self.{query,key,value}` and
/// `output.{dense,LayerNorm}` (BertSelfOutput, post-LN residual).
#[derive(Debug)]
pub struct BertAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    /// `output.dense`.
    pub output: Linear,
    /// `output.LayerNorm`.
    pub output_layer_norm: LayerNorm,
    heads: i64,
    attention_dropout: f64,
    hidden_dropout: f64,
}

impl BertAttention {
    pub fn new(p: &tch::nn::Path, c: &BertConfig) -> Result<Self> {
        let (h, std) = (c.hidden_size, c.initializer_range);
        let s = p / "self";
        let o = p / "output";
        Ok(BertAttention {
            query: Linear::new(&(&s / "query"), h, h, true, std)?,
            key: Linear::new(&(&s / "key"), h, h, true, std)?,
            value: Linear::new(&(&s / "value"), h, h, true, std)?,
            output: Linear::new(&(&o / "dense"), h, h, true, std)?,
            output_layer_norm: LayerNorm::new(&(&o / "LayerNorm"), h, c.layer_norm_eps)?,
            heads: c.num_attention_heads,
            attention_dropout: c.attention_probs_dropout_prob,
            hidden_dropout: c.hidden_dropout_prob,
        })
    }

    /// `[batch, tokens, hidden]`, key mask `[batch, tokens]` → `[batch, tokens, hidden]`.
    pub fn forward_t(&self, xs: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let (q, k, v) = (self.query.forward(xs)?, self.key.forward(xs)?, self.value.forward(xs)?);
        let ctx = attention(&q, &k, &v, self.heads, Some(mask), self.attention_dropout, train)?;
        let ys = dropout(&self.output.forward(&ctx)?, self.hidden_dropout, train)?;
        self.output_layer_norm.forward(&ys.f_add(xs)?)
    }
}

/// `encoder.layer.N` (BertLayer): attention, then `intermediate.dense` → activation →
/// `output.dense` → dropout → `output.LayerNorm` with the residual.
#[derive(Debug)]
pub struct BertLayer {
    pub attention: BertAttention,
    /// `intermediate.dense`.
    pub intermediate: Linear,
    /// `output.dense`.
    pub output: Linear,
    /// `output.LayerNorm`.
    pub output_layer_norm: LayerNorm,
    act: Activation,
    hidden_dropout: f64,
}

impl BertLayer {
    pub fn new(p: &tch::nn::Path, c: &BertConfig) -> Result<Self> {
        let act = Activation::parse(&c.hidden_act).map_err(|m| Error::config("(BERT config)", m))?;
        let (h, i, std) = (c.hidden_size, c.intermediate_size, c.initializer_range);
        Ok(BertLayer {
            attention: BertAttention::new(&(p / "attention"), c)?,
            intermediate: Linear::new(&(p / "intermediate" / "dense"), h, i, true, std)?,
            output: Linear::new(&(p / "output" / "dense"), i, h, true, std)?,
            output_layer_norm: LayerNorm::new(&(p / "output" / "LayerNorm"), h, c.layer_norm_eps)?,
            act,
            hidden_dropout: c.hidden_dropout_prob,
        })
    }

    /// `[batch, tokens, hidden]`, key mask `[batch, tokens]` → `[batch, tokens, hidden]`.
    pub fn forward_t(&self, xs: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let a = self.attention.forward_t(xs, mask, train)?;
        let ys = self.act.forward(&self.intermediate.forward(&a)?)?;
        let ys = dropout(&self.output.forward(&ys)?, self.hidden_dropout, train)?;
        self.output_layer_norm.forward(&ys.f_add(&a)?)
    }
}

/// `pooler` (BertPooler): `tanh(dense(h[:, 0]))`.
#[derive(Debug)]
pub struct BertPooler {
    /// `pooler.dense`.
    pub dense: Linear,
}

impl BertPooler {
    pub fn new(p: &tch::nn::Path, c: &BertConfig) -> Result<Self> {
        Ok(BertPooler { dense: Linear::new(&(p / "dense"), c.hidden_size, c.hidden_size, true, c.initializer_range)? })
    }

    /// `[batch, tokens, hidden]` → `[batch, hidden]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.dense.forward(&xs.f_select(1, 0)?)?.f_tanh()?)
    }
}

/// What [`BertModel::forward_t`] returns.
#[derive(Debug)]
pub struct BertOutput {
    /// `[batch, tokens, hidden]`.
    pub last_hidden_state: Tensor,
    /// The pooler's output `[batch, hidden]`, if the model has a pooler.
    pub pooler_output: Option<Tensor>,
    /// Embedding output, then each layer's output (HF's `output_hidden_states`); empty unless
    /// asked for with [`BertModel::forward_all_t`].
    pub hidden_states: Vec<Tensor>,
}

/// The BERT/RoBERTa encoder (BertModel / RobertaModel).
#[derive(Debug)]
pub struct BertModel {
    pub config: BertConfig,
    pub flavor: Flavor,
    pub embeddings: BertEmbeddings,
    /// `encoder.layer.N`.
    pub layers: Vec<BertLayer>,
    /// Built only when asked for: many checkpoints (RobertaForMaskedLM) have no trained pooler.
    pub pooler: Option<BertPooler>,
}

impl BertModel {
    /// Creates the variables under `p` (use the VarStore root: paths are the checkpoint keys).
    pub fn new(p: &tch::nn::Path, config: &BertConfig, flavor: Flavor, with_pooler: bool) -> Result<Self> {
        config.validate().map_err(|m| Error::config("(BERT config)", m))?;
        let enc = p / "encoder" / "layer";
        let layers =
            (0..config.num_hidden_layers).map(|i| BertLayer::new(&(&enc / i), config)).collect::<Result<Vec<_>>>()?;
        let pooler = if with_pooler { Some(BertPooler::new(&(p / "pooler"), config)?) } else { None };
        Ok(BertModel {
            config: config.clone(),
            flavor,
            embeddings: BertEmbeddings::new(&(p / "embeddings"), config, flavor)?,
            layers,
            pooler,
        })
    }

    /// `input_ids`, `attention_mask` (1 = real token), optional `token_type_ids`, all
    /// `[batch, tokens]` → outputs. Dropout is active only when `train` is set.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<BertOutput> {
        self.run(input_ids, attention_mask, token_type_ids, train, false)
    }

    /// Like [`BertModel::forward_t`], also keeping every layer's hidden states.
    pub fn forward_all_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<BertOutput> {
        self.run(input_ids, attention_mask, token_type_ids, train, true)
    }

    fn run(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
        keep: bool,
    ) -> Result<BertOutput> {
        if input_ids.size() != attention_mask.size() {
            return Err(Error::config(
                "(text encoder input)",
                format!(
                    "input_ids {:?} and attention_mask {:?} differ in shape",
                    input_ids.size(),
                    attention_mask.size()
                ),
            ));
        }
        let mut xs = self.embeddings.forward_t(input_ids, token_type_ids, train)?;
        let mut hidden_states = Vec::new();
        for layer in &self.layers {
            if keep {
                hidden_states.push(xs.shallow_clone());
            }
            xs = layer.forward_t(&xs, attention_mask, train)?;
        }
        if keep {
            hidden_states.push(xs.shallow_clone());
        }
        let pooler_output = match &self.pooler {
            Some(p) => Some(p.forward(&xs)?),
            None => None,
        };
        Ok(BertOutput { last_hidden_state: xs, pooler_output, hidden_states })
    }
}

/// Pools token states into one vector per text: `[batch, tokens, hidden]` → `[batch, hidden]`.
/// `Mean` averages only the real tokens (so padding never changes a text's feature).
pub fn pool(output: &BertOutput, attention_mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    let h = &output.last_hidden_state;
    match pooling {
        Pooling::Cls => Ok(h.f_select(1, 0)?),
        Pooling::Mean => {
            let m = attention_mask.f_to_kind(h.kind())?.f_unsqueeze(-1)?;
            let sum = h.f_mul(&m)?.f_sum_dim_intlist(1, false, None::<Kind>)?;
            let count = m.f_sum_dim_intlist(1, false, None::<Kind>)?.f_clamp_min(1.0)?;
            Ok(sum.f_div(&count)?)
        }
        Pooling::Pooler => match &output.pooler_output {
            Some(p) => Ok(p.shallow_clone()),
            None => {
                Err(Error::config("(text encoder)", "pooling = \"pooler\" but the model was built without a pooler"))
            }
        },
    }
}

/// A text encoder ready to use: VarStore, encoder, tokenizer (when loaded from a directory) and
/// pooling.
#[derive(Debug)]
pub struct TextEncoder {
    pub vs: VarStore,
    pub model: BertModel,
    pub tokenizer: Option<TextTokenizer>,
    pub pooling: Pooling,
}

impl TextEncoder {
    /// A randomly initialised encoder (HF's initialisation) on `device`.
    pub fn from_config(config: &BertConfig, flavor: Flavor, pooling: Pooling, device: Device) -> Result<Self> {
        let vs = VarStore::new(device);
        let model = BertModel::new(&vs.root(), config, flavor, pooling == Pooling::Pooler)?;
        Ok(TextEncoder { vs, model, tokenizer: None, pooling })
    }

    /// Loads a HuggingFace BERT/RoBERTa directory strictly (config.json, weights, tokenizer.json),
    /// with `overrides` merged over its config. `flavor` `None` follows the config's `model_type`.
    pub fn from_dir(
        dir: &Path,
        hf_id: Option<&str>,
        overrides: &BTreeMap<String, serde_json::Value>,
        flavor: Option<Flavor>,
        pooling: Pooling,
        device: Device,
    ) -> Result<Self> {
        let hf = HfDir::open(dir, hf_id)?;
        let config: BertConfig = hf.config_with(overrides)?;
        config.validate().map_err(|m| Error::config(hf.config_path(), m))?;
        let flavor = flavor.unwrap_or(config.flavor());
        let mut enc = TextEncoder::from_config(&config, flavor, pooling, device)?;
        let mut ignore: Vec<&str> = HEAD_PREFIXES.to_vec();
        if pooling != Pooling::Pooler {
            ignore.push("pooler.");
        }
        hf.load_weights(&mut enc.vs, &[flavor.prefix()], &ignore, &BUFFER_SUFFIXES)?;
        let max_tokens = config.max_tokens(flavor).max(1) as usize;
        let pad = u32::try_from(config.pad_token_id).unwrap_or(0);
        enc.tokenizer = Some(TextTokenizer::from_file(&hf.tokenizer_path(), max_tokens, pad)?);
        Ok(enc)
    }

    /// Builds the encoder a model spec names (kind bert or roberta; pooling defaults to CLS).
    pub fn from_spec(spec: &ModelSpec, device: Device) -> Result<Self> {
        let origin = format!("(model spec '{}')", spec.name);
        let flavor = match spec.kind {
            ModelKind::Bert => Flavor::Bert,
            ModelKind::Roberta => Flavor::Roberta,
            other => return Err(Error::config(origin, format!("kind {other:?} is not a text encoder"))),
        };
        let pooling = spec.pooling.unwrap_or(Pooling::Cls);
        if spec.from_scratch {
            let mut map: serde_json::Map<String, serde_json::Value> = spec.config.clone().into_iter().collect();
            if flavor == Flavor::Roberta {
                // RoBERTa's defaults differ from BERT's where it matters for positions.
                map.entry("pad_token_id").or_insert(1.into());
                map.entry("model_type").or_insert("roberta".into());
            }
            let config: BertConfig = serde_json::from_value(serde_json::Value::Object(map))
                .map_err(|e| Error::config(&origin, e.to_string()))?;
            config.validate().map_err(|m| Error::config(&origin, m))?;
            return TextEncoder::from_config(&config, flavor, pooling, device);
        }
        let Some(dir) = &spec.path else {
            return Err(Error::config(origin, "needs `path` (a checkpoint directory) or from_scratch = true"));
        };
        TextEncoder::from_dir(dir, spec.hf_id.as_deref(), &spec.config, Some(flavor), pooling, device)
    }

    /// Encodes token batches: → `[batch, hidden]` pooled features.
    pub fn embed_encoded_t(&self, enc: &Encoded, train: bool) -> Result<Tensor> {
        let out = self.model.forward_t(&enc.input_ids, &enc.attention_mask, Some(&enc.token_type_ids), train)?;
        pool(&out, &enc.attention_mask, self.pooling)
    }

    /// Tokenises and encodes `texts`: → `[texts, hidden]` pooled features.
    pub fn embed_texts_t(&self, texts: &[&str], train: bool) -> Result<Tensor> {
        let Some(tok) = &self.tokenizer else {
            return Err(Error::config("(text encoder)", "no tokenizer: load the encoder from a model directory"));
        };
        let enc = tok.encode_batch(texts, self.vs.device())?;
        self.embed_encoded_t(&enc, train)
    }
}
