//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use forwarder_testkit::{Forwarder, Lab};

mod balanced;
mod base;
mod checks;
mod stats;

#[allow(unused_imports)]
pub use balanced::*;
pub use base::*;
pub use checks::*;
// Each test binary uses the helpers it needs, some none of these.
#[allow(unused_imports)]
pub use stats::*;

pub const HTTP_RULE: &str = "tcp:8080=192.168.1.50:80";

/// An echo server on the backend's `port`: each connection gets back
/// what it sends, until it closes (a deep accept queue: no client waits
/// on a full one).
pub fn echo_server(lab: &Lab, port: u16) {
    let l = server_listener(lab, SocketAddr::from(([0, 0, 0, 0], port)));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                while let Ok(k) = s.read(&mut b) {
                    if k == 0 || s.write_all(&b[..k]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

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

/// The server host answers as 192.168.1.51 and .52 too (a rule's other
/// backends).
pub fn more_backend_addresses(lab: &Lab) {
    for b in [51, 52] {
        lab.server.ip(&["addr", "add", &format!("192.168.1.{b}/24"), "dev", "eth0"]).unwrap();
    }
}

/// A UDP server at `192.168.1.B:port` in the server namespace: answers
/// each datagram with `B`, until `idle_secs` pass without one; how many
/// it answered.
pub fn udp_identity(lab: &Lab, b: u8, port: u16, idle_secs: u64) -> std::thread::JoinHandle<u32> {
    let s = lab
        .server
        .enter(move || {
            std::net::UdpSocket::bind(SocketAddr::from(([192, 168, 1, b], port))).unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(idle_secs))).unwrap();
    std::thread::spawn(move || {
        let (mut n, mut buf) = (0u32, [0u8; 16]);
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            s.send_to(&[b], from).unwrap();
            n += 1;
        }
        n
    })
}

/// A minimal HTTP/1.0 server: for each of `n` connections, reads a request
/// and answers `hello <peer ip>`. Returns the peers it saw.
pub fn http_server(lab: &Lab, n: usize) -> std::thread::JoinHandle<Vec<SocketAddr>> {
    let listener = server_listener(lab, SocketAddr::from(([0, 0, 0, 0], 80)));
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
