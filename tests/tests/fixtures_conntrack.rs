//! Fixtures of the connection table through the real programs
//! (`BPF_PROG_TEST_RUN`): a closed tuple opened again, the table read in
//! batches and expired, a full table that gives way to new connections
//! from any CPU but never takes an established one.

use forwarder::{
    datapath::{CtUsage, Datapath, Sweep, SweepPass},
    settings::Mode,
};
use forwarder_testkit::ADDRS;
use frames::*;
use harness::TestRunExt;

mod frames;
#[path = "../harness/mod.rs"]
#[allow(dead_code, reason = "the fixtures run the forwarder's programs, not the benchmark object")]
mod harness;

#[test]
fn a_closed_tuple_opened_again_is_a_new_connection_in_both_hooks() {
    // A client that reuses its port after the connection closed (it was
    // not the side in TIME_WAIT): the new SYN meets the old entry, which
    // must start over as a new connection, counted as one, same
    // translation.
    in_gateway(1024, |dp, m, pub_if, int_if, _| {
        let (client, public, internal, server) =
            (ADDRS.client, ADDRS.gw_public, ADDRS.gw_internal, ADDRS.server);
        let rules = fixture_settings(Mode::default()).rules;
        for (hook, cport) in [("XDP", 45000u16), ("TC", 45001)] {
            let p = snat_port(client, cport, 8080);
            let run = |f: &[u8], ifx: u32| {
                let ok = if hook == "XDP" {
                    dp.test_run_xdp(f, ifx, 1).unwrap().0 == XDP_REDIRECT
                } else {
                    dp.test_run_tc(f, ifx).unwrap().0 == TC_ACT_REDIRECT
                };
                assert!(ok, "{hook}: not forwarded:\n{}", hex(f));
            };
            let from_client = |seq, flags| {
                frame(
                    m.client,
                    m.gw_pub,
                    client,
                    public,
                    64,
                    &L4::Tcp { sport: cport, dport: 8080, seq, flags },
                    &[],
                )
            };
            let from_server = |seq, flags| {
                frame(
                    m.server,
                    m.gw_int,
                    server,
                    internal,
                    64,
                    &L4::Tcp { sport: 80, dport: p, seq, flags },
                    &[],
                )
            };
            let state = || {
                dp.flows()
                    .unwrap()
                    .iter()
                    .find(|(k, _)| k.sport == cport.to_be_bytes())
                    .map(|(_, e)| e.state)
            };
            let new_conns = || dp.snapshot(&rules).unwrap().rules[0].new_connections;
            let before = new_conns();
            run(&from_client(1, "S"), pub_if);
            run(&from_server(9, "SA"), int_if);
            run(&from_client(2, "A"), pub_if);
            assert_eq!(state(), Some(forwarder_common::conntrack::CT_ESTABLISHED), "{hook}");
            run(&from_server(10, "FA"), int_if);
            run(&from_client(2, "FA"), pub_if);
            run(&from_server(11, "A"), int_if);
            assert!(state() >= Some(forwarder_common::conntrack::CT_FIN), "{hook}: {:?}", state());
            // The same tuple again: the same translation, a new connection.
            let (verdict, out) = if hook == "XDP" {
                let (v, o, _) = dp.test_run_xdp(&from_client(100, "S"), pub_if, 1).unwrap();
                (v == XDP_REDIRECT, o)
            } else {
                let (v, o) = dp.test_run_tc(&from_client(100, "S"), pub_if).unwrap();
                (v == TC_ACT_REDIRECT, o)
            };
            assert!(verdict, "{hook}: the reopening SYN was not forwarded");
            assert_eq!(
                hex(&out),
                hex(&frame(
                    m.gw_int,
                    m.server,
                    internal,
                    server,
                    63,
                    &L4::Tcp { sport: p, dport: 80, seq: 100, flags: "S" },
                    &[]
                )),
                "{hook}"
            );
            assert_eq!(state(), Some(forwarder_common::conntrack::CT_NEW), "{hook}");
            assert_eq!(new_conns() - before, 2, "{hook}: the reopened connection was not counted");
        }
    });
}

#[test]
fn flow_table_is_read_whole_in_batches_and_expired_in_full() {
    in_gateway(8192, |dp, m, pub_if, _, _| {
        // 5 000 UDP flows: 10 000 entries, more than one batch (4 096).
        let n = 5000u16;
        for i in 0..n {
            let f = frame(
                m.client,
                m.gw_pub,
                ADDRS.client,
                ADDRS.gw_public,
                64,
                &L4::Udp { sport: 20000 + i, dport: 5353 },
                b"q",
            );
            assert_eq!(dp.test_run_xdp(&f, pub_if, 1).unwrap().0, XDP_REDIRECT, "flow {i}");
        }
        let flows = dp.flows().unwrap();
        let keys: std::collections::HashSet<_> = flows.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            (flows.len(), keys.len()),
            (2 * usize::from(n), 2 * usize::from(n)),
            "every entry once"
        );
        // Each entry's peer is there: both directions of each connection.
        for (k, e) in &flows {
            assert!(
                keys.contains(&forwarder_common::abi::FlowKey::new(&e.tuple().reversed(), k.proto)),
                "{k:?} without its peer"
            );
        }
        let snap = dp.snapshot(&[]).unwrap();
        assert_eq!((snap.connections, snap.snat_ports_in_use), (u64::from(n), u64::from(n)));
        // Nothing idle yet; the pass reports what is left (the figures the
        // stats file shows).
        let t = forwarder_common::conntrack::Timeouts::default();
        let now = forwarder::datapath::monotonic_ns();
        let entries = 2 * usize::from(n);
        let all = CtUsage { entries: entries as u64, snat_ports: u64::from(n) };
        assert_eq!(
            dp.collect_expired(&t, now).unwrap(),
            SweepPass { scanned: entries, removed: 0, usage: all }
        );
        // A day later, all of it, a part per step. A connection is read
        // once or twice (its second entry goes with the first one read,
        // unless the walk has passed it), so a pass of 1 000-entry steps
        // reads 5 000 to 10 000 entries in 5 to 10 steps, and removes all.
        let later = now + 86_400_000_000_000;
        let mut sweep = Sweep::default();
        let mut steps = 1;
        let pass = loop {
            match dp.sweep_step(&mut sweep, &t, later, 1000).unwrap() {
                Some(pass) => break pass,
                None => steps += 1,
            }
        };
        assert!((usize::from(n)..=entries).contains(&pass.scanned), "{pass:?}");
        assert!(
            (pass.scanned / 1024..=pass.scanned / 1000 + 1).contains(&steps),
            "{steps} steps for {pass:?}"
        );
        assert_eq!((pass.removed, pass.usage), (entries, CtUsage::default()));
        assert!(dp.flows().unwrap().is_empty());
        // The next step starts a new pass, over the empty table.
        assert_eq!(dp.sweep_step(&mut sweep, &t, later, 1000).unwrap(), Some(SweepPass::default()));
    });
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; the call only reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    assert_eq!(rc, 0, "pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
}

#[test]
fn a_full_table_gives_way_to_new_connections_from_any_cpu_but_never_an_established_one() {
    if std::thread::available_parallelism().map_or(1, std::num::NonZero::get) < 2 {
        eprintln!("one CPU: the cross-CPU case needs two");
        return;
    }
    // Room for 16 connections.
    in_gateway(16, |dp, m, pub_if, int_if, _| {
        let (c, g, gi, s) = (ADDRS.client, ADDRS.gw_public, ADDRS.gw_internal, ADDRS.server);
        let syn = |port: u16| {
            frame(
                m.client,
                m.gw_pub,
                c,
                g,
                64,
                &L4::Tcp { sport: port, dport: 8080, seq: 1, flags: "S" },
                &[],
            )
        };
        let early = |dp: &Datapath| dp.snapshot(&[]).unwrap().counters["early_drop"];
        let refused = |dp: &Datapath| dp.snapshot(&[]).unwrap().counters["table_full_refused"];
        // 16 half-open connections, set up on CPU 0: its ring holds them.
        pin_to(0);
        for p in 0..16 {
            assert_eq!(dp.test_run_xdp(&syn(30_000 + p), pub_if, 1).unwrap().0, XDP_REDIRECT);
        }
        assert_eq!(dp.flows().unwrap().len(), 32);
        // A 17th on CPU 1 (whose ring is empty) takes the place of CPU 0's
        // oldest.
        pin_to(1);
        assert_eq!(
            dp.test_run_xdp(&syn(31_000), pub_if, 1).unwrap().0,
            XDP_REDIRECT,
            "no room made from the other CPU's ring"
        );
        assert_eq!((early(dp), refused(dp)), (1, 0));
        let flows = dp.flows().unwrap();
        assert_eq!(flows.len(), 32);
        assert!(
            !flows.iter().any(|(k, _)| k.sport == 30_000u16.to_be_bytes() && k.saddr == c.octets()),
            "the oldest half-open one went"
        );
        // Now make all 16 assured: SYN-ACK from the backend, ACK from the client.
        for (k, e) in flows.iter().filter(|(_, e)| e.dir == forwarder_common::abi::DIR_ORIGINAL) {
            let (cport, sport) = (u16::from_be_bytes(k.sport), u16::from_be_bytes(e.sport));
            let synack = frame(
                m.server,
                m.gw_int,
                s,
                gi,
                64,
                &L4::Tcp { sport: 80, dport: sport, seq: 9, flags: "SA" },
                &[],
            );
            assert_eq!(dp.test_run_xdp(&synack, int_if, 1).unwrap().0, XDP_REDIRECT);
            let ack = frame(
                m.client,
                m.gw_pub,
                c,
                g,
                64,
                &L4::Tcp { sport: cport, dport: 8080, seq: 2, flags: "A" },
                &[],
            );
            assert_eq!(dp.test_run_xdp(&ack, pub_if, 1).unwrap().0, XDP_REDIRECT);
        }
        assert!(
            dp.flows()
                .unwrap()
                .iter()
                .all(|(_, e)| e.state == forwarder_common::conntrack::CT_ESTABLISHED)
        );
        // Nothing may give way now, on either CPU: refused, counted.
        for cpu in [0, 1] {
            pin_to(cpu);
            assert_eq!(
                dp.test_run_xdp(&syn(32_000 + cpu as u16), pub_if, 1).unwrap().0,
                XDP_DROP,
                "an established connection was evicted (CPU {cpu})"
            );
        }
        assert_eq!((early(dp), refused(dp)), (1, 2));
        assert_eq!(dp.flows().unwrap().len(), 32);
    });
}
