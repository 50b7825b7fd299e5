//! The netfilter comparison (`cargo xtask bench`): the same lab, traffic
//! and durations for six ways of publishing a service through a Linux
//! gateway, measured in one run, interleaved (A B C … A B C …) so drift of
//! the machine hits every mode alike.
//!
//! Modes: plain routing (no NAT: the kernel's own ceiling on this path);
//! iptables, exactly the classic recipe (PREROUTING DNAT, FORWARD `-m state
//! --state NEW,ESTABLISHED,RELATED -j ACCEPT`, POSTROUTING MASQUERADE); the
//! nftables equivalent; the forwarder in XDP mode and in TC mode (as
//! `--mode auto` picks it on veth); a bare
//! XDP FIB-lookup + redirect program (no NAT: the ceiling of the XDP
//! approach). NAT modes publish 203.0.113.1:{8080,5201,5300,5301} (UDP
//! and TCP 5300 and 5301) as 192.168.1.50:{80,5201,5300,5301} with masquerade, the server having no
//! route back to the client; the no-NAT modes reach the server's address
//! directly and give it that route.
//!
//! Two environments, each a full set of runs (`modes::Env`):
//! - **each mode at its best**: routing, netfilter and the forwarder's TC
//!   mode on the kernel's default veth path — the gateway's veths as
//!   created (no NAPI: what they receive goes to the backlog), the receive
//!   work steered to the gateway's core by RPS, as a NIC's interrupts
//!   would be; the XDP modes with what XDP on a veth needs, NAPI on the
//!   gateway's veths in threads on its core. The endpoints' veths have
//!   NAPI without threads in every mode, so what the gateway sends them
//!   is received on the gateway's core alike for every path (no
//!   cross-core wake-up per packet that one path pays and another not);
//! - **every veth end with threaded NAPI and GRO** (XDP's environment):
//!   the gateway's threads on its core, the endpoints' on the other. An
//!   skb path wakes the receiver's thread across cores for every packet,
//!   an XDP redirect once per batch: it shows what that costs.
//!
//! Cores: the gateway's packet work runs on a core of its own (CPU 1,
//! with the forwarder daemon); the generator, clients and servers on CPU
//! 0. "Gateway CPU" is that core's busy time (the monotonic clock less
//! its idle time, which the kernel measures exactly: `GwCore`), divided
//! by what the gateway forwarded; "busy" is the same time's share of the
//! run.
//!
//! Workloads per mode: 64-byte UDP frames generated in the kernel
//! (`BPF_PROG_TEST_RUN` in live-frames mode on the client's interface: an
//! XDP program writes the frame and transmits it, or passes it where the
//! gateway's veth has no NAPI and a TC program sends it out as an skb),
//! counted by an XDP program at the server:
//! - as fast as the generator goes (saturation), over one flow and over
//!   10 000 flows (every flow's state made before the count): delivered
//!   packets/s, loss, the gateway core's busy share (a core below 95 %
//!   was not saturated: the generator or the receiver was the limit);
//! - at the same offered load for every mode, 200 000 packets/s in
//!   evenly spaced bursts of 16 (the generator's program sends when a
//!   burst is due): the gateway CPU per packet; the mode must forward
//!   98 % of it (a run that falls behind is run again, twice at most);
//! - a SYN flood of 100 000 new connections (one flow each): connections
//!   set up per second; then 40 000 new connections a second to another
//!   port: gateway CPU per connection;
//! - TCP bulk (iperf3, 1 and 4 streams); TCP connections per second
//!   (connect, request, answer, close) and the gateway CPU per whole
//!   connection; UDP request/response latency at 1000 requests/s (p50,
//!   p99).
//!
//! Ratios are to the better of iptables and nftables for each figure (the
//! best netfilter); shares (loss, busy) get none.
//!
//! Every run is checked before it counts, and a figure whose check fails
//! is marked FAILED (never reported as zero; the run exits non-zero):
//! - the server received what it must, from the source the mode must
//!   produce (the gateway's address for NAT, the client's for routing):
//!   the XDP receiver counts packets from any other source apart, iperf3's
//!   server log names every client it accepted; a packet-rate run needs
//!   more than 1 % of its frames delivered, and what was delivered plus
//!   what the gateway's egress queue dropped (the receiver is slower than
//!   the gateway) must be at least 99 % of what the gateway sent;
//! - replies came back (connections completed, requests answered);
//! - the mode's own path did the work: netfilter conntrack entries for
//!   iptables and nftables, kernel-forwarded datagrams for routing and
//!   neither for the XDP modes; in XDP mode XDP sent at least 90 % of what
//!   the gateway sent, in TC mode XDP nothing;
//! - the forwarder's counters, summed over the run: every rule counted at
//!   least the packets and connections its workloads owe it, and the
//!   counters that count a loss or a fault stayed 0;
//! - a workload with many flows made every flow's state before the count
//!   (the warm-up is repeated until the gateway tracks them all).
//!
//! Then the balanced service (`balanced.rs`): a port over three backends,
//! iptables' `statistic` and nftables' `numgen` against the forwarder's
//! Maglev, new connections per second and the CPU each costs (in the
//! first environment).
//!
//! `--check`: the shortest runs (1 s, one repetition, 100 000 frames),
//! only to prove every workload and check works (`cargo xtask test` runs
//! it); its figures go to `target/bench/check`. `--modes=iptables,bare_xdp`
//! and `--envs=best` run a subset; `COMPARE_TRACE=1` prints each step's
//! duration and outcome.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context as _, Result, ensure};
use forwarder_testkit::{Host, Lab, Macs};
use harness::Bench;
use serde_json::json;

#[path = "../../harness/mod.rs"]
#[allow(dead_code, reason = "the comparison uses the benchmark object, not the test runs")]
mod harness;

mod balanced;
mod checks;
mod modes;
mod recipes;
mod report;
mod util;
mod workloads;

use balanced::{LB_FIGURES, run_balanced};
use checks::{Owed, Sent, stop_and_verify, verify_path};
use modes::{Active, Env, GwCore, LB_MODES, MODES, Mode, setup};
use report::{
    FIGURES, Figures, LOAD_PPS, LOAD_SYNS, LOAD_SYNS_MAX, bases, chart, json_modes, machine,
    markdown, print_table, summaries,
};
use util::{GW_CPU, HOST_CPU, pin, sh};
use workloads::{Behind, FLOWS, Gen, SYNS, conns, generated, iperf, rtt};

struct Params {
    secs: u64,
    reps: usize,
    /// Frames per packet-rate run.
    frames: u32,
    /// Seconds of a run at an offered load (the core's busy time is known
    /// within 10 ms: 0.5 % of the core in 2 s).
    load_secs: u32,
}

/// One mode, one repetition: a fresh lab (nothing of an earlier mode
/// survives, e.g. netfilter hooks) set up as `env` has it, every
/// workload, the checks.
fn run_mode(mode: Mode, env: Env, p: &Params, traffic: &Arc<Mutex<Bench>>) -> Result<Figures> {
    let mut lab = Lab::new()?;
    let (mut active, gw, macs) = setup(&lab, mode, env, traffic)?;
    // (Bare: the benchmark object keeps its programs attached until dropped.)
    let iperf_log = lab.dir.join("iperf3-server.log");
    lab.spawn(
        Host::Server,
        "iperf3",
        &["-s", "-p", "5201", "--logfile", iperf_log.to_str().context("path")?],
    )?;
    let mut out: Figures = Vec::new();
    let mut owed = Owed::default();
    generated_runs(&lab, mode, &active, &gw, &macs, p, traffic, &mut owed, &mut out);
    let step = Instant::now();
    for (key, streams) in [("tcp1_gbps", 1), ("tcp4_gbps", 4)] {
        let r = iperf(&lab, mode, streams, p.secs).map_err(|e| format!("{e:#}"));
        if let Ok((_, bytes)) = &r {
            // Its control connection and a connection per stream.
            owed.add(1, "new_connections", u64::from(streams) + 1);
            owed.add(1, "bytes_in", *bytes);
        }
        out.push((key, r.map(|r| r.0)));
    }
    trace(&format!("{} iperf: {:.1} s", mode.key(), step.elapsed().as_secs_f64()));
    let step = Instant::now();
    let c = conns(&lab, mode, &gw, p.secs).map_err(|e| format!("{e:#}"));
    trace(&format!("{} conns: {:.1} s", mode.key(), step.elapsed().as_secs_f64()));
    if let Ok(c) = &c {
        owed.add(0, "new_connections", c.2);
    }
    out.extend([("conn_per_s", c.clone().map(|c| c.0)), ("cpu_us_per_conn", c.map(|c| c.1))]);
    match rtt(&lab, mode, p.secs) {
        Ok((p50, p99, answered)) => {
            owed.add(3, "packets_in", answered);
            owed.add(3, "packets_out", answered);
            out.extend([("rtt_p50_us", Ok(p50)), ("rtt_p99_us", Ok(p99))]);
        }
        Err(e) => out
            .extend([("rtt_p50_us", Err(format!("{e:#}"))), ("rtt_p99_us", Err(format!("{e:#}")))]),
    }
    // The forwarder's counters cover every workload: checked last.
    stop_and_verify(&mut active, &owed, mode, &mut out);
    drop(active);
    drop(lab);
    Ok(out)
}

/// The generated runs of [`run_mode`]: saturation and offered load, one
/// flow and many, the SYN flood and the SYN load; their figures to `out`,
/// what the forwarder's counters owe them to `owed`.
#[expect(clippy::too_many_arguments, reason = "the mode's lab, its state and the two outputs")]
fn generated_runs(
    lab: &Lab,
    mode: Mode,
    active: &Active,
    gw: &GwCore,
    macs: &Macs,
    p: &Params,
    traffic: &Arc<Mutex<Bench>>,
    owed: &mut Owed,
    out: &mut Figures,
) {
    let load = |syn: bool, frames: u32, flows: u32, first: u32, rate: u32| Gen {
        syn,
        port: 5300,
        frames,
        flows,
        warm_up: 0,
        first,
        rate: Some(rate),
    };
    let load_frames = p.load_secs * LOAD_PPS;
    let load_syns = (p.load_secs * LOAD_SYNS).min(LOAD_SYNS_MAX);
    // (Gen, figure keys: rate, loss, busy, CPU per packet.) The load runs
    // follow the saturation runs of the same flows (their state made);
    // the SYN load run's flows are new ones, after the flood's.
    let runs: [(Gen, [&str; 4]); 5] = [
        (
            Gen::flat_out(false, p.frames, 1, 1000),
            ["udp64_kpps", "udp64_loss_pct", "udp64_busy_pct", ""],
        ),
        (load(false, load_frames, 1, 0, LOAD_PPS), ["", "", "", "cpu_ns_per_pkt"]),
        (
            Gen::flat_out(false, p.frames, FLOWS, 2 * FLOWS),
            ["udp64_flows_kpps", "", "udp64_flows_busy_pct", ""],
        ),
        (load(false, load_frames, FLOWS, 0, LOAD_PPS), ["", "", "", "cpu_ns_per_pkt_flows"]),
        (Gen::flat_out(true, SYNS, SYNS, 0), ["syn_kpps", "", "", ""]),
    ];
    let syn_load = Gen::syn_load(5301, load_syns, LOAD_SYNS);
    let runs = runs.into_iter().chain([(syn_load, ["", "", "", "cpu_ns_per_syn"])]);
    for (g, keys) in runs {
        let step = Instant::now();
        let tracked = || -> Result<Option<u64>> {
            Ok(match (active, mode) {
                // The rule of port 5300's connections (they do not expire
                // within the run).
                (Active::Forwarder(_), _) => {
                    lab.live_stats()?["rules"][2]["new_connections"].as_u64()
                }
                (_, Mode::Iptables | Mode::Nftables) => {
                    Some(sh(lab, Host::Gateway, "conntrack", &["-C"])?.trim().parse()?)
                }
                _ => None,
            })
        };
        let run = || {
            generated(lab, mode, gw, macs, traffic, g, &|| Sent::now(lab, active), &tracked)
                .and_then(|r| {
                    verify_path(lab, mode, r.delivered, r.sent)?;
                    Ok(r)
                })
        };
        let mut r = run();
        // A paced UDP run that fell behind is run again, twice at most: a
        // stall of the gateway's virtual core (the host's) is not the
        // mode's figure, and a mode that cannot keep up falls behind every
        // time. (A SYN run is never repeated: its connections exist after
        // the first.)
        for again in 1..=2 {
            match &r {
                Err(e) if !g.syn && e.downcast_ref::<Behind>().is_some() => {
                    eprintln!(
                        "compare: {} fell behind ({e}); running it again ({again}/2)",
                        mode.key()
                    );
                    r = run();
                }
                _ => break,
            }
        }
        let r = r.map_err(|e| format!("{e:#}"));
        trace(&format!(
            "{} {keys:?}: {:.1} s {:?}",
            mode.key(),
            step.elapsed().as_secs_f64(),
            r.as_ref().err()
        ));
        if let Ok(r) = &r {
            if g.syn {
                // The rules of TCP 5300 and 5301.
                owed.add(if g.port == 5300 { 4 } else { 5 }, "new_connections", r.delivered);
            } else {
                owed.add(2, "packets_in", r.delivered);
                // (The multi-flow run's first flow is the one-flow run's;
                // the load runs' flows are the runs' before them.)
                if g.rate.is_none() {
                    owed.add(2, "new_connections", u64::from(g.flows) - u64::from(g.flows > 1));
                }
            }
        }
        let values = [
            r.clone().map(|r| r.kpps),
            r.clone().map(|r| r.loss_pct),
            r.clone().map(|r| r.busy_pct),
            r.map(|r| r.cpu_ns),
        ];
        for (key, v) in keys.into_iter().zip(values) {
            if !key.is_empty() {
                out.push((key, v));
            }
        }
    }
}

/// A step's duration on stderr when `COMPARE_TRACE` is set.
fn trace(what: &str) {
    if std::env::var_os("COMPARE_TRACE").is_some() {
        eprintln!("compare: {what}");
    }
}

/// `reps` repetitions of every mode of `modes`, interleaved (A B C … A B
/// C …), each by `run`: `[mode][repetition]`. A run that fails as a whole
/// fails each of `figures`.
fn interleaved(
    modes: &[Mode],
    reps: usize,
    figures: &[(&'static str, &str, bool)],
    run: &dyn Fn(Mode) -> Result<Figures>,
) -> Vec<Vec<Figures>> {
    let mut all: Vec<Vec<Figures>> = vec![Vec::new(); modes.len()];
    for rep in 0..reps {
        for (i, mode) in modes.iter().enumerate() {
            let t = Instant::now();
            let figs = run(*mode).unwrap_or_else(|e| {
                let e = format!("{e:#}");
                figures.iter().map(|f| (f.0, Err(e.clone()))).collect()
            });
            let failed: Vec<&str> = figs.iter().filter(|f| f.1.is_err()).map(|f| f.0).collect();
            eprintln!(
                "compare: rep {}/{reps} {:<28} {:.1} s{}",
                rep + 1,
                mode.name(),
                t.elapsed().as_secs_f64(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!("  FAILED: {}", failed.join(", "))
                }
            );
            all[i].push(figs);
        }
    }
    all
}

/// One environment's figures: printed, and (JSON, Markdown section, the
/// "env mode figure" of every FAILED one); its chart written to `dir`.
#[expect(clippy::too_many_arguments, reason = "the environment's runs and where they go")]
fn report_env(
    env: Env,
    modes: &[Mode],
    lb_modes: &[Mode],
    all: &[Vec<Figures>],
    lb_all: &[Vec<Figures>],
    p: &Params,
    machine: &str,
    dir: &std::path::Path,
) -> Result<(serde_json::Value, String, Vec<String>)> {
    let figures: Vec<(&str, &str, bool)> = FIGURES.to_vec();
    let lb_figures: Vec<(&str, &str, bool)> = LB_FIGURES.to_vec();
    // summary[mode][figure]
    let summary = summaries(all, &figures);
    let base = bases(modes, &figures, &summary);
    println!(
        "\nnetfilter comparison, {}: {} repetitions x {} s per workload, interleaved; {machine}",
        env.name(),
        p.reps,
        p.secs
    );
    println!(
        "median [min-max], and the ratio to the better of iptables and nftables (x; > 1 = better for throughput figures, < 1 = better for time figures)\n"
    );
    print_table(modes, &figures, &summary, &base);
    let lb_summary = summaries(lb_all, &lb_figures);
    let lb_base = bases(lb_modes, &lb_figures, &lb_summary);
    if !lb_modes.is_empty() {
        println!("\na port over three backends: ratio to the better netfilter recipe\n");
        print_table(lb_modes, &lb_figures, &lb_summary, &lb_base);
    }
    let json = json!({
        "env": env.key(), "name": env.name(),
        "modes": json_modes(modes, &figures, &summary, all, &base),
        "balanced": json_modes(lb_modes, &lb_figures, &lb_summary, lb_all, &lb_base),
    });
    let mut md = format!("### {}\n\n", env.name());
    md.push_str(&markdown(modes, &figures, &summary, &base));
    if !lb_modes.is_empty() {
        md.push('\n');
        md.push_str(&markdown(lb_modes, &lb_figures, &lb_summary, &lb_base));
    }
    md.push('\n');
    let svg = dir.join(format!("compare-{}.svg", env.key()));
    chart(
        &svg,
        &format!(
            "forwarder vs netfilter, {}: median relative to the better of iptables and nftables (= 1); {machine}",
            env.key()
        ),
        modes,
        &figures,
        &summary,
        &base,
    )?;
    let failed = modes
        .iter()
        .zip(&summary)
        .map(|(m, figs)| (m, figs, &figures))
        .chain(lb_modes.iter().zip(&lb_summary).map(|(m, figs)| (m, figs, &lb_figures)))
        .flat_map(|(m, figs, figures)| {
            figures
                .iter()
                .zip(figs)
                .filter(|(_, s)| s.is_err())
                .map(move |((key, _, _), _)| format!("{} {} {key}", env.key(), m.key()))
        })
        .collect();
    Ok((json, md, failed))
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--check`: one short repetition, to prove every workload and check
    // works (CI); its figures mean nothing and go to target/bench/check.
    let check = std::env::args().any(|a| a == "--check");
    // `--modes=iptables,forwarder_xdp`: a subset (iptables is always run:
    // the ratios are to it).
    let only: Option<Vec<String>> = std::env::args()
        .find_map(|a| a.strip_prefix("--modes=").map(|m| m.split(',').map(String::from).collect()));
    // `--envs=best`: one environment of the two.
    let envs: Option<Vec<String>> = std::env::args()
        .find_map(|a| a.strip_prefix("--envs=").map(|m| m.split(',').map(String::from).collect()));
    let modes: Vec<Mode> = MODES
        .iter()
        .copied()
        .filter(|m| {
            *m == Mode::Iptables || only.as_ref().is_none_or(|o| o.iter().any(|k| k == m.key()))
        })
        .collect();
    // The balanced service's modes: all, or those asked for with their
    // base (iptables statistic) when any is.
    let asked = |m: &Mode| only.as_ref().is_none_or(|o| o.iter().any(|k| k == m.key()));
    let lb_modes: Vec<Mode> = if LB_MODES.iter().any(asked) {
        LB_MODES.iter().copied().filter(|m| *m == LB_MODES[0] || asked(m)).collect()
    } else {
        Vec::new()
    };
    let p = if check {
        Params { secs: 1, reps: 1, frames: 100_000, load_secs: 1 }
    } else if quick {
        Params { secs: 1, reps: 3, frames: 500_000, load_secs: 2 }
    } else {
        Params { secs: 4, reps: 5, frames: 3_000_000, load_secs: 4 }
    };
    let t0 = Instant::now();
    ensure!(
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get) > GW_CPU,
        "the comparison needs 2 CPUs: one for the gateway, one for everything else"
    );
    // This thread and everything it starts (threads, namespaces' processes)
    // on the host core; only the gateway's work is moved to its own.
    pin(0, HOST_CPU)?;
    // The generator and receiver programs, loaded once.
    let traffic = Arc::new(Mutex::new(Bench::load()?));
    let machine = machine();
    let mut dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    if check {
        dir = dir.join("check");
    }
    std::fs::create_dir_all(&dir)?;
    let (mut envs_json, mut md) = (Vec::new(), String::new());
    // Every (mode, figure) that failed, over both environments.
    let mut failed: Vec<String> = Vec::new();
    for env in Env::ALL
        .into_iter()
        .filter(|e| envs.as_ref().is_none_or(|o| o.iter().any(|k| k == e.key())))
    {
        let all = interleaved(&modes, p.reps, &FIGURES, &|m| run_mode(m, env, &p, &traffic));
        // The balanced service in the first environment only.
        let lb_modes: &[Mode] = if env == Env::ALL[0] { &lb_modes } else { &[] };
        let lb_all = interleaved(lb_modes, p.reps, &LB_FIGURES, &|m| {
            run_balanced(m, env, p.secs, p.load_secs, &traffic)
        });
        let (json, text, failures) =
            report_env(env, &modes, lb_modes, &all, &lb_all, &p, &machine, &dir)?;
        envs_json.push(json);
        md.push_str(&text);
        failed.extend(failures);
    }
    let doc = json!({"machine": machine, "reps": p.reps, "secs": p.secs, "quick": quick, "check": check,
        "load_pps": LOAD_PPS, "load_syns_per_s": LOAD_SYNS, "envs": envs_json});
    std::fs::write(dir.join("compare.json"), serde_json::to_string_pretty(&doc)?)?;
    std::fs::write(dir.join("compare.md"), md)?;
    println!(
        "\nwritten {}, compare.md (the README's tables) and compare-{{best,napi}}.svg ({:.0} s)",
        dir.join("compare.json").display(),
        t0.elapsed().as_secs_f64()
    );
    // A FAILED figure is a failed benchmark.
    ensure!(failed.is_empty(), "{} figures FAILED: {}", failed.len(), failed.join(", "));
    Ok(())
}
