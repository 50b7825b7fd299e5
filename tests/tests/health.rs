//! End to end: health checks take a dead backend out of its rule's table
//! and bring it back, drain stops new connections and lets established
//! ones finish, and a rule with no live backend refuses (and counts) new
//! connections: TCP with a reset, UDP with "port unreachable". Needs root (namespaces, XDP).

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::*;
use forwarder_testkit::Lab;

/// A checked rule over .50, .51, .52: TCP checks every second, up after
/// 2 successes, down after 2 failures.
fn start(lab: &Lab) -> forwarder_testkit::Forwarder {
    let cfg = lab.dir.join("health.toml");
    std::fs::write(
        &cfg,
        "[[rule]]\nproto = \"tcp\"\nport = 8080\nbackends = [{ to = \"192.168.1.50:80\" }, { to = \"192.168.1.51:80\" }, { to = \"192.168.1.52:80\" }]\n[rule.health]\ncheck = \"tcp\"\ninterval = 1\ntimeout = 1\nrise = 2\nfall = 2\n",
    )
    .unwrap();
    lab.start_forwarder(&["--config", cfg.to_str().unwrap()]).unwrap()
}

/// `n` connections from the client: how many each backend answered, and
/// the failures.
fn spread(lab: &Lab, n: usize) -> (BTreeMap<u8, u32>, Vec<String>) {
    lab.client
        .enter(move || {
            let (mut got, mut failed) = (BTreeMap::new(), Vec::new());
            for _ in 0..n {
                match connect() {
                    Ok((b, _)) => *got.entry(b).or_default() += 1,
                    Err(e) => failed.push(e),
                }
            }
            (got, failed)
        })
        .unwrap()
        .join()
        .unwrap()
}

/// A connection that landed on backend `b`, held in the client namespace
/// by a thread that echoes `rounds` × 1000 patterned bytes through it,
/// one round each 100 ms: whether every byte came back as sent.
fn transfer_on(lab: &Lab, b: u8, rounds: usize) -> std::thread::JoinHandle<Result<(), String>> {
    lab.client
        .enter(move || {
            let mut s = (0..200)
                .find_map(|_| connect().ok().filter(|(got, _)| *got == b).map(|(_, s)| s))
                .expect("a connection to the backend");
            for i in 0..rounds {
                let data = pattern(1000, i as u64);
                s.write_all(&data).map_err(|e| format!("round {i}: send: {e}"))?;
                let mut back = vec![0u8; data.len()];
                s.read_exact(&mut back).map_err(|e| format!("round {i}: echo: {e}"))?;
                if back != data {
                    return Err(format!("round {i}: the echo differs"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
        .unwrap()
}

#[test]
fn a_dead_backend_leaves_the_table_and_comes_back() {
    let lab = Lab::new().unwrap();
    more_backend_addresses(&lab);
    let (s50, s51, s52) =
        (Server::start(&lab, 50), Server::start(&lab, 51), Server::start(&lab, 52));
    let mut fwd = start(&lab);
    let all = ["192.168.1.50:80", "192.168.1.51:80", "192.168.1.52:80"];
    wait_state(&lab, &all, "up", 5);
    let (got, failed) = spread(&lab, 90);
    assert!(failed.is_empty() && got.len() == 3, "{got:?} {failed:?}");
    // A transfer to .50 runs through all that follows (about 12 s).
    let transfer = transfer_on(&lab, 50, 120);
    // .51 stops: down within interval x fall + 1 s = 3 s.
    drop(s51);
    let t0 = Instant::now();
    wait_state(&lab, &["192.168.1.51:80"], "down", 5);
    let detected = t0.elapsed();
    eprintln!("down detected after {detected:?}");
    assert!(detected <= Duration::from_secs(3), "{detected:?}");
    // From then on no new connection goes to it, and none fails.
    let (got, failed) = spread(&lab, 90);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(!got.contains_key(&51) && got.values().sum::<u32>() == 90, "{got:?}");
    // .51 starts again: up within interval x rise + 1 s = 3 s, and takes
    // its share again.
    let s51 = Server::start(&lab, 51);
    let t1 = Instant::now();
    wait_state(&lab, &["192.168.1.51:80"], "up", 5);
    let back = t1.elapsed();
    eprintln!("up again after {back:?}");
    assert!(back <= Duration::from_secs(3), "{back:?}");
    let (got, failed) = spread(&lab, 90);
    assert!(failed.is_empty() && got.get(&51).copied().unwrap_or(0) >= 15, "{got:?} {failed:?}");
    transfer.join().unwrap().expect("the transfer to .50 ran through, byte for byte");
    drop((s50, s51, s52));
    let stats = finish(&lab, &mut fwd, Expect::log(&["192.168.1.51:80 is down"]));
    assert_eq!(counter(&stats, "drop_no_backend"), 0, "{stats}");
    let log = fwd.log_text();
    assert!(log.contains("rule 1: backend 192.168.1.51:80 is up"), "{log}");
}

#[test]
fn drain_stops_new_connections_and_lets_a_transfer_finish() {
    let lab = Lab::new().unwrap();
    more_backend_addresses(&lab);
    let servers = [Server::start(&lab, 50), Server::start(&lab, 51), Server::start(&lab, 52)];
    let mut fwd = start(&lab);
    wait_state(&lab, &["192.168.1.50:80", "192.168.1.51:80", "192.168.1.52:80"], "up", 5);
    let transfer = transfer_on(&lab, 52, 40);
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out) = cli(&lab, &["backend", "drain", "192.168.1.52:80"]);
    assert!(ok && out.contains("draining 192.168.1.52:80"), "{out}");
    let listed = backends(&lab);
    let b52 = listed.iter().find(|b| b["backend"] == "192.168.1.52:80").unwrap();
    assert_eq!(b52["state"], "draining", "{listed:?}");
    assert!(b52["connections"].as_u64().unwrap() >= 1, "the transfer is left: {listed:?}");
    let (got, failed) = spread(&lab, 60);
    assert!(failed.is_empty() && !got.contains_key(&52), "{got:?} {failed:?}");
    transfer.join().unwrap().expect("the drained backend's transfer completed");
    let (ok, out) = cli(&lab, &["backend", "undrain", "192.168.1.52:80"]);
    assert!(ok, "{out}");
    let (got, _) = spread(&lab, 60);
    assert!(got.contains_key(&52), "{got:?}");
    // A weight of 0: out of the table, and `save` keeps it.
    let (ok, out) = cli(&lab, &["backend", "weight", "192.168.1.50:80", "0"]);
    assert!(ok, "{out}");
    let (got, failed) = spread(&lab, 60);
    assert!(failed.is_empty() && !got.contains_key(&50), "{got:?} {failed:?}");
    let path = lab.dir.join("saved.toml");
    assert!(cli(&lab, &["save", path.to_str().unwrap()]).0);
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(saved.contains("{ to = \"192.168.1.50:80\", weight = 0 }"), "{saved}");
    assert!(saved.contains("[rule.health]\ncheck = \"tcp\"\ninterval = 1"), "{saved}");
    let (ok, out) = cli(&lab, &["backend", "drain", "192.168.1.99:80"]);
    assert!(!ok && out.contains("no backend 192.168.1.99:80"), "{out}");
    drop(servers);
    finish(&lab, &mut fwd, Expect::default());
}

#[test]
fn no_live_backend_refuses_new_connections_at_once() {
    let lab = Lab::new().unwrap();
    // Nothing listens on the backends: their checks fail from the start,
    // and neither is ever in the table.
    let mut fwd = lab
        .start_forwarder(&[
            "--rule",
            "tcp:8080=192.168.1.50:80,health=tcp",
            "--rule",
            "udp:5300=192.168.1.50:53,health=tcp",
        ])
        .unwrap();
    // The SYN the client sends, and what it gets back.
    let syn = forwarder_testkit::Capture::open_sent(&lab.client, "eth0").unwrap();
    let back = forwarder_testkit::Capture::open(&lab.client, "eth0").unwrap();
    let (tcp, udp, took) = lab
        .client
        .enter(|| {
            let t0 = Instant::now();
            let tcp = TcpStream::connect_timeout(&public(8080), Duration::from_secs(3)).map(|_| ());
            let took = t0.elapsed();
            // A connected UDP socket hears of the "port unreachable".
            let u = udp_client(3);
            u.connect(public(5300)).unwrap();
            u.send(b"q").unwrap();
            let udp = u.recv(&mut [0u8; 8]).map(|_| ());
            (tcp.map_err(|e| e.kind()), udp.map_err(|e| e.kind()), took)
        })
        .unwrap()
        .join()
        .unwrap();
    eprintln!("TCP refused after {took:?}");
    assert_eq!(tcp, Err(std::io::ErrorKind::ConnectionRefused));
    assert!(took < Duration::from_secs(1), "{took:?}");
    let syn = syn
        .next(Duration::from_secs(1), |f| forwarder_testkit::capture::is_l4_to(f, 6, 8080))
        .unwrap();
    let reset = back.next(Duration::from_secs(1), |f| f.len() >= 38 && f[23] == 6).unwrap();
    assert_reset_answers(&syn, &reset);
    assert_eq!(udp, Err(std::io::ErrorKind::ConnectionRefused));
    wait_state(&lab, &["192.168.1.50:80"], "down", 10);
    let stats = finish(
        &lab,
        &mut fwd,
        Expect {
            counters: &["drop_no_backend"],
            log: &["is down", "no backend can take new connections"],
        },
    );
    assert!(counter(&stats, "drop_no_backend") >= 2, "{stats}");
}

/// `reset` (a frame) is the TCP reset answering the SYN `syn`: from the
/// address and port it was sent to, back to its sender, `RST|ACK`
/// acknowledging the SYN, nothing else, both checksums right.
fn assert_reset_answers(syn: &[u8], reset: &[u8]) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let parts = |f: &[u8]| {
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = p.net else { panic!("not IPv4: {f:02x?}") };
        let Some(TransportSlice::Tcp(t)) = p.transport else { panic!("not TCP: {f:02x?}") };
        (ip.header().to_header(), t.to_header(), t.payload().len())
    };
    let ((sip, s, _), (rip, r, len)) = (parts(syn), parts(reset));
    assert!(s.syn && !s.ack, "{s:?}");
    assert_eq!((rip.source, rip.destination), (sip.destination, sip.source), "{rip:?}");
    assert_eq!((r.source_port, r.destination_port), (s.destination_port, s.source_port));
    assert!(r.rst && r.ack && !r.syn && !r.fin && !r.psh, "{r:?}");
    assert_eq!(
        (r.sequence_number, r.acknowledgment_number),
        (0, s.sequence_number.wrapping_add(1))
    );
    assert_eq!(len, 0, "a reset carries no data");
    assert_eq!(rip.header_checksum, rip.calc_header_checksum(), "{rip:?}");
    assert_eq!(r.checksum, r.calc_checksum_ipv4(&rip, &[]).unwrap(), "{r:?}");
    // The frame goes back the way the SYN came.
    assert_eq!((&reset[0..6], &reset[6..12]), (&syn[6..12], &syn[0..6]));
}

#[test]
fn a_udp_flow_moves_to_a_live_backend_at_its_next_datagram() {
    use std::net::UdpSocket;
    let lab = Lab::new().unwrap();
    more_backend_addresses(&lab);
    // Each backend answers with the last byte of its address.
    let servers: Vec<_> = [50u8, 51].iter().map(|b| udp_identity(&lab, *b, 53, 20)).collect();
    // The check is a file per backend: there = up.
    let cfg = flag_checked(&lab, ("udp", 5300), &[50, 51], 53, "");
    let mut fwd = lab.start_forwarder(&["--config", cfg.to_str().unwrap()]).unwrap();
    wait_state(&lab, &["192.168.1.50:53", "192.168.1.51:53"], "up", 5);
    // A flow that landed on .51, then .51 goes down.
    let ask = |s: &UdpSocket| {
        s.send_to(b"q", public(5300)).unwrap();
        let mut b = [0u8; 4];
        s.recv_from(&mut b).map(|_| b[0]).map_err(|e| e.to_string())
    };
    let sock = lab
        .client
        .enter(move || {
            (0..100).map(|_| udp_client(2)).find(|s| ask(s) == Ok(51)).expect("a flow on .51")
        })
        .unwrap()
        .join()
        .unwrap();
    std::fs::remove_file(flag(&lab, 51)).unwrap();
    wait_state(&lab, &["192.168.1.51:53"], "down", 5);
    wait_log(&fwd, "UDP flow(s) to 192.168.1.51:53 forgotten", 3);
    // Its next datagram: answered by .50.
    assert_eq!(ask(&sock), Ok(50), "the flow did not move");
    assert_eq!(ask(&sock), Ok(50), "nor stay");
    finish(&lab, &mut fwd, Expect::log(&["192.168.1.51:53 is down"]));
    drop(sock);
    drop(servers);
}

#[test]
fn a_daemon_that_adopts_the_datapath_starts_with_the_backend_states_it_finds() {
    let lab = Lab::new().unwrap();
    more_backend_addresses(&lab);
    let bpf = forwarder_testkit::BpfFs::mount(lab.dir.join("bpf")).unwrap();
    let servers: Vec<Server> = [50, 51, 52].iter().map(|b| Server::start(&lab, *b)).collect();
    // Checks that answer 2 s after they start: a new daemon's first
    // verdict on any backend comes that late.
    let list: Vec<String> =
        [50, 51, 52].iter().map(|b| format!("{{ to = \"192.168.1.{b}:80\" }}")).collect();
    for b in [50, 51, 52] {
        std::fs::write(flag(&lab, b), "").unwrap();
    }
    let cfg = lab.dir.join("slow.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[rule]]\nproto = \"tcp\"\nport = 8080\nbackends = [{}]\n[rule.health]\ncheck = \"exec\"\ncommand = \"sleep 2; test -e {}/up-%a\"\ninterval = 3\ntimeout = 3\nrise = 1\nfall = 1\n",
            list.join(", "),
            lab.dir.display()
        ),
    )
    .unwrap();
    let args = ["--config", cfg.to_str().unwrap(), "--pin-dir", bpf.arg(), "--persist"];
    let mut fwd = lab.start_forwarder(&args).unwrap();
    let all = ["192.168.1.50:80", "192.168.1.51:80", "192.168.1.52:80"];
    wait_state(&lab, &all, "up", 10);
    // .52 goes down, .51 is drained.
    std::fs::remove_file(flag(&lab, 52)).unwrap();
    wait_state(&lab, &["192.168.1.52:80"], "down", 10);
    let (ok, out) = cli(&lab, &["backend", "drain", "192.168.1.51:80"]);
    assert!(ok, "{out}");
    fwd.stop().unwrap();
    // The next daemon (a hitless restart) starts from those states: no
    // check of its own has answered yet, and .50 takes new connections
    // at once (a pending .50 would refuse them until its check answers).
    let mut fwd = lab.start_forwarder(&args).unwrap();
    let t0 = Instant::now();
    let now: Vec<(String, String, bool)> = backends(&lab)
        .iter()
        .map(|b| {
            let addr = b["backend"].as_str().unwrap().to_string();
            (addr, b["state"].as_str().unwrap().to_string(), b["check"].is_null())
        })
        .collect();
    let answered = lab.client.enter(connect).unwrap().join().unwrap().map(|(b, _)| b);
    assert!(t0.elapsed() < Duration::from_millis(1500), "too slow to tell: {:?}", t0.elapsed());
    assert_eq!(
        now,
        [
            ("192.168.1.50:80".to_string(), "up".to_string(), true),
            ("192.168.1.51:80".to_string(), "draining".to_string(), true),
            ("192.168.1.52:80".to_string(), "down".to_string(), true),
        ]
    );
    assert_eq!(answered, Ok(50));
    // The checks go on from there: .52 comes back when it passes again.
    std::fs::write(flag(&lab, 52), "").unwrap();
    wait_state(&lab, &["192.168.1.52:80"], "up", 10);
    finish(&lab, &mut fwd, Expect::default());
    drop(servers);
}
