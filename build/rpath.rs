//! Shared build script of every package that links libtorch:
//! - gives its binaries (and the integration-test binary) a RUNPATH to libtorch, so they run
//!   without LD_LIBRARY_PATH. The linker writes RUNPATH, not RPATH, so LD_LIBRARY_PATH can still
//!   override it (needed on GPU hosts). torch-sys exposes its library directory to direct
//!   dependents as DEP_TCH_LIBTORCH_LIB.
//! - records the git commit (SERA_GIT_COMMIT) that result.json reports as the code version.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(top) = git(&["rev-parse", "--show-toplevel"]) {
        println!("cargo:rerun-if-changed={top}/.git/HEAD");
        println!("cargo:rerun-if-changed={top}/.git/refs/heads");
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!("cargo:rustc-env=SERA_GIT_COMMIT={commit}{}", if dirty { "-dirty" } else { "" });
}
