//! End to end: what an operator changes while the forwarder runs — the
//! settings beside the rules (by SIGHUP), the hook per interface, the
//! public addresses, the checksum offload of an egress — and what it
//! refuses to change. Needs root.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::*;
use forwarder_testkit::{ADDRS, BpfFs, Forwarder, Lab};

fn sighup(fwd: &Forwarder) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(fwd.proc.pid().cast_signed(), libc::SIGHUP) };
}

/// Sends SIGHUP and waits for the daemon's verdict on it (`SIGHUP:
/// reloaded` or `SIGHUP: reload refused`); returns the log line.
fn reload(fwd: &Forwarder) -> String {
    let verdicts = |log: &str| {
        log.lines()
            .filter(|l| l.contains("SIGHUP: reloaded") || l.contains("SIGHUP: reload refused"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let n = verdicts(&fwd.log_text()).len();
    sighup(fwd);
    let t0 = Instant::now();
    loop {
        if let Some(l) = verdicts(&fwd.log_text()).get(n) {
            return l.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no answer to SIGHUP:\n{}", fwd.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn connect(lab: &Lab, to: SocketAddr) -> Result<TcpStream, std::io::ErrorKind> {
    lab.client
        .enter(move || TcpStream::connect_timeout(&to, CONNECT).map_err(|e| e.kind()))
        .unwrap()
        .join()
        .unwrap()
}

/// One byte there and back on an open connection.
fn roundtrip(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 1];
    s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok() && b == *b"x"
}

const RULE_8080: &str = "[[rule]]\nproto = \"tcp\"\nport = 8080\nto = \"192.168.1.50:80\"\n";
const RULE_9090: &str = "[[rule]]\nproto = \"tcp\"\nport = 9090\nto = \"192.168.1.50:80\"\n";

#[test]
fn another_conntrack_max_at_sighup_or_restart_keeps_the_running_table_and_says_so() {
    let lab = Lab::new().unwrap();
    let bpf = BpfFs::mount(lab.dir.join("bpf")).unwrap();
    let cfg = lab.dir.join("forwarder.toml");
    std::fs::write(&cfg, format!("[conntrack]\nmax = 4096\n\n{RULE_8080}")).unwrap();
    let mut fwd = lab
        .start_forwarder(&["--config", cfg.to_str().unwrap(), "--pin-dir", bpf.arg(), "--persist"])
        .unwrap();
    echo_server(&lab, 80);
    let mut old = connect(&lab, public(8080)).unwrap();
    assert!(roundtrip(&mut old));
    assert_eq!(lab.live_stats().unwrap()["connections_max"], 4096);
    // A bigger table asked, and a rule more: the table (and every
    // connection in it) stays as it is, and the daemon says so; the rule
    // is live.
    std::fs::write(&cfg, format!("[conntrack]\nmax = 8192\n\n{RULE_8080}\n{RULE_9090}")).unwrap();
    let verdict = reload(&fwd);
    assert!(
        verdict.contains("SIGHUP: reloaded in ") && verdict.contains(" ms, 2 rule(s) live"),
        "{verdict}"
    );
    let stats = lab.live_stats().unwrap();
    assert_eq!(
        stats["connections_max"], 4096,
        "the stats report a table size that is not the table's: {stats}"
    );
    let log = fwd.log_text();
    assert!(
        log.contains(
            "SIGHUP: conntrack max 8192 asked, but the running connection table holds 4096"
        ),
        "{log}"
    );
    assert!(roundtrip(&mut old), "the reload cut an established connection");
    assert!(roundtrip(&mut connect(&lab, public(9090)).unwrap()));
    finish(&lab, &mut fwd, Expect::log(&["SIGHUP: conntrack max 8192 asked"]));
    // A daemon that adopts the table (hitless restart) with another size
    // asked: the same.
    let mut fwd = lab
        .start_forwarder(&[
            "--config",
            cfg.to_str().unwrap(),
            "--pin-dir",
            bpf.arg(),
            "--conntrack-max",
            "16384",
        ])
        .unwrap();
    let log = fwd.log_text();
    assert!(
        log.contains("conntrack max 16384 asked, but the adopted connection table holds 4096"),
        "{log}"
    );
    assert!(log.contains("conntrack: 4096 connections max"), "{log}");
    assert_eq!(lab.live_stats().unwrap()["connections_max"], 4096);
    assert!(roundtrip(&mut old), "the restart cut an established connection");
    drop(old);
    finish(&lab, &mut fwd, Expect::log(&["conntrack max 16384 asked"]));
}

/// The audit lines of a daemon log.
fn audit_lines(log: &str) -> usize {
    log.lines().filter(|l| l.contains(" audit] ") && l.contains(" accepted ")).count()
}

#[test]
fn sighup_changes_the_masquerade_ports_and_the_audit_rate() {
    let lab = Lab::new().unwrap();
    let bpf = BpfFs::mount(lab.dir.join("bpf")).unwrap();
    let cfg = lab.dir.join("forwarder.toml");
    let text = |ports: &str, audit: &str| {
        format!("snat_ports = \"{ports}\"\n\n[audit]\n{audit}\n\n{RULE_8080}")
    };
    std::fs::write(&cfg, text("20000-20099", "rate = 1000")).unwrap();
    let mut fwd =
        lab.start_forwarder(&["--config", cfg.to_str().unwrap(), "--pin-dir", bpf.arg()]).unwrap();
    let server = http_server(&lab, 1 + 2 + 4);
    let get = || {
        let (body, _) = http_get(&lab, public(8080));
        assert_eq!(body, format!("hello {}", ADDRS.gw_internal));
    };
    get();
    let wait_audit = |n: usize| {
        let t0 = Instant::now();
        while audit_lines(&fwd.log_text()) < n {
            assert!(t0.elapsed() < Duration::from_secs(5), "no audit event:\n{}", fwd.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_audit(1);
    // Other masquerade ports, audit off.
    std::fs::write(&cfg, text("30000-30099", "rate = 0")).unwrap();
    assert!(reload(&fwd).contains("SIGHUP: reloaded"));
    for _ in 0..2 {
        get();
    }
    // Audit on again, one event per CPU at once: of 4 quick connections,
    // one or two are logged, the rest counted.
    let limited_before = counter(&lab.live_stats().unwrap().to_string(), "audit_rate_limited");
    std::fs::write(&cfg, text("30000-30099", "rate = 1\nburst = 1")).unwrap();
    assert!(reload(&fwd).contains("SIGHUP: reloaded"));
    for _ in 0..4 {
        get();
    }
    let t0 = Instant::now();
    let limited = loop {
        let limited =
            counter(&lab.live_stats().unwrap().to_string(), "audit_rate_limited") - limited_before;
        if audit_lines(&fwd.log_text()) - 1 + limited as usize >= 4
            || t0.elapsed() > Duration::from_secs(5)
        {
            break limited;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let peers = server.join().unwrap();
    let ports: Vec<u16> = peers.iter().map(SocketAddr::port).collect();
    assert!((20000..=20099).contains(&ports[0]), "{ports:?}");
    assert!(
        ports[1..].iter().all(|p| (30000..=30099).contains(p)),
        "the reload did not change the masquerade ports: {ports:?}"
    );
    let logged = audit_lines(&fwd.log_text()) - 1;
    assert!(
        (1..=2).contains(&logged) && logged + limited as usize == 4,
        "audit while off or the new rate not applied: {logged} logged, {limited} limited\n{}",
        fwd.log_text()
    );
    finish(&lab, &mut fwd, Expect::log(&["suppressed by the rate limit"]));
}

#[test]
fn rule_changes_without_a_pin_dir_are_refused_and_change_nothing() {
    let lab = Lab::new().unwrap();
    let cfg = lab.dir.join("forwarder.toml");
    std::fs::write(&cfg, RULE_8080).unwrap();
    let mut fwd = lab.start_forwarder(&["--config", cfg.to_str().unwrap()]).unwrap();
    echo_server(&lab, 80);
    let mut old = connect(&lab, public(8080)).unwrap();
    let (ok, out) = cli(&lab, &["rule", "add", "tcp:9090=192.168.1.50:80"]);
    assert!(!ok && out.contains("changing rules at runtime needs --pin-dir"), "{out}");
    std::fs::write(&cfg, format!("{RULE_8080}\n{RULE_9090}")).unwrap();
    let verdict = reload(&fwd);
    assert!(
        verdict.contains("SIGHUP: reload refused") && verdict.contains("needs --pin-dir"),
        "{verdict}"
    );
    // Nothing changed: the old rule and its connection work, the new one
    // is not there (the gateway itself refuses port 9090).
    assert!(roundtrip(&mut old));
    assert!(roundtrip(&mut connect(&lab, public(8080)).unwrap()));
    assert_eq!(connect(&lab, public(9090)).unwrap_err(), std::io::ErrorKind::ConnectionRefused);
    let (_, list) = cli(&lab, &["rule", "list"]);
    assert!(list.contains("tcp:8080") && !list.contains("tcp:9090"), "{list}");
    drop(old);
    finish(&lab, &mut fwd, Expect::log(&["SIGHUP: reload refused", "needs --pin-dir"]));
}

/// `n` bytes of a repeatable pattern.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Sends `n` bytes through the forward to the echo server and checks that
/// the same bytes come back.
fn echo_bulk(lab: &Lab, n: usize) {
    let mut s = connect(lab, public(8080)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data = pattern(n);
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
    let mut back = vec![0u8; n];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "the echo came back changed");
}

#[test]
fn mixed_hooks_xdp_on_the_public_side_tc_on_the_internal_side() {
    let lab = Lab::new().unwrap();
    let mut fwd = lab
        .start_forwarder(&[
            "--rule",
            HTTP_RULE,
            "--iface-mode",
            "pub0=xdp",
            "--iface-mode",
            "int0=tc",
        ])
        .unwrap();
    let link = |i: &str| lab.gateway.ip(&["-d", "link", "show", i]).unwrap();
    assert!(link("pub0").contains("prog/xdp"), "{}", link("pub0"));
    assert!(!link("int0").contains("prog/xdp"), "int0 has XDP: {}", link("int0"));
    let log = fwd.log_text();
    assert!(
        log.contains("attached to pub0 (ifindex ")
            && log.contains("): XDP native + TC ingress (assist)"),
        "{log}"
    );
    assert!(
        log.contains("attached to int0 (ifindex ") && log.contains("): TC ingress (TC mode)"),
        "{log}"
    );
    echo_server(&lab, 80);
    echo_bulk(&lab, 4 << 20);
    let stats = finish(&lab, &mut fwd, Expect::log(&["XDP cannot transmit into it"]));
    // Client to server came in by XDP: transmitted by it into a tuned
    // int0, else handed to TC. Replies came in on int0, by TC.
    if lab.tuned {
        assert!(counter(&stats, "xdp_redirected") > 0, "{stats}");
        assert!(!fwd.log_text().contains("XDP cannot transmit"), "{}", fwd.log_text());
    } else {
        assert!(counter(&stats, "xdp_to_tc") > 0, "{stats}");
    }
    assert!(counter(&stats, "tc_redirected") > 0, "{stats}");
    let (i, o, c) = rule_counters(&stats, 0);
    assert!(i > 0 && o > 0 && c == 1, "{stats}");
}

#[test]
fn a_public_address_added_then_removed_is_followed_by_hairpin() {
    // The internal host 192.168.1.60 calls a public address the gateway
    // gets while it runs; when the address goes, hairpin lets it go.
    let (lab, mut fwd) = lab_with(&[HTTP_RULE]);
    internal_host(&lab);
    let server = http_server(&lab, 1);
    let new_addr: SocketAddr = "203.0.113.7:8080".parse().unwrap();
    let changes =
        |f: &Forwarder| f.log_text().matches("public addresses changed; hairpin follows").count();
    let wait_change = |n: usize| {
        let t0 = Instant::now();
        while changes(&fwd) < n {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the address change was not followed:\n{}",
                fwd.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let hairpin = || {
        lab.server
            .enter(move || {
                let mut s = TcpStream::connect_timeout(&new_addr, CONNECT).map_err(|e| e.kind())?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                let mut r = String::new();
                s.read_to_string(&mut r).unwrap();
                Ok::<_, std::io::ErrorKind>((
                    r.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
                    s.peer_addr().unwrap(),
                ))
            })
            .unwrap()
            .join()
            .unwrap()
    };
    let n0 = changes(&fwd);
    lab.gateway.ip(&["addr", "add", "203.0.113.7/24", "dev", "pub0"]).unwrap();
    wait_change(n0 + 1);
    let (body, from) = hairpin().expect("hairpin to the new public address");
    assert_eq!(body, format!("hello {}", ADDRS.gw_internal));
    assert_eq!(from, new_addr);
    server.join().unwrap();
    lab.gateway.ip(&["addr", "del", "203.0.113.7/24", "dev", "pub0"]).unwrap();
    wait_change(n0 + 2);
    // Not the gateway's any more: nobody answers it.
    assert_eq!(hairpin().unwrap_err(), std::io::ErrorKind::TimedOut);
    let stats = finish(&lab, &mut fwd, Expect::counters(&["pass_not_forwarded"]));
    assert_eq!(rule_counters(&stats, 0).2, 1, "{stats}");
}

#[test]
fn tc_egress_into_a_device_without_checksum_offload_sends_checksums_that_verify() {
    // The gateway computes what it sends in software (tx offload off on
    // both sides); client and server verify every checksum they receive
    // (rx offload off): a packet the TC path leaves with a partial or
    // stale checksum is dropped and counted by them.
    let lab = Lab::new().unwrap();
    for i in ["pub0", "int0"] {
        lab.gateway.exec("ethtool", &["-K", i, "tx", "off"]).unwrap();
        assert!(lab.gateway.exec("ethtool", &["-k", i]).unwrap().contains("tx-checksumming: off"));
    }
    for ns in [&lab.client, &lab.server] {
        ns.exec("ethtool", &["-K", "eth0", "rx", "off"]).unwrap();
    }
    let mut fwd = lab
        .start_forwarder(&[
            "--rule",
            HTTP_RULE,
            "--rule",
            "udp:5353=192.168.1.50:53",
            "--mode",
            "tc",
        ])
        .unwrap();
    echo_server(&lab, 80);
    echo_bulk(&lab, 4 << 20);
    let backend = udp_backend(&lab, 53, 2);
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        for _ in 0..3 {
            let (k, from) = backend.recv_from(&mut b).unwrap();
            backend.send_to(&b[..k], from).unwrap();
        }
    });
    lab.client
        .enter(|| {
            let s = udp_client(2);
            for k in [1usize, 100, 1400] {
                let q = pattern(k);
                s.send_to(&q, public(5353)).unwrap();
                let mut b = [0u8; 2048];
                let (n, _) = s.recv_from(&mut b).expect("UDP answer");
                assert_eq!(&b[..n], &q[..]);
            }
        })
        .unwrap()
        .join()
        .unwrap();
    echo.join().unwrap();
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert_eq!(counter(&stats, "xdp_redirected"), 0, "{stats}");
    assert!(counter(&stats, "tc_redirected") > 0, "{stats}");
}

#[test]
fn rule_changes_are_made_in_the_running_tables_and_a_failed_one_is_undone() {
    let lab = Lab::new().unwrap();
    more_backend_addresses(&lab);
    let bpf = BpfFs::mount(lab.dir.join("bpf")).unwrap();
    // The second change in place fails after its rule entries are written.
    let mut fwd = lab
        .start_forwarder_faulty("rules_in_place@2", &["--rule", HTTP_RULE, "--pin-dir", bpf.arg()])
        .unwrap();
    echo_server(&lab, 80);
    let mut old = connect(&lab, public(8080)).unwrap();
    let in_place =
        |fwd: &Forwarder| fwd.log_text().matches("rule change made in the running tables").count();
    // A balanced rule arrives: its service and tables, then its entry.
    let (ok, out) = cli(&lab, &["rule", "add", "tcp:9090=192.168.1.50:80+192.168.1.51:80"]);
    assert!(ok, "{out}");
    assert_eq!(in_place(&fwd), 1, "{}", fwd.log_text());
    for _ in 0..4 {
        assert!(roundtrip(&mut connect(&lab, public(9090)).unwrap()));
    }
    // A range that fails half-way: its entries are taken out again.
    let (ok, out) = cli(&lab, &["rule", "add", "tcp:9100-9163=192.168.1.50:80"]);
    assert!(!ok && out.contains("injected failure (rules_in_place"), "{out}");
    for port in [9100, 9131, 9163] {
        assert_eq!(connect(&lab, public(port)).unwrap_err(), std::io::ErrorKind::ConnectionRefused);
    }
    let (_, list) = cli(&lab, &["rule", "list"]);
    assert!(!list.contains("9100"), "{list}");
    assert!(roundtrip(&mut old) && roundtrip(&mut connect(&lab, public(9090)).unwrap()));
    // The same change again (the fault was once), then the balanced rule
    // leaves: its connections are refused, the others stay.
    let (ok, out) = cli(&lab, &["rule", "add", "tcp:9100-9163=192.168.1.50:80"]);
    assert!(ok, "{out}");
    assert!(roundtrip(&mut connect(&lab, public(9131)).unwrap()));
    let (ok, out) = cli(&lab, &["rule", "del", "2"]);
    assert!(ok && out.contains("tcp:9090"), "{out}");
    assert_eq!(connect(&lab, public(9090)).unwrap_err(), std::io::ErrorKind::ConnectionRefused);
    assert!(roundtrip(&mut old) && roundtrip(&mut connect(&lab, public(9163)).unwrap()));
    assert_eq!(in_place(&fwd), 3, "{}", fwd.log_text());
    assert!(!fwd.log_text().contains("reloading"), "{}", fwd.log_text());
    drop(old);
    finish(&lab, &mut fwd, Expect::log(&["fault injection armed", "injected failure"]));
}
