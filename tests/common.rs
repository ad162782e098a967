//! Helpers shared by the tests: fixture trees in temp dirs, WAV writing, running the binaries.

use std::path::{Path, PathBuf};

/// Writes `contents` to `root/rel`, creating parent directories.
pub fn write(root: &Path, rel: &str, contents: &str) -> PathBuf {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
    std::fs::write(&path, contents).expect("write fixture");
    path
}

/// Writes a mono 16-bit WAV of `seconds` of a quiet 440 Hz tone at `rate`.
pub fn wav(root: &Path, rel: &str, seconds: f64, rate: u32) -> PathBuf {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
    let spec =
        hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(&path, spec).expect("create wav");
    let n = (seconds * rate as f64).round() as usize;
    for i in 0..n {
        let v = (2.0 * std::f64::consts::PI * 440.0 * i as f64 / rate as f64).sin() * 3000.0;
        w.write_sample(v as i16).expect("write sample");
    }
    w.finalize().expect("finalize wav");
    path
}

/// libtorch's default generator is global to the process and the tests run on parallel threads:
/// every test that seeds it and relies on its stream holds this lock.
pub fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The 4-class dataset spec of a demo corpus at `root` (the IEMOCAP adapter, transcripts
/// required), written as `dir/name`.
pub fn demo_spec(dir: &Path, name: &str, root: &Path) -> PathBuf {
    write(
        dir,
        name,
        &format!(
            r#"kind = "iemocap"
root = "{}"
protocol = "leave-one-speaker-out"
require_text = true

[labels]
map = {{ neu = "neutral", hap = "happy", exc = "happy", ang = "angry", sad = "sad" }}
classes = ["neutral", "happy", "angry", "sad"]
"#,
            root.display()
        ),
    )
}
