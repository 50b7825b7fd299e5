//! End to end: the audit trail. Every new connection attempt to a
//! forwarded port is an event from the kernel that the daemon logs (and
//! sends to syslog); under a flood the events are rate-limited and what was
//! not emitted is counted and reported.

mod common;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::*;
use forwarder_testkit::{Host, Lab};

/// The audit lines of a daemon log, without the logger's prefix.
fn audit_lines(log: &str) -> Vec<String> {
    log.lines().filter_map(|l| l.split_once(" audit] ").map(|(_, rest)| rest.to_string())).collect()
}

/// `n` HTTP requests from the client, one connection each; returns their
/// local (client) ports.
fn requests(lab: &Lab, n: usize) -> Vec<u16> {
    lab.client
        .enter(move || {
            (0..n)
                .map(|_| {
                    let mut s =
                        TcpStream::connect_timeout(&public(8080), CONNECT).expect("connect");
                    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                    let mut r = String::new();
                    s.read_to_string(&mut r).unwrap();
                    assert!(r.starts_with("HTTP/1.0 200"), "{r}");
                    s.local_addr().unwrap().port()
                })
                .collect()
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn every_new_connection_is_an_audit_event_accepted_or_denied() {
    let (lab, mut fwd) =
        lab_with(&["tcp:8080=192.168.1.50:80,src=203.0.113.10/32", "udp:5300=192.168.1.50:5300"]);
    lab.client.ip(&["addr", "add", "203.0.113.20/24", "dev", "eth0"]).unwrap();
    let server = http_server(&lab, 3);
    let client_ports = requests(&lab, 3);
    let peers = server.join().unwrap();
    // A client outside the allow-list: dropped, and audited as denied.
    let denied =
        lab.client.enter(|| connect_from([203, 0, 113, 20], public(8080))).unwrap().join().unwrap();
    assert_eq!(denied, Err(std::io::ErrorKind::TimedOut));
    // One UDP flow.
    let backend = udp_backend(&lab, 5300, 5);
    let udp_port = lab
        .client
        .enter(|| {
            let s = udp_client(5);
            s.send_to(b"ping", public(5300)).unwrap();
            s.local_addr().unwrap().port()
        })
        .unwrap()
        .join()
        .unwrap();
    let (n, udp_peer) = backend.recv_from(&mut [0u8; 16]).unwrap();
    assert_eq!(n, 4);
    let stats = finish(&lab, &mut fwd, Expect::counters(&["drop_src_denied"]));
    let lines = audit_lines(&fwd.log_text());

    // Accepted TCP: one event per connection, naming the client's port,
    // the backend and the masquerade source the server saw.
    let accepted: Vec<&String> = lines.iter().filter(|l| l.contains(" accepted tcp ")).collect();
    assert_eq!(accepted.len(), 3, "{lines:#?}");
    for ((line, cport), peer) in accepted.iter().zip(&client_ports).zip(&peers) {
        let want = format!(
            " accepted tcp 203.0.113.10:{cport} -> 203.0.113.1:8080 on pub0 rule 1 (tcp:8080=192.168.1.50:80,src=203.0.113.10/32) backend 192.168.1.50:80 via 192.168.1.1:{}",
            peer.port()
        );
        assert!(line.ends_with(&want), "{line}\nwanted …{want}");
        // The event's own time stamp leads the line (RFC 3339, ms, UTC).
        let ts = line.split(' ').next().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{line}");
    }
    // Denied: at least the first SYN (the client retransmits), none
    // accepted from that address.
    let denied: Vec<&String> =
        lines.iter().filter(|l| l.contains(" denied tcp 203.0.113.20:")).collect();
    assert!(!denied.is_empty(), "{lines:#?}");
    assert!(
        denied.iter().all(|l| l.contains(" -> 203.0.113.1:8080 on pub0 rule 1 ")
            && l.ends_with("backend 192.168.1.50:80 (source not allowed)")),
        "{denied:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("accepted tcp 203.0.113.20")), "{lines:#?}");
    // UDP.
    let udp: Vec<&String> = lines.iter().filter(|l| l.contains(" accepted udp ")).collect();
    assert_eq!(udp.len(), 1, "{lines:#?}");
    assert!(udp[0].ends_with(&format!("accepted udp 203.0.113.10:{udp_port} -> 203.0.113.1:5300 on pub0 rule 2 (udp:5300=192.168.1.50:5300) backend 192.168.1.50:5300 via 192.168.1.1:{}", udp_peer.port())), "{}", udp[0]);
    // Every event the kernel emitted was logged; nothing was limited.
    assert_eq!(counter(&stats, "audit_events"), lines.len() as u64, "{stats}");
    assert_eq!(
        counter(&stats, "audit_rate_limited") + counter(&stats, "audit_ring_full"),
        0,
        "{stats}"
    );
    assert_eq!(rule_counters(&stats, 0).2 + rule_counters(&stats, 1).2, 4, "{stats}");
}

#[test]
fn an_audit_flood_is_rate_limited_counted_and_reported() {
    const FLOWS: usize = 1500;
    let lab = Lab::new().unwrap();
    let mut fwd = lab
        .start_forwarder(&[
            "--rule",
            "udp:5300=192.168.1.50:5300",
            "--audit-rate",
            "20",
            "--audit-burst",
            "20",
        ])
        .unwrap();
    let t0 = Instant::now();
    // Each datagram from a new socket: a new flow, an audit event to emit.
    lab.client
        .enter(|| {
            for _ in 0..FLOWS {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                s.send_to(b"x", public(5300)).unwrap();
            }
        })
        .unwrap()
        .join()
        .unwrap();
    // Events are emitted while the first packets arrive, so during the
    // flood (and the last millisecond of its packets' way).
    let flood_ms = u64::try_from(t0.elapsed().as_millis()).unwrap() + 100;
    // The daemon reports the losses every 10 s (and at exit).
    let t1 = Instant::now();
    while reported(&fwd.log_text()) == 0 {
        assert!(
            t1.elapsed() < Duration::from_secs(15),
            "no loss report (they come every 10 s):\n{}",
            fwd.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stats = finish(&lab, &mut fwd, Expect::log(&["events suppressed by the rate limit"]));
    let log = fwd.log_text();
    let events = audit_lines(&log).iter().filter(|l| l.contains(" accepted udp ")).count() as u64;
    let emitted = counter(&stats, "audit_events");
    let limited = counter(&stats, "audit_rate_limited");
    let new = rule_counters(&stats, 0).2;
    assert!(new >= FLOWS as u64 * 9 / 10, "{stats}");
    // Every attempt is accounted for: emitted, or limited, or lost to a full ring.
    assert_eq!(emitted + limited + counter(&stats, "audit_ring_full"), new, "{stats}");
    assert_eq!(events, emitted, "{log}");
    // Within the limit, per CPU: the burst, then 20/s.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u64;
    assert!(
        emitted * 1000 <= cpus * (20 * 1000 + 20 * flood_ms),
        "{emitted} events in a flood of {flood_ms} ms"
    );
    // At least one CPU's burst went out.
    assert!(emitted >= 20, "{emitted}");
    // The reports (the last one at exit) add up to the counter.
    assert_eq!(reported(&log), limited, "{log}");
}

/// The sum of the "N events suppressed by the rate limit" reports.
fn reported(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(" events suppressed by the rate limit"))
        .filter_map(|l| {
            l.split_once(" audit] ").and_then(|(_, r)| r.split(' ').next()?.parse::<u64>().ok())
        })
        .sum()
}

/// rsyslogd on the server host, listening on UDP 5514 and TCP 5601,
/// writing what it parsed (RFC 5424) to a file (appending, when started
/// again). Returns the file and the daemon's PID.
fn rsyslog(lab: &mut Lab) -> (std::path::PathBuf, u32) {
    let dir = lab.dir.join("rsyslog");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("received.log");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{d}\")\nmodule(load=\"imudp\")\nmodule(load=\"imtcp\")\n\
             input(type=\"imudp\" port=\"5514\")\ninput(type=\"imtcp\" port=\"5601\")\n\
             *.* action(type=\"omfile\" file=\"{o}\" template=\"RSYSLOG_SyslogProtocol23Format\")\n",
            d = dir.display(),
            o = out.display()
        ),
    )
    .unwrap();
    let pid = dir.join("rsyslogd.pid");
    let pid = lab
        .spawn(
            Host::Server,
            "rsyslogd",
            &["-n", "-f", conf.to_str().unwrap(), "-i", pid.to_str().unwrap()],
        )
        .unwrap();
    // Listening on both ports.
    let t0 = Instant::now();
    loop {
        let ss = lab.server.exec("ss", &["-lntu"]).unwrap_or_default();
        if ss.contains(":5514") && ss.contains(":5601") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "rsyslogd did not start: {ss}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (out, pid)
}

#[test]
fn audit_events_reach_a_real_syslog_server_over_udp_and_tcp() {
    let mut lab = Lab::new().unwrap();
    let (received, _) = rsyslog(&mut lab);
    let mut ports = Vec::new();
    for (k, target) in
        ["udp://192.168.1.50:5514", "tcp://192.168.1.50:5601"].into_iter().enumerate()
    {
        let mut fwd = lab.start_forwarder(&["--rule", HTTP_RULE, "--syslog", target]).unwrap();
        let server = http_server(&lab, 2);
        let cports = requests(&lab, 2);
        let peers = server.join().unwrap();
        ports.extend(cports.into_iter().zip(peers.iter().map(std::net::SocketAddr::port)));
        // Both messages received before the daemon goes.
        let t0 = Instant::now();
        while std::fs::read_to_string(&received).unwrap_or_default().lines().count() < 2 * (k + 1) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "syslog over {target} did not receive the events"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        finish(&lab, &mut fwd, Expect::default());
        assert!(fwd.log_text().contains(&format!("also to syslog {target}")), "{}", fwd.log_text());
    }
    let t0 = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&received).unwrap_or_default();
        if text.lines().count() >= 4 || t0.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // rsyslog parsed each as RFC 5424: facility daemon, severity notice
    // (<29>), version 1, our app name, MSGID 1 (accepted), the structured
    // data, and the readable line.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let mut seen = BTreeSet::new();
    for (cport, mport) in &ports {
        let sd = format!(
            " forwarder {{pid}} 1 [forwarder@32473 backend=\"192.168.1.50:80\" client=\"203.0.113.10:{cport}\" proto=\"tcp\" public=\"203.0.113.1:8080\" rule=\"1\" snat=\"192.168.1.1:{mport}\" verdict=\"accepted\"] "
        );
        let (before, after) = sd.split_once("{pid}").unwrap();
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("client=\"203.0.113.10:{cport}\"")))
            .unwrap_or_else(|| panic!("no message for client port {cport}:\n{text}"));
        assert!(line.starts_with("<29>1 "), "{line}");
        let (_, rest) = line.split_once(before).unwrap_or_else(|| panic!("{line}"));
        let (pid, rest) = rest.split_once(' ').unwrap();
        assert!(pid.parse::<u32>().is_ok(), "{line}");
        assert!(format!(" {rest}").starts_with(after.trim_end()), "{line}");
        assert!(line.ends_with(&format!("via 192.168.1.1:{mport}")), "{line}");
        seen.insert(*cport);
    }
    assert_eq!(seen.len(), 4);
}

/// The sum of the "N not delivered to syslog" figures of the loss reports.
fn undelivered(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| {
            l.split_once(" lost to a full ring, ")?.1.split(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// The client ports of the audit events the syslog server wrote.
fn received_ports(file: &std::path::Path) -> BTreeSet<u16> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("client=\"203.0.113.10:")?.1.split('"').next()?.parse().ok())
        .collect()
}

#[test]
fn a_syslog_server_going_away_costs_counted_messages_never_forwarding_and_is_reconnected() {
    let mut lab = Lab::new().unwrap();
    let (received, pid) = rsyslog(&mut lab);
    let target = "tcp://192.168.1.50:5601";
    let mut fwd = lab.start_forwarder(&["--rule", HTTP_RULE, "--syslog", target]).unwrap();
    let server = http_server(&lab, 64);
    let before = requests(&lab, 2);
    let t0 = Instant::now();
    while received_ports(&received).len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(5), "syslog did not receive the first events");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server goes (its socket closes): the events of the connections
    // made meanwhile are dropped and counted, each one; forwarding goes on.
    assert!(lab.stop_spawned(pid));
    let down = requests(&lab, 3);
    wait_log(&fwd, &format!("syslog: cannot send to {target}"), 5);
    let t0 = Instant::now();
    while undelivered(&fwd.log_text()) < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(12),
            "the 3 lost events were not reported:\n{}",
            fwd.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back: the sender connects again (it retries every 5 s) and delivers.
    let _ = rsyslog(&mut lab);
    let mut after = Vec::new();
    let t0 = Instant::now();
    while !fwd.log_text().contains(&format!("syslog: connected to {target} again")) {
        assert!(t0.elapsed() < Duration::from_secs(10), "no reconnect:\n{}", fwd.log_text());
        after.extend(requests(&lab, 1));
        std::thread::sleep(Duration::from_millis(300));
    }
    let last = *after.last().expect("at least one request after the restart");
    let t0 = Instant::now();
    while !received_ports(&received).contains(&last) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the event that reconnected was not delivered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = received_ports(&received);
    assert!(before.iter().all(|p| got.contains(p)), "{got:?} {before:?}");
    assert!(
        down.iter().all(|p| !got.contains(p)),
        "events sent while the server was down arrived: {got:?} {down:?}"
    );
    let log = fwd.log_text();
    let stats =
        finish(&lab, &mut fwd, Expect::log(&["syslog: cannot send to", "not delivered to syslog"]));
    // Every connection went through and was counted.
    assert_eq!(
        rule_counters(&stats, 0).2,
        (before.len() + down.len() + after.len()) as u64,
        "{stats}"
    );
    // What did not arrive was counted: at least the 3 events of the
    // downtime, and no more than every event that did not arrive (each
    // of the retries' drops included) plus the reports sent meanwhile.
    let undelivered_sum = undelivered(&log);
    let events = before.len() + down.len() + after.len();
    let reports = log
        .lines()
        .filter(|l| l.contains(" not delivered to syslog since the last report"))
        .count();
    assert!(
        undelivered_sum >= 3 && undelivered_sum as usize <= events - got.len() + reports,
        "undelivered {undelivered_sum}, events {events}, received {}, reports {reports}\n{log}",
        got.len()
    );
    drop(server);
}
