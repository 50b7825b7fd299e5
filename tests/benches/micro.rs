//! Micro-benchmark of the XDP program itself (`cargo xtask bench`):
//! `BPF_PROG_TEST_RUN` on fixture frames, next to an empty XDP program and a
//! bare FIB-lookup + redirect program, in the same run, inside a lab's
//! gateway namespace (real routes, permanent neighbours).
//!
//! Every case runs one packet per call (`repeat` 1): the kernel does not
//! reset a frame between repeats, and a translated frame is no longer the
//! packet being measured. The figure is the kernel's own per-run time, so
//! syscall overhead is not in it; the test-run loop's own overhead is, the
//! same for every case (read the ratios). Each case: `reps` repetitions of
//! `calls` calls; median and min–max of the repetitions' means.
//!
//! `--only=TEXT` runs the forwarder's cases whose name contains TEXT (and
//! the two references); `--profile` runs each case under `perf record`
//! and reports where its time goes (`forwarder_testkit::profile`).

use std::{fmt::Write as _, time::Instant};

use aya::programs::Xdp;

use forwarder::{
    datapath::Datapath,
    iface,
    settings::{Rule, Settings},
};
use forwarder_common::{
    abi::{PROG_BENCH_FIB, PROG_BENCH_PASS, PROG_XDP},
    csum,
};
use forwarder_testkit::{
    ADDRS, GW_INTERNAL_IF, GW_PUBLIC_IF, Lab,
    profile::{Part, Recording},
};
use harness::{
    Bench, TestRunExt,
    timing::{Case, measure, tcp},
};

#[path = "../harness/mod.rs"]
#[allow(dead_code, reason = "the micro-benchmark runs programs, it generates no traffic")]
mod harness;

/// Samples per part of a profiled case.
type Parts = std::collections::BTreeMap<Part, u64>;

/// The gateway's settings: a rule with one backend (8080) and one with
/// three (8081), with their handles.
fn settings() -> Settings {
    let mut settings = Settings {
        public: vec![GW_PUBLIC_IF.into()],
        internal: vec![GW_INTERNAL_IF.into()],
        rules: vec![
            Rule::parse_spec("tcp:8080=192.168.1.50:80").unwrap(),
            Rule::parse_spec("tcp:8081=192.168.1.50:80+192.168.1.51:80+192.168.1.52:80").unwrap(),
        ],
        // Room for every new connection the benchmark makes, so no
        // masquerade port search runs out (that is another case).
        snat_ports: forwarder::settings::PortRange(1024, 65535),
        ..Default::default()
    };
    settings.assign_handles(None).unwrap();
    settings
}

/// The two other backends of the balanced rule: neighbours as the server
/// is (the same host, `mac`), so the FIB lookup says SUCCESS.
fn other_backends_on(lab: &Lab, mac: [u8; 6]) {
    let mac = forwarder_testkit::netns::fmt_mac(mac);
    for b in ["192.168.1.51", "192.168.1.52"] {
        lab.gateway
            .ip(&["neigh", "replace", b, "lladdr", &mac, "dev", GW_INTERNAL_IF, "nud", "permanent"])
            .unwrap();
    }
}

/// A case's run, given its name.
type RunCase<'a> = &'a dyn Fn(&str) -> Case;

/// The case `name` run by `f`; with `profile`, under `perf record` (into
/// a file of this process's), with the samples per part.
fn case(profile: bool, name: &str, f: RunCase) -> (Case, Option<Parts>) {
    if !profile {
        return (f(name), None);
    }
    let file = std::env::temp_dir().join(format!("forwarder-micro-{}.perf", std::process::id()));
    let rec = Recording::start(&file).expect("perf record");
    let c = f(name);
    (c, Some(rec.stop().expect("perf record")))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (calls, reps) = if quick { (5_000, 3) } else { (50_000, 5) };
    let only = std::env::args().find_map(|a| a.strip_prefix("--only=").map(str::to_string));
    let profile = std::env::args().any(|a| a == "--profile");
    let t0 = Instant::now();
    let lab = Lab::new().expect("lab (needs root)");
    let macs = lab.prime_gateway().unwrap();
    let (client_mac, gw_pub_mac, gw_int_mac, server_mac) =
        (macs.client, macs.gw_pub, macs.gw_int, macs.server);
    other_backends_on(&lab, server_mac);
    let cases = lab
        .gateway
        .enter(move || {
            let compiled = settings().compile(&forwarder::plan::System).unwrap();
            let mut dp = Datapath::load(1 << 20).unwrap();
            dp.configure(&compiled).unwrap();
            // New connections to the balanced rule run on a datapath of
            // their own, so both new-connection cases start from the same
            // (empty) connection table.
            let mut dp3 = Datapath::load(1 << 20).unwrap();
            dp3.configure(&compiled).unwrap();
            let (pub_if, int_if) =
                (iface::index(GW_PUBLIC_IF).unwrap(), iface::index(GW_INTERNAL_IF).unwrap());
            // The reference programs: an object of their own, with a
            // devmap of the same interfaces.
            let mut bench = Bench::load().unwrap();
            bench.set_tx_ports(&[pub_if, int_if]).unwrap();
            let (c, g, gi, s) = (ADDRS.client, ADDRS.gw_public, ADDRS.gw_internal, ADDRS.server);
            // One established connection; its reply tuple from the flow table.
            let syn = tcp(client_mac, gw_pub_mac, c, g, 40000, 8080, true, &[]);
            assert_eq!(dp.test_run_xdp(&syn, pub_if, 1).unwrap().0, 4);
            let flows = dp.flows().unwrap();
            let (rk, _) =
                flows.iter().find(|(_, e)| e.dir == forwarder_common::abi::DIR_REPLY).unwrap();
            let snat_port = u16::from_be_bytes(rk.dport);
            let est = vec![tcp(client_mac, gw_pub_mac, c, g, 40000, 8080, false, &[0u8; 64])];
            // One established connection to the balanced rule: its packets
            // count on their backend too.
            let syn3 = tcp(client_mac, gw_pub_mac, c, g, 40002, 8081, true, &[]);
            assert_eq!(dp.test_run_xdp(&syn3, pub_if, 1).unwrap().0, 4);
            let est3 = vec![tcp(client_mac, gw_pub_mac, c, g, 40002, 8081, false, &[0u8; 64])];
            let reply = vec![tcp(server_mac, gw_int_mac, s, gi, 80, snat_port, false, &[0u8; 64])];
            // The same segment with a partial checksum (a local sender).
            let mut partial = est[0].clone();
            let l4_len = (partial.len() - 34) as u16;
            let p = csum::fold(csum::pseudo_header_sum(c.octets(), g.octets(), 6, l4_len));
            partial[50..52].copy_from_slice(&p.to_be_bytes());
            // New connections: one frame per source port (each creates
            // state). At most 30 000 in all: masquerade has 64 512 ports
            // towards one backend, and a fuller range is another case.
            let new_calls = calls.min(30_000 / reps);
            let news: Vec<Vec<u8>> = (0..(new_calls * reps) as u16)
                .map(|i| tcp(client_mac, gw_pub_mac, c, g, 1024 + i, 8080, true, &[]))
                .collect();
            // The same towards the balanced rule, from other source ports.
            let news3: Vec<Vec<u8>> = (0..(new_calls * reps) as u16)
                .map(|i| tcp(client_mac, gw_pub_mac, c, g, 33_000 + i, 8081, true, &[]))
                .collect();
            let other = vec![tcp(client_mac, gw_pub_mac, c, g, 40001, 9999, true, &[])];
            // The bare program forwards the client's packet to the server as is.
            let bare = vec![tcp(client_mac, gw_pub_mac, c, s, 40000, 80, false, &[0u8; 64])];
            let run_n = |name: &str, prog, frames: &Vec<Vec<u8>>, ifx, expect, n| {
                let xdp: &Xdp = if prog == PROG_XDP {
                    dp.xdp_program(prog).unwrap()
                } else {
                    bench.program(prog).unwrap()
                };
                let (median_ns, min_ns, max_ns) =
                    measure(&dp, (xdp, prog), frames, ifx, n, reps, expect);
                Case { name: name.to_string(), median_ns, min_ns, max_ns }
            };
            let run = |name: &str, prog, frames: &Vec<Vec<u8>>, ifx, expect| {
                run_n(name, prog, frames, ifx, expect, calls)
            };
            let case = |name: &str, f: RunCase| case(profile, name, f);
            // The two references always run: the report's ratios are to them.
            let mut cases = vec![
                case("empty XDP program", &|n| run(n, PROG_BENCH_PASS, &est, pub_if, 2)),
                case("bare FIB lookup + redirect", &|n| run(n, PROG_BENCH_FIB, &bare, pub_if, 4)),
            ];
            let forwarder: [(&str, RunCase); 7] = [
                ("forwarder: established, client -> backend", &|n| {
                    run(n, PROG_XDP, &est, pub_if, 4)
                }),
                ("forwarder: established, backend -> client", &|n| {
                    run(n, PROG_XDP, &reply, int_if, 4)
                }),
                ("forwarder: established, 3 backends", &|n| run(n, PROG_XDP, &est3, pub_if, 4)),
                ("forwarder: established, partial checksum", &|n| {
                    run(n, PROG_XDP, &vec![partial.clone()], pub_if, 4)
                }),
                ("forwarder: new connection (SYN)", &|n| {
                    run_n(n, PROG_XDP, &news, pub_if, 4, new_calls)
                }),
                ("forwarder: new connection, 3 backends", &|n| {
                    let xdp = dp3.xdp_program(PROG_XDP).unwrap();
                    let (median_ns, min_ns, max_ns) =
                        measure(&dp3, (xdp, PROG_XDP), &news3, pub_if, new_calls, reps, 4);
                    Case { name: n.to_string(), median_ns, min_ns, max_ns }
                }),
                ("forwarder: not ours (other port)", &|n| run(n, PROG_XDP, &other, pub_if, 2)),
            ];
            let wanted =
                forwarder.iter().filter(|(n, _)| only.as_ref().is_none_or(|o| n.contains(o)));
            cases.extend(wanted.map(|(n, f)| case(n, *f)));
            cases
        })
        .unwrap()
        .join()
        .unwrap();
    let out = report(&cases, calls, reps);
    println!("written {} ({:.0} s)", out.display(), t0.elapsed().as_secs_f64());
}

/// Prints the cases (with their ratios to the bare and the empty program)
/// and writes them to `target/bench/micro.json`; returns that path.
fn report(cases: &[(Case, Option<Parts>)], calls: usize, reps: usize) -> std::path::PathBuf {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let bare = cases[1].0.median_ns;
    let empty = cases[0].0.median_ns;
    println!(
        "micro-benchmark: BPF_PROG_TEST_RUN, one packet per call, {calls} calls x {reps} repetitions; kernel {}",
        kernel.trim()
    );
    println!(
        "{:<44} {:>10} {:>17} {:>9} {:>9}",
        "case", "ns/packet", "min-max", "x bare", "x empty"
    );
    let mut json = Vec::new();
    for (c, _) in cases {
        println!(
            "{:<44} {:>10.1} {:>8.1}-{:<8.1} {:>9.2} {:>9.2}",
            c.name,
            c.median_ns,
            c.min_ns,
            c.max_ns,
            c.median_ns / bare,
            c.median_ns / empty
        );
        json.push(format!(
            "{{\"case\":\"{}\",\"median_ns\":{:.1},\"min_ns\":{:.1},\"max_ns\":{:.1},\"ratio_bare_fib\":{:.3}}}",
            c.name,
            c.median_ns,
            c.min_ns,
            c.max_ns,
            c.median_ns / bare
        ));
    }
    let profiles: Vec<(String, String)> =
        cases.iter().filter_map(|(c, parts)| parts.as_ref().map(|p| profile_lines(c, p))).collect();
    if !profiles.is_empty() {
        println!(
            "\nwhere the time goes: shares of the samples taken under bpf_test_run \
             (perf record -e cpu-clock -F 10000; perf's interrupts slow every case down, \
             so these runs' times are not the figures above):"
        );
        for (text, _) in &profiles {
            println!("{text}");
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("micro.json");
    std::fs::write(
        &out,
        format!(
            "{{\"kernel\":\"{}\",\"calls\":{calls},\"reps\":{reps},\"cases\":[{}],\"profiles\":[{}]}}\n",
            kernel.trim(),
            json.join(","),
            profiles.iter().map(|(_, j)| j.as_str()).collect::<Vec<_>>().join(",")
        ),
    )
    .unwrap();
    out
}

/// A profiled case: its lines for the report (parts by share of the
/// samples, largest first) and its JSON object.
fn profile_lines(c: &Case, parts: &Parts) -> (String, String) {
    let total: u64 = parts.values().sum();
    let mut by_share: Vec<(Part, u64)> = parts.iter().map(|(p, n)| (*p, *n)).collect();
    by_share.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    #[expect(clippy::cast_precision_loss, reason = "sample counts far below 2^52")]
    let pct = |n: u64| 100.0 * n as f64 / total.max(1) as f64;
    let mut text = format!("{} ({:.0} ns under perf, {total} samples)", c.name, c.median_ns);
    let mut json = Vec::new();
    for (p, n) in by_share {
        let _ = write!(text, "\n  {:<24} {:>5.1} %", p.name(), pct(n));
        json.push(format!("\"{}\":{:.1}", p.name(), pct(n)));
    }
    let json = format!(
        "{{\"case\":\"{}\",\"median_ns_under_perf\":{:.1},\"samples\":{total},\"share_pct\":{{{}}}}}",
        c.name,
        c.median_ns,
        json.join(",")
    );
    (text, json)
}
