//! `cargo xtask lint`: the gates every change passes (part of `cargo xtask
//! test`): no import cycle in any crate ([`crate::cycles`]), `cargo fmt
//! --check` against `rustfmt.toml`, clippy with `-D warnings` on the host
//! crates and on the eBPF crate (built for `bpfel-unknown-none` with the
//! toolchain that builds it).

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    cmd::{cargo, status, workspace},
    cycles, ebpf_toolchain,
};

pub fn run() -> Result<()> {
    eprintln!("xtask lint: import cycles");
    check_cycles()?;
    eprintln!("xtask lint: cargo fmt --check");
    status(cargo().args(["fmt", "--all", "--check"]))?;
    eprintln!("xtask lint: clippy (host crates)");
    status(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "forwarder-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    eprintln!("xtask lint: clippy (eBPF crate)");
    status(&mut ebpf_clippy()?)
}

/// Every crate's module graph must be a line of layers: a cycle names its
/// modules and files.
fn check_cycles() -> Result<()> {
    let ws = workspace();
    let mut found = Vec::new();
    for root in cycles::crate_roots(&ws) {
        for cycle in cycles::crate_cycles(&root)? {
            let rel = root.strip_prefix(&ws).unwrap_or(&root).display().to_string();
            let members: Vec<String> = cycle
                .iter()
                .map(|(m, f)| format!("{m} ({})", f.strip_prefix(&ws).unwrap_or(f).display()))
                .collect();
            found.push(format!("{rel}: {}", members.join(" <-> ")));
        }
    }
    if !found.is_empty() {
        bail!(
            "import cycles (a layer imports only the layers below it):\n  {}",
            found.join("\n  ")
        );
    }
    Ok(())
}

/// Clippy on the eBPF crate, with the compiler (and `core`) that builds
/// it: Debian's clippy next to Debian's rustc, or rustup nightly's.
fn ebpf_clippy() -> Result<Command> {
    let tc = ebpf_toolchain::detect().map_err(|e| anyhow::anyhow!(e))?;
    let ws = workspace();
    let manifest = ws.join("forwarder-ebpf/Cargo.toml");
    let target_dir = ws.join("target/ebpf-clippy");
    let mut cmd = match tc {
        ebpf_toolchain::Toolchain::Debian { rustc, .. } => {
            let clippy = std::path::Path::new("/usr/bin/cargo-clippy");
            if !clippy.exists() {
                bail!(
                    "no /usr/bin/cargo-clippy for Debian's rustc: run `cargo xtask setup` (installs rust-web-clippy)"
                );
            }
            let mut c = Command::new(clippy);
            c.arg("clippy").env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
            c
        }
        ebpf_toolchain::Toolchain::Nightly { .. } => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo", "clippy", "-Z", "build-std=core"]);
            c
        }
    };
    ebpf_toolchain::clear_inherited_env(&mut cmd);
    cmd.arg("--manifest-path")
        .arg(manifest)
        .args(["--release", "--target", ebpf_toolchain::TARGET, "--bins", "--target-dir"])
        .arg(target_dir);
    cmd.args(["--", "-D", "warnings"]);
    Ok(cmd)
}
