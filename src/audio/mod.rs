//! Audio in and out: WAV files to mono `f32` at 16 kHz, which is what both front ends (AST's
//! fbank and wav2vec2) take.
//!
//! Corpora arrive in every shape (IEMOCAP is 16 kHz mono 16-bit, MSP-IMPROV 44.1 kHz, user corpora
//! anything hound can read), so everything goes through [`load_16k`]: decode, mix down, resample.
//! Errors name the file, because one bad file among thousands must be findable from the message.

mod resample;
mod wav;

use std::path::{Path, PathBuf};

pub use resample::resample;
pub use wav::{WavInfo, read_wav, wav_info, write_wav_16bit};

use crate::error::{Error, Result};

/// The rate every model in sera consumes.
pub const SAMPLE_RATE: u32 = 16_000;

/// Mono audio: samples in [-1, 1] and their rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Mono samples, nominally in [-1, 1].
    pub samples: Vec<f32>,
    /// Samples per second.
    pub sample_rate: u32,
}

impl Audio {
    /// Length in seconds.
    pub fn duration_s(&self) -> f64 {
        if self.sample_rate == 0 {
            return 0.0;
        }
        self.samples.len() as f64 / self.sample_rate as f64
    }
}

/// Reads a WAV file as mono and resamples it to [`SAMPLE_RATE`] if it is at another rate.
pub fn load_16k(path: &Path) -> Result<Audio> {
    let audio = read_wav(path)?;
    if audio.sample_rate == SAMPLE_RATE {
        return Ok(audio);
    }
    let samples = resample::convert(&audio.samples, audio.sample_rate, SAMPLE_RATE)
        .map_err(|m| Error::audio(path, format!("resampling {} Hz to {SAMPLE_RATE} Hz: {m}", audio.sample_rate)))?;
    Ok(Audio { samples, sample_rate: SAMPLE_RATE })
}

/// The "path" of errors about samples that never came from a file.
fn in_memory() -> PathBuf {
    PathBuf::from("(in-memory audio)")
}
