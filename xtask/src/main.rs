//! Orchestration: `cargo xtask setup | build-ebpf | run | lab | bench | soak | test`.
//!
//! Only orchestration lives here; the lab itself is `forwarder-testkit`,
//! the toolchain logic is shared with `forwarder-user/build.rs`.

#[path = "../../forwarder-user/build/ebpf_toolchain.rs"]
#[allow(dead_code, reason = "shared with build.rs, which uses other parts")]
mod ebpf_toolchain;
mod lab;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "forwarder build, run, lab and test orchestration")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install (Debian/Ubuntu) or check what building and testing need; idempotent.
    Setup,
    /// Build the eBPF object and the self-contained `forwarder` binary (release).
    BuildEbpf,
    /// Build and run the forwarder on real interfaces: `cargo xtask run -- run --public eth0 ...`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build a client — gateway — server lab in network namespaces and show
    /// real HTTP traffic being forwarded. Cleans up everything, also on Ctrl-C.
    Lab {
        /// How many HTTP requests the client sends.
        #[arg(long, default_value_t = 3)]
        requests: u32,
    },
    /// Micro-benchmark of the XDP program (`BPF_PROG_TEST_RUN`) against an
    /// empty program and a bare FIB-redirect one, in the same run.
    Bench {
        /// Fewer calls (well under a minute).
        #[arg(long)]
        quick: bool,
    },
    /// The soak run (not part of the tests): everything at once for N
    /// minutes — TCP and UDP clients with checked payloads, a rule change
    /// every second, a SIGKILL + adopting restart every minute, SYN-flood
    /// bursts — then checks hashes, conntrack baseline, RSS, drop counters.
    Soak {
        #[arg(long, default_value_t = 5)]
        minutes: u64,
        /// On the lab tuned for XDP (GRO at the far ends) instead of one at
        /// the kernel's defaults.
        #[arg(long)]
        tuned: bool,
        /// The datapath mode (default: none given, as a user runs it).
        #[arg(long, default_value = "default")]
        mode: String,
    },
    /// Unit tests and end-to-end tests (needs root). The README's test command.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

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
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from);
    Ok(target.join("release/forwarder"))
}

/// Runs `cargo test`, echoing its output, and adds up its result lines.
fn run_tests(cmd: &mut Command) -> Result<(u64, u64, bool)> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().context("running cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| rest.split(';').find_map(|p| p.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse::<u64>().ok());
            passed += num("passed").unwrap_or(0);
            failed += num("failed").unwrap_or(0);
        }
    }
    Ok((passed, failed, child.wait()?.success()))
}

pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (network namespaces, XDP): run it as root, e.g. `sudo -E cargo xtask ...`");
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf => {
            let bin = build_forwarder()?;
            println!("built {}", bin.display());
            Ok(())
        }
        Cmd::Run { args } => {
            setup::run()?;
            let bin = build_forwarder()?;
            require_root("running the forwarder")?;
            let st = Command::new(&bin).args(&args).status().with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(st.code().unwrap_or(1));
        }
        Cmd::Lab { requests } => {
            require_root("the lab")?;
            setup::run()?;
            let bin = build_forwarder()?;
            lab::run(&bin, requests)
        }
        Cmd::Bench { quick } => {
            require_root("the benchmark")?;
            setup::run()?;
            build_forwarder()?;
            // The program's micro-benchmark, then the netfilter comparison.
            for bench in ["micro", "compare"] {
                let mut cmd = cargo();
                cmd.args(["bench", "-p", "forwarder-testkit", "--bench", bench, "--"]);
                if quick {
                    cmd.arg("--quick");
                }
                status(&mut cmd)?;
            }
            Ok(())
        }
        Cmd::Soak { minutes, tuned, mode } => {
            require_root("the soak run")?;
            setup::run()?;
            let bin = build_forwarder()?;
            let mut cmd = cargo();
            cmd.args(["bench", "-p", "forwarder-testkit", "--bench", "soak", "--", "--minutes", &minutes.to_string()]);
            if tuned {
                cmd.arg("--tuned");
            }
            status(cmd.env("FORWARDER_BIN", &bin).env("FORWARDER_TEST_MODE", &mode))
        }
        Cmd::Test { args } => {
            require_root("the end-to-end tests")?;
            setup::run()?;
            let bin = build_forwarder()?;
            let t0 = std::time::Instant::now();
            // Everything once (end-to-end in XDP mode on the lab tuned for
            // it), then the end-to-end suites again: in TC mode, and in the
            // mode a user gets without flags on a lab at the kernel's
            // defaults (where only the TC path can transmit into veths).
            let (mut passed, mut failed, mut ok) =
                run_tests(cargo().args(["test", "--workspace", "--exclude", "forwarder-ebpf"]).env("FORWARDER_BIN", &bin).args(&args))?;
            for (mode, lab, suites) in [("tc", "tuned", &["forward", "audit", "failsafe"][..]), ("default", "untuned", &["forward", "audit", "failsafe", "cli"][..])] {
                eprintln!("xtask: the end-to-end suites again: mode {mode}, {lab} lab");
                let mut cmd = cargo();
                cmd.args(["test", "-p", "forwarder-testkit"]);
                for s in suites {
                    cmd.args(["--test", s]);
                }
                let (p, f, o) = run_tests(cmd.env("FORWARDER_BIN", &bin).env("FORWARDER_TEST_MODE", mode).env("FORWARDER_TEST_LAB", lab).args(&args))?;
                (passed, failed, ok) = (passed + p, failed + f, ok && o);
            }
            eprintln!("xtask: tests took {:.0} s", t0.elapsed().as_secs_f64());
            println!("tests: {passed} passed, {failed} failed");
            if !ok || failed > 0 {
                bail!("tests failed");
            }
            Ok(())
        }
    }
}
