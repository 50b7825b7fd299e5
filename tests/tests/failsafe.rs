//! End to end: the forwarder on a bad day — untuned interfaces, floods
//! that fill the connection table, oversized packets with IP options, and
//! failures of the daemon's own housekeeping. Needs root.

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;
use forwarder_testkit::{ADDRS, BpfFs, Lab};

#[test]
fn housekeeping_failures_are_logged_counted_retried_and_never_stop_forwarding() {
    let lab = Lab::new().unwrap();
    let mut fwd = lab
        .start_forwarder_faulty(
            "conntrack_sweep=3,egress=2,table_watch=2,audit_report=1",
            &["--rule", HTTP_RULE, "--rule", "udp:5353=192.168.1.50:53", "--ct-timeout", "udp=2"],
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
    replace_file_with_directory(&stats_path);
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

/// Puts a non-empty directory where the daemon writes a file. The daemon
/// rewrites it (a temporary file renamed over it) on its own clock, so the
/// file may be back between the removal and the directory's creation: that
/// is tried again until the directory stands.
fn replace_file_with_directory(path: &std::path::Path) {
    for _ in 0..100 {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing {}: {e}", path.display()),
        }
        if std::fs::create_dir(path).is_ok() || path.is_dir() {
            std::fs::create_dir_all(path.join("blocker")).unwrap();
            return;
        }
    }
    panic!("{} kept coming back as a file", path.display());
}

#[test]
fn a_fatal_error_leaves_a_pinned_datapath_forwarding() {
    let lab = Lab::new().unwrap();
    let bpf = BpfFs::mount(lab.dir.join("bpf")).unwrap();
    let pin = bpf.arg().to_string();
    // The loop ends with an injected fatal error at its 4th tick.
    let mut fwd =
        lab.start_forwarder_faulty("fatal@4", &["--rule", HTTP_RULE, "--pin-dir", &pin]).unwrap();
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
    let pins = forwarder::pin::Pins { dir: bpf.0.clone() };
    let data = aya::maps::MapData::from_pin(pins.map(forwarder_common::abi::MAP_FLOWS)).unwrap();
    let mut flows: aya::maps::HashMap<_, FlowKey, FlowEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
    let now = forwarder::datapath::monotonic_ns();
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
        for (k, mut e) in entry_pair(&client, &out, 6, 0, 0, now, 0) {
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
