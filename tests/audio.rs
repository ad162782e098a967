//! Audio I/O and resampling, checked against values computed here independently: exact sample
//! values written with hound, and analytic sines for the resampler.

use std::f64::consts::PI;
use std::path::Path;

use sera::audio::{self, SAMPLE_RATE};

fn sine(freq: f64, rate: u32, n: usize, amp: f64) -> Vec<f32> {
    (0..n).map(|i| (amp * (2.0 * PI * freq * i as f64 / rate as f64).sin()) as f32).collect()
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// The middle of a signal, away from the edges where any filter sees the clip's ends.
fn middle(x: &[f32], rate: u32) -> &[f32] {
    let margin = (rate as usize / 10).min(x.len() / 4);
    &x[margin..x.len() - margin]
}

/// Frequency from the times of upward zero crossings, interpolated linearly between samples.
fn zero_crossing_freq(x: &[f32], rate: u32) -> f64 {
    let mut crossings = Vec::new();
    for i in 1..x.len() {
        let (a, b) = (x[i - 1] as f64, x[i] as f64);
        if a < 0.0 && b >= 0.0 {
            crossings.push((i - 1) as f64 + a / (a - b));
        }
    }
    assert!(crossings.len() > 10, "too few zero crossings: {}", crossings.len());
    let span = crossings[crossings.len() - 1] - crossings[0];
    (crossings.len() - 1) as f64 / (span / rate as f64)
}

fn expected_len(n: usize, from: u32, to: u32) -> usize {
    (n as f64 * to as f64 / from as f64).round() as usize
}

fn check_tone(from: u32, to: u32, freq: f64) {
    let n = from as usize; // one second
    let input = sine(freq, from, n, 0.5);
    let out = audio::resample(&input, from, to).expect("resample");
    assert_eq!(out.len(), expected_len(n, from, to), "{from} -> {to}");
    let mid = middle(&out, to);
    let f = zero_crossing_freq(mid, to);
    assert!((f - freq).abs() / freq < 0.01, "{from} -> {to}: frequency {f} Hz, expected {freq}");
    let amp = rms(mid) * 2f64.sqrt();
    assert!((amp - 0.5).abs() / 0.5 < 0.01, "{from} -> {to}: amplitude {amp}, expected 0.5");
}

#[test]
fn resample_44k1_to_16k_keeps_frequency_and_amplitude() {
    check_tone(44_100, 16_000, 1000.0);
}

#[test]
fn resample_8k_to_16k_keeps_frequency_and_amplitude() {
    check_tone(8_000, 16_000, 1000.0);
}

#[test]
fn resample_22k05_to_16k_keeps_frequency_and_amplitude() {
    check_tone(22_050, 16_000, 3000.0);
}

#[test]
fn resample_has_no_time_shift() {
    // Sample by sample against the same sine evaluated at the output rate: a shift of even one
    // output sample at 1 kHz / 16 kHz would be an error of about 0.4 · amplitude.
    let (from, to) = (44_100, 16_000);
    let input = sine(1000.0, from, from as usize, 0.5);
    let out = audio::resample(&input, from, to).expect("resample");
    let expected = sine(1000.0, to, out.len(), 0.5);
    let margin = 1600;
    let worst = (margin..out.len() - margin).map(|i| (out[i] as f64 - expected[i] as f64).abs()).fold(0.0, f64::max);
    assert!(worst < 0.005, "max deviation from the time-aligned sine: {worst}");

    // The phase of a 500 Hz tone, for rate pairs whose FFT blocks have different parities.
    for (from, to) in
        [(44_100u32, 16_000u32), (8_000, 16_000), (22_050, 16_000), (11_025, 16_000), (48_000, 16_000), (16_000, 8_000)]
    {
        let f = 500.0;
        let out = audio::resample(&sine(f, from, from as usize, 0.5), from, to).expect("resample");
        let (mut s, mut c) = (0.0, 0.0);
        for (i, &y) in out.iter().enumerate().take(out.len() - 2000).skip(2000) {
            let ph = 2.0 * PI * f * i as f64 / to as f64;
            s += y as f64 * ph.sin();
            c += y as f64 * ph.cos();
        }
        // out ≈ sin(ph + φ): a delay of d output samples gives φ = -2πf·d/to.
        let shift = -c.atan2(s) / (2.0 * PI * f) * to as f64;
        assert!(shift.abs() < 0.01, "{from} -> {to}: output shifted by {shift:.3} samples");
    }

    // A click lands where its time says it should.
    for (from, to) in [(44_100u32, 16_000u32), (8_000, 16_000), (22_050, 16_000)] {
        let n = from as usize / 2;
        let at = n / 3;
        let mut click = vec![0.0f32; n];
        click[at] = 1.0;
        let out = audio::resample(&click, from, to).expect("resample");
        let peak = (0..out.len()).max_by(|&a, &b| out[a].abs().total_cmp(&out[b].abs())).expect("non-empty");
        let want = at as f64 * to as f64 / from as f64;
        assert!((peak as f64 - want).abs() <= 1.0, "{from} -> {to}: click at {peak}, expected {want}");
    }
}

#[test]
fn resample_removes_content_above_the_new_nyquist() {
    // 10 kHz cannot exist at 16 kHz (Nyquist 8 kHz); without the filter it would alias to 6 kHz.
    let input = sine(10_000.0, 44_100, 44_100, 0.5);
    let out = audio::resample(&input, 44_100, 16_000).expect("resample");
    let ratio = rms(middle(&out, 16_000)) / rms(&input);
    assert!(ratio < 0.01, "10 kHz tone kept {:.4} of its RMS after resampling to 16 kHz", ratio);
}

#[test]
fn resample_lengths_are_rounded_and_same_rate_copies() {
    for n in [0usize, 1, 2, 3, 7, 100, 441, 1000, 4410, 44_101] {
        for (from, to) in [(44_100u32, 16_000u32), (8_000, 16_000), (22_050, 16_000), (16_000, 8_000), (48_000, 16_000)]
        {
            let x = sine(440.0, from, n, 0.3);
            let y = audio::resample(&x, from, to).expect("resample");
            assert_eq!(y.len(), expected_len(n, from, to), "n = {n}, {from} -> {to}");
        }
    }
    let x = sine(440.0, 16_000, 1234, 0.3);
    assert_eq!(audio::resample(&x, 16_000, 16_000).expect("copy"), x);
    assert!(audio::resample(&x, 0, 16_000).is_err());
}

fn write_int(path: &Path, bits: u16, channels: u16, rate: u32, samples: &[i32]) {
    let spec =
        hound::WavSpec { channels, sample_rate: rate, bits_per_sample: bits, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).expect("create");
    for &s in samples {
        match bits {
            8 => w.write_sample(s as i8).expect("write"),
            16 => w.write_sample(s as i16).expect("write"),
            _ => w.write_sample(s).expect("write"),
        }
    }
    w.finalize().expect("finalize");
}

#[test]
fn read_wav_16bit_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.wav");
    let values = [0, 1, -1, 16384, -16384, 32767, -32768, 1234];
    write_int(&path, 16, 1, 16_000, &values);
    let a = audio::read_wav(&path).expect("read");
    assert_eq!(a.sample_rate, 16_000);
    let want: Vec<f32> = values.iter().map(|&v| v as f32 / 32768.0).collect();
    assert_eq!(a.samples, want);
}

#[test]
fn read_wav_24bit_and_8bit_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a24.wav");
    let values = [0, 1, -1, 4_194_304, -8_388_608, 8_388_607, 123_456];
    write_int(&path, 24, 1, 48_000, &values);
    let a = audio::read_wav(&path).expect("read 24-bit");
    assert_eq!(a.sample_rate, 48_000);
    let want: Vec<f32> = values.iter().map(|&v| (v as f64 / 8_388_608.0) as f32).collect();
    assert_eq!(a.samples, want);

    let path = dir.path().join("a8.wav");
    let values = [0, 64, -64, 127, -128];
    write_int(&path, 8, 1, 8_000, &values);
    let a = audio::read_wav(&path).expect("read 8-bit");
    let want: Vec<f32> = values.iter().map(|&v| v as f32 / 128.0).collect();
    assert_eq!(a.samples, want);
}

#[test]
fn read_wav_32bit_float_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 22_050,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let values = [0.0f32, 0.25, -0.5, 0.999, -1.0, 1e-6];
    let mut w = hound::WavWriter::create(&path, spec).expect("create");
    for &v in &values {
        w.write_sample(v).expect("write");
    }
    w.finalize().expect("finalize");
    let a = audio::read_wav(&path).expect("read");
    assert_eq!((a.sample_rate, a.samples), (22_050, values.to_vec()));
}

#[test]
fn read_wav_averages_channels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("st.wav");
    // Frames (L, R): the mono value is their mean.
    let frames = [(1000, 3000), (-2000, 2000), (32767, 32767), (-32768, 0)];
    let interleaved: Vec<i32> = frames.iter().flat_map(|&(l, r)| [l, r]).collect();
    write_int(&path, 16, 2, 16_000, &interleaved);
    let a = audio::read_wav(&path).expect("read");
    let want: Vec<f32> = frames.iter().map(|&(l, r)| ((l + r) as f32 / 2.0) / 32768.0).collect();
    assert_eq!(a.samples, want);

    let path = dir.path().join("three.wav");
    write_int(&path, 16, 3, 16_000, &[300, 600, 900, -3000, 0, 0]);
    let a = audio::read_wav(&path).expect("read 3 channels");
    assert_eq!(a.samples, vec![600.0 / 32768.0, -1000.0 / 32768.0]);
}

fn assert_err_names(result: Result<impl std::fmt::Debug, sera::Error>, path: &Path, needle: &str) {
    let msg = result.expect_err("should fail").to_string();
    assert!(msg.contains(&path.display().to_string()), "message does not name {}: {msg}", path.display());
    assert!(msg.contains(needle), "message does not say '{needle}': {msg}");
}

#[test]
fn bad_wav_files_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.wav");
    std::fs::write(&empty, b"").expect("write");
    assert_err_names(audio::read_wav(&empty), &empty, "empty");
    assert_err_names(audio::wav_info(&empty), &empty, "empty");

    let text = dir.path().join("notes.wav");
    std::fs::write(&text, "this is not a wav file, just some text\n").expect("write");
    assert_err_names(audio::read_wav(&text), &text, "not a readable WAV");
    assert_err_names(audio::wav_info(&text), &text, "not a readable WAV");

    // A valid header with no samples.
    let silent = dir.path().join("nosamples.wav");
    write_int(&silent, 16, 1, 16_000, &[]);
    assert_err_names(audio::read_wav(&silent), &silent, "no samples");
    assert_err_names(audio::wav_info(&silent), &silent, "no samples");

    let missing = dir.path().join("missing.wav");
    assert_err_names(audio::read_wav(&missing), &missing, "");
}

#[test]
fn truncated_wav_is_reported_with_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cut.wav");
    write_int(&path, 16, 1, 16_000, &vec![100; 1000]);
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(bytes.len(), 44 + 2000, "canonical 44-byte header");
    // Chop 300 bytes (150 samples) off the end.
    std::fs::write(&path, &bytes[..bytes.len() - 300]).expect("write");
    assert_err_names(audio::read_wav(&path), &path, "truncated: header says 1000 samples, file holds 850");
    assert_err_names(audio::wav_info(&path), &path, "truncated: header says 1000 samples, file holds 850");
    // Cut in the middle of a sample.
    std::fs::write(&path, &bytes[..bytes.len() - 301]).expect("write");
    assert_err_names(audio::read_wav(&path), &path, "truncated");
    assert_err_names(audio::wav_info(&path), &path, "truncated");
}

#[test]
fn wav_info_reads_the_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("st.wav");
    write_int(&path, 24, 2, 48_000, &vec![5; 2 * 12_000]);
    let info = audio::wav_info(&path).expect("info");
    assert_eq!((info.sample_rate, info.channels, info.frames), (48_000, 2, 12_000));
    assert!((info.duration_s - 0.25).abs() < 1e-12);
}

#[test]
fn write_wav_16bit_round_trips_clips_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.wav");
    let samples = [0.0f32, 0.5, -0.5, 1.5, -1.5, 1.0, -1.0, 100.0 / 32768.0];
    audio::write_wav_16bit(&path, &samples, 16_000).expect("write");
    let mut r = hound::WavReader::open(&path).expect("open");
    let spec = r.spec();
    assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (1, 16_000, 16));
    let got: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
    assert_eq!(got, vec![0, 16384, -16384, 32767, -32768, 32767, -32768, 100]);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["out.wav".to_string()]);
    // Overwriting an existing file works too.
    audio::write_wav_16bit(&path, &[0.25], 8_000).expect("overwrite");
    assert_eq!(audio::read_wav(&path).expect("read").samples, vec![0.25]);
    // A directory that does not exist is an error naming the file.
    let bad = dir.path().join("no/such/dir/x.wav");
    assert_err_names(audio::write_wav_16bit(&bad, &[0.0], 16_000), &bad, "");
}

#[test]
fn load_16k_resamples_other_rates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = crate::common::wav(dir.path(), "a/tone.wav", 0.5, 44_100);
    let a = audio::load_16k(&path).expect("load");
    assert_eq!(a.sample_rate, SAMPLE_RATE);
    assert_eq!(a.samples.len(), expected_len(22_050, 44_100, 16_000));
    let f = zero_crossing_freq(middle(&a.samples, SAMPLE_RATE), SAMPLE_RATE);
    assert!((f - 440.0).abs() < 4.4, "frequency {f}");
    let path = crate::common::wav(dir.path(), "b/tone.wav", 0.25, 16_000);
    let b = audio::load_16k(&path).expect("load");
    assert_eq!(b, audio::read_wav(&path).expect("read"));
}
