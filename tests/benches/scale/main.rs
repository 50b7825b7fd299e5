//! How the datapath's cost grows with the work (`cargo xtask bench`,
//! after the comparison), inside a lab's gateway namespace:
//!
//! - the XDP program's time (`BPF_PROG_TEST_RUN`, one packet per call, as
//!   the micro-benchmark) for an established packet (a thousand different
//!   connections in turn), a new connection and a packet that is not ours,
//!   with 1 000, 100 000 and 1 000 000 connections tracked (the table sized
//!   for a million every time: only what it holds changes), and with 1,
//!   1 000 and 10 000 rules (single ports, port ranges, source lists);
//! - the kernel memory per connection of the connection table (its map's
//!   `memlock`, over the connections it holds) next to netfilter's
//!   (`nf_conntrack`'s slab object, before its extensions);
//! - the CPU of the daemon's conntrack sweep over a million connections:
//!   the steps it takes, one a second, for a whole pass, on the thread's
//!   own CPU clock.
//!
//! Flat within 10 % is the aim: each figure is printed with its ratio to
//! the smallest case. Every run checks the program's verdicts (a wrong one
//! fails the benchmark). `--check`: 1 000 and 10 000 connections, 1 and
//! 100 rules, a few calls: it only proves every part works.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use forwarder::{
    datapath::Datapath,
    iface,
    pin::Pins,
    settings::{Rule, Settings},
};
use forwarder_common::{
    abi::{self, FlowEntry, FlowKey, PROG_XDP},
    conntrack::{CT_ESTABLISHED, entry_pair},
    nat::Tuple,
};
use forwarder_testkit::{ADDRS, BpfFs, GW_INTERNAL_IF, GW_PUBLIC_IF, Lab};
use harness::timing::{Case, measure, tcp};
use serde_json::json;

mod daemon;
#[path = "../../harness/mod.rs"]
#[allow(dead_code, reason = "the scale benchmark runs the forwarder's programs only")]
mod harness;

/// Connections the table is sized for in every connection case.
const CAPACITY: u32 = 1 << 20;
/// Established connections the established-packet case cycles through.
const MEASURED: usize = 1000;

/// The `i`-th synthetic connection: a client of 198.18.0.0/15 to the
/// public 8080, translated to a masquerade address of 100.64.0.0/10 and
/// the server's port 80 (its reply entry is unique by that address and
/// port; only the original direction is timed, so the masquerade source
/// needs no route).
fn synthetic(i: u32) -> (Tuple, Tuple) {
    let client = Tuple {
        saddr: [198, 18 + ((i >> 16) & 1) as u8, (i >> 8) as u8, i as u8],
        daddr: ADDRS.gw_public.octets(),
        sport: (1024 + (i >> 17) as u16).to_be_bytes(),
        dport: 8080u16.to_be_bytes(),
    };
    let out = Tuple {
        saddr: [100, 64 + ((i >> 16) & 63) as u8, (i >> 8) as u8, i as u8],
        daddr: ADDRS.server.octets(),
        sport: 20000u16.to_be_bytes(),
        dport: 80u16.to_be_bytes(),
    };
    (client, out)
}

/// Fills the pinned connection table with `n` established synthetic
/// connections (both entries each), in batches.
fn fill(pins: &Pins, n: u32, rule: u32) {
    let map = aya::maps::MapData::from_pin(pins.map(abi::MAP_FLOWS)).expect("pinned flow table");
    let now = forwarder::datapath::monotonic_ns();
    let mut keys: Vec<FlowKey> = Vec::new();
    let mut values: Vec<FlowEntry> = Vec::new();
    for i in 0..n {
        let (client, out) = synthetic(i);
        for (k, mut e) in entry_pair(&client, &out, abi::PROTO_TCP, rule, 0, now, 0) {
            e.state = CT_ESTABLISHED;
            keys.push(k);
            values.push(e);
        }
        if keys.len() >= 1 << 16 || i + 1 == n {
            forwarder::batch::update(map.fd().as_fd(), &keys, &values, abi::MAP_FLOWS)
                .expect("filling the flow table");
            keys.clear();
            values.clear();
        }
    }
}

/// `memlock` of the map behind `fd`, from the kernel's fdinfo.
fn memlock(fd: &impl AsRawFd) -> u64 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:")?.trim().parse().ok())
        .expect("memlock in the map's fdinfo")
}

/// The size of one `nf_conntrack` object, from `/proc/slabinfo` (the
/// kernel creates the cache when netfilter's conntrack is built in or
/// loaded).
fn nf_conntrack_object() -> Option<u64> {
    let slabs = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let line = slabs.lines().find(|l| l.split_whitespace().next() == Some("nf_conntrack"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// CPU time of this thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::new(ts.tv_sec.cast_unsigned(), ts.tv_nsec.cast_unsigned() as u32)
}

/// The daemon's sweep over `dp`'s table as the daemon takes it (a step a
/// second, each over the share of the table its timeouts call for, cut
/// to what fits the step's time aim): a first pass to learn its pace, then
/// the mean CPU per step (per second) of a second, and its steps (its
/// seconds).
fn sweep_cpu_per_second(dp: &mut Datapath, entries: u64) -> (Duration, u32) {
    let t = forwarder_common::conntrack::Timeouts::default();
    let every = u64::from((t.shortest() / 2).clamp(1, 10));
    let budget = usize::try_from(entries / every).unwrap_or(usize::MAX);
    let mut sweep = forwarder::datapath::Sweep::default();
    let now = forwarder::datapath::monotonic_ns();
    for pass in 0..2 {
        let (mut steps, mut cpu) = (0u32, Duration::ZERO);
        loop {
            let c0 = thread_cpu();
            let done = dp.sweep_step(&mut sweep, &t, now, budget).expect("sweep step");
            cpu += thread_cpu().saturating_sub(c0);
            steps += 1;
            if let Some(p) = done {
                assert_eq!(p.removed, 0, "the sweep removed live connections");
                // (Besides the filled connections, those the timing set up.)
                assert!(p.usage.entries >= entries, "the sweep saw {} entries", p.usage.entries);
                if pass == 1 {
                    return (cpu / steps, steps);
                }
                break;
            }
        }
    }
    unreachable!("two passes end")
}

/// The gateway's settings: the timed rule (tcp 8080) first, then `n - 1`
/// others: single TCP ports, UDP ranges of ten ports, TCP ports with a
/// source list, in turn.
fn settings(n: u32) -> Settings {
    let mut s = Settings {
        public: vec![GW_PUBLIC_IF.into()],
        internal: vec![GW_INTERNAL_IF.into()],
        rules: vec![Rule::parse_spec("tcp:8080=192.168.1.50:80").unwrap()],
        snat_ports: forwarder::settings::PortRange(1024, 65535),
        ..Default::default()
    };
    for i in 1..n {
        let spec = match i % 10 {
            7 | 8 => {
                // The ranges, one after another from 20 000.
                let lo = 20_000 + (i / 10 * 2 + i % 10 - 7) * 10;
                format!("udp:{lo}-{}=192.168.1.50", lo + 9)
            }
            9 => format!("tcp:{}=192.168.1.50:80,src=198.51.100.0/24", 10_000 + i),
            _ => format!("tcp:{}=192.168.1.50:80", 10_000 + i),
        };
        s.rules.push(Rule::parse_spec(&spec).unwrap());
    }
    s.assign_handles(None).unwrap();
    s
}

/// What the timed cases need of the lab.
struct Frames {
    macs: forwarder_testkit::Macs,
    pub_if: u32,
    calls: usize,
    reps: usize,
}

impl Frames {
    /// New connections a timing makes per repetition: at most 30 000 in
    /// all (masquerade has 64 512 ports towards one backend; a fuller range
    /// is another case).
    fn new_calls(&self) -> usize {
        self.calls.min(30_000 / self.reps)
    }

    /// Times an established packet (of `established` connections in
    /// turn), a new connection (fresh clients of 198.20.0.0/16) and a
    /// packet that is not ours, on `dp`.
    fn time(&self, dp: &Datapath, established: &[(Tuple, Tuple)]) -> [Case; 3] {
        let m = &self.macs;
        let g = ADDRS.gw_public;
        let frame = |src: [u8; 4], sport: [u8; 2], dport: u16, syn: bool| {
            let payload: &[u8] = if syn { &[] } else { &[0u8; 64] };
            tcp(
                m.client,
                m.gw_pub,
                Ipv4Addr::from(src),
                g,
                u16::from_be_bytes(sport),
                dport,
                syn,
                payload,
            )
        };
        let est: Vec<Vec<u8>> =
            established.iter().map(|(c, _)| frame(c.saddr, c.sport, 8080, false)).collect();
        let new_calls = self.new_calls();
        let news: Vec<Vec<u8>> = (0..(new_calls * self.reps) as u32)
            .map(|i| frame([198, 20, (i >> 8) as u8, i as u8], 40_000u16.to_be_bytes(), 8080, true))
            .collect();
        let other = vec![frame([198, 21, 0, 1], 40_000u16.to_be_bytes(), 9999, true)];
        let xdp = dp.xdp_program(PROG_XDP).expect("XDP program");
        // Each connection once before the count: its next hop cached, as
        // an established connection's is.
        for f in &est {
            assert_eq!(harness::test_run(xdp, f, self.pub_if, 1).expect("test run").0, 4);
        }
        let case = |name: &str, frames: &[Vec<u8>], calls: usize, expect: u32| {
            let (median_ns, min_ns, max_ns) =
                measure(dp, (xdp, PROG_XDP), frames, self.pub_if, calls, self.reps, expect);
            Case { name: name.to_string(), median_ns, min_ns, max_ns }
        };
        [
            case("established", &est, self.calls, 4),
            case("new connection", &news, new_calls, 4),
            case("not ours", &other, self.calls, 2),
        ]
    }
}

/// Connections tracked: the three cases at each size, the table's memory
/// per connection, and (at the largest) the sweep's CPU per second.
/// The three cases at each size of a part: (size, cases).
type Rows = Vec<(u32, [Case; 3])>;

fn with_connections(
    dir: &std::path::Path,
    f: &Frames,
    sizes: &[u32],
) -> (Rows, f64, (Duration, u32)) {
    let mut out = Vec::new();
    let (mut per_conn, mut sweep) = (0.0, (Duration::ZERO, 0));
    for &n in sizes {
        let bpf = BpfFs::mount(dir.join(format!("bpf-{n}"))).expect("bpffs");
        let pins = Pins::open(&bpf.0).expect("pins");
        let mut dp = Datapath::load_pinned(CAPACITY, Some(&pins)).expect("datapath");
        dp.configure(&settings(1).compile(&forwarder::plan::System).unwrap()).unwrap();
        fill(&pins, n, 1);
        let step = (n as usize / MEASURED).max(1);
        let measured: Vec<(Tuple, Tuple)> =
            (0..n).step_by(step).take(MEASURED).map(synthetic).collect();
        out.push((n, f.time(&dp, &measured)));
        let map = aya::maps::MapData::from_pin(pins.map(abi::MAP_FLOWS)).unwrap();
        #[expect(clippy::cast_precision_loss, reason = "bytes over connections")]
        {
            per_conn = memlock(&map.fd().as_fd()) as f64 / f64::from(CAPACITY);
        }
        if Some(&n) == sizes.last() {
            sweep = sweep_cpu_per_second(&mut dp, 2 * u64::from(n));
        }
        drop(dp);
        pins.remove_all().expect("unpinning");
    }
    (out, per_conn, sweep)
}

/// Rules configured: the three cases at each count (the connection
/// table small and fresh each time).
fn with_rules(f: &Frames, counts: &[u32]) -> Rows {
    counts
        .iter()
        .map(|&n| {
            let mut dp = Datapath::load(1 << 17).expect("datapath");
            dp.configure(&settings(n).compile(&forwarder::plan::System).unwrap()).unwrap();
            // One connection set up by its first packet, timed afterwards.
            let client = Tuple {
                saddr: [198, 22, 0, 1],
                daddr: ADDRS.gw_public.octets(),
                sport: 40_000u16.to_be_bytes(),
                dport: 8080u16.to_be_bytes(),
            };
            let syn = tcp(
                f.macs.client,
                f.macs.gw_pub,
                Ipv4Addr::from(client.saddr),
                ADDRS.gw_public,
                40_000,
                8080,
                true,
                &[],
            );
            let xdp = dp.xdp_program(PROG_XDP).unwrap();
            assert_eq!(harness::test_run(xdp, &syn, f.pub_if, 1).unwrap().0, 4);
            (n, f.time(&dp, &[(client, client)]))
        })
        .collect()
}

/// Prints one table (a row per size, a column per case, with the ratio to
/// the first row) and returns it as JSON.
fn table(title: &str, unit: &str, rows: &[(u32, [Case; 3])]) -> serde_json::Value {
    println!("\n{title}");
    println!("{:>12} {:>24} {:>24} {:>24}", unit, "established", "new connection", "not ours");
    let base: Vec<f64> = rows[0].1.iter().map(|c| c.median_ns).collect();
    let mut json = Vec::new();
    for (n, cases) in rows {
        let cells: Vec<String> = cases
            .iter()
            .zip(&base)
            .map(|(c, b)| format!("{:>7.1} ns x{:.2}", c.median_ns, c.median_ns / b))
            .collect();
        println!("{n:>12} {:>24} {:>24} {:>24}", cells[0], cells[1], cells[2]);
        let mut row = serde_json::Map::new();
        row.insert(unit.to_string(), json!(n));
        row.insert(
            "cases".into(),
            json!(cases.iter().zip(&base).map(|(c, b)| json!({
                "case": c.name, "median_ns": c.median_ns, "min_ns": c.min_ns, "max_ns": c.max_ns,
                "ratio_to_smallest": c.median_ns / b,
            })).collect::<Vec<_>>()),
        );
        json.push(serde_json::Value::Object(row));
    }
    let worst = rows
        .iter()
        .flat_map(|(_, cases)| cases.iter().zip(&base).map(|(c, b)| c.median_ns / b))
        .fold(0.0, f64::max);
    println!("largest ratio to the smallest case: x{worst:.2} (aim: at most x1.10)");
    json!({"rows": json, "largest_ratio": worst, "flat_within_10_pct": worst <= 1.10})
}

/// The two parts as line charts (ns per packet by size, one line per
/// case), side by side, into `path`.
fn chart(
    path: &std::path::Path,
    parts: [(&str, &Rows); 2],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];
    for (panel, (title, rows)) in root.split_evenly((1, 2)).iter().zip(parts) {
        let top =
            rows.iter().flat_map(|(_, cases)| cases.iter().map(|c| c.max_ns)).fold(0.0, f64::max)
                * 1.15;
        #[expect(clippy::cast_precision_loss, reason = "three points")]
        let n = rows.len() as f64;
        let mut c = ChartBuilder::on(panel)
            .caption(format!("ns per packet by {title}"), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(-0.3f64..n - 0.7, 0f64..top)?;
        let labels: Vec<String> = rows.iter().map(|(size, _)| size.to_string()).collect();
        c.configure_mesh()
            .x_labels(rows.len())
            .x_label_formatter(&|x| {
                let i = x.round();
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "an index"
                )]
                labels.get(i as usize).filter(|_| (x - i).abs() < 0.01).cloned().unwrap_or_default()
            })
            .y_desc("ns")
            .draw()?;
        for (k, color) in colors.iter().enumerate() {
            let name = rows[0].1[k].name.clone();
            #[expect(clippy::cast_precision_loss, reason = "three points")]
            let points: Vec<(f64, f64)> = rows
                .iter()
                .enumerate()
                .map(|(i, (_, cases))| (i as f64, cases[k].median_ns))
                .collect();
            c.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            c.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
        c.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let quick = std::env::args().any(|a| a == "--quick");
    let (conns, rules, calls, reps): (&[u32], &[u32], usize, usize) = if check {
        (&[1_000, 10_000], &[1, 100], 500, 1)
    } else if quick {
        (&[1_000, 100_000, 1_000_000], &[1, 1_000, 10_000], 5_000, 3)
    } else {
        (&[1_000, 100_000, 1_000_000], &[1, 1_000, 10_000], 20_000, 5)
    };
    let (daemon_rules, changes, reloads) = if check { (100, 2, 2) } else { (10_000, 10, 5) };
    let t0 = Instant::now();
    let lab = Lab::new().expect("lab (needs root)");
    let macs = lab.prime_gateway().unwrap();
    let dir = lab.dir.clone();
    let result = lab
        .gateway
        .enter(move || {
            let f = Frames { macs, pub_if: iface::index(GW_PUBLIC_IF).unwrap(), calls, reps };
            let (c, per_conn, sweep) = with_connections(&dir, &f, conns);
            (c, per_conn, sweep, with_rules(&f, rules))
        })
        .unwrap()
        .join()
        .unwrap();
    let (c, per_conn, sweep, r) = result;
    let daemon_json = daemon::run(&lab, settings(daemon_rules), changes, reloads);
    println!(
        "scale: BPF_PROG_TEST_RUN, one packet per call, {calls} calls x {reps} repetitions; the connection table sized for {CAPACITY} connections"
    );
    let conns_json = table("connections tracked", "connections", &c);
    let rules_json = table("rules configured", "rules", &r);
    let nf = nf_conntrack_object();
    let (sweep, sweep_steps) = sweep;
    #[expect(clippy::cast_precision_loss, reason = "a share of a second")]
    let sweep_pct = sweep.as_nanos() as f64 / 1e7;
    println!(
        "\nkernel memory per connection: {per_conn:.0} B (the connection table's memlock over its {CAPACITY} connections); netfilter: {} B per nf_conntrack object, before its extensions",
        nf.map_or_else(|| "?".into(), |n| n.to_string())
    );
    println!(
        "conntrack sweep with {} connections: {:.2} ms of CPU per second ({sweep_pct:.2} % of a core; aim: under 2 %), a pass in {sweep_steps} s",
        conns.last().unwrap_or(&0),
        sweep.as_secs_f64() * 1e3
    );
    let doc = json!({
        "calls": calls, "reps": reps, "capacity": CAPACITY,
        "connections": conns_json, "rules": rules_json,
        "memory_per_connection_bytes": per_conn, "nf_conntrack_object_bytes": nf,
        "sweep_cpu_pct_of_a_core": sweep_pct, "sweep_connections": conns.last(),
        "sweep_pass_seconds": sweep_steps,
        "daemon": daemon_json,
    });
    let mut out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    if check {
        out = out.join("check");
    }
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("scale.json"), serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    chart(&out.join("scale.svg"), [("connections tracked", &c), ("rules configured", &r)])
        .expect("the chart");
    println!("written {} ({:.0} s)", out.join("scale.json").display(), t0.elapsed().as_secs_f64());
    assert!(doc["daemon"]["lossless"] == true, "datagrams were lost during rule changes: FAILED");
}
