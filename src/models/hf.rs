//! HuggingFace model directories: `config.json`, `model.safetensors` (or `pytorch_model.bin`) and,
//! for text models, `tokenizer.json`, exactly as `huggingface-cli download` leaves them.
//!
//! Loading is strict because a silently missing tensor gives a randomly initialised layer and
//! plausible-looking but wrong features; every problem is collected and reported at once, by name,
//! so one run is enough to see everything that is wrong with a checkpoint.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use tch::Tensor;
use tch::nn::VarStore;

use crate::error::{Error, Result};

/// The weight files we read, in order of preference.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The legacy PyTorch pickle weight file.
pub const PYTORCH_BIN_FILE: &str = "pytorch_model.bin";
/// The model's config file.
pub const CONFIG_FILE: &str = "config.json";
/// The tokenizer of text models.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A HuggingFace model directory (config.json, model.safetensors, tokenizer.json).
#[derive(Debug, Clone)]
pub struct HfDir {
    /// The directory.
    pub dir: PathBuf,
    /// The parsed `config.json`.
    pub config: serde_json::Value,
}

impl HfDir {
    /// Opens `dir`; a missing dir or config.json is an error naming the path and, if hf_id is given,
    /// the command `huggingface-cli download <hf_id> --local-dir <dir>`.
    pub fn open(dir: &Path, hf_id: Option<&str>) -> Result<HfDir> {
        let config_path = dir.join(CONFIG_FILE);
        if !dir.is_dir() || !config_path.is_file() {
            let what = if dir.is_dir() { "has no config.json" } else { "does not exist" };
            return Err(Error::config(dir, format!("model directory {what}; {}", download_hint(dir, hf_id))));
        }
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::config(&config_path, format!("invalid JSON: {e}")))?;
        if !config.is_object() {
            return Err(Error::config(&config_path, "expected a JSON object"));
        }
        Ok(HfDir { dir: dir.to_path_buf(), config })
    }

    /// Path of `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// Path of `tokenizer.json`.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join(TOKENIZER_FILE)
    }

    /// Deserialises config.json into a typed config (serde defaults for absent fields), with
    /// `overrides` (e.g. a model spec's `[config]` table) merged over its top-level fields first.
    pub fn config_with<T: serde::de::DeserializeOwned>(
        &self,
        overrides: &BTreeMap<String, serde_json::Value>,
    ) -> Result<T> {
        let merged = merge_config(&self.config, overrides);
        serde_json::from_value(merged).map_err(|e| Error::config(self.config_path(), e.to_string()))
    }

    /// The weight file this directory provides (`model.safetensors` preferred).
    pub fn weights_path(&self) -> Result<PathBuf> {
        for name in [SAFETENSORS_FILE, PYTORCH_BIN_FILE] {
            let p = self.dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(Error::config(
            &self.dir,
            format!("no {SAFETENSORS_FILE} or {PYTORCH_BIN_FILE} in the model directory; download the weights too"),
        ))
    }

    /// Strictly loads model.safetensors into `vs`: every VarStore variable must be found (tensor names
    /// with or without any of `prefixes`, e.g. ["bert.", "audio_spectrogram_transformer.", "wav2vec2."]),
    /// shapes must match (error names the tensor and both shapes), and every tensor in the file that is
    /// not consumed must be listed as unexpected — unless its name ends with one of `ignore_suffixes`
    /// (known buffers such as "position_ids") or it belongs to a head the model doesn't build
    /// (pass such prefixes in `ignore_prefixes`, e.g. "classifier.", "cls.", "pooler." when not pooling).
    /// Weight norm: a VarStore variable named `X.weight_g` / `X.weight_v` also matches a file tensor
    /// `X.parametrizations.weight.original0` / `.original1`, and vice versa. Legacy LayerNorm names
    /// `X.gamma` / `X.beta` match variables `X.weight` / `X.bias`.
    /// All problems are collected and reported together, each by name.
    pub fn load_weights(
        &self,
        vs: &mut VarStore,
        prefixes: &[&str],
        ignore_prefixes: &[&str],
        ignore_suffixes: &[&str],
    ) -> Result<()> {
        let path = self.weights_path()?;
        let tensors = read_weight_file(&path)?;
        load_named_tensors(vs, tensors, prefixes, ignore_prefixes, ignore_suffixes)
            .map_err(|report| Error::config(&path, report))
    }
}

/// The message telling the user how to get a missing checkpoint.
pub fn download_hint(dir: &Path, hf_id: Option<&str>) -> String {
    match hf_id {
        Some(id) => format!("download it with `huggingface-cli download {id} --local-dir {}`", dir.display()),
        None => "point the model spec's `path` at a HuggingFace model directory (config.json + model.safetensors)"
            .to_string(),
    }
}

/// `base` (a JSON object) with the top-level keys of `overrides` replaced.
pub fn merge_config(base: &serde_json::Value, overrides: &BTreeMap<String, serde_json::Value>) -> serde_json::Value {
    let mut merged = match base {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    for (k, v) in overrides {
        merged.insert(k.clone(), v.clone());
    }
    serde_json::Value::Object(merged)
}

/// Reads a safetensors file, or a PyTorch zip-pickle state dict (`.bin`/`.pt`), into CPU tensors.
pub fn read_weight_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let is_safetensors = path.extension().and_then(|e| e.to_str()) == Some("safetensors");
    if is_safetensors {
        return Tensor::read_safetensors(path).map_err(|e| Error::config(path, format!("reading safetensors: {e}")));
    }
    // libtorch's pickle reader takes a plain dict of tensors in torch.save's zip format, but it
    // rejects the OrderedDict that HF's pytorch_model.bin holds (checked with libtorch 2.11) and the
    // pre-1.6 format; then converting to safetensors is one line of Python, which we spell out.
    Tensor::loadz_multi(path).map_err(|e| {
        let reason = e.to_string();
        let reason = reason.lines().next().unwrap_or_default().to_string();
        Error::config(
            path,
            format!(
                "libtorch cannot read this PyTorch pickle (HF state dicts are Python OrderedDicts; {reason}); \
                 convert it to safetensors with: python -c \"import torch, safetensors.torch as s; \
                 s.save_file({{k: v.contiguous() for k, v in torch.load('{p}', map_location='cpu').items()}}, '{q}')\"",
                p = path.display(),
                q = path.with_file_name(SAFETENSORS_FILE).display(),
            ),
        )
    })
}

/// The weight-norm spellings: old `weight_g`/`weight_v` and the parametrization API's
/// `parametrizations.weight.original0`/`original1` (what transformers ≥ 4.3x saves).
const WEIGHT_NORM_ALIASES: [(&str, &str); 2] =
    [("weight_g", "parametrizations.weight.original0"), ("weight_v", "parametrizations.weight.original1")];

/// The other spelling of a weight-norm tensor name, if it is one.
fn weight_norm_alias(name: &str) -> Option<String> {
    for (old, new) in WEIGHT_NORM_ALIASES {
        if let Some(stem) = name.strip_suffix(old).filter(|s| s.is_empty() || s.ends_with('.')) {
            return Some(format!("{stem}{new}"));
        }
        if let Some(stem) = name.strip_suffix(new).filter(|s| s.is_empty() || s.ends_with('.')) {
            return Some(format!("{stem}{old}"));
        }
    }
    None
}

/// All file names under which a VarStore variable may be stored, most specific first.
fn candidate_names(var: &str, prefixes: &[&str]) -> Vec<String> {
    let mut bases = vec![var.to_string()];
    // A variable may itself carry a prefix the file lacks (or the other way round).
    for p in prefixes {
        if let Some(rest) = var.strip_prefix(p) {
            bases.push(rest.to_string());
        } else {
            bases.push(format!("{p}{var}"));
        }
    }
    let mut out = Vec::with_capacity(bases.len() * 3);
    for b in bases {
        let alias = weight_norm_alias(&b);
        // TF-era BERT checkpoints (bert-base-uncased among them) still name LayerNorm parameters
        // gamma/beta; transformers renames them on load, and so do we.
        let legacy = b
            .strip_suffix(".weight")
            .map(|s| format!("{s}.gamma"))
            .or_else(|| b.strip_suffix(".bias").map(|s| format!("{s}.beta")));
        out.push(b);
        out.extend(alias);
        out.extend(legacy);
    }
    out
}

fn shape_str(s: &[i64]) -> String {
    let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// How many names of one kind a report lists before it summarises the rest.
const SHOWN_NAMES: usize = 50;

fn push_section(report: &mut String, title: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    report.push_str(&format!("\n  {} {title}:", items.len()));
    for it in items.iter().take(SHOWN_NAMES) {
        report.push_str("\n    ");
        report.push_str(it);
    }
    if items.len() > SHOWN_NAMES {
        report.push_str(&format!("\n    … and {} more", items.len() - SHOWN_NAMES));
    }
}

/// The matching rules of [`HfDir::load_weights`] on tensors already in memory; the error is the
/// full report (missing, shape mismatches, unexpected), without the file name.
pub fn load_named_tensors(
    vs: &mut VarStore,
    tensors: Vec<(String, Tensor)>,
    prefixes: &[&str],
    ignore_prefixes: &[&str],
    ignore_suffixes: &[&str],
) -> std::result::Result<(), String> {
    let file: HashMap<String, Tensor> = tensors.into_iter().collect();
    let mut consumed: HashSet<String> = HashSet::new();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut copy_errors = Vec::new();

    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut var) in vars {
        let Some(found) = candidate_names(&name, prefixes).into_iter().find(|c| file.contains_key(c)) else {
            missing.push(format!("{name} {}", shape_str(&var.size())));
            continue;
        };
        consumed.insert(found.clone());
        let Some(src) = file.get(&found) else { continue };
        if src.size() != var.size() {
            mismatched.push(format!(
                "{found}: checkpoint has {}, model expects {}",
                shape_str(&src.size()),
                shape_str(&var.size())
            ));
            continue;
        }
        // Keep the variable's kind and device: the model decides its precision, not the file.
        let res = tch::no_grad(|| {
            let src = src.f_to_kind(var.kind())?.f_to_device(var.device())?;
            var.f_copy_(&src)
        });
        if let Err(e) = res {
            copy_errors.push(format!("{found}: {e}"));
        }
    }

    let ignored = |n: &str| {
        if ignore_suffixes.iter().any(|s| n.ends_with(s)) {
            return true;
        }
        let mut forms = vec![n];
        forms.extend(prefixes.iter().filter_map(|p| n.strip_prefix(p)));
        forms.iter().any(|f| ignore_prefixes.iter().any(|ip| f.starts_with(ip)))
    };
    let mut unexpected: Vec<String> = file
        .iter()
        .filter(|(n, _)| !consumed.contains(*n) && !ignored(n))
        .map(|(n, t)| format!("{n} {}", shape_str(&t.size())))
        .collect();
    unexpected.sort();

    if missing.is_empty() && mismatched.is_empty() && unexpected.is_empty() && copy_errors.is_empty() {
        return Ok(());
    }
    let mut report = String::from("checkpoint does not match the model");
    push_section(&mut report, "missing tensor(s) (in the model, not in the checkpoint)", &missing);
    push_section(&mut report, "shape mismatch(es)", &mismatched);
    push_section(&mut report, "unexpected tensor(s) (in the checkpoint, not in the model)", &unexpected);
    push_section(&mut report, "tensor(s) that could not be copied", &copy_errors);
    Err(report)
}
