//! Band-limited resampling with rubato's FFT resampler.
//!
//! The rates of a corpus are fixed, so the synchronous FFT resampler fits: it is as good as
//! rubato's best sinc resampler and much faster. Its anti-aliasing filter matters here: going from
//! 44.1 kHz to 16 kHz, content between 8 and 22 kHz would otherwise fold back into the band the
//! models listen to.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};

use super::in_memory;
use crate::error::{Error, Result};

/// Input frames per FFT block, before rounding up to a valid block (see [`block_size`]). Around
/// a thousand keeps the filter's transition band narrow (cutoff near 0.95 of the
/// lower Nyquist frequency) while the FFTs stay small.
const CHUNK: usize = 1024;

/// The input block size: about [`CHUNK`], a multiple of the rate pair's minimum block, and
/// made of an even number of minimum blocks. rubato trims a delay of half the output block, which
/// is exact only when both blocks are even; with odd blocks (44.1 kHz → 16 kHz gives 1323 → 480)
/// its output comes out half an input sample early.
fn block_size(from: u32, to: u32) -> usize {
    let g = gcd(from, to);
    let min_in = (from / g) as usize;
    let blocks = CHUNK.div_ceil(min_in).max(1);
    (blocks + blocks % 2) * min_in
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Resamples mono `samples` from `from` Hz to `to` Hz. The output has `round(n · to / from)`
/// samples and no time shift (rubato's filter delay is trimmed); `from == to` returns a copy.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    convert(samples, from, to).map_err(|m| Error::audio(in_memory(), format!("resampling {from} Hz to {to} Hz: {m}")))
}

/// [`resample`] with a plain message, so that callers holding a path can name it.
pub(super) fn convert(samples: &[f32], from: u32, to: u32) -> std::result::Result<Vec<f32>, String> {
    if from == 0 || to == 0 {
        return Err("sample rates must be positive".into());
    }
    if from == to {
        return Ok(samples.to_vec());
    }
    let n = samples.len();
    // Integer arithmetic: the float ratio can land a hair above an exact integer and round up.
    let wanted = ((n as u128 * to as u128 + from as u128 / 2) / from as u128) as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut resampler = Fft::<f32>::new_custom(
        from as usize,
        to as usize,
        block_size(from, to),
        1,
        1,
        WindowFunction::BlackmanHarris2,
        FixedSync::Input,
    )
    .map_err(|e| e.to_string())?;
    let input = InterleavedSlice::new(samples, 1, n).map_err(|e| e.to_string())?;
    // `process_all` trims the filter delay and returns ceil(n · ratio) frames.
    let output = resampler.process_all(&input, n, None).map_err(|e| e.to_string())?;
    let mut out = output.take_data();
    out.resize(wanted, 0.0);
    Ok(out)
}
