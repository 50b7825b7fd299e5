//! Finding (and driving) a toolchain that can build the eBPF crate.
//!
//! Shared, as a source file, by `forwarder-user/build.rs` (which builds and
//! embeds the object) and `xtask setup` (which installs what is missing).
//! Two toolchains work:
//! - Debian's: `/usr/bin/rustc` from `rustc-web` with the prebuilt `core` for
//!   `bpfel-unknown-none` from `libstd-rust-web-dev-bpf` (no build-std);
//! - rustup nightly with the `rust-src` component (`-Z build-std=core`).
//!
//! Both need `bpf-linker` on PATH or in `~/.cargo/bin`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

pub const TARGET: &str = "bpfel-unknown-none";

/// What to do when no toolchain is found.
pub const INSTRUCTIONS: &str = "\
no eBPF toolchain found. Either run `cargo xtask setup` (Debian/Ubuntu: installs
  apt-get install -y rustc-web libstd-rust-web-dev-bpf llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22)
or, with rustup:
  rustup toolchain install nightly --component rust-src && cargo install bpf-linker
Set FORWARDER_EBPF_STUB=1 to build userspace without the eBPF object (check/clippy only).";

#[derive(Debug, Clone)]
pub enum Toolchain {
    /// Debian's rustc with a prebuilt BPF `core`.
    Debian { rustc: PathBuf, linker: PathBuf },
    /// rustup nightly with rust-src.
    Nightly { linker: PathBuf },
}

impl Toolchain {
    pub fn describe(&self) -> String {
        match self {
            Self::Debian { rustc, linker } => {
                format!("Debian rustc {} + {}", rustc.display(), linker.display())
            }
            Self::Nightly { linker } => {
                format!("rustup nightly (build-std) + {}", linker.display())
            }
        }
    }
}

pub fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join("bpf-linker")).find(|p| p.is_file())
}

fn debian_rustc() -> Option<PathBuf> {
    let rustc = PathBuf::from("/usr/bin/rustc");
    let core = Path::new("/usr/lib/rustlib").join(TARGET).join("lib");
    let has_core = std::fs::read_dir(&core).is_ok_and(|d| {
        d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
    });
    (rustc.is_file() && has_core).then_some(rustc)
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) =
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot.join("lib/rustlib/src/rust/library/core").is_dir()
}

pub fn detect() -> Result<Toolchain, String> {
    let linker = find_bpf_linker();
    if let (Some(rustc), Some(linker)) = (debian_rustc(), linker.clone()) {
        return Ok(Toolchain::Debian { rustc, linker });
    }
    if let Some(linker) = linker
        && nightly_has_rust_src()
    {
        return Ok(Toolchain::Nightly { linker });
    }
    Err(INSTRUCTIONS.to_string())
}

/// Clears what a nested cargo would inherit from an outer one's compiler
/// settings (a build script's or xtask's environment): wrappers, flags,
/// target dir and target.
pub fn clear_inherited_env(cmd: &mut Command) {
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
}

/// Builds the eBPF crate in `workspace` into `target_dir`; returns the
/// directory of its objects (`forwarder`, `bench`).
pub fn build(tc: &Toolchain, workspace: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    let manifest = workspace.join("forwarder-ebpf/Cargo.toml");
    let linker_cfg = |l: &Path| format!("target.{TARGET}.linker=\"{}\"", l.display());
    let mut cmd = match tc {
        Toolchain::Debian { rustc, linker } => {
            let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut c = Command::new(cargo);
            c.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
            c.args(["build", "--config", &linker_cfg(linker)]);
            c
        }
        Toolchain::Nightly { linker } => {
            let mut c = Command::new("rustup");
            c.args([
                "run",
                "nightly",
                "cargo",
                "build",
                "-Z",
                "build-std=core",
                "--config",
                &linker_cfg(linker),
            ]);
            c
        }
    };
    // A build script inherits the outer cargo's compiler settings.
    clear_inherited_env(&mut cmd);
    if matches!(tc, Toolchain::Nightly { .. }) {
        cmd.env_remove("RUSTC");
    }
    cmd.arg("--manifest-path").arg(&manifest);
    cmd.args(["--release", "--target", TARGET, "--target-dir"]).arg(target_dir);
    let status = cmd.status().map_err(|e| format!("cannot run cargo for the eBPF crate: {e}"))?;
    if !status.success() {
        return Err(format!("building the eBPF crate with {} failed ({status})", tc.describe()));
    }
    Ok(target_dir.join(TARGET).join("release"))
}
