//! Compute device selection. A CUDA device needs `libtorch_cuda.so` loaded before first use: the
//! linker's `--as-needed` drops it from our binaries (nothing references its symbols directly),
//! and without it libtorch silently reports no CUDA. We load it only when CUDA is asked for, so a
//! CPU run needs no CUDA libraries.

use std::ffi::CString;

use crate::error::{Error, Result};

/// Parses `cpu`, `cuda` or `cuda:N` into a tch device, loading CUDA support if needed.
pub fn parse(spec: &str) -> Result<tch::Device> {
    let bad = || Error::config("--device", format!("'{spec}' is not a device; use cpu, cuda or cuda:N"));
    match spec.trim() {
        "cpu" => Ok(tch::Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let index = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| bad())?,
                None => 0,
            };
            load_cuda()?;
            let count = tch::Cuda::device_count() as usize;
            if index >= count {
                return Err(Error::config(
                    "--device",
                    format!("'{spec}' requested, but libtorch sees {count} CUDA device(s)"),
                ));
            }
            Ok(tch::Device::Cuda(index))
        }
        _ => Err(bad()),
    }
}

/// dlopens `libtorch_cuda.so` (found through the binary's RUNPATH or LD_LIBRARY_PATH).
pub fn load_cuda() -> Result<()> {
    let name = CString::new("libtorch_cuda.so").map_err(|e| Error::config("libtorch_cuda.so", e.to_string()))?;
    // SAFETY: dlopen with a valid NUL-terminated name; the handle is deliberately never closed,
    // since libtorch registers its CUDA backend for the life of the process.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string or null.
        let why = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".to_string()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(Error::config(
            "libtorch_cuda.so",
            format!(
                "cannot load CUDA support ({why}); install the GPU build with `scripts/setup --gpu`, or point \
                 LD_LIBRARY_PATH at a PyTorch 2.11 torch/lib directory"
            ),
        ));
    }
    if !tch::Cuda::is_available() {
        return Err(Error::config(
            "libtorch_cuda.so",
            "loaded, but libtorch sees no CUDA device (driver missing or no GPU?)",
        ));
    }
    Ok(())
}

/// One line describing libtorch and the devices it sees (for `sera env`).
pub fn describe() -> String {
    let threads = tch::get_num_threads();
    let cuda = match load_cuda() {
        Ok(()) => format!("{} CUDA device(s)", tch::Cuda::device_count()),
        Err(e) => format!("no CUDA ({e})"),
    };
    format!("libtorch (tch 0.24, libtorch 2.11.0): {threads} CPU threads; {cuda}")
}
