//! End to end: packets off the common path — hairpin, ICMP errors both
//! ways, path MTU discovery, fragments, the gateway's own "fragmentation
//! needed", 802.1Q, IP options. Needs root (namespaces, XDP).

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use common::*;
use forwarder_testkit::ADDRS;
use sha2::{Digest, Sha256};

#[test]
fn hairpin_internal_host_reaches_the_public_address() {
    // An internal host (here 192.168.1.60 on the server's segment) calls
    // the gateway's public address:port and reaches the backend on its own
    // segment; replies come back from the public address:port.
    let (lab, mut fwd) = lab_with(&[HTTP_RULE]);
    internal_host(&lab);
    let server = http_server(&lab, 2);
    for _ in 0..2 {
        let (body, from) = lab
            .server
            .enter(|| {
                let mut s =
                    TcpStream::connect_timeout(&public(8080), CONNECT).expect("hairpin connect");
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                let mut r = String::new();
                s.read_to_string(&mut r).unwrap();
                (r.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(), s.peer_addr().unwrap())
            })
            .unwrap()
            .join()
            .unwrap();
        // Masqueraded (always, for hairpin): the backend saw the gateway.
        assert_eq!(body, format!("hello {}", ADDRS.gw_internal));
        assert_eq!(from, public(8080));
    }
    server.join().unwrap();
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0).2, 2, "{stats}");
}

/// What a connected UDP socket gets for a datagram to a closed port:
/// `send`, then `recv` (the socket's read timeout a second), up to three
/// times while nothing comes back. UDP and the ICMP error that answers it
/// may each be lost (a full queue, the kernel's ICMP rate limit), so a
/// datagram is sent again; an error that never comes back is still a
/// failure.
fn refused_within_tries(
    send: impl Fn() -> std::io::Result<()>,
    recv: impl Fn(&mut [u8]) -> std::io::Result<usize>,
) -> Result<(), std::io::ErrorKind> {
    let mut last = Err(std::io::ErrorKind::TimedOut);
    for _ in 0..3 {
        send().map_err(|e| e.kind())?;
        let mut b = [0u8; 16];
        last = recv(&mut b).map(|_| ()).map_err(|e| e.kind());
        if !matches!(last, Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)) {
            break;
        }
    }
    last
}

#[test]
fn icmp_errors_are_translated_both_ways() {
    let (lab, mut fwd) = lab_with(&["udp:5353=192.168.1.50:53", "udp:5354=192.168.1.50:54"]);
    // 1. Nothing listens on the backend's port 53: its "port unreachable"
    //    about our translated datagram must reach the client as an error
    //    on its connected socket (untranslated, it would die at the gateway).
    let refused = lab
        .client
        .enter(|| {
            let u = UdpSocket::bind("0.0.0.0:0").unwrap();
            u.connect(public(5353)).unwrap();
            u.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            refused_within_tries(|| u.send(b"anyone?").map(|_| ()), |b| u.recv(b))
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "the client did not get the backend's ICMP error"
    );
    // 2. The other way: the client's socket is gone when the backend
    //    answers; the client's "port unreachable" must reach the backend.
    let srv = udp_backend(&lab, 54, 3);
    lab.client
        .enter(|| {
            let u = UdpSocket::bind("0.0.0.0:0").unwrap();
            u.send_to(b"hello", public(5354)).unwrap();
            // dropped here: the port closes
        })
        .unwrap()
        .join()
        .unwrap();
    let mut b = [0u8; 16];
    let (_, peer) = srv.recv_from(&mut b).unwrap();
    srv.connect(peer).unwrap();
    srv.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let back = refused_within_tries(|| srv.send(b"too late").map(|_| ()), |b| srv.recv(b));
    assert_eq!(
        back,
        Err(std::io::ErrorKind::ConnectionRefused),
        "the backend did not get the client's ICMP error"
    );
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert!(counter(&stats, "icmp_translated") >= 2, "{stats}");
}

#[test]
fn path_mtu_discovery_works_through_the_gateway() {
    // A router behind the gateway has a 1280-byte link to the server; the
    // endpoints both have 1500 (so MSS does not hide it). The client's
    // full-size DF segments make the router send "fragmentation needed" to
    // the gateway's internal address; translated, it reaches the client,
    // which lowers its path MTU; 10 MB arrive intact.
    const LEN: usize = 10 * 1024 * 1024;
    let lab = forwarder_testkit::Lab::with_router(1280).unwrap();
    let mut fwd = lab.start_forwarder(&["--rule", "tcp:8080=192.168.2.50:80"]).unwrap();
    let listener =
        lab.server.enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap().join().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0;
        loop {
            let k = s.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k;
        }
        (n, h.finalize().to_vec())
    });
    let sent = lab
        .client
        .enter(|| {
            let data = pattern(LEN, 3);
            let mut s = TcpStream::connect_timeout(&public(8080), CONNECT).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(&data).expect("transfer stalled: PMTU discovery broken");
            s.shutdown(std::net::Shutdown::Write).unwrap();
            Sha256::digest(&data).to_vec()
        })
        .unwrap()
        .join()
        .unwrap();
    let (n, got) = server.join().unwrap();
    assert_eq!((n, got), (LEN, sent));
    let route = lab.client.ip(&["route", "get", &ADDRS.gw_public.to_string()]).unwrap();
    assert!(route.contains("mtu 1280"), "the client never learnt the path MTU: {route}");
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert!(counter(&stats, "icmp_translated") >= 1, "{stats}");
}

#[test]
fn fragmented_udp_datagrams_arrive_intact_both_ways() {
    // 4000-byte datagrams over 1500-byte links: three IPv4 fragments each
    // way; only the first carries the UDP header.
    let (lab, mut fwd) = lab_with(&["udp:5353=192.168.1.50:53"]);
    let sock = udp_backend(&lab, 53, 5);
    let server = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut peers = Vec::new();
        for _ in 0..5 {
            let (k, peer) = sock.recv_from(&mut buf).unwrap();
            // Echo reversed, so the reply is a different 4000 bytes.
            let reply: Vec<u8> = buf[..k].iter().rev().copied().collect();
            sock.send_to(&reply, peer).unwrap();
            peers.push((k, peer));
        }
        peers
    });
    let replies = lab
        .client
        .enter(|| {
            let s = udp_client(5);
            let mut buf = vec![0u8; 65536];
            (0..5u8)
                .map(|i| {
                    let msg = pattern(4000, u64::from(i) + 10);
                    s.send_to(&msg, public(5353)).unwrap();
                    let (k, from) = s.recv_from(&mut buf).expect("fragmented reply");
                    let want: Vec<u8> = msg.iter().rev().copied().collect();
                    (buf[..k] == want[..], from)
                })
                .collect::<Vec<_>>()
        })
        .unwrap()
        .join()
        .unwrap();
    let peers = server.join().unwrap();
    assert!(peers.iter().all(|(k, p)| *k == 4000 && p.ip() == ADDRS.gw_internal), "{peers:?}");
    assert!(replies.iter().all(|(same, from)| *same && *from == public(5353)), "{replies:?}");
    let stats = finish(&lab, &mut fwd, Expect::default());
    // 5 datagrams × 3 fragments, each way.
    assert!(counter(&stats, "fragment_translated") >= 30, "{stats}");
}

#[test]
fn gateway_answers_fragmentation_needed_when_its_own_link_is_smaller() {
    // The gateway's internal link has MTU 1280 (the server's side keeps
    // 1500, so MSS does not hide it). The client's 1500-byte DF segments
    // do not fit: the gateway itself must answer "fragmentation needed",
    // from the public address, quoting the client's packet.
    const LEN: usize = 4 * 1024 * 1024;
    let (lab, mut fwd) = lab_with(&[HTTP_RULE]);
    lab.gateway.ip(&["link", "set", "int0", "mtu", "1280"]).unwrap();
    let listener =
        lab.server.enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap().join().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        Sha256::digest(&got).to_vec()
    });
    let sent = lab
        .client
        .enter(|| {
            let data = pattern(LEN, 5);
            let mut s = TcpStream::connect_timeout(&public(8080), CONNECT).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(&data)
                .expect("transfer stalled: no fragmentation-needed reached the client");
            s.shutdown(std::net::Shutdown::Write).unwrap();
            Sha256::digest(&data).to_vec()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(server.join().unwrap(), sent);
    let route = lab.client.ip(&["route", "get", &ADDRS.gw_public.to_string()]).unwrap();
    assert!(route.contains("mtu 1280"), "the client never learnt the path MTU: {route}");
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert!(counter(&stats, "icmp_frag_needed_sent") >= 1, "{stats}");
}

#[test]
fn vlan_tagged_public_side() {
    // The client sends 802.1Q-tagged frames (VLAN 100) to the public side;
    // the backend gets them untagged and translated, and the reply goes
    // back to the client tagged with VLAN 100 again. (This kernel has no
    // VLAN devices, so the client speaks through a raw socket and we watch
    // its wire with tcpdump.)
    let (lab, mut fwd) = lab_with(&["udp:5353=192.168.1.50:53"]);
    let srv = udp_backend(&lab, 53, 5);
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 64];
        let (k, peer) = srv.recv_from(&mut b).unwrap();
        srv.send_to(&b[..k], peer).unwrap();
        (b[..k].to_vec(), peer)
    });
    let mut dump = capture_one(&lab.client, &["-e", "udp and src port 5353"]);
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(
        lab.client.mac("eth0").unwrap(),
        lab.gateway.mac("pub0").unwrap(),
    )
    .single_vlan(100.try_into().unwrap())
    .ipv4(ADDRS.client.octets(), ADDRS.gw_public.octets(), 64)
    .udp(41000, 5353)
    .write(&mut frame, b"tagged")
    .unwrap();
    lab.client.send_frame("eth0", &frame).unwrap();
    let (payload, peer) = echo.join().unwrap();
    assert_eq!(payload, b"tagged");
    assert_eq!(peer.ip(), ADDRS.gw_internal, "the backend saw it untagged and masqueraded");
    let line = captured(&mut dump);
    assert!(line.contains("vlan 100"), "the reply did not come back tagged: {line}");
    assert!(
        line.contains("203.0.113.1.5353 > 203.0.113.10.41000"),
        "reply not translated back: {line}"
    );
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0), (1, 1, 1), "{stats}");
}

#[test]
fn ip_options_are_forwarded() {
    // The client's datagrams carry IPv4 options (IHL 6: NOP NOP NOP EOL);
    // the L4 header is found after them and the options travel on.
    let (lab, mut fwd) = lab_with(&["udp:5353=192.168.1.50:53"]);
    let srv = udp_backend(&lab, 53, 5);
    let mut dump = capture_one(&lab.server, &["-v", "udp and dst port 53"]);
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 64];
        let mut got = Vec::new();
        for _ in 0..3 {
            let (k, peer) = srv.recv_from(&mut b).unwrap();
            srv.send_to(&b[..k], peer).unwrap();
            got.push((b[..k].to_vec(), peer));
        }
        got
    });
    let replies = lab
        .client
        .enter(|| {
            let s = udp_client(5);
            let opts: [u8; 4] = [1, 1, 1, 0];
            // SAFETY: valid socket and option buffer.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::IPPROTO_IP,
                    libc::IP_OPTIONS,
                    opts.as_ptr().cast(),
                    4,
                )
            };
            assert_eq!(rc, 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
            let mut out = Vec::new();
            let mut b = [0u8; 64];
            for i in 0..3u8 {
                s.send_to(&[b'o', i], public(5353)).unwrap();
                let (k, from) = s.recv_from(&mut b).unwrap();
                out.push((b[..k].to_vec(), from));
            }
            out
        })
        .unwrap()
        .join()
        .unwrap();
    let got = echo.join().unwrap();
    assert!(got.iter().all(|(_, p)| p.ip() == ADDRS.gw_internal), "{got:?}");
    let seen = captured(&mut dump);
    assert!(
        seen.contains("options (NOP,NOP,NOP,EOL)"),
        "the options did not reach the backend: {seen}"
    );
    assert!(
        replies.iter().enumerate().all(|(i, (b, f))| b == &[b'o', i as u8] && *f == public(5353)),
        "{replies:?}"
    );
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0), (3, 3, 1), "{stats}");
}

/// tcpdump on `eth0` of `ns` for one packet matching the last argument
/// (earlier ones are options), started and attached.
fn capture_one(ns: &forwarder_testkit::Netns, args: &[&str]) -> std::process::Child {
    let (filter, opts) = args.split_last().unwrap();
    let mut child = ns
        .command("tcpdump")
        .args(["-i", "eth0", "-nn", "-l", "-c", "1"])
        .args(opts)
        .arg(filter)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Attached once it says "listening on" (on stderr).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("tcpdump did not start listening");
    child
}

/// What [`capture_one`] printed (waits up to 5 s for its packet).
fn captured(dump: &mut std::process::Child) -> String {
    let start = std::time::Instant::now();
    while dump.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = dump.kill();
    let mut out = String::new();
    dump.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    out
}
