//! Experiments become jobs: expansion, deterministic ids, variant overrides, and the shipped
//! configs under configs/.

use std::path::{Path, PathBuf};

use sera::data::DatasetSpec;
use sera::spec::stages::Augment;
use sera::spec::{Experiment, ModelSpec, RootOverrides, plan};

use crate::common::write;
use crate::data_iemocap::{build_fixture, write_spec};

const TINY_AST: &str = "kind = \"ast\"\nfrom_scratch = true\n[config]\nhidden_size = 8\n";
const TINY_BERT: &str = "kind = \"bert\"\nfrom_scratch = true\npooling = \"cls\"\n[config]\nhidden_size = 8\n";

fn experiment(dir: &Path, body: &str) -> PathBuf {
    write(dir, "ast.toml", TINY_AST);
    write(dir, "bert.toml", TINY_BERT);
    write(
        dir,
        "exp.toml",
        &format!("datasets = [\"iemocap.toml\"]\nbackbone = \"ast.toml\"\ntext_encoder = \"bert.toml\"\n{body}"),
    )
}

fn fixture_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    build_fixture(&dir.path().join("corpus"));
    write_spec(dir.path(), &dir.path().join("corpus"), "");
    dir
}

const TWO_VARIANTS: &str = "seeds = [0, 1]\n[stage2]\nepochs = 3\n\
    [[variants]]\nname = \"full\"\nlabel = \"Full model\"\n\
    [[variants]]\nname = \"no-alignment\"\nstage1 = { lambda_cl = 0.0, lambda_mi = 0.0 }\n";

#[test]
fn expands_dataset_fold_variant_seed() {
    let dir = fixture_dir();
    let exp = experiment(dir.path(), TWO_VARIANTS);
    let p = plan(&exp, &RootOverrides::new()).expect("plan");
    assert_eq!(p.jobs.len(), 4 * 2 * 2);
    assert_eq!(p.datasets[0].utterances, 12);
    let ids: std::collections::HashSet<&str> = p.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids.len(), 16, "ids are unique");
    let j = p
        .jobs
        .iter()
        .find(|j| j.spec.variant.name == "no-alignment" && j.spec.seed == 1 && j.spec.fold.name == "Ses03F")
        .expect("job");
    assert_eq!((j.spec.stages.stage1.lambda_cl, j.spec.stages.stage1.lambda_mi), (0.0, 0.0));
    assert_eq!(j.spec.stages.stage2.epochs, 3, "experiment-level override reaches every variant");
    assert_eq!((j.spec.fold.index, j.spec.fold.count), (2, 4));
    let full = p.jobs.iter().find(|j| j.spec.variant.name == "full").expect("job");
    assert_eq!(full.spec.variant.label, "Full model");
    assert_eq!(full.spec.stages.stage1.lambda_cl, 1.0, "default");
    // Every job file round-trips, and its id is checked against its contents.
    let path = dir.path().join("job.json");
    std::fs::write(&path, serde_json::to_string(j).expect("json")).expect("write");
    assert_eq!(&sera::spec::Job::read(&path).expect("read"), j);
    std::fs::write(&path, serde_json::to_string(j).expect("json").replace("\"seed\":1", "\"seed\":5")).expect("write");
    assert!(sera::spec::Job::read(&path).expect_err("edited").to_string().contains("does not match its contents"));
}

#[test]
fn job_ids_are_deterministic_and_ignore_where_data_lives() {
    let dir = fixture_dir();
    let exp = experiment(dir.path(), TWO_VARIANTS);
    let a: Vec<String> = plan(&exp, &RootOverrides::new()).expect("plan").jobs.into_iter().map(|j| j.id).collect();
    let b: Vec<String> = plan(&exp, &RootOverrides::new()).expect("plan").jobs.into_iter().map(|j| j.id).collect();
    assert_eq!(a, b);
    // The same corpus elsewhere, given on the command line: same ids.
    let other = tempfile::tempdir().expect("tempdir");
    build_fixture(other.path());
    let roots = RootOverrides::from([("iemocap".to_string(), other.path().to_path_buf())]);
    let c: Vec<String> = plan(&exp, &roots).expect("plan").jobs.into_iter().map(|j| j.id).collect();
    assert_eq!(a, c);
    // A changed setting: new ids.
    let exp = experiment(dir.path(), &TWO_VARIANTS.replace("epochs = 3", "epochs = 4"));
    let d: Vec<String> = plan(&exp, &RootOverrides::new()).expect("plan").jobs.into_iter().map(|j| j.id).collect();
    assert!(a.iter().zip(&d).all(|(x, y)| x != y));
}

#[test]
fn bad_experiments_name_the_problem() {
    let dir = fixture_dir();
    let exp = experiment(dir.path(), "[[variants]]\nname = \"x\"\nstage2 = { lamda_iy = 0.0 }\n");
    let err = plan(&exp, &RootOverrides::new()).expect_err("typo").to_string();
    assert!(err.contains("exp.toml") && err.contains("variant 'x'") && err.contains("lamda_iy"), "{err}");

    let exp = experiment(dir.path(), "folds = [\"Ses09X\"]\n");
    let err = plan(&exp, &RootOverrides::new()).expect_err("unknown fold").to_string();
    assert!(err.contains("Ses09X"), "{err}");

    write(dir.path(), "exp2.toml", "datasets = [\"iemocap.toml\"]\nbackbone = \"ast.toml\"\n");
    let err = plan(&dir.path().join("exp2.toml"), &RootOverrides::new()).expect_err("no text encoder").to_string();
    assert!(err.contains("text_encoder"), "{err}");

    write(
        dir.path(),
        "real-ast.toml",
        "kind = \"ast\"\nhf_id = \"MIT/ast-finetuned-audioset-10-10-0.4593\"\npath = \"models/ast\"\n",
    );
    write(
        dir.path(),
        "exp3.toml",
        "datasets = [\"iemocap.toml\"]\nbackbone = \"real-ast.toml\"\ntext_encoder = \"bert.toml\"\n",
    );
    let err = plan(&dir.path().join("exp3.toml"), &RootOverrides::new()).expect_err("no checkpoint").to_string();
    assert!(err.contains("huggingface-cli download MIT/ast-finetuned-audioset-10-10-0.4593 --local-dir"), "{err}");

    let exp = experiment(dir.path(), "");
    let err = plan(&exp, &RootOverrides::from([("iemocap".to_string(), dir.path().join("gone"))]))
        .expect_err("no root")
        .to_string();
    assert!(err.contains("gone") && err.contains("does not exist"), "{err}");
}

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("configs dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn shipped_configs_parse() {
    for f in toml_files(&configs().join("datasets")) {
        DatasetSpec::load(&f, None).unwrap_or_else(|e| panic!("{e}"));
    }
    for f in toml_files(&configs().join("backbones")) {
        ModelSpec::load(&f).unwrap_or_else(|e| panic!("{e}"));
    }
    let experiments = toml_files(&configs().join("experiments"));
    let names: Vec<String> =
        experiments.iter().map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned()).collect();
    for table in ["table2", "table3", "table4", "table5", "table6", "demo"] {
        assert!(names.iter().any(|n| n == table), "configs/experiments/{table}.toml missing");
    }
    for f in &experiments {
        let exp = Experiment::load(f).unwrap_or_else(|e| panic!("{e}"));
        exp.stage_settings(f).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn table3_variants_are_the_papers_ablations() {
    let path = configs().join("experiments/table3.toml");
    let exp = Experiment::load(&path).expect("table3");
    let s = exp.stage_settings(&path).expect("settings");
    let names: Vec<&str> = exp.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["full", "no-alignment", "no-alignment-no-text", "no-alignment-no-mi", "baseline-no-alignment"]);
    // full: alignment on, text-conditioned G with both MI terms, 2× augmentation.
    assert!(s[0].stage1.lambda_cl > 0.0 && s[0].stage1.lambda_mi > 0.0 && s[0].stage2.text_condition);
    assert!(s[0].stage2.lambda_iy > 0.0 && s[0].stage2.lambda_it > 0.0 && s[0].stage3.augment == Augment::Double);
    for v in &s[1..] {
        assert_eq!((v.stage1.lambda_cl, v.stage1.lambda_mi), (0.0, 0.0));
    }
    assert!(!s[2].stage2.text_condition && s[2].stage2.lambda_it == 0.0 && s[2].stage2.lambda_iy > 0.0);
    assert!(s[3].stage2.text_condition && s[3].stage2.lambda_iy == 0.0 && s[3].stage2.lambda_it == 0.0);
    assert_eq!(s[4].stage3.augment, Augment::None);
    assert_eq!(s[1].stage2, s[0].stage2, "no-alignment only changes stage 1");
}
