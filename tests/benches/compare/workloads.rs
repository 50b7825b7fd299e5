//! The workloads: generated packets (one flow, many flows, SYNs) counted
//! at the receiver, iperf3 bulk TCP, TCP connections per second, UDP
//! request/response times.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{IpAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use forwarder::iface;
use forwarder_common::abi::{BENCH_PORTS_PER_ADDR, PROG_BENCH_SINK};
use forwarder_testkit::{ADDRS, Lab, Macs};
use serde_json::Value;

use crate::checks::Sent;
use crate::harness::Bench;
use crate::modes::{GwCore, Mode};
use crate::util::{backlog_drops, in_ns};

/// Flows of the multi-flow packet-rate run.
pub(crate) const FLOWS: u32 = 10_000;
/// SYNs of the connection-setup run, each from a flow of its own (source
/// ports 20000-59999 of 203.0.113.10, .11, .12): more than any mode
/// takes in while they are generated (a few tens of ms), so the gateway
/// works on nothing but first packets of connections, flat out (the
/// receive queue drops the rest before the gateway sees them).
pub(crate) const SYNS: u32 = 100_000;

/// A generated packet-rate run: 64-byte frames from the client, made in
/// the kernel (`BPF_PROG_TEST_RUN` live frames on the client's interface),
/// `frames` of them spread over `flows` flows (`abi::bench_flow`: source
/// ports from the frame's up, then the next source addresses),
/// counted at the server.
#[derive(Clone, Copy)]
pub(crate) struct Gen {
    /// UDP datagrams, or TCP SYNs (each one a connection attempt).
    pub(crate) syn: bool,
    /// The service port (the receiver counts 5300 and 5301). The SYN
    /// load run has 5301 to itself: the flood's connections on 5300 hold
    /// most of the masquerade's source ports towards 5300.
    pub(crate) port: u16,
    pub(crate) frames: u32,
    pub(crate) flows: u32,
    /// Frames sent before the count starts: every flow gets its state, so
    /// the figure is the established path's (0: each counted frame is the
    /// first of its flow, the figure is connection setup's).
    pub(crate) warm_up: u32,
    /// The flow of the first counted frame (flows before it are another
    /// run's).
    pub(crate) first: u32,
    /// Frames per second offered (`None`: as fast as the generator goes,
    /// to saturate the gateway). At an offered rate every frame must be
    /// delivered: the figure is the CPU a packet costs at that load.
    pub(crate) rate: Option<u32>,
}

impl Gen {
    /// As fast as the generator goes: `frames` over `flows` flows.
    pub(crate) const fn flat_out(syn: bool, frames: u32, flows: u32, warm_up: u32) -> Self {
        Self { syn, port: 5300, frames, flows, warm_up, first: 0, rate: None }
    }

    /// New connections (SYNs) at `rate` per second to `port`: `frames` of
    /// them (at most [`BENCH_PORTS_PER_ADDR`]), the flows those of the
    /// fourth client address (after the flood's [`SYNS`]): each its own
    /// source port.
    pub(crate) const fn syn_load(port: u16, frames: u32, rate: u32) -> Self {
        let first = 3 * BENCH_PORTS_PER_ADDR;
        Self { syn: true, port, frames, flows: first + frames, warm_up: 0, first, rate: Some(rate) }
    }
}

/// What a generated run measured.
#[derive(Clone, Copy)]
pub(crate) struct Run {
    pub(crate) kpps: f64,
    pub(crate) loss_pct: f64,
    /// Gateway core time per packet it forwarded.
    pub(crate) cpu_ns: f64,
    /// The gateway core's busy share of the count's time.
    pub(crate) busy_pct: f64,
    pub(crate) delivered: u64,
    /// What the gateway sent meanwhile.
    pub(crate) sent: Sent,
}

/// Runs `g` (what the gateway sent is read around the count, outside its
/// CPU window). The warm-up is
/// repeated until the gateway tracks every flow (`tracked`: the flows
/// it has state for; `None` in stateless modes): a gateway drops what it
/// cannot take in, so one pass may leave flows without state.
#[expect(clippy::too_many_arguments, reason = "the run's context and its two probes")]
pub(crate) fn generated(
    lab: &Lab,
    mode: Mode,
    gw: &GwCore,
    m: &Macs,
    traffic: &Arc<Mutex<Bench>>,
    g: Gen,
    sent: &dyn Fn() -> Result<Sent>,
    tracked: &dyn Fn() -> Result<Option<u64>>,
) -> Result<Run> {
    let t = mode.target(g.port);
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

/// The warm-up's rate, frames per second, evenly spaced (at most 32
/// back to back): every mode takes it in, so none drops warm-up frames
/// for being sent too fast. At full speed the drops would fall on the
/// same flows in every pass (the generator's rate and the gateway's are
/// steady), and a tenth of the flows could stay without state for good.
pub(crate) const WARM_UP_RATE: u32 = 100_000;

/// A paced run that forwarded less than 98 % of what it was offered. (At
/// 200 000 packets/s every mode is far from its limit; what a run loses
/// is a stall: on a slow host, the veth's 256-frame ring overflows while
/// a NAPI thread on a halted virtual core is woken, 0.5-1.5 % of a run.
/// The CPU per packet divides by what was forwarded.)
#[derive(Debug)]
pub(crate) struct Behind(String);

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Behind {}

/// [`generated`] with the receiver counting: the warm-up, then the count.
#[expect(clippy::too_many_arguments, reason = "the run's context and its two probes")]
pub(crate) fn generated_with_sink(
    lab: &Lab,
    traffic: &Arc<Mutex<Bench>>,
    g: Gen,
    frame: [u8; 64],
    want_src: &str,
    gw: &GwCore,
    sent: &dyn Fn() -> Result<Sent>,
    tracked: &dyn Fn() -> Result<Option<u64>>,
) -> Result<Run> {
    let (frames, flows) = (g.frames, g.flows);
    let r = traffic.clone();
    let ifindex = in_ns(&lab.client, || iface::index("eth0"))??;
    // `n` frames from flow `first`, at `rate` (`None`: flat out).
    let generate = |first: u32, n: u32, rate: Option<u32>| -> Result<Duration> {
        let r = r.clone();
        in_ns(&lab.client, move || {
            r.lock().expect("datapath").generate(&frame, flows, first, ifindex, n, rate)
        })?
    };
    for round in (1..=20).take_while(|_| g.warm_up > 0) {
        generate(0, g.warm_up, Some(WARM_UP_RATE))?;
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
    let (c0, cpu0, drops0, t0) = (
        traffic.lock().expect("datapath").sink_count()?,
        gw.cpu_ns(),
        backlog_drops(),
        Instant::now(),
    );
    let took = generate(g.first, frames, g.rate)?;
    // Time for the queues to drain: until the receiver counts nothing
    // more for 10 ms (a backlog of 1 000 skbs takes a few ms), 200 ms at
    // most.
    let mut c1 = traffic.lock().expect("datapath").sink_count()?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(10));
        let c = traffic.lock().expect("datapath").sink_count()?;
        if c == c1 {
            break;
        }
        c1 = c;
    }
    let (cpu1, wall) = (gw.cpu_ns(), t0.elapsed());
    let sent = sent()?.since(s0);
    let (got, strangers) = (c1.0 - c0.0, c1.1 - c0.1);
    ensure!(
        strangers == 0,
        "{strangers} packets reached the server from another source than {want_src}"
    );
    ensure!(got > u64::from(frames) / 100, "only {got} of {frames} packets reached the server");
    // What the gateway forwarded: delivered, or dropped by the server's
    // full receive ring (in the threaded-NAPI environment the receiver
    // shares its core with the generator and can fall behind the gateway).
    let forwarded = (got + sent.egress_dropped).min(u64::from(frames));
    if let Some(rate) = g.rate
        && forwarded * 100 < u64::from(frames) * 98
    {
        return Err(Behind(format!(
            "did not keep up with {} kpps offered: {got} of {frames} packets delivered, {} \
             dropped by the server's full ring, {} by a full backlog, {} by the gateway's full \
             receive ring",
            rate / 1000,
            sent.egress_dropped,
            backlog_drops() - drops0,
            sent.ingress_dropped
        ))
        .into());
    }
    #[expect(clippy::cast_precision_loss, reason = "counts and ns far below 2^52")]
    Ok(Run {
        kpps: got as f64 / took.as_secs_f64() / 1000.0,
        loss_pct: 100.0 * (1.0 - got as f64 / f64::from(frames)),
        cpu_ns: (cpu1 - cpu0) as f64 / forwarded as f64,
        busy_pct: 100.0 * (cpu1 - cpu0) as f64 / wall.as_nanos() as f64,
        delivered: got,
        sent,
    })
}

/// iperf3 from the client through the mode: (Gbit/s, bytes) received;
/// checks the source the server saw (its log's "connected to").
pub(crate) fn iperf(lab: &Lab, mode: Mode, streams: u32, secs: u64) -> Result<(f64, u64)> {
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
pub(crate) fn conns(lab: &Lab, mode: Mode, gw: &GwCore, secs: u64) -> Result<(f64, f64, u64)> {
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
pub(crate) fn rtt(lab: &Lab, mode: Mode, secs: u64) -> Result<(f64, f64, u64)> {
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
