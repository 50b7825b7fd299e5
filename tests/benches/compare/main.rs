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
//! approach). NAT modes publish 203.0.113.1:{8080,5201,5300,5301} (and
//! TCP 5300) as 192.168.1.50:{80,5201,5300,5301} with masquerade, the server having no
//! route back to the client; the no-NAT modes reach the server's address
//! directly and give it that route.
//!
//! Cores: the gateway's packet work runs on a core of its own. Every veth
//! end gets threaded NAPI (GRO on, which also gives a veth the NAPI that
//! frames redirected into it need): the gateway's interfaces' NAPI
//! threads — where XDP, TC, netfilter and the kernel's routing all run —
//! are pinned to CPU 1 with the forwarder daemon, and everything else
//! (generator, receiver, clients, servers) to CPU 0. "Gateway CPU" is the
//! scheduler's exact run time of the gateway's NAPI threads plus the
//! forwarder daemon's threads (`/proc/TID/schedstat`), divided by what
//! was delivered.
//!
//! Workloads per mode: 64-byte UDP frames generated in the kernel
//! (`BPF_PROG_TEST_RUN` in live-frames mode on the client's interface: an
//! XDP program writes the frame and transmits it), as fast as the
//! generator goes, over one flow and over 10 000 flows (every flow's state
//! made before the count), counted by an XDP program at the server:
//! delivered packets/s, loss, gateway CPU per packet; a SYN flood of
//! 100 000 new connections (one flow each): connections set up per second
//! and gateway CPU per connection set up; TCP bulk (iperf3, 1 and 4
//! streams); TCP connections per second (connect, request, answer,
//! close) and the gateway CPU per whole connection; UDP request/response
//! latency at 1000 requests/s (p50, p99).
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
//! Maglev, new connections per second and the CPU each costs.
//!
//! `--check`: the shortest runs (1 s, one repetition, 100 000 frames),
//! only to prove every workload and check works (`cargo xtask test` runs
//! it); its figures go to `target/bench/check`.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context as _, Result, ensure};
use forwarder_testkit::{Host, Lab};
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
use modes::{Active, LB_MODES, MODES, Mode, setup};
use report::{FIGURES, Figures, chart, json_modes, machine, markdown, print_table, summaries};
use util::{GW_CPU, HOST_CPU, pin, sh};
use workloads::{FLOWS, Gen, SYNS, conns, generated, iperf, rtt};

struct Params {
    secs: u64,
    reps: usize,
    /// Frames per packet-rate run.
    frames: u32,
}

/// One mode, one repetition: a fresh lab (nothing of an earlier mode
/// survives, e.g. netfilter hooks), every workload, the checks.
fn run_mode(mode: Mode, p: &Params, traffic: &Arc<Mutex<Bench>>) -> Result<Figures> {
    let mut lab = Lab::new()?;
    let (mut active, gw, macs) = setup(&lab, mode)?;
    // (Bare: the benchmark object keeps its programs attached until dropped.)
    let iperf_log = lab.dir.join("iperf3-server.log");
    lab.spawn(
        Host::Server,
        "iperf3",
        &["-s", "-p", "5201", "--logfile", iperf_log.to_str().context("path")?],
    )?;
    let mut out: Figures = Vec::new();
    let mut owed = Owed::default();
    let runs = [
        (
            Gen { syn: false, frames: p.frames, flows: 1, warm_up: 1000 },
            ["udp64_kpps", "udp64_loss_pct", "cpu_ns_per_pkt"],
        ),
        (
            Gen { syn: false, frames: p.frames, flows: FLOWS, warm_up: 2 * FLOWS },
            ["udp64_flows_kpps", "", "cpu_ns_per_pkt_flows"],
        ),
        (
            Gen { syn: true, frames: SYNS, flows: SYNS, warm_up: 0 },
            ["syn_kpps", "", "cpu_ns_per_syn"],
        ),
    ];
    for (g, keys) in runs {
        let tracked = || -> Result<Option<u64>> {
            Ok(match (&active, mode) {
                // The rule of port 5300's connections (they do not expire
                // within the run).
                (Active::Forwarder(_), _) => {
                    lab.live_stats()?["rules"][2]["new_connections"].as_u64()
                }
                (_, Mode::Iptables | Mode::Nftables) => {
                    Some(sh(&lab, Host::Gateway, "conntrack", &["-C"])?.trim().parse()?)
                }
                _ => None,
            })
        };
        let r =
            generated(&lab, mode, &gw, &macs, traffic, g, &|| Sent::now(&lab, &active), &tracked)
                .and_then(|r| {
                    verify_path(&lab, mode, r.3, r.4)?;
                    Ok(r)
                });
        let r = r.map_err(|e| format!("{e:#}"));
        if let Ok(r) = &r {
            if g.syn {
                owed.add(4, "new_connections", r.3);
            } else {
                owed.add(2, "packets_in", r.3);
                // (The multi-flow run's first flow is the one-flow run's.)
                owed.add(2, "new_connections", u64::from(g.flows) - u64::from(g.flows > 1));
            }
        }
        for (key, v) in
            keys.into_iter().zip([r.clone().map(|r| r.0), r.clone().map(|r| r.1), r.map(|r| r.2)])
        {
            if !key.is_empty() {
                out.push((key, v));
            }
        }
    }
    for (key, streams) in [("tcp1_gbps", 1), ("tcp4_gbps", 4)] {
        let r = iperf(&lab, mode, streams, p.secs).map_err(|e| format!("{e:#}"));
        if let Ok((_, bytes)) = &r {
            // Its control connection and a connection per stream.
            owed.add(1, "new_connections", u64::from(streams) + 1);
            owed.add(1, "bytes_in", *bytes);
        }
        out.push((key, r.map(|r| r.0)));
    }
    let c = conns(&lab, mode, &gw, p.secs).map_err(|e| format!("{e:#}"));
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

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--check`: one short repetition, to prove every workload and check
    // works (CI); its figures mean nothing and go to target/bench/check.
    let check = std::env::args().any(|a| a == "--check");
    // `--modes=iptables,forwarder_xdp`: a subset (iptables is always run:
    // the ratios are to it).
    let only: Option<Vec<String>> = std::env::args()
        .find_map(|a| a.strip_prefix("--modes=").map(|m| m.split(',').map(String::from).collect()));
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
        Params { secs: 1, reps: 1, frames: 100_000 }
    } else if quick {
        Params { secs: 1, reps: 3, frames: 500_000 }
    } else {
        Params { secs: 4, reps: 5, frames: 3_000_000 }
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
    let all = interleaved(&modes, p.reps, &FIGURES, &|m| run_mode(m, &p, &traffic));
    let lb_all =
        interleaved(&lb_modes, p.reps, &LB_FIGURES, &|m| run_balanced(m, p.secs, &traffic));
    let figures: Vec<(&str, &str, bool)> = FIGURES.to_vec();
    // summary[mode][figure]
    let summary = summaries(&all, &figures);
    let ipt = modes.iter().position(|m| *m == Mode::Iptables).expect("iptables mode");
    let machine = machine();
    println!(
        "\nnetfilter comparison: {} repetitions x {} s per workload, interleaved; {machine}",
        p.reps, p.secs
    );
    println!(
        "median [min-max], and the ratio to iptables (x; > 1 = better for throughput figures, < 1 = better for time figures)\n"
    );
    print_table(&modes, &figures, &summary, ipt);
    let json_modes = json_modes(&modes, &figures, &summary, &all, ipt);
    let lb_figures: Vec<(&str, &str, bool)> = LB_FIGURES.to_vec();
    let lb_summary = summaries(&lb_all, &lb_figures);
    if !lb_modes.is_empty() {
        println!("\na port over three backends: ratio to iptables statistic\n");
        print_table(&lb_modes, &lb_figures, &lb_summary, 0);
    }
    let lb_json = report::json_modes(&lb_modes, &lb_figures, &lb_summary, &lb_all, 0);
    let mut dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    if check {
        dir = dir.join("check");
    }
    std::fs::create_dir_all(&dir)?;
    let doc = json!({"machine": machine, "reps": p.reps, "secs": p.secs, "quick": quick, "check": check, "modes": json_modes, "balanced": lb_json});
    std::fs::write(dir.join("compare.json"), serde_json::to_string_pretty(&doc)?)?;
    let mut md = markdown(&modes, &figures, &summary, ipt);
    if !lb_modes.is_empty() {
        md.push('\n');
        md.push_str(&markdown(&lb_modes, &lb_figures, &lb_summary, 0));
    }
    std::fs::write(dir.join("compare.md"), md)?;
    let svg = dir.join("compare.svg");
    chart(&svg, &modes, &figures, &summary, ipt, &machine)?;
    println!(
        "\nwritten {}, compare.md (the README's table) and {} ({:.0} s)",
        dir.join("compare.json").display(),
        svg.display(),
        t0.elapsed().as_secs_f64()
    );
    // A FAILED figure is a failed benchmark.
    let failed: Vec<String> = modes
        .iter()
        .zip(&summary)
        .map(|(m, figs)| (m, figs, &figures))
        .chain(lb_modes.iter().zip(&lb_summary).map(|(m, figs)| (m, figs, &lb_figures)))
        .flat_map(|(m, figs, figures)| {
            figures
                .iter()
                .zip(figs)
                .filter(|(_, s)| s.is_err())
                .map(move |((key, _, _), _)| format!("{} {key}", m.key()))
        })
        .collect();
    ensure!(failed.is_empty(), "{} figures FAILED: {}", failed.len(), failed.join(", "));
    Ok(())
}
