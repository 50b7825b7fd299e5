//! End to end: a rule with several backends spreads new connections over
//! them by Maglev (equal shares, weights), TCP and UDP, and a client's
//! tuple keeps its backend across a restart. Needs root (namespaces, XDP).

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use common::*;
use forwarder_testkit::Lab;

/// The server host answers as 192.168.1.50, .51 and .52.
const BACKENDS: [u8; 3] = [50, 51, 52];

/// A TCP server on port 80 of every backend address: for each of `n`
/// connections, reads one byte and answers with the last byte of the
/// address it was reached at, then closes (first: its side keeps the
/// `TIME_WAIT`, so a client may reuse its port).
fn tcp_backends(lab: &Lab, n: usize) -> std::thread::JoinHandle<BTreeMap<u8, u32>> {
    let listener = server_listener(lab, SocketAddr::from(([0, 0, 0, 0], 80)));
    std::thread::spawn(move || {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).expect("read the request byte");
            let std::net::IpAddr::V4(at) = s.local_addr().unwrap().ip() else { panic!("v6") };
            s.write_all(&[at.octets()[3]]).unwrap();
            *seen.entry(at.octets()[3]).or_default() += 1;
        }
        seen
    })
}

/// One TCP connection from the client (from `sport`, 0 = any) through
/// port 8080: the backend that answered.
fn tcp_pick(sport: u16) -> u8 {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_address(true).unwrap();
    let local = SocketAddr::from((forwarder_testkit::ADDRS.client, sport));
    sock.bind(&local.into()).unwrap();
    sock.connect_timeout(&public(8080).into(), CONNECT).expect("connect through the forward");
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).expect("the backend's answer");
    b[0]
}

/// `n` connections from the client, each from its own ephemeral port:
/// how many each backend answered.
fn tcp_spread(lab: &Lab, n: usize) -> BTreeMap<u8, u32> {
    lab.client
        .enter(move || {
            let mut got = BTreeMap::new();
            for _ in 0..n {
                *got.entry(tcp_pick(0)).or_default() += 1;
            }
            got
        })
        .unwrap()
        .join()
        .unwrap()
}

/// Each backend's count within `slack` of its share of `n`. The tests
/// size `n` so that the bound is at least 4.3 standard deviations of a
/// fair draw for every share (a false failure well under 1 in 10 000).
fn assert_shares(got: &BTreeMap<u8, u32>, want: &[(u8, f64)], n: u32, slack: f64) {
    eprintln!("connections per backend (last address byte): {got:?}");
    assert_eq!(got.values().sum::<u32>(), n, "{got:?}");
    for (b, share) in want {
        let c = f64::from(got.get(b).copied().unwrap_or(0));
        let fair = share * f64::from(n);
        assert!((c - fair).abs() <= slack * fair, "backend .{b}: {c} of {n}, want {fair}: {got:?}");
    }
}

#[test]
fn six_hundred_connections_share_three_equal_backends() {
    let lab = Lab::new().unwrap();
    more_backend_addresses(&lab);
    let mut fwd = lab
        .start_forwarder(&["--rule", "tcp:8080=192.168.1.50:80+192.168.1.51:80+192.168.1.52:80"])
        .unwrap();
    let server = tcp_backends(&lab, 600);
    let got = tcp_spread(&lab, 600);
    assert_eq!(server.join().unwrap(), got, "the backends saw what the client was answered");
    // Within ±25 % of a third each.
    let third = 1.0 / 3.0;
    assert_shares(&got, &[(50, third), (51, third), (52, third)], 600, 0.25);
    let stats = finish(&lab, &mut fwd, Expect::default());
    let (rule_in, rule_out, conns) = rule_counters(&stats, 0);
    assert_eq!(conns, 600, "{stats}");
    assert_eq!(counter(&stats, "drop_no_backend"), 0, "{stats}");
    // Each backend counted its own connections' packets: together, the
    // rule's, each in proportion to the connections it took.
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let per: Vec<(u8, u64, u64)> = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let addr = b["backend"].as_str().unwrap();
            let last = addr.split(':').next().unwrap().rsplit('.').next().unwrap().parse().unwrap();
            (last, b["packets_in"].as_u64().unwrap(), b["packets_out"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(per.iter().map(|p| p.1).sum::<u64>(), rule_in, "{stats}");
    assert_eq!(per.iter().map(|p| p.2).sum::<u64>(), rule_out, "{stats}");
    #[expect(clippy::cast_precision_loss, reason = "ratios of counts")]
    let per_conn = rule_in as f64 / 600.0;
    for (b, packets_in, _) in &per {
        let want = per_conn * f64::from(got[b]);
        #[expect(clippy::cast_precision_loss, reason = "ratios of counts")]
        let have = *packets_in as f64;
        assert!((have - want).abs() <= 0.1 * want, "backend .{b}: {have} packets, want {want}");
    }
}

#[test]
fn weights_three_to_one_and_zero_from_a_config_file() {
    let lab = Lab::new().unwrap();
    more_backend_addresses(&lab);
    let cfg = lab.dir.join("backends.toml");
    std::fs::write(
        &cfg,
        "[[rule]]\nproto = \"tcp\"\nport = 8080\nbackends = [{ to = \"192.168.1.50:80\", weight = 3 }, { to = \"192.168.1.51:80\" }, { to = \"192.168.1.52:80\", weight = 0 }]\n",
    )
    .unwrap();
    let mut fwd = lab.start_forwarder(&["--config", cfg.to_str().unwrap()]).unwrap();
    let server = tcp_backends(&lab, 800);
    let got = tcp_spread(&lab, 800);
    assert_eq!(server.join().unwrap(), got);
    assert!(!got.contains_key(&52), "weight 0 took connections: {got:?}");
    assert_shares(&got, &[(50, 0.75), (51, 0.25)], 800, 0.3);
    // `save` writes the backends and weights back.
    let path = lab.dir.join("saved.toml");
    let (ok, out) = cli(&lab, &["save", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(
        saved.contains("backends = [{ to = \"192.168.1.50:80\", weight = 3 }, { to = \"192.168.1.51:80\", weight = 1 }, { to = \"192.168.1.52:80\", weight = 0 }]"),
        "{saved}"
    );
    finish(&lab, &mut fwd, Expect::default());
}

#[test]
fn udp_datagrams_from_many_ports_spread_and_each_flow_stays() {
    let lab = Lab::new().unwrap();
    more_backend_addresses(&lab);
    let mut fwd = lab
        .start_forwarder(&["--rule", "udp:5300=192.168.1.50:53+192.168.1.51:53+192.168.1.52:53"])
        .unwrap();
    // One socket per backend address, each answering with its own last
    // byte; 600 flows of two datagrams each.
    let servers: Vec<_> = BACKENDS.iter().map(|b| udp_identity(&lab, *b, 53, 3)).collect();
    let got = lab
        .client
        .enter(|| {
            let mut got: BTreeMap<u8, u32> = BTreeMap::new();
            for _ in 0..600 {
                let c = udp_client(2);
                let mut answers = [0u8; 2];
                for a in &mut answers {
                    c.send_to(b"q", public(5300)).unwrap();
                    let mut buf = [0u8; 4];
                    let (k, _) = c.recv_from(&mut buf).expect("an answer through the forward");
                    assert_eq!(k, 1);
                    *a = buf[0];
                }
                assert_eq!(answers[0], answers[1], "a flow changed backends");
                *got.entry(answers[0]).or_default() += 1;
            }
            got
        })
        .unwrap()
        .join()
        .unwrap();
    let third = 1.0 / 3.0;
    assert_shares(&got, &[(50, third), (51, third), (52, third)], 600, 0.3);
    let seen: Vec<u32> = servers.into_iter().map(|s| s.join().unwrap()).collect();
    assert_eq!(seen.iter().sum::<u32>(), 1200, "{seen:?}");
    finish(&lab, &mut fwd, Expect::default());
}

#[test]
fn a_client_tuple_keeps_its_backend_across_a_restart() {
    let lab = Lab::new().unwrap();
    more_backend_addresses(&lab);
    let rule = "tcp:8080=192.168.1.50:80+192.168.1.51:80+192.168.1.52:80";
    let ports: Vec<u16> = (41_000..41_030).collect();
    let picks = |lab: &Lab| {
        let ports = ports.clone();
        let server = tcp_backends(lab, ports.len());
        let got: Vec<u8> = lab
            .client
            .enter(move || ports.iter().map(|p| tcp_pick(*p)).collect())
            .unwrap()
            .join()
            .unwrap();
        server.join().unwrap();
        got
    };
    let mut fwd = lab.start_forwarder(&["--rule", rule]).unwrap();
    let first = picks(&lab);
    finish(&lab, &mut fwd, Expect::default());
    // A new daemon, nothing pinned: a fresh table from the same rule.
    let mut fwd = lab.start_forwarder(&["--rule", rule]).unwrap();
    let again = picks(&lab);
    finish(&lab, &mut fwd, Expect::default());
    assert_eq!(first, again, "the same client tuples went to other backends");
    let used: std::collections::BTreeSet<u8> = first.iter().copied().collect();
    assert!(used.len() > 1, "30 tuples all on one backend: {first:?}");
}

/// `forwarder SUBCOMMAND -` fed `input`: the converted config.
fn import(sub: &str, input: &str) -> String {
    let bin = forwarder_testkit::proc::forwarder_bin().unwrap();
    let mut p = std::process::Command::new(&bin)
        .args([sub, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn an_iptables_statistic_spread_imported_and_forwarded() {
    // The classic recipe for three servers behind one port, set up with
    // iptables in the gateway, saved, converted, the netfilter rules
    // flushed, and the forwarder run from the converted file.
    let lab = Lab::new().unwrap();
    more_backend_addresses(&lab);
    for rule in [
        "-t nat -A PREROUTING -i pub0 -p tcp --dport 8080 -m statistic --mode nth --every 3 --packet 0 -j DNAT --to-destination 192.168.1.50:80",
        "-t nat -A PREROUTING -i pub0 -p tcp --dport 8080 -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination 192.168.1.51:80",
        "-t nat -A PREROUTING -i pub0 -p tcp --dport 8080 -j DNAT --to-destination 192.168.1.52:80",
        "-t nat -A POSTROUTING -o int0 -j MASQUERADE",
    ] {
        lab.gateway.exec("iptables", &rule.split(' ').collect::<Vec<_>>()).expect("iptables");
    }
    let saved = lab.gateway.exec("iptables-save", &[]).unwrap();
    let cfg = lab.dir.join("imported.toml");
    std::fs::write(&cfg, import("import-iptables", &saved)).unwrap();
    lab.gateway.exec("iptables", &["-t", "nat", "-F"]).unwrap();
    let mut fwd = lab.start_forwarder_with(&["--config", cfg.to_str().unwrap()]).unwrap();
    let server = tcp_backends(&lab, 600);
    let got = tcp_spread(&lab, 600);
    assert_eq!(server.join().unwrap(), got);
    let third = 1.0 / 3.0;
    assert_shares(&got, &[(50, third), (51, third), (52, third)], 600, 0.3);
    finish(&lab, &mut fwd, Expect::default());
}

#[test]
fn an_ipvsadm_service_imported_and_forwarded() {
    let lab = Lab::new().unwrap();
    more_backend_addresses(&lab);
    // As `ipvsadm-save -n` prints a masquerading service of three real
    // servers, weights 1, 1, 2.
    let saved = "-A -t 203.0.113.1:8080 -s wrr
-a -t 203.0.113.1:8080 -r 192.168.1.50:80 -m -w 1
-a -t 203.0.113.1:8080 -r 192.168.1.51:80 -m -w 1
-a -t 203.0.113.1:8080 -r 192.168.1.52:80 -m -w 2
";
    let cfg = lab.dir.join("ipvs.toml");
    std::fs::write(&cfg, import("import-ipvsadm", saved)).unwrap();
    let mut fwd = lab.start_forwarder(&["--config", cfg.to_str().unwrap()]).unwrap();
    let server = tcp_backends(&lab, 800);
    let got = tcp_spread(&lab, 800);
    assert_eq!(server.join().unwrap(), got);
    assert_shares(&got, &[(50, 0.25), (51, 0.25), (52, 0.5)], 800, 0.3);
    finish(&lab, &mut fwd, Expect::default());
}
