//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use forwarder_testkit::{Forwarder, Lab};
use serde_json::Value;

pub const HTTP_RULE: &str = "tcp:8080=192.168.1.50:80";

/// How long a connection may take to be set up: under a second, so that
/// a first SYN lost (and retransmitted after one) fails the test.
pub const CONNECT: Duration = Duration::from_millis(900);

/// A lab with the forwarder running the given rules.
pub fn lab_with(rules: &[&str]) -> (Lab, Forwarder) {
    let lab = Lab::new().expect("lab");
    let mut args = Vec::new();
    for r in rules {
        args.push("--rule");
        args.push(r);
    }
    let fwd = lab.start_forwarder(&args).expect("forwarder starts");
    (lab, fwd)
}

/// (`packets_in`, `packets_out`, `new_connections`) of rule `id` in a stats JSON.
pub fn rule_counters(json: &str, id: usize) -> (u64, u64, u64) {
    let v: Value = serde_json::from_str(json).expect("stats JSON");
    let r = &v["rules"][id];
    (
        r["packets_in"].as_u64().unwrap(),
        r["packets_out"].as_u64().unwrap(),
        r["new_connections"].as_u64().unwrap(),
    )
}

/// (`bytes_in`, `bytes_out`) of rule `id`.
pub fn rule_bytes(json: &str, id: usize) -> (u64, u64) {
    let v: Value = serde_json::from_str(json).expect("stats JSON");
    let r = &v["rules"][id];
    (r["bytes_in"].as_u64().unwrap(), r["bytes_out"].as_u64().unwrap())
}

pub fn counter(json: &str, name: &str) -> u64 {
    let v: Value = serde_json::from_str(json).expect("stats JSON");
    v["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {json}"))
}

/// Deepens a listener's accept queue to 4096 (the namespace's
/// `somaxconn`; std listens with 128): a burst of connections set up
/// faster than the test's thread accepts them must not cost a SYN the
/// server drops, which a tight connect bound would blame on the gateway.
pub fn deep_backlog(l: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) again on a listening socket we own only changes
    // its backlog.
    assert_eq!(
        unsafe { libc::listen(l.as_raw_fd(), 4096) },
        0,
        "listen: {}",
        std::io::Error::last_os_error()
    );
}

/// A minimal HTTP/1.0 server: for each of `n` connections, reads a request
/// and answers `hello <peer ip>`. Returns the peers it saw.
pub fn http_server(lab: &Lab, n: usize) -> std::thread::JoinHandle<Vec<SocketAddr>> {
    let listener = lab
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80").expect("bind :80"))
        .unwrap()
        .join()
        .unwrap();
    deep_backlog(&listener);
    std::thread::spawn(move || {
        let mut peers = Vec::new();
        for _ in 0..n {
            let (mut s, peer) = listener.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let k = s.read(&mut buf).expect("read request");
                assert!(k > 0, "request cut short");
                req.extend_from_slice(&buf[..k]);
            }
            let body = format!("hello {}", peer.ip());
            write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
            peers.push(peer);
        }
        peers
    })
}

/// One HTTP GET from the client namespace; returns (body, the address the
/// connection was answered from).
pub fn http_get(lab: &Lab, to: SocketAddr) -> (String, SocketAddr) {
    lab.client
        .enter(move || {
            let mut s =
                TcpStream::connect_timeout(&to, CONNECT).expect("connect through the forward");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n").unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).expect("read response");
            let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
            (body, s.peer_addr().unwrap())
        })
        .unwrap()
        .join()
        .unwrap()
}

/// Waits until the daemon's log contains `needle` (or fails after `secs`).
pub fn wait_log(fwd: &Forwarder, needle: &str, secs: u64) {
    let t0 = std::time::Instant::now();
    while !fwd.log_text().contains(needle) {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "`{needle}` not logged within {secs} s:\n{}",
            fwd.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Packets the datapath translated and sent, by either hook.
pub fn redirected(json: &str) -> u64 {
    let v: Value = serde_json::from_str(json).expect("stats JSON");
    let (xdp, tc) = forwarder_testkit::sent_by_hook(&v["counters"])
        .unwrap_or_else(|| panic!("no hook counters in {json}"));
    xdp + tc
}

/// The hook that did the work is the one the suite's mode and lab call
/// for: XDP transmits (mode xdp, tuned lab: at least 90 % of the packets
/// TC did not take), or TC does (every other combination; with XDP in
/// front on an untuned lab, XDP hands them over).
pub fn assert_hook_did_the_work(json: &str) {
    let v: Value = serde_json::from_str(json).expect("stats JSON");
    let (xdp, tc) = forwarder_testkit::sent_by_hook(&v["counters"])
        .unwrap_or_else(|| panic!("no hook counters in {json}"));
    if forwarder_testkit::xdp_transmits() {
        assert!(
            xdp > 0 && forwarder_testkit::xdp_carried_most(xdp, tc),
            "XDP did not carry 90 % of the packets: {json}"
        );
    } else {
        assert_eq!(xdp, 0, "XDP transmitted where it must not: {json}");
        assert!(tc > 0, "{json}");
        if forwarder_testkit::test_mode() == "xdp" {
            assert!(counter(json, "xdp_to_tc") > 0, "{json}");
        }
    }
}

/// Whether XDP is attached to the gateway's veths in the suite's mode
/// (`auto` and the default pick TC on veth).
pub fn xdp_attached() -> bool {
    forwarder_testkit::test_mode() == "xdp"
}

/// Datapath counters that stay 0 in a test that does not ask for them:
/// each is a packet lost or a fault.
pub const MUST_STAY_ZERO: [&str; 16] = [
    "drop_rewrite_failed",
    "drop_ttl",
    "drop_snat_exhausted",
    "drop_ct_insert",
    "drop_no_src_addr",
    "drop_redirect_failed",
    "drop_src_denied",
    "table_full_refused",
    "early_drop",
    "drop_too_big",
    "drop_new_conn_rate",
    "drop_no_route",
    "pass_malformed",
    "pass_fwd_disabled",
    "pass_not_forwarded",
    "audit_ring_full",
];

/// What a test makes happen beyond a clean run: counters of
/// [`MUST_STAY_ZERO`] it makes grow, and text of the WARN/ERROR log lines
/// it causes.
#[derive(Clone, Copy, Default)]
pub struct Expect<'a> {
    pub counters: &'a [&'a str],
    pub log: &'a [&'a str],
}

impl<'a> Expect<'a> {
    pub const fn counters(counters: &'a [&'a str]) -> Self {
        Self { counters, log: &[] }
    }
    pub const fn log(log: &'a [&'a str]) -> Self {
        Self { counters: &[], log }
    }
}

/// The warnings the suite's mode and lab bring by themselves: XDP on an
/// untuned lab says which egresses it cannot transmit into.
fn suite_warnings() -> &'static [&'static str] {
    if forwarder_testkit::test_mode() == "xdp" && !forwarder_testkit::tuned_lab() {
        &["XDP cannot transmit into it"]
    } else {
        &[]
    }
}

/// The "no surprises" check of a finished test: the counters that must
/// stay 0 are 0 (but those `expect` names), the daemon logged no WARN or
/// ERROR that `expect` (or the suite's combination) does not name, and no
/// host counted a checksum error.
pub fn assert_no_surprises(lab: &Lab, stats: &str, log: &str, expect: Expect) {
    let grown: Vec<String> = MUST_STAY_ZERO
        .iter()
        .filter(|c| !expect.counters.contains(c) && counter(stats, c) > 0)
        .map(|c| format!("{c}={}", counter(stats, c)))
        .collect();
    assert!(grown.is_empty(), "counters that must stay 0 grew: {grown:?}\n{stats}");
    let unexpected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| !expect.log.iter().chain(suite_warnings()).any(|a| l.contains(a)))
        .collect();
    assert!(unexpected.is_empty(), "the daemon warned unexpectedly:\n{}", unexpected.join("\n"));
    assert_no_csum_errors(lab);
}

/// Stops the forwarder (SIGTERM) and runs [`assert_no_surprises`]; the
/// final stats JSON.
pub fn finish(lab: &Lab, fwd: &mut Forwarder, expect: Expect) -> String {
    let stats = fwd.stop().expect("the forwarder stops cleanly");
    assert_no_surprises(lab, &stats, &fwd.log_text(), expect);
    stats
}

pub fn assert_no_csum_errors(lab: &Lab) {
    let bad = lab.csum_errors().expect("read snmp counters");
    assert!(bad.is_empty(), "checksum errors recorded: {bad:?}");
}

/// A UDP socket on the server (backend) at `port`, with a read timeout.
pub fn udp_backend(lab: &Lab, port: u16, timeout_secs: u64) -> std::net::UdpSocket {
    let s = lab
        .server
        .enter(move || std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap())
        .unwrap()
        .join()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(timeout_secs))).unwrap();
    s
}

/// An ephemeral UDP socket with a read timeout (call it inside the
/// namespace it belongs to).
pub fn udp_client(timeout_secs: u64) -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(timeout_secs))).unwrap();
    s
}

pub fn public(port: u16) -> SocketAddr {
    SocketAddr::from((forwarder_testkit::ADDRS.gw_public, port))
}

/// A TCP connect from a chosen local address, with a 2 s timeout.
pub fn connect_from(local: [u8; 4], to: std::net::SocketAddr) -> Result<(), std::io::ErrorKind> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket syscalls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from_ne_bytes(local);
        assert_eq!(
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32
            ),
            0
        );
        let std::net::SocketAddr::V4(to) = to else { unreachable!() };
        let mut da: libc::sockaddr_in = std::mem::zeroed();
        da.sin_family = libc::AF_INET as u16;
        da.sin_port = to.port().to_be();
        da.sin_addr.s_addr = u32::from_ne_bytes(to.ip().octets());
        let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        if libc::connect(
            fd.as_raw_fd(),
            (&raw const da).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) == 0
        {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        Err(
            if e.raw_os_error() == Some(libc::EINPROGRESS) || e.raw_os_error() == Some(libc::EAGAIN)
            {
                std::io::ErrorKind::TimedOut
            } else {
                e.kind()
            },
        )
    }
}

pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Opens `n` connections through the forward and keeps them open, tries one
/// more (2 s timeout), then checks that each of the `n` still echoes.
/// Returns (the extra one's result, how many echoed, the server-side peer
/// ports).
pub fn fill_then_probe(
    lab: &forwarder_testkit::Lab,
    n: usize,
) -> (Result<(), std::io::ErrorKind>, usize, Vec<u16>) {
    let listener =
        lab.server.enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap().join().unwrap();
    // Room for every connection: a full accept queue drops a client's
    // final ACK, and the server would accept that connection late.
    deep_backlog(&listener);
    let server = std::thread::spawn(move || {
        let mut ports = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..n {
            let (c, peer) = listener.accept().unwrap();
            ports.push(peer.port());
            conns.push(c);
        }
        for mut c in conns {
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            c.write_all(&b).unwrap();
        }
        ports
    });
    let (extra, echoed) = lab
        .client
        .enter(move || {
            // 3 s, not CONNECT: n connections back to back overflow the
            // server's accept queue (128) when its thread is slow to run,
            // and the server drops a SYN; a SYN the gateway lost shows in
            // the drop counters that `finish` requires to be 0.
            let mut socks: Vec<TcpStream> = (0..n)
                .map(|_| TcpStream::connect_timeout(&public(8080), Duration::from_secs(3)).unwrap())
                .collect();
            let extra = TcpStream::connect_timeout(&public(8080), Duration::from_secs(2))
                .map(|_| ())
                .map_err(|e| e.kind());
            // (connect_timeout says WouldBlock on some kernels for a timeout.)
            let extra = extra.map_err(|k| {
                if k == std::io::ErrorKind::WouldBlock { std::io::ErrorKind::TimedOut } else { k }
            });
            // Every byte out before any echo is awaited: the server reads
            // its connections in the order it accepted them, which need not
            // be the order they were opened in.
            for s in &mut socks {
                s.write_all(b"x").unwrap();
            }
            let mut echoed = 0;
            for s in &mut socks {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
                echoed += usize::from(b == *b"x");
            }
            (extra, echoed)
        })
        .unwrap()
        .join()
        .unwrap();
    (extra, echoed, server.join().unwrap())
}

/// Runs the `forwarder` CLI against the lab's daemon (its control
/// socket): whether it succeeded, and stdout + stderr.
pub fn cli(lab: &Lab, args: &[&str]) -> (bool, String) {
    let bin = forwarder_testkit::proc::forwarder_bin().unwrap();
    let out = std::process::Command::new(&bin)
        .args(args)
        .arg("--control")
        .arg(lab.dir.join("control.sock"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// One HTTP request through the forward (the backend is [`http_server`]);
/// the body.
pub fn get(lab: &Lab) -> String {
    http_get(lab, public(8080)).0
}

/// One HTTP request through the forward whose connection must be set up
/// within `connect`; the whole answer.
pub fn get_within(lab: &Lab, connect: Duration) -> String {
    lab.client
        .enter(move || {
            let mut s =
                std::net::TcpStream::connect_timeout(&public(8080), connect).expect("connect");
            std::io::Write::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut r = String::new();
            std::io::Read::read_to_string(&mut s, &mut r).unwrap();
            r
        })
        .unwrap()
        .join()
        .unwrap()
}

/// The internal host 192.168.1.60 on the server's segment, routed through
/// the gateway: it reaches the public addresses by hairpin.
pub fn internal_host(lab: &Lab) {
    lab.server.ip(&["addr", "add", "192.168.1.60/24", "dev", "eth0"]).unwrap();
    let via = forwarder_testkit::ADDRS.gw_internal.to_string();
    lab.server.ip(&["route", "add", "default", "via", &via, "src", "192.168.1.60"]).unwrap();
}

/// How a TCP connect from the client to `to` ends within 2 s: set up, or
/// the error kind (refused, timed out, …).
pub fn connect_outcome(lab: &Lab, to: SocketAddr) -> Result<(), std::io::ErrorKind> {
    lab.client
        .enter(move || {
            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .map(|_| ())
                .map_err(|e| e.kind())
        })
        .unwrap()
        .join()
        .unwrap()
}
