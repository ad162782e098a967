//! Tokenisation of transcripts with the `tokenizers` crate on a checkpoint's `tokenizer.json`, into
//! padded id tensors with attention masks.
//!
//! Padding follows the file when it asks for it (some `tokenizer.json` files pad every input to a
//! fixed length); otherwise batches are padded to their longest member. Either way the attention
//! mask marks the real tokens, and the encoders rely on it rather than on the padding scheme.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{Error, Result};

/// A batch of tokenised texts, all `[batch, tokens]` int64 on one device.
#[derive(Debug)]
pub struct Encoded {
    /// Token ids, padded with the tokenizer's pad id.
    pub input_ids: Tensor,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// Segment ids (all 0 for single sentences).
    pub token_type_ids: Tensor,
}

/// A `tokenizer.json` ready to encode batches.
#[derive(Debug)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    pad_id: i64,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`. Inputs longer than `max_tokens` (the encoder's usable positions)
    /// are truncated unless the file already sets a shorter truncation. `pad_id` is used when the
    /// file has no padding settings of its own (the config's `pad_token_id`).
    pub fn from_file(path: &Path, max_tokens: usize, pad_id: u32) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::config(
                path,
                "tokenizer.json not found; download the whole model directory (config.json, model.safetensors, \
                 tokenizer.json)",
            ));
        }
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| Error::config(path, format!("tokenizer: {e}")))?;
        if tokenizer.get_padding().is_none() {
            let pad_token = tokenizer.id_to_token(pad_id).unwrap_or_default();
            tokenizer.with_padding(Some(PaddingParams {
                strategy: PaddingStrategy::BatchLongest,
                pad_id,
                pad_token,
                ..Default::default()
            }));
        }
        let keep = tokenizer.get_truncation().is_some_and(|t| t.max_length <= max_tokens);
        if !keep {
            tokenizer
                .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
                .map_err(|e| Error::config(path, format!("tokenizer truncation: {e}")))?;
        }
        if let Some(PaddingParams { strategy: PaddingStrategy::Fixed(n), .. }) = tokenizer.get_padding()
            && *n > max_tokens
        {
            return Err(Error::config(
                path,
                format!("pads every input to {n} tokens, more than the model's {max_tokens} positions"),
            ));
        }
        let pad_id = tokenizer.get_padding().map_or(pad_id, |p| p.pad_id) as i64;
        Ok(TextTokenizer { tokenizer, path: path.to_path_buf(), pad_id })
    }

    /// Tokenises `texts` (with the special tokens of the model, e.g. `[CLS] … [SEP]`) into one
    /// padded batch on `device`: `[texts, tokens]` each.
    pub fn encode_batch(&self, texts: &[&str], device: Device) -> Result<Encoded> {
        if texts.is_empty() {
            let empty = || Tensor::f_zeros([0, 0], (Kind::Int64, device));
            return Ok(Encoded { input_ids: empty()?, attention_mask: empty()?, token_type_ids: empty()? });
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::config(&self.path, format!("tokenising: {e}")))?;
        let len = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let (mut ids, mut mask, mut types) = (Vec::new(), Vec::new(), Vec::new());
        for e in &encodings {
            // encode_batch pads to a common length already; this only guards a tokenizer.json
            // whose padding is off.
            let pad = len - e.len();
            ids.extend(e.get_ids().iter().map(|&v| v as i64).chain(std::iter::repeat_n(self.pad_id, pad)));
            mask.extend(e.get_attention_mask().iter().map(|&v| v as i64).chain(std::iter::repeat_n(0, pad)));
            types.extend(e.get_type_ids().iter().map(|&v| v as i64).chain(std::iter::repeat_n(0, pad)));
        }
        let shape = [texts.len() as i64, len as i64];
        let t = |v: &[i64]| -> Result<Tensor> { Ok(Tensor::f_from_slice(v)?.f_view(shape)?.f_to_device(device)?) };
        Ok(Encoded { input_ids: t(&ids)?, attention_mask: t(&mask)?, token_type_ids: t(&types)? })
    }
}
