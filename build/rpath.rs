//! Shared build script of every package that links libtorch: gives its binaries (and the
//! integration-test binary) a RUNPATH to libtorch, so they run without LD_LIBRARY_PATH. The linker
//! writes RUNPATH, not RPATH, so LD_LIBRARY_PATH can still override it (needed on GPU hosts).
//! torch-sys exposes its library directory to direct dependents as DEP_TCH_LIBTORCH_LIB.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
