//! End to end: floods that fill the connection table (SYN, UDP) and the
//! new-connection rate limit — real clients still get through, the excess
//! is dropped and counted. Needs root.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;
use forwarder_testkit::{
    Lab,
    flood::{self, Sources},
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
