//! End to end: real TCP/UDP/ICMP traffic through the forwarder in a
//! client — gateway — server lab. Needs root (namespaces, XDP).

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use common::*;
use forwarder_testkit::{ADDRS, BpfFs};
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

fn pattern(len: usize, seed: u64) -> Vec<u8> {
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
    let refused = lab
        .client
        .enter(|| {
            TcpStream::connect_timeout(&public(8080), Duration::from_secs(2))
                .map(|_| ())
                .map_err(|e| e.kind())
        })
        .unwrap()
        .join()
        .unwrap();
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
fn masquerade_port_exhaustion_is_bounded_counted_and_logged() {
    // 16 ports: 16 connections fit, the 17th finds none after the bounded
    // retries, is dropped, counted and logged; the 16 keep working.
    let lab = forwarder_testkit::Lab::new().unwrap();
    let mut fwd =
        lab.start_forwarder(&["--rule", HTTP_RULE, "--snat-ports", "20000-20015"]).unwrap();
    let (extra, echoed, mut ports) = fill_then_probe(&lab, 16);
    // Dropped, not refused: nothing (not even the gateway's stack) answered.
    assert_eq!(
        extra,
        Err(std::io::ErrorKind::TimedOut),
        "a 17th connection got a port out of 16, or was refused"
    );
    assert_eq!(echoed, 16);
    ports.sort_unstable();
    assert_eq!(ports, (20000..=20015).collect::<Vec<u16>>());
    let stats = finish(
        &lab,
        &mut fwd,
        Expect { counters: &["drop_snat_exhausted"], log: &["no free source port"] },
    );
    assert!(counter(&stats, "drop_snat_exhausted") >= 1, "{stats}");
    assert_eq!(rule_counters(&stats, 0).2, 16, "{stats}");
    let log = fwd.log_text();
    assert!(log.contains("no free source port towards 192.168.1.50:80"), "{log}");
}

#[test]
fn config_file_and_dnat_without_masquerade() {
    // The same mapping from a TOML file, with masquerade off: the server
    // sees the client's own address and answers through its route via the
    // gateway, where the reply is translated back.
    let lab = forwarder_testkit::Lab::new().unwrap();
    lab.server.ip(&["route", "add", "default", "via", &ADDRS.gw_internal.to_string()]).unwrap();
    let cfg = lab.dir.join("forwarder.toml");
    std::fs::write(&cfg, "[[rule]]\nproto = \"tcp\"\nport = 8080\nto = \"192.168.1.50:80\"\ninterface = \"pub0\"\nmasquerade = false\n").unwrap();
    let mut fwd = lab.start_forwarder(&["--config", cfg.to_str().unwrap()]).unwrap();
    let server = http_server(&lab, 2);
    for _ in 0..2 {
        let (body, from) = http_get(&lab, public(8080));
        assert_eq!(body, format!("hello {}", ADDRS.client));
        assert_eq!(from, public(8080));
    }
    assert!(server.join().unwrap().iter().all(|p| p.ip() == ADDRS.client));
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0).2, 2, "{stats}");
    assert!(
        fwd.log_text().contains("forwarder.toml:1"),
        "rule origin not logged: {}",
        fwd.log_text()
    );
    // The audit trail names no masquerade source: there is none.
    let log = fwd.log_text();
    let audit: Vec<&str> =
        log.lines().filter(|l| l.contains(" audit] ") && l.contains(" accepted tcp ")).collect();
    assert_eq!(audit.len(), 2, "{audit:#?}");
    assert!(audit.iter().all(|l| l.ends_with("backend 192.168.1.50:80")), "{audit:#?}");
}

#[test]
fn port_ranges_map_each_port_to_its_counterpart() {
    let (lab, mut fwd) =
        lab_with(&["tcp:8000-8100=192.168.1.50:18000-18100", "udp:6000-6010=192.168.1.50:53"]);
    let backends: Vec<TcpListener> = [18000u16, 18050, 18100]
        .iter()
        .map(|p| {
            let p = *p;
            lab.server
                .enter(move || TcpListener::bind(("0.0.0.0", p)).unwrap())
                .unwrap()
                .join()
                .unwrap()
        })
        .collect();
    let udp = udp_backend(&lab, 53, 5);
    let udp_srv = std::thread::spawn(move || {
        let mut b = [0u8; 16];
        let (k, peer) = udp.recv_from(&mut b).unwrap();
        udp.send_to(&b[..k], peer).unwrap();
        peer
    });
    let servers: Vec<_> = backends
        .into_iter()
        .map(|l| {
            std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let port = s.local_addr().unwrap().port();
                s.write_all(&port.to_be_bytes()).unwrap();
            })
        })
        .collect();
    let (got, outside, udp_from) = lab
        .client
        .enter(|| {
            let got: Vec<u16> = [8000u16, 8050, 8100]
                .iter()
                .map(|p| {
                    let mut s = TcpStream::connect_timeout(&public(*p), CONNECT).unwrap();
                    let mut b = [0u8; 2];
                    s.read_exact(&mut b).unwrap();
                    u16::from_be_bytes(b)
                })
                .collect();
            let outside = TcpStream::connect_timeout(&public(8101), CONNECT).map_err(|e| e.kind());
            let u = udp_client(5);
            u.send_to(b"ping", public(6005)).unwrap();
            let mut b = [0u8; 16];
            let (_, from) = u.recv_from(&mut b).unwrap();
            (got, outside, from)
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(udp_srv.join().unwrap().ip(), ADDRS.gw_internal);
    for s in servers {
        s.join().unwrap();
    }
    assert_eq!(got, [18000, 18050, 18100], "each public port reaches its counterpart");
    assert_eq!(
        outside.unwrap_err(),
        std::io::ErrorKind::ConnectionRefused,
        "8101 is outside the range"
    );
    assert_eq!(udp_from, public(6005));
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0).2, 3, "{stats}");
    assert_eq!(rule_counters(&stats, 1).2, 1, "{stats}");
}

#[test]
fn source_allow_list_admits_listed_clients_and_drops_others() {
    let (lab, mut fwd) =
        lab_with(&["tcp:8080=192.168.1.50:80,src=203.0.113.10/32,src=198.51.100.0/24"]);
    // A second client address outside the list.
    lab.client.ip(&["addr", "add", "203.0.113.20/24", "dev", "eth0"]).unwrap();
    let server = http_server(&lab, 1);
    let (allowed, denied) = lab
        .client
        .enter(|| {
            let ok = TcpStream::connect_timeout(&public(8080), CONNECT).map(|mut s| {
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                let mut r = String::new();
                s.read_to_string(&mut r).unwrap();
                r
            });
            // From 203.0.113.20: bind first, then connect.
            let sock = connect_from([203, 0, 113, 20], public(8080));
            (ok.map_err(|e| e.kind()), sock)
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(allowed.unwrap().ends_with(&format!("hello {}", ADDRS.gw_internal)));
    // Dropped, not refused: nothing (not even the gateway's own stack) answered.
    assert_eq!(denied, Err(std::io::ErrorKind::TimedOut));
    server.join().unwrap();
    let stats = finish(&lab, &mut fwd, Expect::counters(&["drop_src_denied"]));
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(v["rules"][0]["denied"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(rule_counters(&stats, 0).2, 1, "{stats}");
    assert!(counter(&stats, "drop_src_denied") >= 1, "{stats}");
}

/// Opens `n` connections through the forward and keeps them open, tries one
/// more (2 s timeout), then checks that each of the `n` still echoes.
/// Returns (the extra one's result, how many echoed, the server-side peer
/// ports).
fn fill_then_probe(
    lab: &forwarder_testkit::Lab,
    n: usize,
) -> (Result<(), std::io::ErrorKind>, usize, Vec<u16>) {
    let listener =
        lab.server.enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap().join().unwrap();
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
            let mut echoed = 0;
            for s in &mut socks {
                s.write_all(b"x").unwrap();
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

#[test]
fn full_conntrack_table_refuses_new_connections_and_keeps_the_rest() {
    // Room for 16 connections: the 17th is refused (dropped, counted,
    // reported); none of the 16 is evicted for it.
    let lab = forwarder_testkit::Lab::new().unwrap();
    let mut fwd = lab.start_forwarder(&["--rule", HTTP_RULE, "--conntrack-max", "16"]).unwrap();
    let (extra, echoed, _) = fill_then_probe(&lab, 16);
    // Dropped, not refused: nothing (not even the gateway's stack) answered.
    assert_eq!(
        extra,
        Err(std::io::ErrorKind::TimedOut),
        "a 17th connection fit into a table for 16, or was refused"
    );
    assert_eq!(echoed, 16, "an existing connection was disturbed");
    // The daemon's table watch says so (within its second).
    wait_log(&fwd, "conntrack table full (16 connections)", 5);
    let stats = finish(
        &lab,
        &mut fwd,
        Expect { counters: &["table_full_refused"], log: &["conntrack table full", "% full ("] },
    );
    assert!(counter(&stats, "table_full_refused") >= 1, "{stats}");
    // All 16 are established (assured): none may give way.
    assert_eq!(counter(&stats, "early_drop"), 0, "{stats}");
    assert_eq!(rule_counters(&stats, 0).2, 16, "{stats}");
    let log = fwd.log_text();
    assert!(
        log.contains(
            "conntrack table full (16 connections): 0 unassured or closing connection(s) gave way"
        ),
        "{log}"
    );
}

/// The connections `forwarder conntrack list` shows, as (client port,
/// state).
fn tracked(lab: &forwarder_testkit::Lab) -> Vec<(u16, String)> {
    let bin = forwarder_testkit::proc::forwarder_bin().unwrap();
    let out = std::process::Command::new(&bin)
        .args(["conntrack", "list", "--json", "--control"])
        .arg(lab.dir.join("control.sock"))
        .output()
        .unwrap();
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    v.iter()
        .map(|c| {
            (
                c["client"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn conntrack_entries_expire_each_by_the_timeout_of_its_state() {
    // Each timeout different, so that the one that applied shows: UDP
    // answered once (not a stream) 2 s, UDP stream 6 s, TCP after FIN 2 s;
    // an idle established TCP connection (5 days) stays.
    let lab = forwarder_testkit::Lab::new().unwrap();
    let mut fwd = lab
        .start_forwarder(&[
            "--rule",
            HTTP_RULE,
            "--rule",
            "udp:5353=192.168.1.50:53",
            "--ct-timeout",
            "udp=2",
            "--ct-timeout",
            "udp_stream=6",
            "--ct-timeout",
            "tcp_fin=2",
        ])
        .unwrap();
    let listener =
        lab.server.enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap().join().unwrap();
    let udp = udp_backend(&lab, 53, 5);
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 64];
        // The one-shot flow's query, then the stream's two.
        for _ in 0..3 {
            let (k, peer) = udp.recv_from(&mut b).unwrap();
            udp.send_to(&b[..k], peer).unwrap();
        }
        let (mut live, _) = listener.accept().unwrap();
        let (mut short, _) = listener.accept().unwrap();
        let mut r = [0u8; 1];
        short.read_exact(&mut r).unwrap();
        drop(short);
        live.read_exact(&mut r).unwrap();
        live.write_all(&r).unwrap();
    });
    let (ports, live) = lab
        .client
        .enter(|| {
            let ask = |s: &UdpSocket, m: &[u8]| {
                s.send_to(m, public(5353)).unwrap();
                s.recv_from(&mut [0u8; 8]).unwrap();
            };
            let once = udp_client(2);
            ask(&once, b"1");
            let stream = udp_client(2);
            ask(&stream, b"a");
            ask(&stream, b"b");
            let live = TcpStream::connect_timeout(&public(8080), CONNECT).unwrap();
            let mut short = TcpStream::connect_timeout(&public(8080), CONNECT).unwrap();
            short.write_all(b"x").unwrap();
            assert_eq!(short.read(&mut [0u8; 1]).unwrap(), 0, "server closed");
            let ports = [
                once.local_addr().unwrap().port(),
                stream.local_addr().unwrap().port(),
                short.local_addr().unwrap().port(),
                live.local_addr().unwrap().port(),
            ];
            drop(short);
            (ports, live)
        })
        .unwrap()
        .join()
        .unwrap();
    let [once, stream, short, live_port] = ports;
    let t0 = std::time::Instant::now();
    let state_of =
        |list: &[(u16, String)], p: u16| list.iter().find(|(c, _)| *c == p).map(|(_, s)| s.clone());
    let first = tracked(&lab);
    assert_eq!(state_of(&first, once).as_deref(), Some("replied"), "{first:?}");
    assert_eq!(state_of(&first, stream).as_deref(), Some("established"), "{first:?}");
    assert_eq!(state_of(&first, live_port).as_deref(), Some("established"), "{first:?}");
    // The 2 s ones go (the sweep runs every second) ...
    loop {
        let l = tracked(&lab);
        if state_of(&l, once).is_none() && state_of(&l, short).is_none() {
            // ... while the stream (6 s) and the live connection stay.
            assert!(
                state_of(&l, stream).is_some() && state_of(&l, live_port).is_some(),
                "{l:?} at {:?}",
                t0.elapsed()
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the 2 s flows outlived their timeout: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    loop {
        let l = tracked(&lab);
        if state_of(&l, stream).is_none() {
            assert!(
                t0.elapsed() >= Duration::from_secs(5),
                "the stream went before its 6 s: {:?}",
                t0.elapsed()
            );
            assert_eq!(l.len(), 1, "only the live connection stays: {l:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the stream outlived its 6 s timeout: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut live = live;
    lab.client
        .enter(move || {
            live.write_all(b"y").unwrap();
            let mut r = [0u8; 1];
            live.read_exact(&mut r).unwrap();
            assert_eq!(&r, b"y");
        })
        .unwrap()
        .join()
        .unwrap();
    echo.join().unwrap();
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0).2, 2, "{stats}");
}

#[test]
fn hairpin_internal_host_reaches_the_public_address() {
    // An internal host (here 192.168.1.60 on the server's segment) calls
    // the gateway's public address:port and reaches the backend on its own
    // segment; replies come back from the public address:port.
    let (lab, mut fwd) = lab_with(&[HTTP_RULE]);
    lab.server.ip(&["addr", "add", "192.168.1.60/24", "dev", "eth0"]).unwrap();
    lab.server
        .ip(&[
            "route",
            "add",
            "default",
            "via",
            &ADDRS.gw_internal.to_string(),
            "src",
            "192.168.1.60",
        ])
        .unwrap();
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
            u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            u.send(b"anyone?").unwrap();
            let mut b = [0u8; 16];
            u.recv(&mut b).map(|_| ()).map_err(|e| e.kind())
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
    srv.send(b"too late").unwrap();
    let back = srv.recv(&mut b).map(|_| ()).map_err(|e| e.kind());
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
    lab.client
        .enter(move || {
            // SAFETY: a raw packet socket we own; plain syscalls.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                assert!(fd >= 0, "AF_PACKET socket");
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_ifindex = libc::if_nametoindex(c"eth0".as_ptr()).cast_signed();
                sll.sll_halen = 6;
                let sent = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                libc::close(fd);
                assert_eq!(sent.cast_unsigned(), frame.len());
            }
        })
        .unwrap()
        .join()
        .unwrap();
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

#[test]
fn iptables_recipe_imported_and_forwarded() {
    // The classic recipe, set up with iptables in the gateway, saved,
    // converted by `forwarder import-iptables`, the netfilter rules flushed,
    // and the forwarder run from the converted file: same service.
    let lab = forwarder_testkit::Lab::new().unwrap();
    for rule in [
        "-t nat -A PREROUTING -i pub0 -p tcp --dport 8080 -j DNAT --to-destination 192.168.1.50:80",
        "-t nat -A POSTROUTING -o int0 -j MASQUERADE",
    ] {
        lab.gateway.exec("iptables", &rule.split(' ').collect::<Vec<_>>()).expect("iptables");
    }
    let saved = lab.gateway.exec("iptables-save", &[]).unwrap();
    let bin = forwarder_testkit::proc::forwarder_bin().unwrap();
    let mut import = std::process::Command::new(&bin)
        .args(["import-iptables", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    import.stdin.take().unwrap().write_all(saved.as_bytes()).unwrap();
    let out = import.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg = lab.dir.join("imported.toml");
    std::fs::write(&cfg, &out.stdout).unwrap();
    lab.gateway.exec("iptables", &["-t", "nat", "-F"]).unwrap();
    let mut fwd = lab.start_forwarder_with(&["--config", cfg.to_str().unwrap()]).unwrap();
    let server = http_server(&lab, 1);
    assert_eq!(http_get(&lab, public(8080)).0, format!("hello {}", ADDRS.gw_internal));
    server.join().unwrap();
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(rule_counters(&stats, 0).2, 1, "{stats}");
}

/// `Tcp: RetransSegs` of a namespace (`/proc/net/snmp`): segments its
/// TCP sent again.
fn retransmitted(ns: &forwarder_testkit::Netns) -> u64 {
    let text = ns.exec("cat", &["/proc/net/snmp"]).unwrap();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names.split_whitespace().position(|n| n == "RetransSegs").unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Whether a new connection to the forwarded port is set up (within 2 s)
/// and answered by the backend's echo: whether the datapath forwards.
fn forwards(lab: &forwarder_testkit::Lab) -> bool {
    lab.client
        .enter(|| {
            TcpStream::connect_timeout(&public(8080), CONNECT).is_ok_and(|mut s| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                s.write_all(b"?").is_ok() && s.read_exact(&mut [0u8; 1]).is_ok()
            })
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn hitless_restart_after_kill_keeps_a_transfer_going_without_a_gap() {
    // A stream runs while the daemon is killed with SIGKILL and a new one
    // is started on the same pin directory: the pinned links keep
    // forwarding in between, the new daemon adopts the conntrack table and
    // swaps its programs in. The stream never stops for more than 500 ms,
    // the client retransmits (next to) nothing, the new daemon counts the
    // stream's packets, and the bytes arrive intact. The lab has the
    // machine to itself: the retransmissions count what the restart costs,
    // not what the other tests' load costs (4 in one CI run beside them).
    let lab = forwarder_testkit::Lab::alone().unwrap();
    let bpf = BpfFs::mount(lab.dir.join("bpf")).unwrap();
    let pin = bpf.arg().to_string();
    let args = ["--rule", HTTP_RULE, "--pin-dir", &pin, "--persist"];
    let mut first = lab.start_forwarder(&args).unwrap();
    let listener =
        lab.server.enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap().join().unwrap();
    // The first connection: the stream, hashed, and the longest time
    // between two arrivals; the others: a one-byte echo (probes).
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        std::thread::spawn(move || {
            for p in listener.incoming() {
                let Ok(mut p) = p else { break };
                std::thread::spawn(move || {
                    let mut b = [0u8; 1];
                    while p.read_exact(&mut b).is_ok() && p.write_all(&b).is_ok() {}
                });
            }
        });
        let (mut h, mut got, mut gap, mut last) =
            (Sha256::new(), 0usize, Duration::ZERO, std::time::Instant::now());
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let k = s.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            gap = gap.max(last.elapsed());
            last = std::time::Instant::now();
            h.update(&buf[..k]);
            got += k;
        }
        (got, h.finalize().to_vec(), gap)
    });
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let retrans0 = retransmitted(&lab.client);
    let client = lab
        .client
        .enter(move || {
            // 16 KB every 10 ms until told to stop: a stream, not a burst
            // that could end before the restart.
            let mut s = TcpStream::connect_timeout(&public(8080), CONNECT).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            let (mut h, mut sent, mut seed) = (Sha256::new(), 0usize, 7u64);
            while stop_rx.try_recv().is_err() {
                let c = pattern(16 * 1024, seed);
                seed += 1;
                s.write_all(&c).expect("the connection broke during the restart");
                h.update(&c);
                sent += c.len();
                std::thread::sleep(Duration::from_millis(10));
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            (sent, h.finalize().to_vec())
        })
        .unwrap();
    let in_of = |f: &forwarder_testkit::Forwarder| rule_counters(&f.stats().unwrap(), 0).0;
    let t0 = std::time::Instant::now();
    while in_of(&first) < 50 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the stream does not flow");
        std::thread::sleep(Duration::from_millis(50));
    }
    first.proc.child.kill().unwrap(); // SIGKILL: no cleanup at all
    let _ = first.proc.child.wait();
    // No daemon: the pinned datapath forwards, new connections included.
    assert!(forwards(&lab), "no new connection while no daemon ran");
    let mut second = lab.start_forwarder(&args).unwrap();
    assert!(second.log_text().contains("adopted the state maps"), "{}", second.log_text());
    // The stream goes on through the new daemon's programs: its counters
    // (adopted, so they start from the first daemon's) grow.
    let adopted = in_of(&second);
    let t1 = std::time::Instant::now();
    while in_of(&second) < adopted + 50 {
        assert!(
            t1.elapsed() < Duration::from_secs(5),
            "the stream does not flow through the new programs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_tx.send(()).unwrap();
    let (sent, sent_hash) = client.join().unwrap();
    let (got, got_hash, gap) = server.join().unwrap();
    assert_eq!((got, got_hash), (sent, sent_hash), "the stream's bytes changed");
    let retrans = retransmitted(&lab.client) - retrans0;
    eprintln!(
        "hitless restart: longest gap in the stream {gap:?}, {retrans} segments retransmitted"
    );
    assert!(gap < Duration::from_millis(500), "the stream stopped for {gap:?}");
    assert!(retrans <= 2, "the client retransmitted {retrans} segments across the restart");
    let stats = finish(&lab, &mut second, Expect::default());
    // The stream and the probe: the second daemon used the first one's
    // entries (a re-created flow would count another connection).
    assert_eq!(rule_counters(&stats, 0).2, 2, "{stats}");
    // --persist: still attached and forwarding without any daemon.
    assert!(forwards(&lab), "--persist did not leave the datapath forwarding");
    let bin = forwarder_testkit::proc::forwarder_bin().unwrap();
    let out = lab
        .gateway
        .command(bin.to_str().unwrap())
        .args(["teardown", "--pin-dir", &pin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Torn down: nothing translates; the gateway's own stack refuses.
    let refused = lab
        .client
        .enter(|| {
            TcpStream::connect_timeout(&public(8080), Duration::from_secs(2))
                .map(|_| ())
                .map_err(|e| e.kind())
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "teardown left the datapath forwarding"
    );
    // (`maps.debug`, `progs.debug`: bpffs's own, at the root of every one.)
    let left: Vec<String> = std::fs::read_dir(&pin)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| std::path::Path::new(n).extension().is_none_or(|e| e != "debug"))
        .collect();
    assert!(left.is_empty(), "teardown left pins: {left:?}");
    assert_no_csum_errors(&lab);
}

#[test]
fn sighup_reload_swaps_the_rule_set_at_once_and_keeps_connections() {
    let lab = forwarder_testkit::Lab::new().unwrap();
    let bpf = BpfFs::mount(lab.dir.join("bpf")).unwrap();
    let cfg = lab.dir.join("forwarder.toml");
    let rule =
        |port: u32, to: &str| format!("[[rule]]\nproto = \"tcp\"\nport = {port}\nto = \"{to}\"\n");
    std::fs::write(&cfg, rule(8080, "192.168.1.50:80")).unwrap();
    let mut fwd =
        lab.start_forwarder(&["--config", cfg.to_str().unwrap(), "--pin-dir", bpf.arg()]).unwrap();
    // Backends on :80 and :81 answer with their own port; each keeps its
    // connections open until the client closes.
    let mut servers = Vec::new();
    for port in [80u16, 81] {
        let l = lab
            .server
            .enter(move || TcpListener::bind(("0.0.0.0", port)).unwrap())
            .unwrap()
            .join()
            .unwrap();
        servers.push(std::thread::spawn(move || {
            for s in l.incoming().take(3) {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).is_ok() {
                        s.write_all(&port.to_be_bytes()).unwrap();
                    }
                });
            }
        }));
    }
    let ask = |s: &mut TcpStream| -> u16 {
        s.write_all(b"?").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        u16::from_be_bytes(b)
    };
    let connect = |port: u16| {
        lab.client
            .enter(move || TcpStream::connect_timeout(&public(port), CONNECT).map_err(|e| e.kind()))
            .unwrap()
            .join()
            .unwrap()
    };
    let mut old = connect(8080).unwrap();
    assert_eq!(ask(&mut old), 80);
    // A new rule set: 8080 moves to :81, 9090 appears — in one step.
    std::fs::write(&cfg, rule(8080, "192.168.1.50:81") + &rule(9090, "192.168.1.50:80")).unwrap();
    let reloads =
        |f: &forwarder_testkit::Forwarder| f.log_text().matches("SIGHUP: reloaded").count();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(fwd.proc.pid().cast_signed(), libc::SIGHUP) };
    let t0 = std::time::Instant::now();
    while reloads(&fwd) == 0 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(reloads(&fwd), 1, "{}", fwd.log_text());
    // The established connection keeps its translation (to :80)…
    assert_eq!(ask(&mut old), 80);
    // …new connections take the new rules.
    assert_eq!(ask(&mut connect(8080).unwrap()), 81);
    assert_eq!(ask(&mut connect(9090).unwrap()), 80);
    // A broken file is refused and changes nothing.
    std::fs::write(&cfg, rule(70000, "192.168.1.50:80")).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(fwd.proc.pid().cast_signed(), libc::SIGHUP) };
    let t0 = std::time::Instant::now();
    while !fwd.log_text().contains("reload refused") && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(fwd.log_text().contains("70000"), "{}", fwd.log_text());
    assert_eq!(ask(&mut old), 80);
    assert_eq!(
        ask(&mut connect(9090).unwrap()),
        80,
        "the running rules changed after a refused reload"
    );
    drop(old);
    finish(&lab, &mut fwd, Expect::log(&["reload refused"]));
    drop(servers);
}

#[test]
fn prometheus_endpoint_is_scraped() {
    let lab = forwarder_testkit::Lab::new().unwrap();
    let mut fwd =
        lab.start_forwarder(&["--rule", HTTP_RULE, "--metrics", "127.0.0.1:9108"]).unwrap();
    let server = http_server(&lab, 2);
    for _ in 0..2 {
        http_get(&lab, public(8080));
    }
    server.join().unwrap();
    let scrape = lab
        .gateway
        .enter(|| {
            let mut s = TcpStream::connect("127.0.0.1:9108").unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            r
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(scrape.starts_with("HTTP/1.0 200 OK"), "{scrape}");
    assert!(
        scrape.contains(
            "forwarder_rule_connections_total{id=\"0\",rule=\"tcp:8080=192.168.1.50:80\"} 2"
        ),
        "{scrape}"
    );
    assert!(scrape.contains("# TYPE forwarder_conntrack_entries gauge"), "{scrape}");
    let redirected: u64 = scrape
        .lines()
        .filter(|l| {
            l.starts_with("forwarder_datapath_events_total{event=\"xdp_redirected\"}")
                || l.starts_with("forwarder_datapath_events_total{event=\"tc_redirected")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(redirected > 0, "{scrape}");
    finish(&lab, &mut fwd, Expect::default());
}

#[test]
fn control_socket_stats_and_conntrack() {
    let (lab, mut fwd) = lab_with(&[HTTP_RULE]);
    let sock = lab.dir.join("control.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "control socket must be root-only");
    let listener =
        lab.server.enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap().join().unwrap();
    let held = lab
        .client
        .enter(|| TcpStream::connect_timeout(&public(8080), CONNECT).unwrap())
        .unwrap()
        .join()
        .unwrap();
    let (_srv, _) = listener.accept().unwrap();
    let bin = forwarder_testkit::proc::forwarder_bin().unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .arg("--control")
            .arg(&sock)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stats, err) = cli(&["stats", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(rule_counters(&stats, 0).2, 1, "{stats}");
    // One live masqueraded connection: two entries, one masquerade port.
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        (v["flow_entries"].as_u64(), v["snat_ports_in_use"].as_u64()),
        (Some(2), Some(1)),
        "{stats}"
    );
    let (ok, list, err) = cli(&["conntrack", "list", "--json"]);
    assert!(ok, "{err}");
    let conns: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(conns.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(conns[0]["backend"], "192.168.1.50:80");
    assert!(conns[0]["client"].as_str().unwrap().starts_with("203.0.113.10:"), "{list}");
    assert_eq!(conns[0]["state"], "established");
    // Filters that match nothing, then a flush that matches.
    let (_, none, _) = cli(&["conntrack", "list", "--json", "--port", "9999"]);
    assert_eq!(none.trim(), "[]");
    let (ok, flushed, err) = cli(&["conntrack", "flush", "--port", "8080", "--json"]);
    assert!(ok && flushed.trim() == r#"{"removed_connections":1}"#, "{flushed} {err}");
    let (_, after, _) = cli(&["conntrack", "list", "--json"]);
    assert_eq!(after.trim(), "[]");
    // The running rules, and a save that reads back as the same config.
    let (ok, rules, err) = cli(&["rule", "list", "--json"]);
    assert!(ok, "{err}");
    let rules: serde_json::Value = serde_json::from_str(&rules).unwrap();
    assert_eq!(rules[0]["rule"], "tcp:8080=192.168.1.50:80", "{rules}");
    // With its counters: the one connection, its packets both ways.
    assert_eq!(rules[0]["new_connections"], 1, "{rules}");
    assert!(
        rules[0]["packets_in"].as_u64().unwrap() >= 2
            && rules[0]["packets_out"].as_u64().unwrap() >= 1,
        "{rules}"
    );
    let saved = lab.dir.join("saved.toml");
    let (ok, _, err) = cli(&["save", saved.to_str().unwrap()]);
    assert!(ok, "{err}");
    let mut back = forwarder::config::Settings::default();
    back.merge_toml(&saved, &std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(
        back.rules.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["tcp:8080=192.168.1.50:80"]
    );
    assert_eq!(
        (back.public.clone(), back.internal.clone()),
        (vec!["pub0".to_string()], vec!["int0".to_string()])
    );
    // Not root: refused by the socket's permissions, and said so. (A copy
    // of the binary in the lab's world-readable directory, so that the
    // unprivileged user can run it wherever the build tree lives.)
    let copy = lab.dir.join("forwarder");
    std::fs::copy(&bin, &copy).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .args(["stats", "--control"])
        .arg(&sock)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("permission denied"), "{err}");
    drop(held);
    finish(&lab, &mut fwd, Expect::default());
    // Once the daemon is gone the CLI says so plainly.
    let (ok, _, err) = cli(&["stats"]);
    assert!(!ok && err.contains("forwarder is not running"), "{err}");
    assert!(!sock.exists(), "the socket outlived the daemon");
}

#[test]
fn rule_add_and_del_at_runtime() {
    let lab = forwarder_testkit::Lab::new().unwrap();
    let bpf = BpfFs::mount(lab.dir.join("bpf")).unwrap();
    let mut fwd = lab.start_forwarder(&["--rule", HTTP_RULE, "--pin-dir", bpf.arg()]).unwrap();
    let sock = lab.dir.join("control.sock");
    let bin = forwarder_testkit::proc::forwarder_bin().unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .arg("--control")
            .arg(&sock)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let listener =
        lab.server.enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap().join().unwrap();
    let echo = std::thread::spawn(move || {
        for s in listener.incoming().take(2) {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).is_ok() {
                    s.write_all(&b).unwrap();
                }
            });
        }
    });
    let connect = |port: u16| {
        lab.client
            .enter(move || TcpStream::connect_timeout(&public(port), CONNECT).map_err(|e| e.kind()))
            .unwrap()
            .join()
            .unwrap()
    };
    let roundtrip = |s: &mut TcpStream| {
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).is_ok()
    };
    let mut old = connect(8080).unwrap();
    // A bad rule is refused before it reaches the daemon, naming the value.
    let (ok, out) = cli(&["rule", "add", "tcp:99999=192.168.1.50:80"]);
    assert!(!ok && out.contains("99999"), "{out}");
    let (ok, out) = cli(&["rule", "add", "tcp:9090=192.168.1.50:80", "--json"]);
    assert!(ok && out.trim() == r#"{"id":1}"#, "{out}");
    assert!(roundtrip(&mut connect(9090).unwrap()));
    // A duplicate is refused by the daemon; nothing changes.
    let (ok, out) = cli(&["rule", "add", "tcp:9090=192.168.1.50:81"]);
    assert!(!ok && out.contains("duplicate rule"), "{out}");
    let (ok, out) = cli(&["rule", "del", "0"]);
    assert!(ok && out.contains("tcp:8080=192.168.1.50:80"), "{out}");
    // The removed rule's live connection keeps working; new ones are refused.
    assert!(roundtrip(&mut old), "an established connection of a removed rule was cut");
    assert_eq!(connect(8080).unwrap_err(), std::io::ErrorKind::ConnectionRefused);
    let (_, list) = cli(&["rule", "list"]);
    assert!(list.contains("tcp:9090") && !list.contains("tcp:8080"), "{list}");
    drop(old);
    finish(&lab, &mut fwd, Expect::default());
    drop(echo);
}
