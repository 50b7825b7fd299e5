//! Running cargo and other commands, shared by every xtask subcommand.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::ebpf_toolchain;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace());
    c
}

pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

/// Builds `forwarder` (release) and returns its path.
pub fn build_forwarder() -> Result<PathBuf> {
    let tc = ebpf_toolchain::detect().map_err(|e| anyhow::anyhow!(e))?;
    eprintln!("xtask: eBPF toolchain: {}", tc.describe());
    status(cargo().args(["build", "--release", "-p", "forwarder-user"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    Ok(target.join("release/forwarder"))
}

pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{what} needs root (network namespaces, XDP): run it as root, e.g. `sudo -E cargo xtask ...`"
        );
    }
    Ok(())
}
