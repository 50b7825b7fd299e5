//! End to end: real TCP/UDP/ICMP traffic through the forwarder in a
//! client — gateway — server lab. Needs root (namespaces, XDP).

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
fn http_request_is_forwarded_and_masqueraded() {
    let (lab, mut fwd) = lab_with(&[HTTP_RULE]);
    let server = http_server(&lab, 5);
    for _ in 0..5 {
        let (body, from) = http_get(&lab, public(8080));
        // The server saw the gateway's internal address...
        assert_eq!(body, format!("hello {}", ADDRS.gw_internal));
        // ...and the client was answered by the public address:port.
        assert_eq!(from, public(8080));
    }
    let peers = server.join().unwrap();
    assert!(peers.iter().all(|p| p.ip() == ADDRS.gw_internal), "{peers:?}");
    // Masquerade ports come from the configured range.
    assert!(peers.iter().all(|p| (10_000..=32_767).contains(&p.port())), "{peers:?}");
    let stats = finish(&lab, &mut fwd, Expect::default());
    let (pin, pout, conns) = rule_counters(&stats, 0);
    assert_eq!(conns, 5, "{stats}");
    // SYN, ACK, request, FIN, ACK at least, each way.
    assert!(pin >= 5 * 4 && pout >= 5 * 3, "{stats}");
    assert_hook_did_the_work(&stats);
    // The very first packet met an unresolved neighbour: TC (handed the
    // packet by XDP, or on its own in TC mode) resolved it with
    // bpf_redirect_neigh.
    assert!(counter(&stats, "tc_redirected_neigh") >= 1, "{stats}");
}

#[test]
fn fifty_megabytes_each_way_hash_matches() {
    const LEN: usize = 50 * 1024 * 1024;
    let (lab, mut fwd) = lab_with(&[HTTP_RULE]);
    let listener =
        lab.server.enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap().join().unwrap();
    let server = std::thread::spawn(move || {
        // Connection 1: receive LEN bytes, hash them. Connection 2: send.
        let (mut s, _) = listener.accept().unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        loop {
            let k = s.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            got += k;
        }
        let (mut s2, _) = listener.accept().unwrap();
        s2.write_all(&pattern(LEN, 2)).unwrap();
        (got, h.finalize().to_vec())
    });
    let client = lab
        .client
        .enter(move || {
            let data = pattern(LEN, 1);
            let mut s = TcpStream::connect_timeout(&public(8080), CONNECT).unwrap();
            s.write_all(&data).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut s2 = TcpStream::connect_timeout(&public(8080), CONNECT).unwrap();
            let mut back = Vec::with_capacity(LEN);
            s2.read_to_end(&mut back).unwrap();
            (Sha256::digest(&data).to_vec(), back.len(), Sha256::digest(&back).to_vec())
        })
        .unwrap()
        .join()
        .unwrap();
    let (got, server_hash) = server.join().unwrap();
    assert_eq!(got, LEN);
    assert_eq!(server_hash, client.0, "upload corrupted");
    assert_eq!(client.1, LEN);
    assert_eq!(client.2, Sha256::digest(pattern(LEN, 2)).to_vec(), "download corrupted");
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0).2, 2);
    assert_hook_did_the_work(&stats);
    // Every byte of both transfers went through the rule (frames count
    // with their headers, so a little more than the payload).
    let (bin, bout) = rule_bytes(&stats, 0);
    assert!(bin > LEN as u64 && bout > LEN as u64, "{stats}");
}

#[test]
fn two_hundred_concurrent_connections_complete() {
    const N: usize = 200;
    let (lab, mut fwd) = lab_with(&[HTTP_RULE]);
    let listener =
        lab.server.enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap().join().unwrap();
    deep_backlog(&listener);
    let server = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for _ in 0..N {
            conns.push(listener.accept().unwrap().0);
        }
        // Only now that all are open, echo each one's id back.
        for mut c in conns {
            let mut id = [0u8; 4];
            c.read_exact(&mut id).unwrap();
            c.write_all(&id).unwrap();
        }
    });
    let ok = lab
        .client
        .enter(move || {
            let mut socks: Vec<TcpStream> = (0..N)
                .map(|_| TcpStream::connect_timeout(&public(8080), CONNECT).unwrap())
                .collect();
            for (i, s) in socks.iter_mut().enumerate() {
                s.write_all(&(i as u32).to_be_bytes()).unwrap();
            }
            let mut ok = 0;
            for (i, s) in socks.iter_mut().enumerate() {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut id = [0u8; 4];
                s.read_exact(&mut id).unwrap();
                if u32::from_be_bytes(id) == i as u32 {
                    ok += 1;
                }
            }
            ok
        })
        .unwrap()
        .join()
        .unwrap();
    server.join().unwrap();
    assert_eq!(ok, N);
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0).2, N as u64, "{stats}");
    assert_eq!(counter(&stats, "drop_snat_exhausted"), 0);
}

#[test]
fn udp_request_response() {
    let (lab, mut fwd) = lab_with(&["udp:5353=192.168.1.50:53"]);
    let sock = udp_backend(&lab, 53, 10);
    let server = std::thread::spawn(move || {
        let mut peers = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..20 {
            let (k, peer) = sock.recv_from(&mut buf).unwrap();
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..k]);
            sock.send_to(&reply, peer).unwrap();
            peers.push(peer);
        }
        peers
    });
    let replies = lab
        .client
        .enter(|| {
            let s = udp_client(5);
            let mut out = Vec::new();
            let mut buf = [0u8; 2048];
            for i in 0..20u32 {
                let msg = format!("query {i} {}", "x".repeat(i as usize * 50));
                s.send_to(msg.as_bytes(), public(5353)).unwrap();
                let (k, from) = s.recv_from(&mut buf).unwrap();
                out.push((msg, String::from_utf8_lossy(&buf[..k]).into_owned(), from));
            }
            out
        })
        .unwrap()
        .join()
        .unwrap();
    for (msg, reply, from) in &replies {
        assert_eq!(reply, &format!("echo:{msg}"));
        // Replies come from the public address and port, unconnected socket.
        assert_eq!(*from, public(5353));
    }
    let peers = server.join().unwrap();
    assert!(peers.iter().all(|p| p.ip() == ADDRS.gw_internal), "{peers:?}");
    let stats = finish(&lab, &mut fwd, Expect::default());
    let (pin, pout, conns) = rule_counters(&stats, 0);
    // One client socket = one flow, 20 datagrams each way.
    assert_eq!((pin, pout, conns), (20, 20, 1), "{stats}");
}

#[test]
fn traffic_that_is_not_forwarded_is_untouched() {
    let (lab, mut fwd) = lab_with(&[HTTP_RULE]);
    // The gateway's own service on another port keeps working.
    let own =
        lab.gateway.enter(|| TcpListener::bind("0.0.0.0:2222").unwrap()).unwrap().join().unwrap();
    let own_srv = std::thread::spawn(move || {
        let (mut s, peer) = own.accept().unwrap();
        s.write_all(b"gateway itself").unwrap();
        peer
    });
    let gw = ADDRS.gw_public.to_string();
    let ping = lab
        .client
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", &gw])
        .expect("ping the gateway");
    assert!(ping.contains("3 received"), "{ping}");
    let (refused, own_reply) = lab
        .client
        .enter(|| {
            let refused = TcpStream::connect_timeout(&public(9999), CONNECT).map_err(|e| e.kind());
            let mut s = TcpStream::connect_timeout(&public(2222), CONNECT).unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            (refused, r)
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(refused.unwrap_err(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(own_reply, "gateway itself");
    // The gateway saw the client's real address (no translation).
    assert_eq!(own_srv.join().unwrap().ip(), ADDRS.client);
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0), (0, 0, 0), "{stats}");
    assert!(counter(&stats, "pass_not_ours") > 0, "{stats}");
    assert_eq!(redirected(&stats), 0, "{stats}");
}

#[test]
fn forwarded_flows_bypass_netfilter() {
    let (lab, mut fwd) = lab_with(&[HTTP_RULE]);
    // Make netfilter conntrack active in the gateway namespace.
    for cmd in [
        "add table ip fwdtest",
        "add chain ip fwdtest pre { type filter hook prerouting priority -300; }",
        "add rule ip fwdtest pre ct state new counter",
    ] {
        lab.gateway.exec("nft", &[cmd]).expect("nft");
    }
    let server = http_server(&lab, 3);
    for _ in 0..3 {
        assert_eq!(http_get(&lab, public(8080)).0, format!("hello {}", ADDRS.gw_internal));
    }
    server.join().unwrap();
    // Positive control: traffic to the gateway itself is tracked.
    lab.client.exec("ping", &["-c", "1", "-W", "2", &ADDRS.gw_public.to_string()]).unwrap();
    let all = lab.gateway.exec("conntrack", &["-L"]).expect("conntrack -L");
    assert!(all.contains("icmp"), "netfilter conntrack is not active: {all}");
    assert!(
        !all.contains("dport=8080") && !all.contains("192.168.1.50"),
        "netfilter saw a forwarded flow:\n{all}"
    );
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0).2, 3);
}

#[test]
fn udp_without_checksum_keeps_none_byte_for_byte() {
    // A UDP checksum of 0 (none, RFC 768) must stay 0 after translation:
    // read the bytes the server receives (arriving proves nothing: a
    // computed, right checksum would arrive too). Each datagram is sent
    // once: none may be lost either.
    let (lab, mut fwd) = lab_with(&["udp:5353=192.168.1.50:53"]);
    let sock = udp_backend(&lab, 53, 2);
    let wire = forwarder_testkit::Capture::open(&lab.server, "eth0").unwrap().collect(
        5,
        Duration::from_secs(5),
        |f| forwarder_testkit::capture::is_l4_to(f, 17, 53),
    );
    let client = lab
        .client
        .enter(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            let one: libc::c_int = 1;
            // SAFETY: valid socket and option value.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_NO_CHECK,
                    (&raw const one).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            assert_eq!(rc, 0);
            s
        })
        .unwrap()
        .join()
        .unwrap();
    let mut buf = [0u8; 64];
    for i in 0..5u8 {
        let msg = [b'n', b'o', b'c', b's', b'u', b'm', i];
        client.send_to(&msg, public(5353)).unwrap();
        let got = sock.recv_from(&mut buf).map(|(k, _)| buf[..k].to_vec());
        assert_eq!(
            got.ok().as_deref(),
            Some(&msg[..]),
            "datagram {i} without checksum did not arrive"
        );
    }
    let frames = wire.join().unwrap();
    assert_eq!(frames.len(), 5, "captured {} of 5", frames.len());
    for f in &frames {
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let udp = &f[14 + ihl..];
        assert_eq!(&f[26..30], &ADDRS.gw_internal.octets(), "not translated: {f:02x?}");
        assert_eq!(udp[6..8], [0, 0], "the UDP checksum is not 0 any more: {f:02x?}");
    }
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0).0, 5, "{stats}");
}

#[test]
fn counters_survive_stop_and_the_datapath_detaches() {
    let (lab, mut fwd) = lab_with(&[HTTP_RULE]);
    let server = http_server(&lab, 2);
    for _ in 0..2 {
        assert_eq!(http_get(&lab, public(8080)).0, format!("hello {}", ADDRS.gw_internal));
    }
    server.join().unwrap();
    // (`auto`, and so the default, picks TC on veth: no XDP to see.)
    let xdp = xdp_attached();
    for dev in ["pub0", "int0"] {
        let link = lab.gateway.ip(&["link", "show", dev]).unwrap();
        assert_eq!(
            link.contains("xdp"),
            xdp,
            "XDP attached to {dev} in mode {}: {link}",
            forwarder_testkit::test_mode()
        );
    }
    // The final stats, written at exit, carry the traffic: 2 connections,
    // at least SYN, ACK, request, FIN, ACK each way.
    let stats = finish(&lab, &mut fwd, Expect::default());
    let (pin, pout, conns) = rule_counters(&stats, 0);
    assert!(conns == 2 && pin >= 8 && pout >= 6, "{stats}");
    assert!(fwd.log_text().contains("detached from all interfaces"), "{}", fwd.log_text());
    // Detached, whichever hook: nothing translates; the gateway's own
    // stack refuses the port.
    for dev in ["pub0", "int0"] {
        let link = lab.gateway.ip(&["link", "show", dev]).unwrap();
        assert!(!link.contains("xdp"), "XDP left attached to {dev} after stop: {link}");
    }
    let refused = connect_outcome(&lab, public(8080));
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "still forwarded after the daemon stopped"
    );
}

#[test]
fn auto_mode_picks_tc_on_veth_and_forwards() {
    let lab = forwarder_testkit::Lab::new().expect("lab");
    let mut fwd =
        lab.start_forwarder(&["--rule", HTTP_RULE, "--mode", "auto"]).expect("forwarder starts");
    let server = http_server(&lab, 2);
    for _ in 0..2 {
        assert_eq!(http_get(&lab, public(8080)).0, format!("hello {}", ADDRS.gw_internal));
    }
    server.join().unwrap();
    for dev in ["pub0", "int0"] {
        let link = lab.gateway.ip(&["link", "show", dev]).unwrap();
        assert!(!link.contains("xdp"), "mode auto attached XDP to the veth {dev}: {link}");
    }
    let stats = finish(&lab, &mut fwd, Expect::default());
    // TC did all of it: no XDP verdict at all.
    assert!(
        counter(&stats, "tc_redirected") + counter(&stats, "tc_redirected_neigh") >= 2 * 5,
        "{stats}"
    );
    assert_eq!(counter(&stats, "xdp_redirected") + counter(&stats, "xdp_to_tc"), 0, "{stats}");
    let log = fwd.log_text();
    assert!(
        log.contains("pub0: veth: using TC (mode auto")
            && log.contains("int0: veth: using TC (mode auto"),
        "{log}"
    );
    assert!(
        log.contains("attached to pub0 (ifindex") && log.contains("TC ingress (TC mode)"),
        "{log}"
    );
}

#[test]
fn two_thousand_concurrent_connections_from_one_client() {
    // Masquerade keeps thousands of connections from one client address
    // apart (one source port each) without a single failure.
    let lim = libc::rlimit { rlim_cur: 16_384, rlim_max: 16_384 };
    // SAFETY: plain syscall; root may raise its own limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) };
    let (lab, mut fwd) = lab_with(&[HTTP_RULE]);
    let (extra, echoed, ports) = fill_then_probe(&lab, 2000);
    assert_eq!(echoed, 2000);
    assert!(extra.is_ok(), "{extra:?}");
    let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), 2000, "two connections shared a masquerade port");
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0).2, 2001, "{stats}");
    assert_eq!(counter(&stats, "drop_snat_exhausted"), 0, "{stats}");
}
