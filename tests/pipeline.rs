//! One job, all three stages, on the demo corpus with the tiny from-scratch AST: the UAR is far
//! above chance, a rerun with the same seed is bit-for-bit identical, a killed job resumes at its
//! first unfinished stage, and the worker binary writes result.json with its artifacts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sera::data::demo::{DemoOptions, write_demo_corpus};
use sera::spec::{Job, RootOverrides, plan};
use sera::train::pipeline::{JobResult, RunOptions, run_job};

use crate::common::{torch_rng, write};

/// The default-size demo corpus (3 sessions × 2 speakers × 40 utterances), generated once.
fn corpus() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        write_demo_corpus(&dir.path().join("corpus"), &DemoOptions::default()).expect("demo corpus");
        dir
    })
    .path()
}

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

/// Plans the one-fold experiment `body` (TOML over the tiny backbone) and returns its jobs.
fn jobs(dir: &Path, body: &str) -> Vec<Job> {
    let c = configs();
    let exp = write(
        dir,
        "exp.toml",
        &format!(
            "datasets = [\"{}\"]\nbackbone = \"{}\"\nstages = \"{}\"\nfolds = [\"Ses01F\"]\n{body}",
            c.join("datasets/demo.toml").display(),
            c.join("backbones/tiny-ast.toml").display(),
            c.join("stages/tiny.toml").display()
        ),
    );
    let roots = RootOverrides::from([("demo".to_string(), corpus().join("corpus"))]);
    plan(&exp, &roots).expect("plan").jobs
}

/// Audio-only settings (the text encoder is covered by its own tests).
const AUDIO_ONLY: &str =
    "[stage1]\nlambda_cl = 0.0\nlambda_mi = 0.0\n[stage2]\ntext_condition = false\nlambda_it = 0.0\n";

fn run(job: &Job, out: &Path) -> JobResult {
    let opts = RunOptions { out: out.join("job"), cache: out.join("cache"), device: tch::Device::Cpu };
    run_job(job, &opts).expect("job runs")
}

#[test]
fn one_job_runs_all_stages_well_above_chance() {
    let _rng = torch_rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let job = &jobs(dir.path(), AUDIO_ONLY)[0];
    let r = run(job, dir.path());
    // The test fold is one speaker: 10 utterances per class. Chance UAR is 0.25. The demo's
    // emotions differ by construction in pitch, rate and loudness (espeak-ng prosody), which the
    // log-mel input shows directly; a model that learned nothing stays near 0.25, and 0.5 on 40
    // utterances is beyond chance at p < 1e-4 (binomial, 20 of 40 at p = 0.25).
    assert!(r.before.audio.uar >= 0.5, "stage-1 UAR {}", r.before.audio.uar);
    let after = r.after.as_ref().expect("stage 3 ran");
    assert!(after.audio.uar >= 0.5, "stage-3 UAR {}", after.audio.uar);
    assert_eq!(after.audio.n, 40);
    assert_eq!(r.fold_sizes["test"], 40);
    assert_eq!(r.classes, ["neutral", "happy", "angry", "sad"]);
    let s2 = r.stage2.as_ref().expect("stage 2 ran");
    assert_eq!(s2.curve.len(), job.spec.stages.stage2.epochs);
    let last = s2.curve.last().expect("epochs");
    // The label MI term makes generated features carry their class for the stage-1 classifier.
    assert!(last.generated_accuracy > 0.9, "{last:?}");
    assert!(last.iy_lower_bound > 0.0, "{last:?}");
    // 2×: one generated feature per training utterance.
    let selection = r.stage3.as_ref().expect("stage 3");
    assert_eq!(selection[0].1.train_rows, 2 * r.fold_sizes["train"] as i64);
    for a in ["stage2/generator.safetensors", "stage3/classifier.safetensors", "stage3/generated.safetensors"] {
        assert!(r.artifacts.iter().any(|x| x.path == a && x.bytes > 0 && x.sha256.len() == 64), "{a}");
    }
}

#[test]
fn same_seed_same_result_and_resume_continues_from_the_last_stage() {
    let _rng = torch_rng();
    let small = AUDIO_ONLY.replace("[stage1]\n", "[stage1]\nepochs = 2\n");
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let job = &jobs(a.path(), &format!("{small}[stage3]\nepochs = 3\n"))[0];
    let ra = run(job, a.path());
    let rb = run(job, b.path());
    assert_eq!(ra.before, rb.before);
    assert_eq!(ra.after, rb.after);
    assert_eq!(ra.stage1.curve, rb.stage1.curve);
    assert_eq!(ra.stage2, rb.stage2);
    let sums = |r: &JobResult| r.artifacts.iter().map(|x| (x.path.clone(), x.sha256.clone())).collect::<Vec<_>>();
    assert_eq!(sums(&ra), sums(&rb), "artifacts are bit-for-bit identical");

    // A job killed after stage 2: its stage-3 output and result are gone. The rerun keeps stage 1
    // (cached) and stage 2 (done), redoes only stage 3, and ends with the same result.
    std::fs::remove_dir_all(a.path().join("job/stage3")).expect("rm stage3");
    std::fs::remove_file(a.path().join("job/result.json")).expect("rm result");
    let gen_before =
        std::fs::metadata(a.path().join("job/stage2/generator.safetensors")).expect("gen").modified().expect("mtime");
    let resumed = run(job, a.path());
    assert!(resumed.stage1.cached, "stage 1 is not trained again");
    let gen_after =
        std::fs::metadata(a.path().join("job/stage2/generator.safetensors")).expect("gen").modified().expect("mtime");
    assert_eq!(gen_before, gen_after, "stage 2 is not trained again");
    assert_eq!(resumed.after, ra.after);
}

#[test]
fn multimodal_job_fine_tunes_text_first_and_trains_on_four_combinations() {
    let _rng = torch_rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = configs().join("backbones/tiny-bert.toml");
    let body = format!(
        "text_encoder = \"{}\"\n[stage0]\nenabled = true\nepochs = 1\nlr = 1e-3\n[stage1]\nepochs = 2\n[stage3]\naugment = \"multimodal\"\nepochs = 5\n",
        text.display()
    );
    let job = &jobs(dir.path(), &body)[0];
    let r = run(job, dir.path());
    let s0 = r.stage0.as_ref().expect("stage 0 ran");
    assert_eq!(s0.curve.len(), 1);
    // Each logged part is its own loss: the epoch's total is their weighted sum.
    let s1 = &job.spec.stages.stage1;
    assert!(s1.lambda_cl > 0.0 && s1.lambda_mi > 0.0);
    for e in &r.stage1.curve {
        let (cl, mi) = (e.l_cl.expect("L_CL logged"), e.l_mi.expect("L_MI logged"));
        let sum = e.l_ser + s1.lambda_cl * cl + s1.lambda_mi * mi;
        assert!((e.loss - sum).abs() < 1e-4 * e.loss.abs().max(1.0), "{e:?}");
    }
    assert_eq!(s0.test.n, 40);
    let after = r.after.as_ref().expect("stage 3");
    let before = &r.before;
    for m in [after, before] {
        assert!(m.text.is_some() && m.fusion.is_some(), "three columns: audio, text, audio + text");
    }
    let rows: std::collections::BTreeMap<&str, i64> =
        r.stage3.as_ref().expect("stage 3").iter().map(|(n, s)| (n.as_str(), s.train_rows)).collect();
    let n = r.fold_sizes["train"] as i64;
    assert_eq!(rows["audio"], 2 * n, "h ∪ ĥ");
    assert_eq!(rows["text"], 2 * n, "t ∪ t' = W_t ĥ");
    assert_eq!(rows["fusion"], 4 * n, "(h | ĥ) × (t | t')");
    assert_eq!(rows["fusion-real-only"], n);
    assert!(r.artifacts.iter().any(|a| a.path == "stage3/fusion-classifier.safetensors"));
    // Stage 0 is written once to the per-fold cache (keyed by fold and text settings).
    assert_eq!(dir.path().join("cache/stage0").read_dir().expect("stage0 cache").count(), 1);
}

#[test]
fn variants_that_share_stage_one_train_it_once() {
    let _rng = torch_rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let body = format!(
        "{}[[variants]]\nname = \"augmented\"\n[[variants]]\nname = \"baseline\"\nstage3 = {{ augment = \"none\" }}\n",
        AUDIO_ONLY.replace("[stage1]\n", "[stage1]\nepochs = 1\n").replace("[stage2]\n", "[stage2]\nepochs = 2\n")
    );
    let js = jobs(dir.path(), &body);
    assert_eq!(js.len(), 2);
    let opts = |name: &str| RunOptions {
        out: dir.path().join(name),
        cache: dir.path().join("cache"),
        device: tch::Device::Cpu,
    };
    let first = run_job(&js[0], &opts("a")).expect("first");
    let second = run_job(&js[1], &opts("b")).expect("second");
    assert!(!first.stage1.cached);
    assert!(second.stage1.cached, "same stage-1 settings: trained once");
    assert_eq!(first.stage1.key, second.stage1.key);
    assert_eq!(first.before, second.before, "both report the same stage-1 model");
    assert!(second.after.is_none() && second.stage2.is_none(), "baseline: no augmentation");
}

#[test]
fn stage_one_resumes_after_its_last_finished_epoch() {
    use sera::train::inputs::FoldInputs;
    use sera::train::stage1::{Stage1Data, train};
    let _rng = torch_rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let job = &jobs(dir.path(), AUDIO_ONLY)[0];
    let (corpus, folds) = job.resolve().expect("resolve");
    let fold = folds.fold("Ses01F").expect("fold");
    let mut fin =
        FoldInputs::load(&corpus, fold, &job.spec, &dir.path().join("cache"), tch::Device::Cpu).expect("inputs");
    let s = sera::spec::stages::Stage1 { epochs: 3, ..job.spec.stages.stage1.clone() };
    let ckpt = dir.path().join("stage1");
    let enc = fin.encoder.as_mut().expect("encoder");
    let data = Stage1Data {
        y: &fin.y,
        t: None,
        train: &fin.rows.train,
        validation: &fin.rows.validation,
        test: &fin.rows.test,
        classes: fin.classes,
    };
    // "Killed" after epoch 2: the hook stops the stage once that epoch's checkpoint is written.
    let err = train(enc.as_mut(), &data, &s, 0, &ckpt, &mut |e| e < 2).err().expect("interrupted");
    assert!(matches!(err, sera::Error::Interrupted { stage: 1, epoch: 2 }), "{err}");
    let mut seen = Vec::new();
    let out = train(enc.as_mut(), &data, &s, 0, &ckpt, &mut |e| {
        seen.push(e);
        true
    })
    .expect("resumed");
    assert_eq!(seen, [3], "only the unfinished epoch runs again");
    assert_eq!(out.curve.iter().map(|e| e.epoch).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(out.features.size(), [fin.y.size()[0], 64]);
}

#[test]
fn stage_one_trains_under_bf16_autocast() {
    let _rng = torch_rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let body = AUDIO_ONLY
        .replace("[stage1]\n", "[stage1]\nepochs = 2\nprecision = \"bf16\"\n")
        .replace("[stage2]\n", "[stage2]\nepochs = 2\n");
    let job = &jobs(dir.path(), &body)[0];
    assert_eq!(job.spec.stages.stage1.precision, sera::spec::stages::Precision::Bf16);
    let r = run(job, dir.path());
    assert!(r.stage1.curve.iter().all(|e| e.loss.is_finite()));
    assert!(r.stage1.curve[1].l_ser < r.stage1.curve[0].l_ser, "bf16 training still learns: {:?}", r.stage1.curve);
    assert_eq!(r.before.audio.n, 40);
}
