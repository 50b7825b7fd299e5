//! End to end: the daemon's life and control plane — a hitless restart
//! after SIGKILL, SIGHUP reload, the control socket, rules added and
//! removed at runtime. Needs root (namespaces, XDP).

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use common::*;
use forwarder_testkit::BpfFs;
use sha2::{Digest, Sha256};

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
#[expect(clippy::too_many_lines, reason = "one scenario, step by step, on one lab")]
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
    let refused = connect_outcome(&lab, public(8080));
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
    // One live masqueraded connection, one masquerade port.
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        (v["connections"].as_u64(), v["snat_ports_in_use"].as_u64()),
        (Some(1), Some(1)),
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
    let mut back = forwarder::settings::Settings::default();
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
    let cli = |args: &[&str]| common::cli(&lab, args);
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
    assert!(ok && out.trim() == r#"{"handle":2}"#, "{out}");
    assert!(roundtrip(&mut connect(9090).unwrap()));
    // A duplicate is refused by the daemon; nothing changes.
    let (ok, out) = cli(&["rule", "add", "tcp:9090=192.168.1.50:81"]);
    assert!(!ok && out.contains("duplicate rule"), "{out}");
    let (ok, out) = cli(&["rule", "del", "1"]);
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
