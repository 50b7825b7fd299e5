//! End to end: the forwarder on a bad day — untuned interfaces, floods
//! that fill the connection table, oversized packets with IP options, and
//! failures of the daemon's own housekeeping. Needs root.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;
use forwarder_testkit::{
    ADDRS, BpfFs, Lab,
    flood::{self, Rng, Sources},
};
use sha2::{Digest, Sha256};

/// `n` TCP SYNs to `to` from spoofed sources of both kinds.
fn syn_flood(lab: &Lab, n: usize, to: SocketAddr, seed: u64) {
    flood::syn_flood(&lab.client, n, to, Sources::Mixed, seed).unwrap();
}

/// `n` UDP datagrams to `to` from spoofed sources, all from 198.18.0.0/15
/// (no route back). Not from the client's subnet: the echo's answers to
/// those would wait in the gateway's ARP queue for neighbours that never
/// answer, and over veth they stay charged to the echo socket's send
/// buffer meanwhile (a lab artifact: the backend and the gateway share a
/// kernel), so the echo would block for the three seconds ARP takes to
/// give up.
fn udp_flood(lab: &Lab, n: usize, to: SocketAddr, seed: u64) {
    flood::udp_flood(&lab.client, n, to, Sources::Unroutable, seed).unwrap();
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next_u64() as u8).collect()
}

/// A backend on :80: a connection that starts with `BULK` is read to its
/// end and its hash sent back on `hashes`; any other is answered `OK\n`.
fn backend(lab: &Lab) -> mpsc::Receiver<Vec<u8>> {
    let listener =
        lab.server.enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap().join().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut head = [0u8; 4];
                if s.read_exact(&mut head).is_err() {
                    return;
                }
                if &head == b"BULK" {
                    let mut h = Sha256::new();
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(k) = s.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        h.update(&buf[..k]);
                    }
                    let _ = tx.send(h.finalize().to_vec());
                } else {
                    let _ = s.write_all(b"OK\n");
                }
            });
        }
    });
    rx
}

/// One short connection from the client: connect (tight: a lost SYN,
/// retransmitted after a second, fails it), ask, read `OK`.
fn short_connection(lab: &Lab) -> Result<(), String> {
    lab.client
        .enter(|| {
            let mut s = TcpStream::connect_timeout(&public(8080), Duration::from_millis(900))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.write_all(b"GET\n").map_err(|e| e.to_string())?;
            let mut r = String::new();
            s.read_to_string(&mut r).map_err(|e| e.to_string())?;
            if r == "OK\n" { Ok(()) } else { Err(format!("answer {r:?}")) }
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn syn_flood_fills_the_table_and_real_clients_still_connect() {
    // Netfilter's early_drop, here: a table of 2000 connections, 6000
    // spoofed SYNs; the half-open entries give way to new connections,
    // the running transfer (assured) never does.
    let lab = Lab::new().unwrap();
    let mut fwd = lab.start_forwarder(&["--rule", HTTP_RULE, "--conntrack-max", "2000"]).unwrap();
    let hashes = backend(&lab);
    let (go_on, resume) = mpsc::channel::<()>();
    let (halfway, at_half) = mpsc::channel::<()>();
    let transfer = lab
        .client
        .enter(move || {
            let data = pattern(16 << 20, 9);
            let mut s = TcpStream::connect_timeout(&public(8080), CONNECT).unwrap();
            s.write_all(b"BULK").unwrap();
            let (a, b) = data.split_at(data.len() / 2);
            s.write_all(a).unwrap();
            halfway.send(()).unwrap();
            resume.recv().unwrap();
            s.write_all(b).expect("the transfer broke during the flood");
            s.shutdown(std::net::Shutdown::Write).unwrap();
            Sha256::digest(&data).to_vec()
        })
        .unwrap();
    at_half.recv().unwrap();
    syn_flood(&lab, 6000, public(8080), 0x5eed);
    // The flood has filled the table and cycled through its own entries.
    let t0 = Instant::now();
    while counter(&fwd.stats().unwrap(), "early_drop") < 1000 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no early drop: {}", fwd.stats().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    go_on.send(()).unwrap();
    let sent = transfer.join().unwrap();
    assert_eq!(
        hashes.recv_timeout(Duration::from_secs(20)).unwrap(),
        sent,
        "the transfer's bytes changed"
    );
    // The table is still full of the flood's half-open entries: each real
    // client's first SYN takes the place of one.
    let results: Vec<_> = (0..10).map(|_| short_connection(&lab)).collect();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let stats = finish(
        &lab,
        &mut fwd,
        Expect {
            counters: &["early_drop", "pass_not_forwarded", "table_full_refused"],
            log: &["conntrack table full", "% full (", "events suppressed by the rate limit"],
        },
    );
    let early = counter(&stats, "early_drop");
    // 6000 SYNs into room for 2000 (less the transfer): at least 3000 gave way.
    assert!(early >= 3000, "{stats}");
    // Every SYN was a connection set up (a few random sources may repeat).
    assert!(
        rule_counters(&stats, 0).2 + counter(&stats, "table_full_refused") >= 1 + 5990 + 10,
        "{stats}"
    );
    let log = fwd.log_text();
    assert!(
        log.contains("conntrack table full (2000 connections)")
            && log.contains("gave way to new ones (early drop)"),
        "{log}"
    );
}

#[test]
fn udp_flood_fills_the_table_and_real_clients_still_get_answers() {
    let lab = Lab::new().unwrap();
    let mut fwd = lab
        .start_forwarder(&["--rule", "udp:5353=192.168.1.50:53", "--conntrack-max", "2000"])
        .unwrap();
    // An echo that answers everything (the flood's answers die at the
    // gateway: no route, or no neighbour).
    let sock = udp_backend(&lab, 53, 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 256];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((k, peer)) = sock.recv_from(&mut b) {
                let _ = sock.send_to(&b[..k], peer);
            }
        }
    });
    // A stream running through the flood (answered, then spoken to
    // again: assured).
    let stream = lab.client.enter(|| udp_client(1)).unwrap().join().unwrap();
    let ask = |s: &UdpSocket, i: u32| -> bool {
        let msg = i.to_be_bytes();
        s.send_to(&msg, public(5353)).unwrap();
        let mut b = [0u8; 16];
        s.recv_from(&mut b).is_ok_and(|(k, _)| b[..k] == msg)
    };
    assert!(ask(&stream, 0) && ask(&stream, 1));
    udp_flood(&lab, 6000, public(5353), 0xf100d);
    let t0 = Instant::now();
    while counter(&fwd.stats().unwrap(), "early_drop") < 1000 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no early drop: {}", fwd.stats().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let lost: Vec<u32> = (2..50).filter(|i| !ask(&stream, *i)).collect();
    assert!(
        lost.is_empty(),
        "the stream lost answers {lost:?} after the flood: {}",
        fwd.stats().unwrap()
    );
    // Ten new clients, one datagram each, no second chance (500 ms).
    let answered = lab
        .client
        .enter(|| {
            (0..10u8)
                .filter(|i| {
                    let s = udp_client(1);
                    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                    s.send_to(&[b'q', *i], public(5353)).unwrap();
                    let mut b = [0u8; 16];
                    s.recv_from(&mut b).is_ok_and(|(k, _)| b[..k] == [b'q', *i])
                })
                .count()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(answered, 10);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    echo.join().unwrap();
    let stats = finish(
        &lab,
        &mut fwd,
        Expect {
            counters: &["early_drop", "pass_not_forwarded", "table_full_refused"],
            log: &["conntrack table full", "% full (", "events suppressed by the rate limit"],
        },
    );
    assert!(counter(&stats, "early_drop") >= 3000, "{stats}");
}

#[test]
fn new_connection_rate_limit_drops_and_counts_the_excess() {
    // 50 per second and CPU, bursts of 5: a burst of 300 SYNs sets up at
    // most CPUs × (5 + 50 × time); the rest are dropped and counted.
    let lab = Lab::new().unwrap();
    let mut fwd = lab
        .start_forwarder(&["--rule", HTTP_RULE, "--new-conn-rate", "50", "--new-conn-burst", "5"])
        .unwrap();
    let t0 = Instant::now();
    syn_flood(&lab, 300, public(8080), 7);
    let secs = t0.elapsed().as_secs_f64();
    // The housekeeping reports the drops once a second.
    wait_log(&fwd, "new-connection rate limit:", 5);
    let stats = finish(
        &lab,
        &mut fwd,
        Expect {
            counters: &["drop_new_conn_rate", "pass_not_forwarded"],
            log: &["new-connection rate limit:"],
        },
    );
    let cpus = f64::from(
        u32::try_from(std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
            .unwrap_or(1),
    );
    let created = rule_counters(&stats, 0).2;
    let limited = counter(&stats, "drop_new_conn_rate");
    assert_eq!(created + limited, 300, "{stats}");
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let within = created as f64 <= cpus * (5.0 + 50.0 * secs) + 1.0;
    assert!(within && created >= 5, "{created} set up in {secs:.2} s: {stats}");
    assert!(
        fwd.log_text().contains("new-connection rate limit:")
            && fwd.log_text().contains("dropped (at most 50/s and bursts of 5 per CPU"),
        "{}",
        fwd.log_text()
    );
}

/// One HTTP request through the forward (the backend is [`http_server`]);
/// the body.
fn get(lab: &Lab) -> String {
    http_get(lab, public(8080)).0
}

/// One HTTP request through the forward whose connection must be set up
/// within `connect`; the whole answer.
fn get_within(lab: &Lab, connect: Duration) -> String {
    lab.client
        .enter(move || {
            let mut s = TcpStream::connect_timeout(&public(8080), connect).expect("connect");
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            r
        })
        .unwrap()
        .join()
        .unwrap()
}

fn cli(lab: &Lab, args: &[&str]) -> (bool, String) {
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

#[test]
fn housekeeping_failures_are_logged_counted_retried_and_never_stop_forwarding() {
    let lab = Lab::new().unwrap();
    let mut fwd = lab
        .start_forwarder_env(
            &[("FORWARDER_FAILPOINTS", "conntrack_sweep=3,egress=2,table_watch=2,audit_report=1")],
            &[
                "--public",
                "pub0",
                "--internal",
                "int0",
                "--rule",
                HTTP_RULE,
                "--rule",
                "udp:5353=192.168.1.50:53",
                "--ct-timeout",
                "udp=2",
            ],
        )
        .unwrap();
    let server = http_server(&lab, 3);
    assert_eq!(get(&lab), format!("hello {}", ADDRS.gw_internal));
    // A real fault: more public addresses than the hairpin table holds.
    for i in 0..300u32 {
        lab.gateway
            .ip(&["addr", "add", &format!("10.99.{}.{}/32", i / 250, 1 + i % 250), "dev", "pub0"])
            .unwrap();
    }
    wait_log(
        &fwd,
        "the public interfaces have 45 more IPv4 addresses than the hairpin table holds (256)",
        10,
    );
    // Another: the stats file cannot be written (its path is a directory).
    let stats_path = lab.dir.join("stats.json");
    std::fs::remove_file(&stats_path).unwrap();
    std::fs::create_dir_all(stats_path.join("blocker")).unwrap();
    wait_log(&fwd, "stats_file failed (1 in a row)", 10);
    // A UDP flow, to be expired once the sweep works again.
    let backend = udp_backend(&lab, 53, 5);
    lab.client
        .enter(|| udp_client(1).send_to(b"q", public(5353)).unwrap())
        .unwrap()
        .join()
        .unwrap();
    backend.recv_from(&mut [0u8; 8]).unwrap();
    // Every injected failure is said, retried, and recovered from.
    for task in ["conntrack_sweep", "egress", "table_watch"] {
        wait_log(&fwd, &format!("{task} failed (1 in a row): injected failure"), 10);
        wait_log(&fwd, &format!("{task}: recovered after"), 20);
    }
    wait_log(&fwd, "audit_report failed (1 in a row)", 15);
    std::fs::remove_dir_all(&stats_path).unwrap();
    wait_log(&fwd, "stats_file: recovered after", 70);
    // Forwarding went on the whole time; the daemon answers.
    assert_eq!(get(&lab), format!("hello {}", ADDRS.gw_internal));
    let (ok, stats) = cli(&lab, &["stats", "--json"]);
    assert!(ok, "{stats}");
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let errors = &v["daemon_errors"];
    assert_eq!(
        (
            errors["conntrack_sweep"].as_u64(),
            errors["egress"].as_u64(),
            errors["table_watch"].as_u64(),
            errors["audit_report"].as_u64()
        ),
        (Some(3), Some(2), Some(2), Some(1)),
        "{v}"
    );
    assert!(errors["stats_file"].as_u64().unwrap() >= 1, "{v}");
    // The sweep works again: the idle UDP flow (udp=2) is gone.
    let t0 = Instant::now();
    loop {
        let (_, list) = cli(&lab, &["conntrack", "list", "--json", "--port", "5353"]);
        if list.trim() == "[]" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "the UDP flow never expired: {list}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // A bad request gets an error answer; a client that says nothing holds
    // up no other.
    let r = lab.control("nonsense\n").unwrap();
    assert!(r.contains(r#""ok":false"#) && r.contains("bad request `nonsense`"), "{r}");
    let silent = std::os::unix::net::UnixStream::connect(lab.dir.join("control.sock")).unwrap();
    let t0 = Instant::now();
    let (ok, out) = cli(&lab, &["stats"]);
    assert!(ok && t0.elapsed() < Duration::from_secs(1), "{out}");
    assert!(
        out.contains(
            "daemon housekeeping failures (retried; forwarding not affected): audit_report=1"
        ),
        "{out}"
    );
    drop(silent);
    assert_eq!(get(&lab), format!("hello {}", ADDRS.gw_internal));
    server.join().unwrap();
    finish(
        &lab,
        &mut fwd,
        Expect::log(&[
            "fault injection armed",
            "failed (",
            "more IPv4 addresses than the hairpin table holds",
        ]),
    );
}

#[test]
fn a_fatal_error_leaves_a_pinned_datapath_forwarding() {
    let lab = Lab::new().unwrap();
    let bpf = BpfFs::mount(lab.dir.join("bpf")).unwrap();
    let pin = bpf.arg().to_string();
    // The loop ends with an injected fatal error at its 4th tick.
    let mut fwd = lab
        .start_forwarder_env(
            &[("FORWARDER_FAILPOINTS", "fatal@4")],
            &["--public", "pub0", "--internal", "int0", "--rule", HTTP_RULE, "--pin-dir", &pin],
        )
        .unwrap();
    let listener =
        lab.server.enter(|| TcpListener::bind("0.0.0.0:80").unwrap()).unwrap().join().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).is_ok() {
                    let _ = s.write_all(&b);
                }
            });
        }
    });
    let connect = || {
        lab.client
            .enter(|| TcpStream::connect_timeout(&public(8080), CONNECT))
            .unwrap()
            .join()
            .unwrap()
    };
    let echo = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"x").is_ok() && s.read_exact(&mut [0u8; 1]).is_ok()
    };
    let mut old = connect().unwrap();
    assert!(echo(&mut old));
    let t0 = Instant::now();
    while fwd.proc.child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(15), "the daemon did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = fwd.proc.child.wait().unwrap();
    assert!(!status.success(), "a fatal error must be the exit status");
    // Its last words reach the log reader after the exit.
    for line in [
        "fatal: injected failure (fatal",
        "stays attached and pinned",
        &format!("forwarder teardown --pin-dir {pin}"),
    ] {
        wait_log(&fwd, line, 5);
    }
    // Established and new connections keep being forwarded.
    assert!(echo(&mut old), "the established connection died with the daemon");
    assert!(echo(&mut connect().expect("no new connection after the daemon died")));
    let bin = forwarder_testkit::proc::forwarder_bin().unwrap();
    let out = lab
        .gateway
        .command(bin.to_str().unwrap())
        .args(["teardown", "--pin-dir", &pin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn conntrack_list_of_262144_connections_answers_in_two_seconds_while_traffic_flows() {
    use forwarder_common::{
        abi::{FlowEntry, FlowKey},
        conntrack::{CT_ESTABLISHED, entry_pair},
        nat::Tuple,
    };
    const N: u32 = 262_144;
    let lab = Lab::new().unwrap();
    let bpf = BpfFs::mount(lab.dir.join("bpf")).unwrap();
    let pin = bpf.arg().to_string();
    let mut fwd = lab
        .start_forwarder(&["--rule", HTTP_RULE, "--pin-dir", &pin, "--conntrack-max", "300000"])
        .unwrap();
    // Fill the pinned table as the datapath would: established pairs.
    let data = aya::maps::MapData::from_pin(bpf.0.join("FWD_FLOWS_v3")).unwrap();
    let mut flows: aya::maps::HashMap<_, FlowKey, FlowEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
    let now = forwarder::loader::monotonic_ns();
    for i in 0..N {
        let client = Tuple {
            saddr: [100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8],
            daddr: ADDRS.gw_public.octets(),
            sport: 40000u16.to_be_bytes(),
            dport: 8080u16.to_be_bytes(),
        };
        let out = Tuple {
            saddr: ADDRS.gw_internal.octets(),
            daddr: ADDRS.server.octets(),
            sport: (10_000 + (i % 20_000) as u16).to_be_bytes(),
            dport: 80u16.to_be_bytes(),
        };
        // Distinct reply keys: the masquerade port and a per-client backend port.
        let out = Tuple { dport: (1 + (i / 20_000) as u16).to_be_bytes(), ..out };
        for (k, mut e) in entry_pair(&client, &out, 6, 0, now, 0) {
            e.state = CT_ESTABLISHED;
            flows.insert(k, e, 0).unwrap();
        }
    }
    // Traffic all along: a request every 50 ms, each must succeed.
    let server = http_server(&lab, 1000);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let answered_in = answered.clone();
    let traffic = lab
        .client
        .enter(move || -> Result<u32, String> {
            let mut done = 0;
            while stop_rx.try_recv().is_err() {
                let mut s = TcpStream::connect_timeout(&public(8080), Duration::from_millis(900))
                    .map_err(|e| format!("request {done}: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                let mut r = String::new();
                s.read_to_string(&mut r).map_err(|e| format!("request {done}: {e}"))?;
                if !r.contains("hello") {
                    return Err(format!("request {done}: {r:?}"));
                }
                done += 1;
                answered_in.store(done, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(done)
        })
        .unwrap();
    // The listing runs while requests are being answered.
    let t_wait = Instant::now();
    while answered.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(t_wait.elapsed() < Duration::from_secs(5), "no request answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The CLI's whole run: ask, receive, print (its output is read after).
    let bin = forwarder_testkit::proc::forwarder_bin().unwrap();
    let t0 = Instant::now();
    let out = std::process::Command::new(&bin)
        .args(["conntrack", "list", "--json", "--control"])
        .arg(lab.dir.join("control.sock"))
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let conns: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(conns.len() >= N as usize, "{} connections listed", conns.len());
    eprintln!("conntrack list: {} connections in {took:?}", conns.len());
    assert!(took < Duration::from_secs(2), "conntrack list took {took:?}");
    let _ = stop_tx.send(());
    let requests =
        traffic.join().unwrap().unwrap_or_else(|e| panic!("{e}: {}", fwd.stats().unwrap()));
    assert!(requests >= 5, "{requests}");
    drop(server);
    finish(&lab, &mut fwd, Expect::default());
}

#[test]
fn ip_options_and_a_small_egress_mtu_get_fragmentation_needed_never_an_oversized_frame() {
    // 40 bytes of IP options: the old check took the IPv4 length as the
    // L4 length + 20 and let these through 40 bytes too large.
    let lab = Lab::new().unwrap();
    let mut fwd = lab.start_forwarder(&["--rule", "udp:5353=192.168.1.50:53"]).unwrap();
    lab.gateway.ip(&["link", "set", "int0", "mtu", "1280"]).unwrap();
    let srv = udp_backend(&lab, 53, 1);
    let echo = std::thread::spawn(move || {
        let mut sizes = Vec::new();
        let mut b = vec![0u8; 2048];
        while let Ok((k, peer)) = srv.recv_from(&mut b) {
            let _ = srv.send_to(&b[..k.min(16)], peer);
            sizes.push(k);
        }
        sizes
    });
    let sent = lab
        .client
        .enter(|| {
            let s = udp_client(1);
            let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
            // 39 NOPs and an end of list: IHL 15.
            let mut opts = [1u8; 40];
            opts[39] = 0;
            let pmtu = libc::IP_PMTUDISC_DO;
            // SAFETY: valid socket and option buffers.
            unsafe {
                assert_eq!(
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_IP,
                        libc::IP_OPTIONS,
                        opts.as_ptr().cast(),
                        40
                    ),
                    0
                );
                assert_eq!(
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_IP,
                        libc::IP_MTU_DISCOVER,
                        (&raw const pmtu).cast(),
                        4
                    ),
                    0
                );
            }
            // A small one first: the flow exists and caches its next hop
            // (MTU 1280) before the big one comes.
            s.send_to(b"small", public(5353)).unwrap();
            s.recv_from(&mut [0u8; 64]).expect("the small datagram's answer");
            // 1240 bytes of payload: UDP 1248, IPv4 60 + 1248 = 1308 > 1280
            // (but 1248 + 20 = 1268 would fit).
            let mut sent = 0;
            for _ in 0..3 {
                if s.send_to(&[7u8; 1240], public(5353)).is_ok() {
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            sent
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(sent >= 1);
    let route = lab.client.ip(&["route", "get", &ADDRS.gw_public.to_string()]).unwrap();
    assert!(route.contains("mtu 1280"), "no fragmentation needed reached the client: {route}");
    let sizes = echo.join().unwrap();
    assert_eq!(sizes, [5], "the backend got an oversized datagram: {sizes:?}");
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert!(counter(&stats, "icmp_frag_needed_sent") >= 1, "{stats}");
}

#[test]
fn sighup_changes_the_conntrack_timeouts_of_the_running_sweep() {
    let lab = Lab::new().unwrap();
    let bpf = BpfFs::mount(lab.dir.join("bpf")).unwrap();
    let cfg = lab.dir.join("forwarder.toml");
    let text = |udp: u32| {
        format!(
            "[conntrack]\ntimeouts = {{ udp = {udp} }}\n\n[[rule]]\nproto = \"udp\"\nport = 5353\nto = \"192.168.1.50:53\"\n"
        )
    };
    std::fs::write(&cfg, text(600)).unwrap();
    let mut fwd =
        lab.start_forwarder(&["--config", cfg.to_str().unwrap(), "--pin-dir", bpf.arg()]).unwrap();
    let backend = udp_backend(&lab, 53, 5);
    lab.client
        .enter(|| udp_client(1).send_to(b"q", public(5353)).unwrap())
        .unwrap()
        .join()
        .unwrap();
    backend.recv_from(&mut [0u8; 8]).unwrap();
    let entries = || -> u64 {
        let (_, list) = cli(&lab, &["conntrack", "list", "--json", "--port", "5353"]);
        serde_json::from_str::<Vec<serde_json::Value>>(&list).map_or(u64::MAX, |v| v.len() as u64)
    };
    assert_eq!(entries(), 1);
    std::fs::write(&cfg, text(2)).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(fwd.proc.pid().cast_signed(), libc::SIGHUP) };
    wait_log(&fwd, "SIGHUP: reloaded", 10);
    let t0 = Instant::now();
    while entries() != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the flow still lives under the old 600 s timeout"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    finish(&lab, &mut fwd, Expect::default());
}

#[test]
fn xdp_mode_on_an_untuned_lab_sends_through_tc_then_follows_the_peers_gro() {
    // Every veth at the kernel's defaults: XDP cannot transmit into the
    // gateway's veths. The explicit XDP mode says so and forwards anyway
    // (through TC); when the server's end gets GRO, int0 goes to XDP.
    let lab = Lab::with_tuning(false).unwrap();
    let mut fwd = lab.start_forwarder(&["--rule", HTTP_RULE, "--mode", "xdp"]).unwrap();
    let log = fwd.log_text();
    for i in ["pub0", "int0"] {
        assert!(
            log.contains(&format!(
                "{i}: XDP cannot transmit into it: its veth peer has no XDP program and GRO off"
            )),
            "{log}"
        );
    }
    let server = http_server(&lab, 4);
    for _ in 0..2 {
        assert_eq!(get(&lab), format!("hello {}", ADDRS.gw_internal));
    }
    let (_, stats) = cli(&lab, &["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(counter(&stats, "xdp_redirected"), 0, "{stats}");
    assert!(counter(&stats, "xdp_to_tc") > 0 && counter(&stats, "tc_redirected") > 0, "{stats}");
    assert!(v["egress"].as_array().unwrap().iter().all(|e| e["xdp"] == false), "{v}");
    // GRO at the server's end: int0 takes XDP frames now.
    lab.server.exec("ethtool", &["-K", "eth0", "gro", "on"]).unwrap();
    wait_log(&fwd, "int0: XDP transmits into it (the device takes redirected XDP frames)", 5);
    for _ in 0..2 {
        assert_eq!(get(&lab), format!("hello {}", ADDRS.gw_internal));
    }
    server.join().unwrap();
    let stats = finish(&lab, &mut fwd, Expect::log(&["XDP cannot transmit into it"]));
    // Client → server packets went out by XDP; replies (into pub0) by TC.
    assert!(counter(&stats, "xdp_redirected") >= 2 * 3, "{stats}");
    assert!(fwd.log_text().lines().all(|l| !l.contains(" ERROR ")), "{}", fwd.log_text());
}

#[test]
fn refused_xdp_transmits_are_watched_and_move_the_egress_to_tc() {
    // As on a kernel that does not report XDP features: XDP tries the
    // untuned veths, the kernel refuses its frames (EOPNOTSUPP), the
    // tracepoint counts them, and the daemon moves them to TC.
    let lab = Lab::with_tuning(false).unwrap();
    let mut fwd = lab
        .start_forwarder_env(
            &[("FORWARDER_FAILPOINTS", "xdp_features_unknown")],
            &["--public", "pub0", "--internal", "int0", "--rule", HTTP_RULE, "--mode", "xdp"],
        )
        .unwrap();
    let server = http_server(&lab, 3);
    // The first SYN is refused at int0; its retransmission (after 1 s)
    // finds int0 on TC.
    let first = get_within(&lab, Duration::from_secs(5));
    assert!(first.ends_with(&format!("hello {}", ADDRS.gw_internal)), "{first:?}");
    wait_log(&fwd, "int0: XDP cannot transmit into it: the kernel refused", 5);
    let log = fwd.log_text();
    assert!(
        log.contains("EOPNOTSUPP (the device takes no XDP frames)")
            && log.contains("XDP is tried again in 30 s"),
        "{log}"
    );
    // From then on nothing is lost.
    for _ in 0..2 {
        // (Under a second: a SYN lost and retransmitted fails it.)
        let body = get_within(&lab, Duration::from_millis(900));
        assert!(body.ends_with(&format!("hello {}", ADDRS.gw_internal)), "{body:?}");
    }
    server.join().unwrap();
    let (_, stats) = cli(&lab, &["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let int0 =
        v["egress"].as_array().unwrap().iter().find(|e| e["iface"] == "int0").unwrap().clone();
    assert!(
        int0["xdp"] == false
            && int0["refused_frames"].as_u64().unwrap() >= 1
            && int0["fallbacks"] == 1,
        "{v}"
    );
    finish(
        &lab,
        &mut fwd,
        Expect::log(&["fault injection armed", "XDP cannot transmit into it: the kernel refused"]),
    );
}
