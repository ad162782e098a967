//! One job, all stages: the function a worker's child process runs. Stage outputs are cached
//! and resumable: stage 1 lives in a shared cache keyed by the hash of everything that determines
//! it (so ablation variants that share stage-1 settings train it once), stages 2 and 3 in the
//! job's own directory. Each stage writes into a temp directory that is renamed into place when
//! complete, so a killed job restarts at the first unfinished stage, and nothing half-written ever
//! sits at a final path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use super::heads::Heads;
use super::inputs::FoldInputs;
use super::stage1::{self, Stage1Data, Stage1Epoch};
use super::stage2::{self, EpochLog, GanData, Generator};
use super::stage3::{self, FoldFeatures, ModalityMetrics, Selection, Split};
use crate::data::folds::{canonical_json, sha256_hex};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::spec::Job;
use crate::spec::stages::Augment;

/// Version of `result.json`.
pub const RESULT_SCHEMA: u32 = 1;

/// Where a job writes and which device it uses.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The job's directory: `result.json`, `progress.json`, `stage2/`, `stage3/`.
    pub out: PathBuf,
    /// Shared cache of stage-1 outputs and text features.
    pub cache: PathBuf,
    pub device: Device,
}

/// Stage-1 summary in the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage1Summary {
    /// Cache key of the stage-1 outputs.
    pub key: String,
    pub best_epoch: usize,
    pub validation_uar: Option<f64>,
    pub curve: Vec<Stage1Epoch>,
    /// Whether this job trained stage 1 or found it cached.
    pub cached: bool,
}

/// Stage-2 summary: the MI observables per epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage2Summary {
    pub curve: Vec<EpochLog>,
    pub retries: usize,
}

/// A file the job produced, relative to its directory, with its checksum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub schema: u32,
    pub job_id: String,
    pub job: crate::spec::JobSpec,
    pub classes: Vec<String>,
    pub fold_sizes: BTreeMap<String, usize>,
    /// Test metrics of the stage-1 model (multimodal: of classifiers trained on real features only).
    pub before: ModalityMetrics,
    /// Test metrics after stage 3 (None for `augment = "none"`).
    pub after: Option<ModalityMetrics>,
    /// Stage 0 (text-encoder fine-tuning), when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage0: Option<super::stage0::Stage0Summary>,
    pub stage1: Stage1Summary,
    pub stage2: Option<Stage2Summary>,
    pub stage3: Option<Vec<(String, Selection)>>,
    /// Seconds per stage (0 for a cached stage 1).
    pub timings_s: BTreeMap<String, f64>,
    pub seed: u64,
    pub versions: BTreeMap<String, String>,
    pub artifacts: Vec<Artifact>,
}

/// Runs every stage of `job` and writes `result.json` into `opts.out`.
pub fn run_job(job: &Job, opts: &RunOptions) -> Result<JobResult> {
    let spec = &job.spec;
    let span = tracing::info_span!("job", id = %job.id, dataset = %spec.dataset.name, fold = %spec.fold.name, variant = %spec.variant.name);
    let _enter = span.enter();
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let progress = ProgressFile(opts.out.join("progress.json"));
    let mut timings = BTreeMap::new();
    let (corpus, folds) = job.resolve()?;
    let fold = folds.fold(&spec.fold.name).ok_or_else(|| Error::Job {
        job: job.id.clone(),
        message: format!("fold {} is not in the folds of dataset {}", spec.fold.name, spec.dataset.name),
    })?;
    let started = Instant::now();

    // Stage 1 (cached by key).
    progress.write("stage1", 0, spec.stages.stage1.epochs);
    let key = stage1_key(job);
    let s1_dir = opts.cache.join("stage1").join(&key);
    let t0 = Instant::now();
    let (h_all, heads, s1, y_all, t_all, rows, stage0) = if s1_dir.join("done.json").is_file() {
        let fin = FoldInputs::labels_only(&corpus, fold, spec, &opts.cache, opts.device)?;
        let (h, heads, summary) = load_stage1(&s1_dir, &key, opts.device, &fin)?;
        (h, heads, summary, fin.y, fin.t, fin.rows, fin.stage0)
    } else {
        let mut fin = FoldInputs::load(&corpus, fold, spec, &opts.cache, opts.device)?;
        let tmp = temp_dir(&s1_dir)?;
        let out = {
            let data = Stage1Data {
                y: &fin.y,
                t: fin.t.as_ref(),
                train: &fin.rows.train,
                validation: &fin.rows.validation,
                test: &fin.rows.test,
                classes: corpus.classes.len() as i64,
            };
            let enc = fin.encoder.as_mut().ok_or_else(|| Error::config("stage 1", "no audio encoder"))?;
            let epochs = spec.stages.stage1.epochs;
            stage1::train(enc.as_mut(), &data, &spec.stages.stage1, spec.seed, &tmp, &mut |e| {
                progress.write("stage1", e, epochs);
                true
            })?
        };
        let summary = Stage1Summary {
            key: key.clone(),
            best_epoch: out.best_epoch,
            validation_uar: out.validation_uar,
            curve: out.curve.clone(),
            cached: false,
        };
        save_stage1(&tmp, &out.features, &out.heads, &summary, &out.test)?;
        finish_dir(&tmp, &s1_dir)?;
        (out.features, out.heads, summary, fin.y, fin.t, fin.rows, fin.stage0)
    };
    timings.insert("stage1".to_string(), if s1.cached { 0.0 } else { t0.elapsed().as_secs_f64() });
    let split = |idx: &[i64]| -> Split {
        let i = Tensor::from_slice(idx).to_device(opts.device);
        Split {
            h: h_all.index_select(0, &i),
            t: t_all.as_ref().map(|t| t.index_select(0, &i)),
            y: y_all.index_select(0, &i),
        }
    };
    let features = FoldFeatures {
        train: split(&rows.train),
        validation: (!rows.validation.is_empty()).then(|| split(&rows.validation)),
        test: split(&rows.test),
        classes: corpus.classes.len() as i64,
    };
    let before_audio = load_json::<Metrics>(&s1_dir.join("test-metrics.json"))?;

    let mut result = JobResult {
        schema: RESULT_SCHEMA,
        job_id: job.id.clone(),
        job: spec.clone(),
        classes: corpus.classes.clone(),
        fold_sizes: BTreeMap::from([
            ("train".into(), rows.train.len()),
            ("validation".into(), rows.validation.len()),
            ("test".into(), rows.test.len()),
        ]),
        before: ModalityMetrics { audio: before_audio, text: None, fusion: None },
        after: None,
        stage0,
        stage1: s1,
        stage2: None,
        stage3: None,
        timings_s: timings,
        seed: spec.seed,
        versions: versions(),
        artifacts: Vec::new(),
    };

    if spec.stages.stage3.augment != Augment::None {
        // Stage 2.
        let s2 = &spec.stages.stage2;
        progress.write("stage2", 0, s2.epochs);
        let t0 = Instant::now();
        let s2_dir = opts.out.join("stage2");
        let (generator, mi_heads, summary) = if s2_dir.join("done.json").is_file() {
            load_stage2(&s2_dir, &heads, &features, s2, opts.device)?
        } else {
            let tmp = temp_dir(&s2_dir)?;
            let gan = GanData {
                h: &features.train.h,
                y: &features.train.y,
                t: features.train.t.as_ref(),
                classes: features.classes,
                temperature: spec.stages.stage1.temperature,
            };
            let out = stage2::train(&gan, &heads, s2, spec.seed, &mut |e| {
                progress.write("stage2", e, s2.epochs);
                true
            })?;
            let summary = Stage2Summary { curve: out.curve, retries: out.retries };
            out.generator.vs.save(tmp.join("generator.safetensors"))?;
            out.heads.save(&tmp.join("heads.safetensors"))?;
            write_json(&tmp.join("stage2.json"), &summary)?;
            finish_dir(&tmp, &s2_dir)?;
            (out.generator, out.heads, summary)
        };
        result.stage2 = Some(summary);
        result.timings_s.insert("stage2".into(), t0.elapsed().as_secs_f64());

        // Stage 3.
        progress.write("stage3", 0, spec.stages.stage3.epochs);
        let t0 = Instant::now();
        let s3_dir = opts.out.join("stage3");
        let (before, after, selection) = if s3_dir.join("done.json").is_file() {
            load_json::<(Option<ModalityMetrics>, ModalityMetrics, Vec<(String, Selection)>)>(
                &s3_dir.join("stage3.json"),
            )?
        } else {
            let tmp = temp_dir(&s3_dir)?;
            let out = stage3::run(&features, &mi_heads, &generator, &spec.stages.stage3, spec.seed)?;
            out.audio.vs.save(tmp.join("classifier.safetensors"))?;
            if let Some(f) = &out.fusion {
                f.vs.save(tmp.join("fusion-classifier.safetensors"))?;
            }
            if let Some(t) = &out.text {
                t.vs.save(tmp.join("text-classifier.safetensors"))?;
            }
            let mut generated = vec![
                ("h".to_string(), out.generated_h.shallow_clone()),
                ("y".to_string(), out.generated_y.shallow_clone()),
            ];
            if let Some(t) = &out.generated_t {
                generated.push(("t".to_string(), t.shallow_clone()));
            }
            Tensor::write_safetensors(&generated, tmp.join("generated.safetensors"))?;
            let record = (out.before.clone(), out.after.clone(), out.selection.clone());
            write_json(&tmp.join("stage3.json"), &record)?;
            finish_dir(&tmp, &s3_dir)?;
            record
        };
        if let Some(b) = before {
            result.before = b;
        }
        result.after = Some(after);
        result.stage3 = Some(selection);
        result.timings_s.insert("stage3".into(), t0.elapsed().as_secs_f64());
    }
    result.timings_s.insert("total".into(), started.elapsed().as_secs_f64());
    result.artifacts = artifacts(&opts.out)?;
    write_json(&opts.out.join("result.json"), &result)?;
    progress.write("done", 0, 0);
    Ok(result)
}

/// Hash of everything that determines stage 1: the data (fold checksum), the encoders (without
/// machine-local paths), stages 0 and 1, and the seed.
pub fn stage1_key(job: &Job) -> String {
    let s = &job.spec;
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        for drop in ["experiment", "table", "variant"] {
            obj.remove(drop);
        }
        if let Some(stages) = obj.get_mut("stages").and_then(|x| x.as_object_mut()) {
            stages.remove("stage2");
            stages.remove("stage3");
        }
        for section in ["dataset", "backbone", "text_encoder"] {
            if let Some(o) = obj.get_mut(section).and_then(|x| x.as_object_mut()) {
                for k in ["root", "manifest", "transcripts", "fold_file", "path", "features"] {
                    o.remove(k);
                }
            }
        }
    }
    sha256_hex(&canonical_json(&v))[..16].to_string()
}

fn save_stage1(dir: &Path, h: &Tensor, heads: &Heads, summary: &Stage1Summary, test: &Metrics) -> Result<()> {
    Tensor::write_safetensors(&[("features", h)], dir.join("features.safetensors"))?;
    heads.save(&dir.join("heads.safetensors"))?;
    write_json(&dir.join("stage1.json"), summary)?;
    write_json(&dir.join("test-metrics.json"), test)?;
    for f in ["last-encoder", "last-heads", "last-align"] {
        let _ = std::fs::remove_file(dir.join(format!("{f}.safetensors")));
    }
    let _ = std::fs::remove_file(dir.join("progress.json"));
    Ok(())
}

fn load_stage1(dir: &Path, key: &str, device: Device, fin: &FoldInputs) -> Result<(Tensor, Heads, Stage1Summary)> {
    let named = Tensor::read_safetensors(dir.join("features.safetensors"))?;
    let h = named.into_iter().find(|(n, _)| n == "features").map(|(_, t)| t.to_device(device)).ok_or_else(|| {
        Error::config(dir.join("features.safetensors"), "no tensor named 'features'; delete the directory to recompute")
    })?;
    let mut summary: Stage1Summary = load_json(&dir.join("stage1.json"))?;
    summary.cached = true;
    summary.key = key.to_string();
    if h.size()[0] != fin.y.size()[0] {
        return Err(Error::config(
            dir,
            format!(
                "cached stage-1 features have {} rows, the fold has {}; delete the directory to recompute",
                h.size()[0],
                fin.y.size()[0]
            ),
        ));
    }
    let mut heads = Heads::new(h.size()[1], fin.classes, fin.t.as_ref().map(|t| t.size()[1]), device);
    heads.load(&dir.join("heads.safetensors"))?;
    Ok((h, heads, summary))
}

fn load_stage2(
    dir: &Path,
    heads: &Heads,
    f: &FoldFeatures,
    s: &crate::spec::stages::Stage2,
    device: Device,
) -> Result<(Generator, Heads, Stage2Summary)> {
    let text_dim = if s.text_condition { f.train.t.as_ref().map(|t| t.size()[1]) } else { None };
    let mut g = Generator::new(s.z_dim as i64, f.classes, text_dim, f.train.h.size()[1], device);
    g.vs.load(dir.join("generator.safetensors"))?;
    let mut mi = heads.duplicate()?;
    mi.load(&dir.join("heads.safetensors"))?;
    Ok((g, mi, load_json(&dir.join("stage2.json"))?))
}

/// A fresh temp directory next to `final_dir`.
fn temp_dir(final_dir: &Path) -> Result<PathBuf> {
    let parent = final_dir.parent().unwrap_or(Path::new("."));
    let name = final_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// Marks `tmp` complete and renames it to `final_dir` (another process may have won the race for
/// a shared stage-1 directory; then its result is kept and ours dropped).
fn finish_dir(tmp: &Path, final_dir: &Path) -> Result<()> {
    write_json(&tmp.join("done.json"), &serde_json::json!({"finished": true}))?;
    if final_dir.join("done.json").is_file() {
        let _ = std::fs::remove_dir_all(tmp);
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(final_dir);
    std::fs::rename(tmp, final_dir).map_err(|e| Error::io(final_dir, e))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::config(path, e.to_string()))?;
    crate::fsutil::write_atomic(path, &bytes)
}

fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))
}

/// Checksums of the job's files (result.json itself excluded).
fn artifacts(dir: &Path) -> Result<Vec<Artifact>> {
    let mut out = Vec::new();
    for sub in ["stage2", "stage3"] {
        let d = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        let mut files: Vec<PathBuf> =
            entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
        files.sort();
        for p in files {
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            let rel = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().into_owned();
            out.push(Artifact { path: rel, sha256: hex::encode(Sha256::digest(&bytes)), bytes: bytes.len() as u64 });
        }
    }
    Ok(out)
}

fn versions() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("sera".into(), env!("CARGO_PKG_VERSION").into()),
        ("tch".into(), "0.24.0".into()),
        ("libtorch".into(), "2.11.0".into()),
        ("git".into(), env!("SERA_GIT_COMMIT").into()),
    ])
}

/// `progress.json`: the stage and epoch a job is in, read by the worker for its heartbeats.
struct ProgressFile(PathBuf);

impl ProgressFile {
    fn write(&self, stage: &str, epoch: usize, epochs: usize) {
        let v = serde_json::json!({ "stage": stage, "epoch": epoch, "epochs": epochs });
        if let Err(e) = crate::fsutil::write_atomic(&self.0, v.to_string().as_bytes()) {
            tracing::warn!(error = %e, "cannot write progress");
        }
    }
}
