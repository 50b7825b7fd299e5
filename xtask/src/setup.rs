//! `cargo xtask setup`: make this machine able to build and test, or say
//! exactly what is missing. Idempotent: installs only what is absent and
//! prints every command it runs.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd::status, ebpf_toolchain};

/// Debian packages: the eBPF toolchain, and the tools the lab and tests use.
const TOOLCHAIN_PKGS: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];
/// The lint gate's clippy for the eBPF crate (Debian's rustc has its own).
const LINT_PKGS: &[&str] = &["rust-web-clippy"];
/// The package's checker (`cargo xtask deb`).
const PACKAGE_PKGS: &[&str] = &["lintian"];
/// cargo-deb, which packs the .deb (installed with cargo, as bpf-linker).
const CARGO_DEB_VERSION: &str = "3.8.0";
const LAB_PKGS: &[&str] = &[
    "iproute2",
    "ethtool",
    "iputils-ping",
    "nftables",
    "conntrack",
    "curl",
    "python3",
    "procps",
    "tcpdump",
    "iptables",
    "rsyslog",
    "iperf3",
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn is_debian() -> bool {
    std::path::Path::new("/usr/bin/apt-get").exists()
        && std::path::Path::new("/usr/bin/dpkg-query").exists()
}

pub fn run() -> Result<()> {
    let toolchain_ok = ebpf_toolchain::detect().is_ok();
    if !is_debian() {
        if let Err(msg) = ebpf_toolchain::detect() {
            bail!("not a Debian/Ubuntu machine, so nothing is installed automatically.\n{msg}");
        }
        eprintln!(
            "xtask setup: eBPF toolchain found; make sure iproute2, ethtool, ping, nft, conntrack, curl and python3 are installed for the lab and tests"
        );
        return Ok(());
    }
    let mut missing: Vec<&str> = LAB_PKGS
        .iter()
        .chain(LINT_PKGS)
        .chain(PACKAGE_PKGS)
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if !toolchain_ok {
        missing.extend(TOOLCHAIN_PKGS.iter().copied().filter(|p| !installed(p)));
    }
    if !missing.is_empty() {
        eprintln!("xtask setup: installing {}", missing.join(" "));
        eprintln!("+ apt-get update");
        status(Command::new("apt-get").args(["update", "-q"]))?;
        eprintln!("+ apt-get install -y {}", missing.join(" "));
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if ebpf_toolchain::find_bpf_linker().is_none() {
        let cmd = "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --locked --no-default-features --features llvm-22";
        eprintln!("+ {cmd}");
        status(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )?;
    }
    let cargo = || Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    if !cargo().args(["deb", "--version"]).output().is_ok_and(|o| o.status.success()) {
        eprintln!("+ cargo install cargo-deb --locked --version {CARGO_DEB_VERSION}");
        status(cargo().args(["install", "cargo-deb", "--locked", "--version", CARGO_DEB_VERSION]))?;
    }
    match ebpf_toolchain::detect() {
        Ok(tc) => {
            eprintln!("xtask setup: ready ({})", tc.describe());
            Ok(())
        }
        Err(msg) => bail!("setup finished but no eBPF toolchain is usable:\n{msg}"),
    }
}
