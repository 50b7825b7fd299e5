//! Orchestration: `cargo xtask setup | build-ebpf | run | lab | bench | soak | lint | deb | test`.
//!
//! Only orchestration lives here; the lab itself is `forwarder-testkit`,
//! the toolchain logic is shared with `forwarder-user/build.rs`.

mod cmd;
mod cycles;
mod deb;
#[path = "../../forwarder-user/build/ebpf_toolchain.rs"]
#[allow(dead_code, reason = "shared with build.rs, which uses other parts")]
mod ebpf_toolchain;
mod lab;
mod lint;
mod setup;

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use cmd::{build_forwarder, cargo, require_root, status};

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
        /// Only prove that every workload and check works: the shortest
        /// runs, figures to target/bench/check; fails when any is FAILED
        /// (as every run does). Part of `cargo xtask test`.
        #[arg(long)]
        check: bool,
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
    /// The gates: no import cycle in any crate, `cargo fmt --check`, clippy
    /// with `-D warnings` on every crate (the eBPF one too). Part of `test`.
    Lint,
    /// The Debian package: `target/debian/forwarder_VERSION_amd64.deb` with the
    /// binary, the systemd unit, the example configuration, man pages and
    /// completions; lintian must find no error in it. Part of `test`.
    Deb,
    /// The lint gates, the package, unit tests and end-to-end tests (needs
    /// root). The README's test command.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Runs `cargo test`, echoing its output, and adds up its result lines.
fn run_tests(cmd: &mut Command) -> Result<(u64, u64, bool)> {
    use std::io::{BufRead, BufReader};
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).spawn().context("running cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split(';').find_map(|p| {
                    p.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse::<u64>().ok()
                })
            };
            passed += num("passed").unwrap_or(0);
            failed += num("failed").unwrap_or(0);
        }
    }
    Ok((passed, failed, child.wait()?.success()))
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
            let st = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(st.code().unwrap_or(1));
        }
        Cmd::Lab { requests } => {
            require_root("the lab")?;
            setup::run()?;
            let bin = build_forwarder()?;
            lab::run(&bin, requests)
        }
        Cmd::Bench { quick, check } => {
            require_root("the benchmark")?;
            setup::run()?;
            let bin = build_forwarder()?;
            bench(&bin, quick || check, check)
        }
        Cmd::Soak { minutes, tuned, mode } => {
            require_root("the soak run")?;
            setup::run()?;
            let bin = build_forwarder()?;
            let mut cmd = cargo();
            cmd.args([
                "bench",
                "-p",
                "forwarder-testkit",
                "--bench",
                "soak",
                "--",
                "--minutes",
                &minutes.to_string(),
            ]);
            if tuned {
                cmd.arg("--tuned");
            }
            status(cmd.env("FORWARDER_BIN", &bin).env("FORWARDER_TEST_MODE", &mode))
        }
        Cmd::Deb => {
            setup::run()?;
            let deb = deb::build()?;
            println!("{}", deb.display());
            Ok(())
        }
        Cmd::Lint => {
            setup::run()?;
            lint::run()
        }
        Cmd::Test { args } => {
            require_root("the end-to-end tests")?;
            setup::run()?;
            let bin = build_forwarder()?;
            // The gates first: a change that fails them does not land.
            if args.is_empty() {
                lint::run()?;
            }
            // The package (lintian-checked) that the package test unpacks.
            let deb = deb::build()?;
            test(&bin, &deb, &args)
        }
    }
}

/// The program's micro-benchmark, the netfilter comparison, then how the
/// cost grows with the work; `check`: the comparison's and the scale
/// benchmark's shortest runs, which only prove they work.
fn bench(bin: &Path, quick: bool, check: bool) -> Result<()> {
    let shortest = if check { Some("--check") } else { quick.then_some("--quick") };
    for (name, flag) in
        [("micro", quick.then_some("--quick")), ("compare", shortest), ("scale", shortest)]
    {
        let mut cmd = cargo();
        cmd.args(["bench", "-p", "forwarder-testkit", "--bench", name, "--"]);
        cmd.args(flag);
        status(cmd.env("FORWARDER_BIN", bin))?;
    }
    Ok(())
}

/// The datapath modes and labs every end-to-end test runs in (`mode`,
/// `lab` as `FORWARDER_TEST_MODE` and `FORWARDER_TEST_LAB` take them). The
/// first pass also runs the unit tests. Untuned labs are at the kernel's
/// defaults (no GRO at the far ends: XDP cannot transmit into them); the
/// `csum` lab is an untuned one whose endpoints verify every checksum they
/// receive and whose gateway computes in software what it sends.
const PASSES: [(&str, &str); 6] = [
    ("xdp", "tuned"),
    ("xdp", "csum"),
    ("tc", "tuned"),
    ("tc", "untuned"),
    ("default", "tuned"),
    ("default", "csum"),
];

/// `cargo xtask test`: the whole suite in every pass of [`PASSES`], the
/// unit tests and fixtures once more in release, the benchmark's check.
fn test(bin: &Path, deb: &Path, args: &[String]) -> Result<()> {
    let t0 = std::time::Instant::now();
    let (mut passed, mut failed, mut ok) = (0, 0, true);
    let mut tally = |(p, f, o): (u64, u64, bool)| {
        (passed, failed, ok) = (passed + p, failed + f, ok && o);
    };
    for (i, (mode, lab)) in PASSES.iter().enumerate() {
        eprintln!("xtask: pass {}/{}: mode {mode}, {lab} lab", i + 1, PASSES.len());
        let t = std::time::Instant::now();
        let mut cmd = cargo();
        if i == 0 {
            cmd.args(["test", "--workspace", "--exclude", "forwarder-ebpf"]);
        } else {
            cmd.args(["test", "-p", "forwarder-testkit", "--tests"]);
        }
        tally(run_tests(
            cmd.env("FORWARDER_BIN", bin)
                .env("FORWARDER_DEB", deb)
                .env("FORWARDER_TEST_MODE", mode)
                .env("FORWARDER_TEST_LAB", lab)
                .args(args),
        )?);
        eprintln!("xtask: pass {}/{} took {:.0} s", i + 1, PASSES.len(), t.elapsed().as_secs_f64());
    }
    // Optimised code can differ (overflow checks off, other inlining):
    // the host-side logic and the fixtures once more in release.
    eprintln!("xtask: unit tests and fixtures in release");
    tally(run_tests(
        cargo()
            .args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "forwarder-ebpf",
                "--lib",
                "--bins",
            ])
            .args(args),
    )?);
    tally(run_tests(
        cargo()
            .args([
                "test",
                "--release",
                "-p",
                "forwarder-testkit",
                "--test",
                "fixtures",
                "--test",
                "fixtures_conntrack",
                "--test",
                "fuzz",
            ])
            .env("FORWARDER_BIN", bin)
            .args(args),
    )?);
    eprintln!("xtask: tests took {:.0} s", t0.elapsed().as_secs_f64());
    println!("tests: {passed} passed, {failed} failed");
    if !ok || failed > 0 {
        bail!("tests failed");
    }
    // A benchmark that cannot run (or whose checks fail) must not land.
    if args.is_empty() {
        eprintln!("xtask: the benchmark's check");
        let t = std::time::Instant::now();
        bench(bin, true, true)?;
        eprintln!("xtask: the benchmark's check took {:.0} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}
