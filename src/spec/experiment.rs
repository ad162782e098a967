//! Experiment files (`configs/experiments/*.toml`): datasets, backbone, text encoder, stage
//! settings, variants and seeds. [`plan`] expands one into self-contained jobs, one per
//! dataset × fold × variant × seed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::job::{FoldRef, JOB_SCHEMA, Job, JobSpec, VariantRef};
use super::model::ModelSpec;
use super::stages::StageSettings;
use crate::data::folds::FoldSet;
use crate::data::spec::toml_message;
use crate::data::{self, DatasetSpec};
use crate::error::{Error, Result};

/// Partial stage settings, merged over the stage file (experiment level, then variant level).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage0: Option<toml::Table>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage1: Option<toml::Table>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage2: Option<toml::Table>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage3: Option<toml::Table>,
}

impl StageOverrides {
    fn as_table(&self) -> toml::Table {
        let mut t = toml::Table::new();
        for (k, v) in
            [("stage0", &self.stage0), ("stage1", &self.stage1), ("stage2", &self.stage2), ("stage3", &self.stage3)]
        {
            if let Some(v) = v {
                t.insert(k.into(), toml::Value::Table(v.clone()));
            }
        }
        t
    }
}

/// One variant of an experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Short name, unique within the experiment.
    pub name: String,
    /// Row label in tables; defaults to the name.
    #[serde(default)]
    pub label: Option<String>,
    #[serde(flatten)]
    pub overrides: StageOverrides,
}

/// An experiment file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Defaults to the file stem.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Paper table (`II` … `VI`).
    #[serde(default)]
    pub table: Option<String>,
    /// Dataset spec files, relative to the experiment file.
    pub datasets: Vec<PathBuf>,
    /// Audio backbone spec file.
    pub backbone: PathBuf,
    /// Text encoder spec file.
    #[serde(default)]
    pub text_encoder: Option<PathBuf>,
    /// Stage settings file; omitted settings take their documented defaults.
    #[serde(default)]
    pub stages: Option<PathBuf>,
    /// Seeds; each gives a separate job.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Restrict to these fold names (all folds when absent).
    #[serde(default)]
    pub folds: Option<Vec<String>>,
    /// Variants; a single variant "default" when absent.
    #[serde(default)]
    pub variants: Vec<Variant>,
    #[serde(flatten)]
    pub overrides: StageOverrides,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// Per-dataset corpus roots given on the command line (`--root NAME=DIR`).
pub type RootOverrides = BTreeMap<String, PathBuf>;

/// What planning found for one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetPlan {
    pub name: String,
    pub utterances: usize,
    pub folds: usize,
    pub folds_checksum: String,
}

/// An expanded experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub experiment: String,
    pub table: Option<String>,
    pub datasets: Vec<DatasetPlan>,
    pub jobs: Vec<Job>,
}

impl Experiment {
    /// Reads an experiment file.
    pub fn load(path: &Path) -> Result<Experiment> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut exp: Experiment = toml::from_str(&text).map_err(|e| Error::config(path, toml_message(&e, &text)))?;
        if exp.name.is_empty() {
            exp.name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        }
        if exp.datasets.is_empty() {
            return Err(Error::config(path, "`datasets` is empty: name at least one dataset spec"));
        }
        if exp.seeds.is_empty() {
            return Err(Error::config(path, "`seeds` is empty"));
        }
        if exp.variants.is_empty() {
            exp.variants.push(Variant { name: "default".into(), label: None, overrides: StageOverrides::default() });
        }
        let mut names = HashSet::new();
        for v in &exp.variants {
            if !names.insert(v.name.as_str()) {
                return Err(Error::config(path, format!("variant '{}' is defined twice", v.name)));
            }
        }
        Ok(exp)
    }
}

/// Expands the experiment at `path` into jobs. Loads every corpus (so a missing root or bad data
/// fails here, before anything is queued), builds its folds, and checks that the checkpoints exist.
pub fn plan(path: &Path, roots: &RootOverrides) -> Result<Plan> {
    let exp = Experiment::load(path)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let backbone = ModelSpec::load(&base.join(&exp.backbone))?;
    backbone.check_available()?;
    let text_encoder = match &exp.text_encoder {
        Some(p) => {
            let m = ModelSpec::load(&base.join(p))?;
            m.check_available()?;
            Some(m)
        }
        None => None,
    };
    let settings = exp.stage_settings(path)?;
    for (variant, stages) in exp.variants.iter().zip(&settings) {
        check_text_needs(stages, text_encoder.as_ref())
            .map_err(|m| Error::config(path, format!("variant '{}': {m}", variant.name)))?;
    }

    let mut datasets = Vec::new();
    let mut jobs = Vec::new();
    let mut wanted: Option<HashSet<&str>> = exp.folds.as_ref().map(|f| f.iter().map(String::as_str).collect());
    for ds_path in &exp.datasets {
        let ds_path = base.join(ds_path);
        let name_hint = ds_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let spec = DatasetSpec::load(&ds_path, roots.get(&name_hint).map(PathBuf::as_path))?;
        let spec = match roots.get(&spec.name) {
            Some(r) if spec.name != name_hint => DatasetSpec::load(&ds_path, Some(r))?,
            _ => spec,
        };
        let corpus = data::load(&spec)?;
        let folds = FoldSet::build(&spec, &corpus)?;
        datasets.push(DatasetPlan {
            name: spec.name.clone(),
            utterances: corpus.utterances.len(),
            folds: folds.folds.len(),
            folds_checksum: folds.compute_checksum(),
        });
        for (index, fold) in folds.folds.iter().enumerate() {
            if let Some(w) = &mut wanted
                && !w.contains(fold.name.as_str())
            {
                continue;
            }
            let fold_ref =
                FoldRef { name: fold.name.clone(), index, count: folds.folds.len(), checksum: fold.checksum() };
            for (vi, (variant, stages)) in exp.variants.iter().zip(&settings).enumerate() {
                for &seed in &exp.seeds {
                    let spec = JobSpec {
                        schema: JOB_SCHEMA,
                        experiment: exp.name.clone(),
                        table: exp.table.clone(),
                        dataset: spec.clone(),
                        fold: fold_ref.clone(),
                        variant: VariantRef {
                            name: variant.name.clone(),
                            label: variant.label.clone().unwrap_or_else(|| variant.name.clone()),
                            index: vi,
                        },
                        seed,
                        backbone: backbone.clone(),
                        text_encoder: text_encoder.clone(),
                        stages: stages.clone(),
                    };
                    jobs.push(spec.into_job());
                }
            }
        }
        if let Some(w) = &mut wanted {
            for f in &folds.folds {
                w.remove(f.name.as_str());
            }
        }
    }
    if let Some(w) = wanted.filter(|w| !w.is_empty()) {
        let mut missing: Vec<&str> = w.into_iter().collect();
        missing.sort();
        return Err(Error::config(path, format!("`folds` names folds that no dataset has: {}", missing.join(", "))));
    }
    Ok(Plan { experiment: exp.name, table: exp.table, datasets, jobs })
}

impl Experiment {
    /// Stage settings of every variant (in variant order) for the experiment read from `path`:
    /// the stage file, then the experiment's overrides, then the variant's. Each layer is checked
    /// on its own so that an unknown key names its own file.
    pub fn stage_settings(&self, path: &Path) -> Result<Vec<StageSettings>> {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        variant_settings(path, &base, self)
    }
}

fn variant_settings(path: &Path, base: &Path, exp: &Experiment) -> Result<Vec<StageSettings>> {
    let mut merged = match &exp.stages {
        Some(p) => {
            let p = base.join(p);
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| Error::config(&p, toml_message(&e, &text)))?;
            check_layer(&table).map_err(|m| Error::config(&p, m))?;
            table
        }
        None => toml::Table::new(),
    };
    let exp_layer = exp.overrides.as_table();
    check_layer(&exp_layer).map_err(|m| Error::config(path, m))?;
    merge(&mut merged, &exp_layer);
    exp.variants
        .iter()
        .map(|v| {
            let layer = v.overrides.as_table();
            check_layer(&layer).map_err(|m| Error::config(path, format!("variant '{}': {m}", v.name)))?;
            let mut t = merged.clone();
            merge(&mut t, &layer);
            toml::Value::Table(t)
                .try_into::<StageSettings>()
                .map_err(|e| Error::config(path, format!("variant '{}': {}", v.name, e.message())))
        })
        .collect()
}

/// Settings that use text features need a text encoder, and stage 0 needs one it can fine-tune.
fn check_text_needs(s: &StageSettings, text: Option<&ModelSpec>) -> std::result::Result<(), String> {
    use super::model::ModelKind;
    use super::stages::Augment;
    let uses_text = s.stage1.lambda_cl > 0.0
        || s.stage1.lambda_mi > 0.0
        || s.stage2.text_condition
        || s.stage2.lambda_it > 0.0
        || matches!(s.stage3.augment, Augment::Multimodal | Augment::ClassBalanced);
    match text {
        None if uses_text => Err("uses text features (stage1.lambda_cl/lambda_mi > 0, stage2.text_condition, \
             stage2.lambda_it > 0 or a multimodal stage3.augment) but the experiment names no `text_encoder`"
            .into()),
        Some(m) if s.stage0.enabled && !matches!(m.kind, ModelKind::Bert | ModelKind::Roberta) => Err(format!(
            "stage0.enabled fine-tunes the text encoder, but '{}' is {:?} (only bert and roberta can be fine-tuned)",
            m.name, m.kind
        )),
        _ => Ok(()),
    }
}

fn check_layer(table: &toml::Table) -> std::result::Result<(), String> {
    toml::Value::Table(table.clone()).try_into::<StageSettings>().map(|_| ()).map_err(|e| e.message().to_string())
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}
