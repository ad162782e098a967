//! WAV decoding and encoding with hound.
//!
//! Corpus copies are often damaged in transit (a truncated download, a zero-byte file left by an
//! interrupted rsync), and hound alone would report such a file as a bare "unexpected EOF". Here
//! every failure names the file and says what is wrong with it, and truncation is reported as
//! such, with how much of the audio is there.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Audio;
use crate::error::{Error, Result};

/// What a WAV header says, read without decoding the samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WavInfo {
    /// Samples per second.
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u16,
    /// Samples per channel.
    pub frames: u64,
    /// `frames / sample_rate`.
    pub duration_s: f64,
}

/// Reads a WAV file (8/16/24/32-bit integer or 32-bit float PCM, any number of channels) as mono:
/// channels are averaged and integers scaled by 2^(bits-1) into [-1, 1).
pub fn read_wav(path: &Path) -> Result<Audio> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = hound::WavReader::new(BufReader::new(file)).map_err(|e| not_wav(path, file_len, e))?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if channels == 0 {
        return Err(Error::audio(path, "WAV header declares 0 channels"));
    }
    let declared = reader.len() as usize;
    if declared == 0 {
        return Err(Error::audio(path, "WAV file holds no samples (empty data chunk)"));
    }
    let mut interleaved: Vec<f32> = Vec::with_capacity(declared);
    let result = match spec.sample_format {
        hound::SampleFormat::Int => {
            if spec.bits_per_sample == 0 || spec.bits_per_sample > 32 {
                return Err(Error::audio(
                    path,
                    format!("unsupported integer sample size of {} bits", spec.bits_per_sample),
                ));
            }
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f64;
            collect(reader.samples::<i32>(), &mut interleaved, |v| (v as f64 * scale) as f32)
        }
        hound::SampleFormat::Float => {
            if spec.bits_per_sample != 32 {
                return Err(Error::audio(
                    path,
                    format!("unsupported float sample size of {} bits", spec.bits_per_sample),
                ));
            }
            collect(reader.samples::<f32>(), &mut interleaved, |v| v)
        }
    };
    if let Err(e) = result {
        // hound does not say why a read came up short; the header check tells truncation apart
        // from other read errors.
        wav_info(path)?;
        return Err(Error::audio(path, format!("read error after {} of {declared} samples: {e}", interleaved.len())));
    }
    let samples = if channels == 1 {
        interleaved
    } else {
        interleaved.chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() / channels as f32).collect()
    };
    Ok(Audio { samples, sample_rate: spec.sample_rate })
}

/// Pushes decoded samples until the first error, which it returns.
fn collect<S>(
    samples: impl Iterator<Item = hound::Result<S>>,
    out: &mut Vec<f32>,
    to_f32: impl Fn(S) -> f32,
) -> hound::Result<()> {
    for s in samples {
        out.push(to_f32(s?));
    }
    Ok(())
}

/// Reads only the header of a WAV file; detects truncation from the file size against the data
/// chunk's declared length, so that checking thousands of files stays cheap.
pub fn wav_info(path: &Path) -> Result<WavInfo> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let reader = hound::WavReader::new(BufReader::new(file)).map_err(|e| not_wav(path, file_len, e))?;
    let spec = reader.spec();
    if spec.channels == 0 {
        return Err(Error::audio(path, "WAV header declares 0 channels"));
    }
    let declared = u64::from(reader.len());
    if declared == 0 {
        return Err(Error::audio(path, "WAV file holds no samples (empty data chunk)"));
    }
    // hound leaves the reader at the first data byte, right after the data chunk's length field.
    let mut inner = reader.into_inner();
    let data_start = inner.stream_position().map_err(|e| Error::io(path, e))?;
    let data_len = data_chunk_len(&mut inner, data_start).map_err(|e| Error::io(path, e))?;
    if file_len < data_start + data_len {
        let bytes_per_sample = (data_len / declared).max(1);
        return Err(truncated(path, declared, file_len.saturating_sub(data_start) / bytes_per_sample));
    }
    let frames = declared / u64::from(spec.channels);
    let duration_s = if spec.sample_rate == 0 { 0.0 } else { frames as f64 / f64::from(spec.sample_rate) };
    Ok(WavInfo { sample_rate: spec.sample_rate, channels: spec.channels, frames, duration_s })
}

/// The length field of the data chunk, which sits in the 4 bytes before `data_start`.
fn data_chunk_len(reader: &mut BufReader<File>, data_start: u64) -> std::io::Result<u64> {
    reader.seek(SeekFrom::Start(data_start.saturating_sub(4)))?;
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    Ok(u64::from(u32::from_le_bytes(len)))
}

fn truncated(path: &Path, declared: u64, held: u64) -> Error {
    Error::audio(
        path,
        format!("truncated: header says {declared} samples, file holds {held}; the copy is incomplete, copy it again"),
    )
}

fn not_wav(path: &Path, file_len: u64, e: hound::Error) -> Error {
    if file_len == 0 {
        return Error::audio(path, "empty file (0 bytes), not a WAV file");
    }
    Error::audio(path, format!("not a readable WAV file: {e}"))
}

/// Writes mono 16-bit PCM, clipping to [-1, 1]. The file appears complete or not at all: it is
/// written to a temporary file in the same directory and renamed into place.
pub fn write_wav_16bit(path: &Path, samples: &[f32], sample_rate: u32) -> Result<()> {
    if samples.len() as u64 * 2 > u64::from(u32::MAX) - 64 {
        return Err(Error::audio(path, format!("{} samples do not fit in a WAV file (4 GiB limit)", samples.len())));
    }
    let tmp = temp_sibling(path)?;
    let result = write_to(&tmp, path, samples, sample_rate)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        // Best effort: the write already failed, and that error is the one to report.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes the WAV to `tmp`; errors name `dest`, the file the caller asked for.
fn write_to(tmp: &Path, dest: &Path, samples: &[f32], sample_rate: u32) -> Result<()> {
    let spec =
        hound::WavSpec { channels: 1, sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let hound_err = |e: hound::Error| match e {
        hound::Error::IoError(io) => Error::io(dest, io),
        other => Error::audio(dest, format!("writing WAV: {other}")),
    };
    let file = File::create(tmp).map_err(|e| Error::io(dest, e))?;
    let mut writer = hound::WavWriter::new(BufWriter::new(file), spec).map_err(hound_err)?;
    for &s in samples {
        // `as` saturates and maps NaN to 0, so the clamp only has to handle the rounding edge.
        writer.write_sample((s * 32768.0).round().clamp(-32768.0, 32767.0) as i16).map_err(hound_err)?;
    }
    writer.finalize().map_err(hound_err)
}

/// A fresh temporary name next to `path`: same directory, so the rename cannot cross filesystems.
fn temp_sibling(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::audio(path, "output path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id())))
}
