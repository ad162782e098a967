//! `sera bench stages|models|queue`: sera's timings beside a PyTorch reference measured in the
//! same run (or, for the queue, its throughput).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

/// `sera bench stages`: `rounds` rounds, each timing sera and then the reference, so a slow
/// spell of a shared machine hits both sides of one round; the summary is the median round.
pub fn stages(device: &str, python: Option<PathBuf>, epochs: usize, rounds: usize) -> Result<ExitCode> {
    let device = sera::device::parse(device)?;
    let size = sera::bench::BenchSize { epochs, ..Default::default() };
    let python = reference_python(python);
    let script = Path::new("tools/bench_reference.py");
    println!(
        "stage-2 and stage-3 epochs, {} × {} features, batch {}, on {device:?} ({} threads): seconds per epoch, \
         the median of {epochs} epoch{} after a warm-up; reference = {} {}",
        size.n,
        size.dim,
        size.batch,
        tch::get_num_threads(),
        if epochs == 1 { "" } else { "s" },
        python.display(),
        script.display()
    );
    println!(
        "{:<7} {:>10} {:>10} {:>7}   {:>10} {:>10} {:>7}",
        "round", "sera s2", "ref s2", "ratio", "sera s3", "ref s3", "ratio"
    );
    let (mut ratio2, mut ratio3) = (Vec::new(), Vec::new());
    for round in 1..=rounds.max(1) {
        let ours = sera::bench::stages(size, device)?;
        let theirs = match sera::bench::reference(&python, script, size, &reference_device(device)) {
            Ok(r) => r,
            Err(e) => {
                println!(
                    "sera: stage-2 epoch {:.3} s, stage-3 epoch {:.4} s; no reference measured ({e}); \
                     install torch==2.11.0 for {} or pass --python",
                    ours.stage2_epoch_s,
                    ours.stage3_epoch_s,
                    python.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
        };
        let (r2, r3) = (theirs.stage2_epoch_s / ours.stage2_epoch_s, theirs.stage3_epoch_s / ours.stage3_epoch_s);
        println!(
            "{round:<7} {:>10.3} {:>10.3} {:>6.2}×   {:>10.4} {:>10.4} {:>6.2}×",
            ours.stage2_epoch_s, theirs.stage2_epoch_s, r2, ours.stage3_epoch_s, theirs.stage3_epoch_s, r3
        );
        ratio2.push(r2);
        ratio3.push(r3);
    }
    let summary = |r: Vec<f64>| {
        let (lo, hi) = r.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        format!("{:.2}× (range {lo:.2}–{hi:.2}×)", sera::bench::median(r))
    };
    println!(
        "ratio (reference / sera, higher is better), median round: stage 2 {}, stage 3 {}",
        summary(ratio2),
        summary(ratio3)
    );
    Ok(ExitCode::SUCCESS)
}

/// `sera bench queue`.
pub fn queue(redis: Option<&str>, jobs: usize) -> Result<ExitCode> {
    let rate = sera::queue::bench::noop_throughput(redis, jobs)?;
    println!("{} no-op jobs through {}: {rate:.0} jobs/s", jobs, redis.unwrap_or("the in-process queue"));
    Ok(ExitCode::SUCCESS)
}

/// The Python that runs the references: `--python`, else the set-up cache's, else `python3`.
fn reference_python(python: Option<PathBuf>) -> PathBuf {
    python.unwrap_or_else(|| {
        let cached =
            std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cache/sera/pyref/bin/python");
        if cached.is_file() { cached } else { "python3".into() }
    })
}

/// `sera bench models`: sera's throughputs, then the PyTorch reference on the same device in the
/// same invocation, and the ratios.
pub fn models(device_spec: &str, python: Option<PathBuf>, no_reference: bool, fbank_only: bool) -> Result<ExitCode> {
    let device = sera::device::parse(device_spec)?;
    let size = sera::bench::ModelBenchSize { fbank_only, ..sera::bench::ModelBenchSize::for_device(device) };
    eprintln!(
        "sera bench models on {device:?} ({} threads): \
         fbank {} × 10 s, AST batch {}, wav2vec2-large-robust-12 batch {} × {} s",
        tch::get_num_threads(),
        size.fbank_batch,
        size.ast_batch,
        size.w2v_batch,
        size.w2v_seconds
    );
    let ours = sera::bench::models(size, device)?;
    let names = [
        "AST front end (fbank), hours of audio/s",
        "AST features, clips/s",
        "AST fine-tune step, clips/s",
        "AST fine-tune step, bf16 autocast, clips/s",
        "wav2vec2 features, audio s/s",
        "wav2vec2 fine-tune step, audio s/s",
    ];
    let values = |t: &sera::bench::ModelTimes| {
        [
            Some(t.fbank_hours_per_s),
            t.ast_features_clips_per_s,
            t.ast_step_clips_per_s,
            t.ast_step_bf16_clips_per_s,
            t.w2v_features_audio_s_per_s,
            t.w2v_step_audio_s_per_s,
        ]
    };
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
    let reference = if no_reference {
        None
    } else {
        let python = reference_python(python);
        let script = Path::new("tools/bench_models_reference.py");
        match sera::bench::models_reference(&python, script, size, &reference_device(device)) {
            Ok(r) => Some((python, r)),
            Err(e) => {
                println!(
                    "no reference measured ({e}); install torch, torchaudio and transformers for {} or pass --python",
                    python.display()
                );
                None
            }
        }
    };
    println!("{:<42} {:>10} {:>10} {:>8}", "best of the timed calls (fp32 unless noted)", "sera", "PyTorch", "ratio");
    let theirs = reference.as_ref().map_or([None; 6], |(_, r)| values(&r.times));
    for ((name, v), t) in names.iter().zip(values(&ours)).zip(theirs) {
        let ratio = match (v, t) {
            (Some(v), Some(t)) => format!("{:.2}×", v / t),
            _ => "-".into(),
        };
        println!("{name:<42} {:>10} {:>10} {ratio:>8}", show(v), show(t));
    }
    if let Some((python, r)) = &reference {
        if let Some(x) = r.fbank_extractor_hours_per_s {
            println!(
                "{:<42} {:>10.3} {x:>10.3} {:>7.2}×  (transformers ASTFeatureExtractor.__call__)",
                "AST front end vs the HF extractor",
                ours.fbank_hours_per_s,
                ours.fbank_hours_per_s / x
            );
        }
        println!(
            "reference: {} (torch {}, {} threads); ratio = sera / reference, higher is better",
            python.display(),
            r.torch,
            r.threads
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The reference scripts' `--device` for `device`.
fn reference_device(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    }
}
