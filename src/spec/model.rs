//! Model specs: the files in `configs/backbones/`. They say which pretrained checkpoint (a
//! HuggingFace model directory the user downloaded) or which from-scratch configuration a job
//! uses, for audio backbones and text encoders alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::spec::toml_message;
use crate::error::{Error, Result};

/// Model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Audio Spectrogram Transformer (SER tables).
    Ast,
    /// wav2vec2 (multimodal tables; audeering's large-robust-12).
    Wav2vec2,
    /// BERT text encoder.
    Bert,
    /// RoBERTa text encoder.
    Roberta,
    /// Text features computed elsewhere (e.g. Llama 3, Table VI): `features.safetensors` + `ids.json`.
    Precomputed,
}

/// How a text encoder pools token states into one feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    Cls,
    Mean,
    Pooler,
}

/// A model spec, with paths resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Name used in tables and caches. Defaults to the file stem.
    #[serde(default)]
    pub name: String,
    pub kind: ModelKind,
    /// HuggingFace id of the checkpoint, used in the download hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_id: Option<String>,
    /// Checkpoint directory (`config.json`, `model.safetensors`, `tokenizer.json`). Relative to the spec file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Initialise randomly from `config` instead of loading a checkpoint (the tiny test backbones).
    #[serde(default)]
    pub from_scratch: bool,
    /// `config.json` fields for from-scratch models (or overrides of a checkpoint's config).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, serde_json::Value>,
    /// Pooling of text encoders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// Directory of precomputed features (`kind = "precomputed"`). Relative to the spec file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<PathBuf>,
}

impl ModelSpec {
    /// Reads a model spec; relative paths become relative to the spec file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut spec: ModelSpec = toml::from_str(&text).map_err(|e| Error::config(path, toml_message(&e, &text)))?;
        if spec.name.is_empty() {
            spec.name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = std::path::absolute(&base).unwrap_or(base);
        for p in [&mut spec.path, &mut spec.features].into_iter().flatten() {
            *p = base.join(&*p);
        }
        spec.validate().map_err(|m| Error::config(path, m))?;
        Ok(spec)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match self.kind {
            ModelKind::Precomputed => {
                if self.features.is_none() {
                    return Err(
                        "kind = \"precomputed\" needs `features = \"<dir with features.safetensors and ids.json>\"`"
                            .into(),
                    );
                }
            }
            _ if self.from_scratch => {
                if self.config.is_empty() {
                    return Err("from_scratch = true needs a [config] table (the config.json fields)".into());
                }
            }
            _ => {
                if self.path.is_none() {
                    return Err(
                        "needs `path = \"<checkpoint directory>\"` (or from_scratch = true with a [config])".into()
                    );
                }
            }
        }
        if self.pooling.is_some() && !matches!(self.kind, ModelKind::Bert | ModelKind::Roberta) {
            return Err("`pooling` only applies to text encoders (bert, roberta)".into());
        }
        Ok(())
    }

    /// Checks that what the spec points at exists, with a message saying how to get it.
    pub fn check_available(&self) -> Result<()> {
        if let (ModelKind::Precomputed, Some(dir)) = (self.kind, &self.features) {
            for file in ["features.safetensors", "ids.json"] {
                if !dir.join(file).is_file() {
                    return Err(Error::config(
                        dir.join(file),
                        format!(
                            "precomputed features of '{}' not found; write them with `sera features … --out {}`",
                            self.name,
                            dir.display()
                        ),
                    ));
                }
            }
            return Ok(());
        }
        if self.from_scratch {
            return Ok(());
        }
        let Some(dir) = &self.path else { return Ok(()) };
        if !dir.join("config.json").is_file() {
            let hint = match &self.hf_id {
                Some(id) => format!("download it with `huggingface-cli download {id} --local-dir {}`", dir.display()),
                None => "point `path` in the model spec at a HuggingFace model directory".to_string(),
            };
            return Err(Error::config(
                dir,
                format!("checkpoint of '{}' not found (no config.json); {hint}", self.name),
            ));
        }
        Ok(())
    }
}
