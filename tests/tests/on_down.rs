//! End to end: `on_down = "reset"` — the TCP connections on a backend
//! that goes down are reset at both ends, idle ones included, their
//! entries freed, and the connections on the other backends run on.
//! Needs root (namespaces, XDP).

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use common::*;
use forwarder_testkit::Lab;

#[test]
fn on_down_reset_resets_both_ends_and_frees_the_entries() {
    let lab = Lab::new().unwrap();
    more_backend_addresses(&lab);
    let servers = [Server::start(&lab, 50), Server::start(&lab, 51)];
    let cfg = flag_checked(&lab, ("tcp", 8080), &[50, 51], 80, "on_down = \"reset\"\n");
    let mut fwd = lab.start_forwarder(&["--config", cfg.to_str().unwrap()]).unwrap();
    let both = ["192.168.1.50:80", "192.168.1.51:80"];
    wait_state(&lab, &both, "up", 5);
    // Two connections on .51 and one on .50, all idle from here on.
    let (mut on51, mut on50) = lab
        .client
        .enter(|| {
            let (mut on51, mut on50) = (Vec::new(), Vec::new());
            for _ in 0..200 {
                match connect() {
                    Ok((51, s)) if on51.len() < 2 => on51.push(s),
                    Ok((50, s)) if on50.is_empty() => on50.push(s),
                    _ => {}
                }
                if on51.len() == 2 && on50.len() == 1 {
                    break;
                }
            }
            (on51, on50)
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!((on51.len(), on50.len()), (2, 1), "connections on both backends");
    let conns = |b: &str| {
        backends(&lab).iter().find(|m| m["backend"] == b).unwrap()["connections"].as_u64().unwrap()
    };
    assert!(conns("192.168.1.51:80") >= 2);
    // .51's check fails: it goes down, and its connections are reset.
    std::fs::remove_file(flag(&lab, 51)).unwrap();
    let t0 = Instant::now();
    wait_state(&lab, &["192.168.1.51:80"], "down", 5);
    wait_log(&fwd, "TCP connection(s) to 192.168.1.51:80 reset", 3);
    // The client's ends, which sent nothing since: reset.
    for s in &mut on51 {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let r = s.read(&mut [0u8; 16]);
        assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset), "client end");
    }
    eprintln!("client ends reset {:?} after the check began failing", t0.elapsed());
    // The server's ends: reset too.
    let t1 = Instant::now();
    while servers[1].resets.load(Ordering::Relaxed) < 2 && t1.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(servers[1].resets.load(Ordering::Relaxed), 2, "server ends");
    // The connection on .50 runs on, its bytes intact.
    let s = &mut on50[0];
    s.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    // The reset connections' entries are freed after the grace (2 s).
    let t2 = Instant::now();
    while conns("192.168.1.51:80") > 0 && t2.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(conns("192.168.1.51:80"), 0, "entries left");
    // (.50 also has the closing ones the search for .51 dropped.)
    assert!(conns("192.168.1.50:80") >= 1);
    drop((on51, on50));
    let stats = finish(
        &lab,
        &mut fwd,
        Expect { counters: &["drop_conn_reset"], log: &["192.168.1.51:80 is down"] },
    );
    // One reset per end at least (the probes' answers).
    assert!(counter(&stats, "drop_conn_reset") >= 4, "{stats}");
    assert_eq!(servers[0].resets.load(Ordering::Relaxed), 0, "the other backend's connections");
    drop(servers);
}
