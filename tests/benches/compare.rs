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
//! `--check`: the shortest runs (1 s, one repetition, 100 000 frames),
//! only to prove every workload and check works (`cargo xtask test` runs
//! it); its figures go to `target/bench/check`.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use forwarder::iface;
use forwarder_common::abi::{PROG_BENCH_FIB, PROG_BENCH_SINK};
use forwarder_testkit::{ADDRS, Forwarder, GW_INTERNAL_IF, GW_PUBLIC_IF, Host, Lab, Macs, Netns};
use harness::Bench;
use serde_json::{Value, json};

#[path = "../harness/mod.rs"]
#[allow(dead_code, reason = "the comparison uses the benchmark object, not the test runs")]
mod harness;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Routing,
    Iptables,
    Nftables,
    ForwarderXdp,
    ForwarderTc,
    BareXdp,
}

const MODES: [Mode; 6] = [
    Mode::Routing,
    Mode::Iptables,
    Mode::Nftables,
    Mode::ForwarderXdp,
    Mode::ForwarderTc,
    Mode::BareXdp,
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Routing => "routing (no NAT)",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::ForwarderXdp => "forwarder XDP",
            Self::ForwarderTc => "forwarder TC (mode auto)",
            Self::BareXdp => "bare XDP redirect (no NAT)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Routing => "routing",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::ForwarderXdp => "forwarder_xdp",
            Self::ForwarderTc => "forwarder_tc",
            Self::BareXdp => "bare_xdp",
        }
    }

    fn nat(self) -> bool {
        !matches!(self, Self::Routing | Self::BareXdp)
    }

    /// Whether packets should cross the kernel's IPv4 forwarding code.
    fn kernel_forwards(self) -> bool {
        matches!(self, Self::Routing | Self::Iptables | Self::Nftables)
    }

    /// Where the client sends to: (address, port) for a service port.
    fn target(self, service: u16) -> SocketAddr {
        if self.nat() {
            let public = match service {
                80 => 8080,
                p => p,
            };
            SocketAddr::from((ADDRS.gw_public, public))
        } else {
            SocketAddr::from((ADDRS.server, service))
        }
    }

    /// The source address the server must see.
    fn seen_source(self) -> Ipv4Addr {
        if self.nat() { ADDRS.gw_internal } else { ADDRS.client }
    }
}

/// The services: (protocol, public port, server port).
const SERVICES: [(&str, u16, u16); 5] = [
    ("tcp", 8080, 80),
    ("tcp", 5201, 5201),
    ("udp", 5300, 5300),
    ("udp", 5301, 5301),
    ("tcp", 5300, 5300),
];

const FIGURES: [(&str, &str, bool); 13] = [
    // (key, label, higher is better)
    ("udp64_kpps", "UDP 64 B delivered, 1 flow (kpps)", true),
    ("udp64_loss_pct", "UDP 64 B loss, 1 flow (%)", false),
    ("cpu_ns_per_pkt", "gateway CPU per packet, 1 flow (ns)", false),
    ("udp64_flows_kpps", "UDP 64 B delivered, 10 000 flows (kpps)", true),
    ("cpu_ns_per_pkt_flows", "gateway CPU per packet, 10 000 flows (ns)", false),
    ("syn_kpps", "new connections set up, SYN flood (k/s)", true),
    ("cpu_ns_per_syn", "gateway CPU per new connection, SYN flood (ns)", false),
    ("tcp1_gbps", "TCP bulk, 1 stream (Gbit/s)", true),
    ("tcp4_gbps", "TCP bulk, 4 streams (Gbit/s)", true),
    ("conn_per_s", "TCP connections/s (connect, request, close)", true),
    ("cpu_us_per_conn", "gateway CPU per TCP connection, whole (us)", false),
    ("rtt_p50_us", "UDP request/response p50 (us)", false),
    ("rtt_p99_us", "UDP request/response p99 (us)", false),
];
/// Flows of the multi-flow packet-rate run.
const FLOWS: u32 = 10_000;
/// SYNs of the connection-setup run, each from a flow of its own (source
/// ports 20000-59999 of 203.0.113.10, .11, .12): more than any mode
/// takes in while they are generated (a few tens of ms), so the gateway
/// works on nothing but first packets of connections, flat out (the
/// receive queue drops the rest before the gateway sees them).
const SYNS: u32 = 100_000;

struct Params {
    secs: u64,
    reps: usize,
    /// Frames per packet-rate run.
    frames: u32,
}

/// What a mode left running.
enum Active {
    None,
    Forwarder(Box<Forwarder>),
    /// Held: its programs stay attached until it is dropped.
    Bare(#[expect(dead_code, reason = "held for its attachments")] Box<Bench>),
}

/// Runs `f` on a thread inside `ns` and waits for it.
fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    ns.enter(f)?.join().map_err(|_| anyhow::anyhow!("a thread in {} panicked", ns.name))
}

fn sh(lab: &Lab, host: Host, program: &str, args: &[&str]) -> Result<String> {
    lab.ns(host).exec(program, args).with_context(|| format!("{program} {}", args.join(" ")))
}

/// The tasks that do the gateway's work, all on [`GW_CPU`]: the NAPI
/// threads of its interfaces (XDP, TC, netfilter and routing all run in
/// them) and, in the forwarder's modes, the daemon.
#[derive(Default)]
struct GwTasks {
    napi: Vec<i32>,
    daemon: Option<u32>,
}

impl GwTasks {
    /// CPU time they have used so far, in ns (the scheduler's own count,
    /// `/proc/TID/schedstat`: exact, unlike tick-sampled `/proc/stat`).
    fn cpu_ns(&self) -> u64 {
        let runtime = |path: String| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let daemon = self
            .daemon
            .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
            .into_iter()
            .flatten()
            .flatten();
        self.napi.iter().map(|t| runtime(format!("/proc/{t}/schedstat"))).sum::<u64>()
            + daemon
                .map(|t| runtime(t.path().join("schedstat").to_string_lossy().into_owned()))
                .sum::<u64>()
    }
}

/// Sets the gateway up for `mode`; returns what it left running, the
/// gateway's tasks and the lab's MACs (for the generated frames).
fn setup(lab: &Lab, mode: Mode) -> Result<(Active, GwTasks, Macs)> {
    // The same gateway in every mode: neighbours pinned, forwarding on.
    let macs = lab.prime_gateway()?;
    // Every veth end gets NAPI (GRO on: frames redirected into a veth need
    // it), in threads of its own: the gateway's on the gateway core, the
    // client's and server's on the other one, with everything else.
    let mut gw = GwTasks::default();
    for ifname in [GW_PUBLIC_IF, GW_INTERNAL_IF] {
        gw.napi.extend(threaded_napi(lab, Host::Gateway, ifname, GW_CPU)?);
    }
    for host in [Host::Client, Host::Server] {
        threaded_napi(lab, host, "eth0", HOST_CPU)?;
    }
    // Client and server put complete checksums and MTU-sized segments on
    // the "wire", as packets from a real network arrive at a gateway (a
    // veth otherwise passes CHECKSUM_PARTIAL super-packets from local
    // senders, which no NIC delivers).
    for host in [Host::Client, Host::Server] {
        sh(lab, host, "ethtool", &["-K", "eth0", "tx", "off"])?;
    }
    if !mode.nat() {
        lab.server.ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &ADDRS.gw_internal.to_string(),
        ])?;
    }
    let s = ADDRS.server.to_string();
    let active = match mode {
        Mode::Routing => Active::None,
        Mode::Iptables => {
            for (proto, public, port) in SERVICES {
                let to = format!("{s}:{port}");
                sh(
                    lab,
                    Host::Gateway,
                    "iptables",
                    &[
                        "-t",
                        "nat",
                        "-A",
                        "PREROUTING",
                        "-p",
                        proto,
                        "-i",
                        GW_PUBLIC_IF,
                        "--dport",
                        &public.to_string(),
                        "-j",
                        "DNAT",
                        "--to-destination",
                        &to,
                    ],
                )?;
            }
            sh(
                lab,
                Host::Gateway,
                "iptables",
                &[
                    "-A",
                    "FORWARD",
                    "-m",
                    "state",
                    "--state",
                    "NEW,ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
            )?;
            sh(
                lab,
                Host::Gateway,
                "iptables",
                &["-t", "nat", "-A", "POSTROUTING", "-o", GW_INTERNAL_IF, "-j", "MASQUERADE"],
            )?;
            Active::None
        }
        Mode::Nftables => {
            let dnat = SERVICES.iter().fold(String::new(), |mut acc, (proto, public, port)| {
                use std::fmt::Write as _;
                let _ = writeln!(
                    acc,
                    "    iifname \"{GW_PUBLIC_IF}\" {proto} dport {public} dnat to {s}:{port}"
                );
                acc
            });
            let ruleset = format!(
                "table ip fwdbench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat;\n{dnat}  }}\n  \
                 chain forward {{\n    type filter hook forward priority filter;\n    ct state new,established,related accept\n  }}\n  \
                 chain postrouting {{\n    type nat hook postrouting priority srcnat;\n    oifname \"{GW_INTERNAL_IF}\" masquerade\n  }}\n}}\n"
            );
            let path = lab.dir.join("bench.nft");
            std::fs::write(&path, ruleset)?;
            sh(lab, Host::Gateway, "nft", &["-f", path.to_str().context("path")?])?;
            Active::None
        }
        Mode::ForwarderXdp | Mode::ForwarderTc => {
            let rules: Vec<String> = SERVICES
                .iter()
                .map(|(proto, public, port)| format!("{proto}:{public}={s}:{port}"))
                .collect();
            let mut args: Vec<&str> = Vec::new();
            for r in &rules {
                args.extend(["--rule", r.as_str()]);
            }
            // Audit off: the recipe it is compared with has no LOG rule.
            // TC mode is what `--mode auto` picks on veth: run as such.
            // Masquerade ports: the whole range, as MASQUERADE takes it
            // (the default leaves 32768-60999 to the gateway's own sockets).
            args.extend([
                "--mode",
                if mode == Mode::ForwarderXdp { "xdp" } else { "auto" },
                "--xdp-attach",
                "native",
                "--audit-rate",
                "0",
                "--snat-ports",
                "1024-65535",
            ]);
            let fwd = lab.start_forwarder(&args)?;
            if mode == Mode::ForwarderTc {
                let log = fwd.log_text();
                ensure!(
                    log.matches("using TC (mode auto").count() == 2,
                    "mode auto did not pick TC on both veths:\n{log}"
                );
            }
            // Its control plane is gateway work too: counted with it, and
            // on the gateway's core (on a real gateway it shares the
            // machine with the packet work, never with the endpoints).
            pin_process(fwd.proc.pid(), GW_CPU)?;
            gw.daemon = Some(fwd.proc.pid());
            Active::Forwarder(Box::new(fwd))
        }
        Mode::BareXdp => {
            let dp = in_ns(&lab.gateway, || -> Result<Bench> {
                let mut b = Bench::load()?;
                b.set_tx_ports(&[iface::index(GW_PUBLIC_IF)?, iface::index(GW_INTERNAL_IF)?])?;
                b.attach(PROG_BENCH_FIB, GW_PUBLIC_IF)?;
                b.attach(PROG_BENCH_FIB, GW_INTERNAL_IF)?;
                Ok(b)
            })??;
            Active::Bare(Box::new(dp))
        }
    };
    Ok((active, gw, macs))
}

/// The gateway's core: the NAPI threads of its interfaces (where XDP, TC,
/// netfilter and routing all run) and the forwarder daemon. Generator,
/// receiver, clients and servers run on [`HOST_CPU`].
const GW_CPU: usize = 1;
const HOST_CPU: usize = 0;

/// Pins task `tid` (0: the calling thread) to `cpu`.
fn pin(tid: i32, cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data, `cpu` is below its capacity, and the
    // call only reads the set.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    ensure!(rc == 0, "pinning task {tid} to CPU {cpu}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Pins every thread of process `pid` to `cpu`.
fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = t?.file_name().to_str().and_then(|t| t.parse().ok()) {
            pin(tid, cpu)?;
        }
    }
    Ok(())
}

/// The kernel's NAPI threads (`napi/IFNAME-ID`) by task id.
fn napi_threads() -> BTreeSet<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return BTreeSet::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("napi/"))
        })
        .collect()
}

/// GRO and threaded NAPI on `ifname` of `host`; the NAPI threads that
/// appear (only ours: the benchmark creates nothing else meanwhile) are
/// pinned to `cpu`.
fn threaded_napi(lab: &Lab, host: Host, ifname: &str, cpu: usize) -> Result<Vec<i32>> {
    let before = napi_threads();
    sh(lab, host, "ethtool", &["-K", ifname, "gro", "on"])?;
    sh(lab, host, "sh", &["-c", &format!("echo 1 > /sys/class/net/{ifname}/threaded")])?;
    let new: Vec<i32> = napi_threads().difference(&before).copied().collect();
    ensure!(!new.is_empty(), "no NAPI thread appeared for {ifname}");
    for tid in &new {
        pin(*tid, cpu)?;
    }
    Ok(new)
}

/// An IPv4 counter of the gateway's `/proc/net/snmp` (`Ip:` line).
fn ip_counter(lab: &Lab, name: &str) -> Result<u64> {
    let text = sh(lab, Host::Gateway, "cat", &["/proc/net/snmp"])?;
    let mut lines = text.lines().filter(|l| l.starts_with("Ip:"));
    let (head, vals) = (lines.next().context("snmp")?, lines.next().context("snmp")?);
    let i = head.split_whitespace().position(|h| h == name).context("counter")?;
    vals.split_whitespace().nth(i).context("value")?.parse().context("number")
}

/// A generated packet-rate run: 64-byte frames from the client, made in
/// the kernel (`BPF_PROG_TEST_RUN` live frames on the client's interface),
/// `frames` of them spread over `flows` flows (`abi::bench_flow`: source
/// ports from the frame's up, then the next source addresses),
/// counted at the server.
#[derive(Clone, Copy)]
struct Gen {
    /// UDP datagrams, or TCP SYNs (each one a connection attempt).
    syn: bool,
    frames: u32,
    flows: u32,
    /// Frames sent before the count starts: every flow gets its state, so
    /// the figure is the established path's (0: each counted frame is the
    /// first of its flow, the figure is connection setup's).
    warm_up: u32,
}

/// Runs `g`: (kpps delivered, loss %, gateway CPU ns per delivered
/// packet, packets delivered, what the gateway sent meanwhile: `sent`
/// read around the count, outside its CPU window). The warm-up is
/// repeated until the gateway tracks every flow (`tracked`: the flows
/// it has state for; `None` in stateless modes): a gateway drops what it
/// cannot take in, so one pass may leave flows without state.
#[expect(clippy::too_many_arguments, reason = "the run's context and its two probes")]
fn generated(
    lab: &Lab,
    mode: Mode,
    gw: &GwTasks,
    m: &Macs,
    traffic: &Arc<Mutex<Bench>>,
    g: Gen,
    sent: &dyn Fn() -> Result<Sent>,
    tracked: &dyn Fn() -> Result<Option<u64>>,
) -> Result<(f64, f64, f64, u64, Sent)> {
    let t = mode.target(5300);
    let IpAddr::V4(dst) = t.ip() else { bail!("IPv4") };
    let mut frame = Vec::new();
    let head = etherparse::PacketBuilder::ethernet2(m.client, m.gw_pub).ipv4(
        ADDRS.client.octets(),
        dst.octets(),
        64,
    );
    if g.syn {
        head.tcp(20000, t.port(), 1, 64240).syn().write(&mut frame, &[])?;
        // Ethernet padding to the minimum frame (not part of the IP packet).
        frame.resize(64, 0);
    } else {
        head.udp(40000, t.port()).write(&mut frame, &[0x5a; 22])?;
    }
    let frame: [u8; 64] =
        frame.try_into().map_err(|f: Vec<u8>| anyhow::anyhow!("frame is {} bytes", f.len()))?;
    // The source the server must see: the gateway's (NAT) or the
    // generator's flows' (routing: 203.0.113.10 and up).
    let (src, prefix) = if mode.nat() { (ADDRS.gw_internal, 32) } else { (ADDRS.client, 24) };
    traffic.lock().expect("datapath").set_source(src, prefix)?;
    let r = traffic.clone();
    let link =
        in_ns(&lab.server, move || r.lock().expect("datapath").attach(PROG_BENCH_SINK, "eth0"))??;
    let result =
        generated_with_sink(lab, traffic, g, frame, &format!("{src}/{prefix}"), gw, sent, tracked);
    // Whatever the run's outcome: the next workload attaches its own.
    let r = traffic.clone();
    in_ns(&lab.server, move || r.lock().expect("datapath").detach(PROG_BENCH_SINK, link))??;
    result
}

/// Frames per warm-up step, and the pause after each: a step fits in
/// every queue on the way (a veth ring holds 256 frames, the backlog
/// 1 000), so no mode drops warm-up frames for being sent too fast. At
/// full speed the drops fall on the same flows in every pass (the
/// generator's rate and the gateway's are steady), and a tenth of the
/// flows could stay without state for good.
const WARM_UP_STEP: u32 = 128;
const WARM_UP_PAUSE: Duration = Duration::from_millis(1);

/// [`generated`] with the receiver counting: the warm-up, then the count.
#[expect(clippy::too_many_arguments, reason = "the run's context and its two probes")]
fn generated_with_sink(
    lab: &Lab,
    traffic: &Arc<Mutex<Bench>>,
    g: Gen,
    frame: [u8; 64],
    want_src: &str,
    gw: &GwTasks,
    sent: &dyn Fn() -> Result<Sent>,
    tracked: &dyn Fn() -> Result<Option<u64>>,
) -> Result<(f64, f64, f64, u64, Sent)> {
    let (frames, flows) = (g.frames, g.flows);
    let r = traffic.clone();
    let ifindex = in_ns(&lab.client, || iface::index("eth0"))??;
    let generate = |first: u32, n: u32| -> Result<Duration> {
        let r = r.clone();
        in_ns(&lab.client, move || {
            r.lock().expect("datapath").generate(&frame, flows, first, ifindex, n)
        })?
    };
    for round in (1..=20).take_while(|_| g.warm_up > 0) {
        for first in (0..g.warm_up).step_by(WARM_UP_STEP as usize) {
            generate(first, WARM_UP_STEP.min(g.warm_up - first))?;
            std::thread::sleep(WARM_UP_PAUSE);
        }
        std::thread::sleep(Duration::from_millis(100));
        match tracked()? {
            Some(n) if n < u64::from(flows) => ensure!(
                round < 20,
                "after {round} warm-ups the gateway tracks {n} of {flows} flows"
            ),
            // Every flow has state (or the mode keeps none).
            _ => break,
        }
    }
    let s0 = sent()?;
    let (c0, cpu0) = (traffic.lock().expect("datapath").sink_count()?, gw.cpu_ns());
    let took = generate(0, frames)?;
    // Time for the queues to drain (256 frames at most).
    std::thread::sleep(Duration::from_millis(10));
    let (c1, cpu1) = (traffic.lock().expect("datapath").sink_count()?, gw.cpu_ns());
    let sent = sent()?.since(s0);
    let (got, strangers) = (c1.0 - c0.0, c1.1 - c0.1);
    ensure!(
        strangers == 0,
        "{strangers} packets reached the server from another source than {want_src}"
    );
    ensure!(got > u64::from(frames) / 100, "only {got} of {frames} packets reached the server");
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    Ok((
        got as f64 / took.as_secs_f64() / 1000.0,
        100.0 * (1.0 - got as f64 / f64::from(frames)),
        (cpu1 - cpu0) as f64 / got as f64,
        got,
        sent,
    ))
}

/// iperf3 from the client through the mode: (Gbit/s, bytes) received;
/// checks the source the server saw (its log's "connected to").
fn iperf(lab: &Lab, mode: Mode, streams: u32, secs: u64) -> Result<(f64, u64)> {
    let t = mode.target(5201);
    let out = lab
        .client
        .command("iperf3")
        .args([
            "-c",
            &t.ip().to_string(),
            "-p",
            &t.port().to_string(),
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
            "--connect-timeout",
            "3000",
        ])
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("no sum_received")?;
    let bytes = v["end"]["sum_received"]["bytes"].as_u64().context("no sum_received")?;
    ensure!(bps > 0.0, "nothing received");
    // The server logs each accepted client ("Accepted connection from A,
    // port P"): all of them must be the source the mode produces.
    let log = std::fs::read_to_string(lab.dir.join("iperf3-server.log")).unwrap_or_default();
    let peers: BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.split("Accepted connection from ").nth(1)?.split(',').next())
        .collect();
    let want = mode.seen_source().to_string();
    ensure!(
        peers == BTreeSet::from([want.as_str()]),
        "the iperf3 server saw {peers:?}, expected {want}"
    );
    Ok((bps / 1e9, bytes))
}

/// New TCP connections per second (2 client threads, each connect →
/// request → answer → close), the gateway CPU µs per connection and the
/// connections completed; checks the source the server saw.
fn conns(lab: &Lab, mode: Mode, gw: &GwTasks, secs: u64) -> Result<(f64, f64, u64)> {
    let listener = in_ns(&lab.server, || TcpListener::bind("0.0.0.0:80"))??;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || {
        let mut peers = BTreeSet::new();
        while !stop2.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut b = [0u8; 16];
                    if s.read(&mut b).is_ok() {
                        let _ = s.write_all(b"OK\n");
                    }
                    peers.insert(peer.ip());
                }
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        peers
    });
    let t = mode.target(80);
    let cpu0 = gw.cpu_ns();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            lab.client
                .enter(move || {
                    let t0 = Instant::now();
                    let (mut ok, mut failed) = (0u64, 0u64);
                    while t0.elapsed() < Duration::from_secs(secs) {
                        let r = TcpStream::connect_timeout(&t, Duration::from_secs(1)).and_then(
                            |mut s| {
                                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                                s.write_all(b"GET\n")?;
                                let mut r = Vec::new();
                                s.read_to_end(&mut r)?;
                                if r == b"OK\n" {
                                    Ok(())
                                } else {
                                    Err(std::io::Error::other("bad answer"))
                                }
                            },
                        );
                        if r.is_ok() { ok += 1 } else { failed += 1 }
                    }
                    (ok, failed, t0.elapsed())
                })
                .expect("client thread")
        })
        .collect();
    let results: Vec<(u64, u64, Duration)> =
        clients.into_iter().map(|c| c.join().expect("client")).collect();
    let cpu1 = gw.cpu_ns();
    stop.store(true, Ordering::Relaxed);
    let peers = server.join().map_err(|_| anyhow::anyhow!("server panicked"))?;
    let ok: u64 = results.iter().map(|r| r.0).sum();
    let failed: u64 = results.iter().map(|r| r.1).sum();
    ensure!(ok > 0, "no connection completed ({failed} failed)");
    ensure!(failed * 100 <= ok, "{failed} of {} connections failed", ok + failed);
    ensure!(
        peers == BTreeSet::from([IpAddr::V4(mode.seen_source())]),
        "the server saw {peers:?}, expected {}",
        mode.seen_source()
    );
    let secs = results.iter().map(|r| r.2.as_secs_f64()).fold(0.0, f64::max);
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    Ok((ok as f64 / secs, (cpu1 - cpu0) as f64 / 1000.0 / (ok + failed) as f64, ok))
}

/// UDP request/response round trips at 1000/s: (p50 µs, p99 µs, answered).
fn rtt(lab: &Lab, mode: Mode, secs: u64) -> Result<(f64, f64, u64)> {
    let sock = in_ns(&lab.server, || UdpSocket::bind("0.0.0.0:5301"))??;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut peers = BTreeSet::new();
        let mut b = [0u8; 64];
        while !stop2.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut b) {
                let _ = sock.send_to(&b[..n], from);
                peers.insert(from.ip());
            }
        }
        peers
    });
    let t = mode.target(5301);
    let n = secs * 1000;
    let (mut samples, lost) = in_ns(&lab.client, move || -> Result<(Vec<f64>, u64)> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(t)?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (mut samples, mut lost) = (Vec::new(), 0);
        let t0 = Instant::now();
        let mut b = [0u8; 64];
        for i in 0..n {
            let due = t0 + Duration::from_millis(i);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let sent = Instant::now();
            s.send(&i.to_be_bytes())?;
            loop {
                match s.recv(&mut b) {
                    Ok(8) if b[..8] == i.to_be_bytes() => {
                        samples.push(sent.elapsed().as_secs_f64() * 1e6);
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        lost += 1;
                        break;
                    }
                }
            }
            if lost * 20 > n {
                break;
            }
        }
        Ok((samples, lost))
    })??;
    stop.store(true, Ordering::Relaxed);
    let peers = echo.join().map_err(|_| anyhow::anyhow!("echo panicked"))?;
    ensure!(lost * 20 <= n, "{lost} of {n} requests unanswered");
    ensure!(
        peers == BTreeSet::from([IpAddr::V4(mode.seen_source())]),
        "the server saw {peers:?}, expected {}",
        mode.seen_source()
    );
    samples.sort_by(f64::total_cmp);
    // Nearest-rank percentiles.
    let at = |pct: usize| samples[(samples.len() - 1) * pct / 100];
    Ok((at(50), at(99), samples.len() as u64))
}

/// What the gateway's own path sent during a run: the datagrams the
/// kernel's IPv4 forwarding counted, and in the forwarder's modes the
/// packets its XDP and its TC program transmitted; and what its internal
/// interface dropped because the server's receive ring was full (the
/// server's NAPI shares its core with the generator).
#[derive(Clone, Copy, Default)]
struct Sent {
    kernel: u64,
    xdp: u64,
    tc: u64,
    egress_dropped: u64,
}

/// Frames the gateway's internal veth could not hand to the server: skbs
/// (`tx_dropped`) and XDP frames (`tx_queue_0_xdp_xmit_errors`).
fn egress_dropped(lab: &Lab) -> Result<u64> {
    let skbs: u64 = sh(
        lab,
        Host::Gateway,
        "cat",
        &[&format!("/sys/class/net/{GW_INTERNAL_IF}/statistics/tx_dropped")],
    )?
    .trim()
    .parse()?;
    let stats = sh(lab, Host::Gateway, "ethtool", &["-S", GW_INTERNAL_IF])?;
    let xdp: u64 = stats
        .lines()
        .filter_map(|l| {
            l.trim().strip_prefix("tx_queue_0_xdp_xmit_errors:")?.trim().parse::<u64>().ok()
        })
        .sum();
    Ok(skbs + xdp)
}

impl Sent {
    fn now(lab: &Lab, active: &Active) -> Result<Self> {
        let mut s = Self {
            kernel: ip_counter(lab, "ForwDatagrams")?,
            egress_dropped: egress_dropped(lab)?,
            ..Self::default()
        };
        if let Active::Forwarder(_) = active {
            (s.xdp, s.tc) = forwarder_testkit::sent_by_hook(&lab.live_stats()?["counters"])
                .context("no hook counters in the daemon's stats")?;
        }
        Ok(s)
    }

    fn since(self, before: Self) -> Self {
        Self {
            kernel: self.kernel - before.kernel,
            xdp: self.xdp - before.xdp,
            tc: self.tc - before.tc,
            egress_dropped: self.egress_dropped - before.egress_dropped,
        }
    }
}

/// Checks the mode's own path did the work of a packet-rate run that
/// delivered `delivered` packets, and that what it sent arrived: the
/// kernel forwarded them (routing, netfilter, with conntrack entries for
/// the latter) or did not (the XDP modes); the forwarder's XDP carried at
/// least 90 % of them in its XDP mode and none in TC mode; and of what
/// the gateway sent, at least 99 % reached the server or was dropped at
/// its internal interface's queue (the server's receive ring full: the
/// receiver shares its core with the generator) — none went astray.
fn verify_path(lab: &Lab, mode: Mode, delivered: u64, sent: Sent) -> Result<()> {
    if matches!(mode, Mode::Iptables | Mode::Nftables) {
        let n: u64 = sh(lab, Host::Gateway, "conntrack", &["-C"])?.trim().parse()?;
        ensure!(n > 0, "no netfilter conntrack entries: netfilter did not translate");
    }
    if mode.kernel_forwards() {
        ensure!(
            sent.kernel >= delivered * 9 / 10,
            "the kernel forwarded {} datagrams for {delivered} delivered packets",
            sent.kernel
        );
    } else {
        ensure!(
            sent.kernel <= delivered / 100,
            "the kernel forwarded {} datagrams: the mode's own path did not",
            sent.kernel
        );
    }
    let by_gateway = match mode {
        Mode::ForwarderXdp => {
            ensure!(
                forwarder_testkit::xdp_carried_most(sent.xdp, sent.tc),
                "XDP sent {} packets, TC {}: XDP mode must be XDP's work",
                sent.xdp,
                sent.tc
            );
            Some(sent.xdp + sent.tc)
        }
        Mode::ForwarderTc => {
            ensure!(sent.xdp == 0, "XDP sent {} packets in TC mode", sent.xdp);
            Some(sent.tc)
        }
        m if m.kernel_forwards() => Some(sent.kernel),
        _ => None,
    };
    if let Some(n) = by_gateway {
        let queued_out = sent.egress_dropped;
        ensure!(
            (delivered + queued_out) * 100 >= n * 99,
            "the gateway sent {n} packets: {delivered} reached the server, {queued_out} were dropped at its queue, the rest went astray"
        );
    }
    Ok(())
}

/// What the forwarder's counters must show at least after the workloads
/// that ran: (rule index in [`SERVICES`], counter, minimum).
#[derive(Default)]
struct Owed(Vec<(usize, &'static str, u64)>);

impl Owed {
    fn add(&mut self, rule: usize, counter: &'static str, n: u64) {
        self.0.push((rule, counter, n));
    }
}

/// Counters of the forwarder that no workload may grow.
const MUST_STAY_ZERO: [&str; 6] = [
    "drop_redirect_failed",
    "pass_malformed",
    "drop_ct_insert",
    "drop_no_route",
    "drop_no_src_addr",
    "drop_snat_exhausted",
];

/// The forwarder's final counters: every rule counted at least what the
/// workloads owe it (summed per rule and counter), the hook split of its
/// mode held over the whole run, and nothing grew that must stay 0.
fn verify_counters(stats: &str, owed: &Owed, mode: Mode) -> Result<()> {
    let stats: Value = serde_json::from_str(stats)?;
    let mut want: std::collections::BTreeMap<(usize, &str), u64> =
        std::collections::BTreeMap::new();
    for (rule, counter, n) in &owed.0 {
        *want.entry((*rule, *counter)).or_default() += n;
    }
    for ((rule, counter), n) in want {
        let got = stats["rules"][rule][counter].as_u64().unwrap_or(0);
        ensure!(
            got >= n,
            "forwarder rule {:?} counted {got} {counter}, the workloads made {n}",
            SERVICES[rule]
        );
    }
    let c = |k: &str| stats["counters"][k].as_u64().unwrap_or(0);
    let (xdp, tc) = forwarder_testkit::sent_by_hook(&stats["counters"]).unwrap_or_default();
    match mode {
        Mode::ForwarderXdp => ensure!(
            forwarder_testkit::xdp_carried_most(xdp, tc),
            "over the whole run XDP sent {xdp} packets, TC {tc}"
        ),
        _ => ensure!(xdp == 0 && tc > 0, "over the whole run XDP sent {xdp} packets, TC {tc}"),
    }
    let grew: Vec<String> =
        MUST_STAY_ZERO.iter().filter(|k| c(k) > 0).map(|k| format!("{k} {}", c(k))).collect();
    ensure!(grew.is_empty(), "counters that must stay 0: {}", grew.join(", "));
    Ok(())
}

type Figures = Vec<(&'static str, Result<f64, String>)>;

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
    if let Active::Forwarder(f) = &mut active
        && let Err(e) = f.stop().and_then(|stats| verify_counters(&stats, &owed, mode))
    {
        let e = format!("{e:#}");
        for f in &mut out {
            f.1 = Err(e.clone());
        }
    }
    drop(active);
    drop(lab);
    Ok(out)
}

struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

fn summarize(values: &[Result<f64, String>]) -> Result<Summary, String> {
    if let Some(Err(e)) = values.iter().find(|v| v.is_err()) {
        return Err(e.clone());
    }
    let mut v: Vec<f64> = values.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    if v.is_empty() {
        return Err("no repetition".into());
    }
    v.sort_by(f64::total_cmp);
    Ok(Summary { median: v[v.len() / 2], min: v[0], max: v[v.len() - 1] })
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    format!("{n} x {cpu}, kernel {}", kernel.trim())
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
    let mut all: Vec<Vec<Figures>> = vec![Vec::new(); modes.len()];
    for rep in 0..p.reps {
        for (i, mode) in modes.iter().enumerate() {
            let t = Instant::now();
            let figs = run_mode(*mode, &p, &traffic).unwrap_or_else(|e| {
                let e = format!("{e:#}");
                FIGURES.iter().map(|f| (f.0, Err(e.clone()))).collect()
            });
            let failed: Vec<&str> = figs.iter().filter(|f| f.1.is_err()).map(|f| f.0).collect();
            eprintln!(
                "compare: rep {}/{} {:<28} {:.1} s{}",
                rep + 1,
                p.reps,
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
    let figures: Vec<(&str, &str, bool)> = FIGURES.to_vec();
    // summary[mode][figure]
    let summary: Vec<Vec<Result<Summary, String>>> = all
        .iter()
        .map(|reps| {
            figures
                .iter()
                .map(|(key, _, _)| {
                    summarize(
                        &reps
                            .iter()
                            .map(|r| {
                                r.iter()
                                    .find(|f| f.0 == *key)
                                    .map_or(Err("missing".into()), |f| f.1.clone())
                            })
                            .collect::<Vec<_>>(),
                    )
                })
                .collect()
        })
        .collect();
    let ipt = modes.iter().position(|m| *m == Mode::Iptables).expect("iptables mode");
    let machine = machine();
    println!(
        "\nnetfilter comparison: {} repetitions x {} s per workload, interleaved; {machine}",
        p.reps, p.secs
    );
    println!(
        "median [min-max], and the ratio to iptables (x; > 1 = better for throughput figures, < 1 = better for time figures)\n"
    );
    let mut json_modes = Vec::new();
    for (fi, (key, label, higher)) in figures.iter().enumerate() {
        println!("{label}");
        for (mi, mode) in modes.iter().enumerate() {
            match &summary[mi][fi] {
                Ok(s) => {
                    let ratio = summary[ipt][fi]
                        .as_ref()
                        .ok()
                        .filter(|b| b.median > 0.0)
                        .map(|b| s.median / b.median);
                    println!(
                        "  {:<28} {:>10.2} [{:.2}-{:.2}]{}",
                        mode.name(),
                        s.median,
                        s.min,
                        s.max,
                        ratio.map(|r| format!("  x{r:.2}")).unwrap_or_default()
                    );
                }
                Err(e) => println!("  {:<28} FAILED: {e}", mode.name()),
            }
        }
        let _ = (key, higher);
    }
    for (mi, mode) in modes.iter().enumerate() {
        let mut figs = serde_json::Map::new();
        for (fi, (key, _, higher)) in figures.iter().enumerate() {
            let v = match &summary[mi][fi] {
                Ok(s) => {
                    json!({"median": s.median, "min": s.min, "max": s.max, "higher_is_better": higher,
                    "ratio_to_iptables": summary[ipt][fi].as_ref().ok().filter(|b| b.median > 0.0).map(|b| s.median / b.median),
                    "runs": all[mi].iter().map(|r| r.iter().find(|f| f.0 == *key).and_then(|f| f.1.clone().ok())).collect::<Vec<_>>()})
                }
                Err(e) => json!({"failed": e}),
            };
            figs.insert((*key).to_string(), v);
        }
        json_modes.push(json!({"mode": mode.key(), "name": mode.name(), "figures": figs}));
    }
    let mut dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    if check {
        dir = dir.join("check");
    }
    std::fs::create_dir_all(&dir)?;
    let doc = json!({"machine": machine, "reps": p.reps, "secs": p.secs, "quick": quick, "check": check, "modes": json_modes});
    std::fs::write(dir.join("compare.json"), serde_json::to_string_pretty(&doc)?)?;
    std::fs::write(dir.join("compare.md"), markdown(&modes, &figures, &summary, ipt))?;
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
        .flat_map(|(m, figs)| {
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

/// The summary as a Markdown table (a row per figure, a column per mode):
/// iptables' median with min–max, every other mode's median and its ratio
/// to iptables.
fn markdown(
    modes: &[Mode],
    figures: &[(&str, &str, bool)],
    summary: &[Vec<Result<Summary, String>>],
    ipt: usize,
) -> String {
    use std::fmt::Write as _;
    let num = |v: f64| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    };
    let mut out = format!(
        "| figure | {} |\n|{}\n",
        modes.iter().map(|m| m.name()).collect::<Vec<_>>().join(" | "),
        " --- |".repeat(modes.len() + 1)
    );
    for (fi, (_, label, _)) in figures.iter().enumerate() {
        let cells: Vec<String> = (0..modes.len())
            .map(|mi| match (&summary[mi][fi], &summary[ipt][fi]) {
                (Ok(s), _) if mi == ipt => {
                    format!("{} [{}–{}]", num(s.median), num(s.min), num(s.max))
                }
                (Ok(s), Ok(b)) if b.median > 0.0 => {
                    format!("{} ×{:.2}", num(s.median), s.median / b.median)
                }
                (Ok(s), _) => num(s.median),
                (Err(_), _) => "FAILED".into(),
            })
            .collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    out
}

#[expect(clippy::cast_precision_loss, reason = "a handful of bars")]
/// One panel per figure: a bar per mode, its median relative to iptables
/// (iptables = 1), with the absolute median written on it.
fn chart(
    path: &std::path::Path,
    modes: &[Mode],
    figures: &[(&str, &str, bool)],
    summary: &[Vec<Result<Summary, String>>],
    ipt: usize,
    machine: &str,
) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 260 * figures.len().div_ceil(2) as u32 + 60))
        .into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(60);
    title.draw(&Text::new(
        format!(
            "forwarder vs netfilter: median of each mode relative to iptables (= 1); {machine}"
        ),
        (10, 8),
        ("sans-serif", 17),
    ))?;
    let colors = [
        RGBColor(120, 120, 120),
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
    ];
    // Legend: one colour per mode, in bar order.
    for (mi, mode) in modes.iter().enumerate() {
        let x = 10 + 195 * i32::try_from(mi).unwrap_or(0);
        title.draw(&Rectangle::new([(x, 36), (x + 14, 50)], colors[mi % colors.len()].filled()))?;
        title.draw(&Text::new(mode.name(), (x + 18, 37), ("sans-serif", 13)))?;
    }
    let panels = body.split_evenly((figures.len().div_ceil(2), 2));
    for (fi, (panel, (_, label, higher))) in panels.iter().zip(figures).enumerate() {
        let vals: Vec<Option<(f64, f64)>> = (0..modes.len())
            .map(|mi| {
                let base = summary[ipt][fi].as_ref().ok()?.median;
                let s = summary[mi][fi].as_ref().ok()?;
                (base > 0.0).then(|| (s.median / base, s.median))
            })
            .collect();
        let top = vals.iter().flatten().map(|v| v.0).fold(1.0, f64::max) * 1.25;
        let caption = format!("{label} ({} is better)", if *higher { "higher" } else { "lower" });
        let mut c = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(5)
            .y_label_area_size(40)
            .build_cartesian_2d(0f64..modes.len() as f64, 0f64..top)?;
        c.configure_mesh().disable_x_mesh().x_labels(0).y_desc("x iptables").draw()?;
        for (mi, v) in vals.iter().enumerate() {
            let x = mi as f64;
            match v {
                Some((ratio, abs)) => {
                    c.draw_series(std::iter::once(Rectangle::new(
                        [(x + 0.15, 0.0), (x + 0.85, *ratio)],
                        colors[mi % colors.len()].filled(),
                    )))?;
                    c.draw_series(std::iter::once(Text::new(
                        format!("{abs:.1}"),
                        (x + 0.2, ratio + top * 0.03),
                        ("sans-serif", 11),
                    )))?;
                }
                None => {
                    c.draw_series(std::iter::once(Text::new(
                        "FAILED",
                        (x + 0.15, top * 0.1),
                        ("sans-serif", 11).into_font().color(&RED),
                    )))?;
                }
            }
        }
    }
    root.present()?;
    Ok(())
}
