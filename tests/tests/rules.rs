//! End to end: what a rule says — masquerade and its port space, DNAT
//! without masquerade from a config file, port ranges, source allow-lists,
//! an imported iptables recipe. Needs root (namespaces, XDP).

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
};

use common::*;
use forwarder_testkit::ADDRS;

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
