//! End to end: the connection table — full, it refuses new connections
//! and keeps the rest; each entry expires by the timeout of its state.
//! Needs root (namespaces, XDP).

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use common::*;

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
#[expect(clippy::too_many_lines, reason = "one scenario, step by step, on one lab")]
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
