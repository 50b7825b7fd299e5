//! The balanced service: one public port spread over three backends
//! (192.168.1.50-52, the server answering on each), the way the classic
//! tools do it (iptables' `statistic` match, nftables' `numgen`) and the
//! forwarder's Maglev in each hook, on the same lab as the main
//! comparison: new connections per second under a SYN flood and the
//! gateway's CPU per new connection, then whole TCP connections per
//! second. Every run is checked as the main ones are, and each backend
//! must have taken its share of the flood.
//!
//! IPVS, the kernel's own balancer, is not among them: the kernels this
//! runs on are built without it (`ipvsadm`: "Protocol not available").

use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, ensure};
use forwarder_testkit::Lab;

use crate::checks::{Owed, Sent, stop_and_verify, verify_path};
use crate::harness::Bench;
use crate::modes::{Env, LB_BACKENDS, Mode, setup};
use crate::report::{Figures, LOAD_SYNS, LOAD_SYNS_MAX};
use crate::workloads::{Gen, SYNS, conns, generated};

/// The balanced service's figures: (key, label, higher is better).
pub(crate) const LB_FIGURES: [(&str, &str, bool); 4] = [
    ("syn_kpps", "new connections set up over 3 backends at saturation, SYN flood (k/s)", true),
    (
        "cpu_ns_per_syn",
        "gateway CPU per new connection over 3 backends at 40 k/s offered, SYNs (ns)",
        false,
    ),
    ("conn_per_s", "TCP connections/s over 3 backends (connect, request, close)", true),
    ("cpu_us_per_conn", "gateway CPU per TCP connection over 3 backends, whole (us)", false),
];

/// One balanced mode, one repetition, on a fresh lab set up as `env` has
/// it.
pub(crate) fn run_balanced(
    mode: Mode,
    env: Env,
    secs: u64,
    load_secs: u32,
    traffic: &Arc<Mutex<Bench>>,
) -> Result<Figures> {
    let lab = Lab::new()?;
    let (mut active, gw, macs) = setup(&lab, mode, env, traffic)?;
    let mut owed = Owed::default();
    // The flood, then SYNs of new flows at the offered load.
    let syns = (load_secs * LOAD_SYNS).min(LOAD_SYNS_MAX);
    let load = Gen::syn_load(5301, syns, LOAD_SYNS);
    let mut runs = Vec::new();
    for g in [Gen::flat_out(true, SYNS, SYNS, 0), load] {
        let r =
            generated(&lab, mode, &gw, &macs, traffic, g, &|| Sent::now(&lab, &active), &|| {
                Ok(None)
            })
            .and_then(|r| {
                verify_path(&lab, mode, r.delivered, r.sent)?;
                spread(&lab, mode, g.port, r.delivered)?;
                Ok(r)
            })
            .map_err(|e| format!("{e:#}"));
        if let Ok(r) = &r {
            // The rules of TCP 5300 and 5301.
            owed.add(if g.port == 5300 { 0 } else { 2 }, "new_connections", r.delivered);
        }
        runs.push(r);
    }
    let mut out: Figures = vec![
        ("syn_kpps", runs[0].clone().map(|r| r.kpps)),
        ("cpu_ns_per_syn", runs[1].clone().map(|r| r.cpu_ns)),
    ];
    let c = conns(&lab, mode, &gw, secs).map_err(|e| format!("{e:#}"));
    if let Ok(c) = &c {
        owed.add(1, "new_connections", c.2);
    }
    out.extend([("conn_per_s", c.clone().map(|c| c.0)), ("cpu_us_per_conn", c.map(|c| c.1))]);
    stop_and_verify(&mut active, &owed, mode, &mut out);
    drop(active);
    drop(lab);
    Ok(out)
}

/// Each backend took at least a fifth of the `delivered` connections to
/// `port` (a run's alone: each run has its port) (a third is fair): by the forwarder's per-backend counters,
/// or by netfilter's connection table (entries answered from it).
fn spread(lab: &Lab, mode: Mode, port: u16, delivered: u64) -> Result<()> {
    let per: Vec<u64> = match &mode.base() {
        Mode::ForwarderXdp | Mode::ForwarderTc => {
            let stats = lab.live_stats()?;
            let backends = stats["backends"].as_array().context("no backends in the stats")?;
            LB_BACKENDS
                .iter()
                .map(|b| {
                    backends
                        .iter()
                        .find(|s| s["backend"] == format!("{b}:{port}"))
                        .and_then(|s| s["packets_in"].as_u64())
                        .unwrap_or(0)
                })
                .collect()
        }
        _ => LB_BACKENDS
            .iter()
            .map(|b| -> Result<u64> {
                let out = lab
                    .gateway
                    .command("conntrack")
                    .args([
                        "-L",
                        "-p",
                        "tcp",
                        "--dport",
                        &port.to_string(),
                        "--reply-src",
                        &b.to_string(),
                    ])
                    .output()?;
                // "conntrack v…: N flow entries have been shown."
                let said = String::from_utf8_lossy(&out.stderr);
                said.split_whitespace()
                    .zip(said.split_whitespace().skip(1))
                    .find(|(_, w)| *w == "flow")
                    .and_then(|(n, _)| n.parse().ok())
                    .with_context(|| format!("conntrack -L: {said}"))
            })
            .collect::<Result<_>>()?,
    };
    for (b, n) in LB_BACKENDS.iter().zip(&per) {
        ensure!(
            n * 5 >= delivered,
            "backend {b} took {n} of {delivered} new connections (per backend: {per:?})"
        );
    }
    Ok(())
}
