//! The `sera` subcommands: each one loads what it needs through the library and prints.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use sera::data::demo::{DemoOptions, write_demo_corpus};
use sera::data::folds::FoldSet;
use sera::data::inspect::inspect as inspect_dataset;
use sera::data::{self, BadRows, DatasetSpec};
use sera::spec::{self, RootOverrides};

/// `sera data inspect`. Exits 1 when the corpus has problems its spec does not allow.
pub fn inspect(spec_path: &Path, root: Option<&Path>, json: bool, over: f64) -> Result<ExitCode> {
    let spec = DatasetSpec::load(spec_path, root)?;
    let report = inspect_dataset(&spec, over)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    let fatal = spec.bad_rows == BadRows::Error && !report.problems.is_empty();
    Ok(if fatal { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `sera data folds`.
pub fn folds(spec_path: &Path, root: Option<&Path>, out: &Path) -> Result<ExitCode> {
    let spec = DatasetSpec::load(spec_path, root)?;
    let corpus = data::load(&spec)?;
    let set = FoldSet::build(&spec, &corpus)?;
    set.write(out)?;
    println!(
        "wrote {} folds of '{}' to {} (checksum {})",
        set.folds.len(),
        spec.name,
        out.display(),
        set.compute_checksum()
    );
    Ok(ExitCode::SUCCESS)
}

/// `sera demo-corpus`.
pub fn demo_corpus(out: &Path, sessions: usize, sentences: usize) -> Result<ExitCode> {
    let opts = DemoOptions { sessions, sentences };
    let started = std::time::Instant::now();
    let summary =
        write_demo_corpus(out, &opts).with_context(|| format!("writing the demo corpus to {}", out.display()))?;
    println!(
        "demo corpus in {}: {} utterances from {} speakers, {:.1} s of audio ({}), {:.1} s",
        out.display(),
        summary.utterances,
        summary.speakers,
        summary.seconds,
        summary.espeak_version,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn root_overrides(roots: &[String]) -> Result<RootOverrides> {
    let mut overrides = RootOverrides::new();
    for r in roots {
        let Some((name, dir)) = r.split_once('=') else {
            bail!("--root expects NAME=DIR (the dataset name and its corpus root), got '{r}'");
        };
        overrides.insert(name.to_string(), dir.into());
    }
    Ok(overrides)
}

/// `sera plan`.
pub fn plan(experiment: &Path, roots: &[String], json: bool, out: Option<&Path>) -> Result<ExitCode> {
    let plan = spec::plan(experiment, &root_overrides(roots)?)?;
    if let Some(dir) = out {
        for job in &plan.jobs {
            let path = dir.join(format!("{}.json", job.id));
            sera::fsutil::write_atomic(&path, serde_json::to_string_pretty(job)?.as_bytes())?;
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "experiment {}{}: {} jobs",
        plan.experiment,
        plan.table.as_deref().map(|t| format!(" (table {t})")).unwrap_or_default(),
        plan.jobs.len()
    );
    for d in &plan.datasets {
        println!(
            "  dataset {}: {} utterances, {} folds (checksum {})",
            d.name,
            d.utterances,
            d.folds,
            &d.folds_checksum[..16]
        );
    }
    println!("\n{:<18}{:<14}{:<10}{:<28}{:>6}", "job", "dataset", "fold", "variant", "seed");
    for j in &plan.jobs {
        let s = &j.spec;
        println!("{:<18}{:<14}{:<10}{:<28}{:>6}", j.id, s.dataset.name, s.fold.name, s.variant.name, s.seed);
    }
    if let Some(dir) = out {
        println!("\nwrote {} job specs to {}", plan.jobs.len(), dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `sera env`.
pub fn env() -> Result<ExitCode> {
    println!("sera {}", env!("CARGO_PKG_VERSION"));
    println!("{}", sera::device::describe());
    Ok(ExitCode::SUCCESS)
}

/// `sera results`.
pub fn results(run: &Path, format: sera::report::Format) -> Result<ExitCode> {
    let results = sera::report::load_results(run)?;
    if results.is_empty() {
        bail!("no result.json under {}: nothing has finished yet", run.display());
    }
    // The published rows are data in configs/: the working copy's if run from the repository,
    // else the ones this binary was built from.
    let local = Path::new("configs/published");
    let published = if local.is_dir() {
        local.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/published")
    };
    let tables = sera::report::tables(&results, &published)?;
    print!("{}", sera::report::render(&tables, format));
    Ok(ExitCode::SUCCESS)
}
