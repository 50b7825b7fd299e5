//! Fixture tables through the real XDP and TC programs with
//! `BPF_PROG_TEST_RUN`: input frame + map state → expected verdict +
//! expected output frame, byte for byte (addresses, ports, MACs, TTL, every
//! checksum). The expected frames are built from scratch by etherparse and
//! checksums are verified by this file's own RFC 1071, so an incremental
//! checksum that is off by anything fails here. The XDP → TC handoff runs
//! live (the frame XDP passes enters the stack and meets the attached TC
//! program) and is checked where the server receives it. Runs inside a
//! lab's gateway namespace so `bpf_fib_lookup` sees real routes and
//! (permanent) neighbours.

use forwarder::{datapath::XdpAttach, iface, settings::Mode};
use forwarder_common::abi;
use forwarder_testkit::{ADDRS, GW_INTERNAL_IF, GW_PUBLIC_IF, Lab};
use frames::{table::run_table, *};
use harness::TestRunExt;

mod frames;

#[path = "../harness/mod.rs"]
#[allow(dead_code, reason = "the fixtures run the forwarder's programs, not the benchmark object")]
mod harness;

#[test]
fn fixture_table_through_the_xdp_program() {
    in_gateway(1024, |dp, m, pub_if, int_if, gw_ns| {
        run_table(dp, m, pub_if, int_if);
        // 9. A frame above the egress MTU (in generic XDP, a GRO'd skb
        //    looks like this): XDP does not translate it but hands it,
        //    untouched, to TC, which lets the egress device segment it.
        let ip = |args: &[&str]| {
            assert!(
                std::process::Command::new("ip")
                    .args(["-n", gw_ns])
                    .args(args)
                    .status()
                    .unwrap()
                    .success()
            );
        };
        ip(&["link", "set", GW_INTERNAL_IF, "mtu", "1280"]);
        // The flow's cached next hop (MTU 1500) is trusted for 1 s:
        // within it, the frame would still be sent; after it, the
        // route is looked up again and the new MTU applies.
        let big0 = frame(
            m.client,
            m.gw_pub,
            ADDRS.client,
            ADDRS.gw_public,
            64,
            &L4::Tcp { sport: 40000, dport: 8080, seq: 3, flags: "A" },
            &[7u8; 1400],
        );
        assert_eq!(
            dp.test_run_xdp(&big0, pub_if, 1).unwrap().0,
            XDP_REDIRECT,
            "within the cache's second"
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let big = frame(
            m.client,
            m.gw_pub,
            ADDRS.client,
            ADDRS.gw_public,
            64,
            &L4::Tcp { sport: 40000, dport: 8080, seq: 3, flags: "A" },
            &[7u8; 1400],
        );
        check(dp, "above the egress MTU", &big, pub_if, XDP_PASS, &handed(&big));
        ip(&["link", "set", GW_INTERNAL_IF, "mtu", "1500"]);
        // 10. Next hop not resolved: XDP creates no state and hands the
        //     untouched packet to TC (bpf_redirect_neigh).
        ip(&["neigh", "del", &ADDRS.server.to_string(), "dev", GW_INTERNAL_IF]);
        let flows_before = dp.flows().unwrap().len();
        let syn = frame(
            m.client,
            m.gw_pub,
            ADDRS.client,
            ADDRS.gw_public,
            64,
            &L4::Tcp { sport: 40005, dport: 8080, seq: 1, flags: "S" },
            &[],
        );
        check(dp, "neighbour unknown", &syn, pub_if, XDP_PASS, &handed(&syn));
        assert_eq!(
            dp.flows().unwrap().len(),
            flows_before,
            "state created for a packet XDP did not send"
        );
    });
}

#[test]
#[expect(clippy::many_single_char_names, reason = "c/g/gi/s mirror the lab diagram")]
#[expect(clippy::too_many_lines, reason = "a fixture table, row by row")]
fn fixture_table_through_the_tc_program() {
    // TC mode's own translation, row by row as XDP's: a new flow (set up
    // by TC's new-flow program), the reply, established data, IP options,
    // UDP with and without checksum, an interface-bound rule.
    in_gateway(1024, |dp, m, pub_if, int_if, _| {
        let (c, g, gi, s) = (ADDRS.client, ADDRS.gw_public, ADDRS.gw_internal, ADDRS.server);
        let p = snat_port(c, 40000, 8080);
        let syn = L4::Tcp { sport: 40000, dport: 8080, seq: 1, flags: "S" };
        let syn_out = L4::Tcp { sport: p, dport: 80, seq: 1, flags: "S" };
        check_tc(
            dp,
            "new TCP flow",
            &frame(m.client, m.gw_pub, c, g, 64, &syn, &[]),
            pub_if,
            TC_ACT_REDIRECT,
            &frame(m.gw_int, m.server, gi, s, 63, &syn_out, &[]),
        );
        assert_eq!(dp.flows().unwrap().len(), 2, "one connection = two entries");
        let synack = L4::Tcp { sport: 80, dport: p, seq: 9, flags: "SA" };
        let synack_out = L4::Tcp { sport: 8080, dport: 40000, seq: 9, flags: "SA" };
        check_tc(
            dp,
            "reply",
            &frame(m.server, m.gw_int, s, gi, 64, &synack, &[]),
            int_if,
            TC_ACT_REDIRECT,
            &frame(m.gw_pub, m.client, g, c, 63, &synack_out, &[]),
        );
        let data = L4::Tcp { sport: 40000, dport: 8080, seq: 2, flags: "PA" };
        let data_out = L4::Tcp { sport: p, dport: 80, seq: 2, flags: "PA" };
        let body = b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n";
        let want = frame(m.gw_int, m.server, gi, s, 63, &data_out, body);
        check_tc(
            dp,
            "established",
            &frame(m.client, m.gw_pub, c, g, 64, &data, body),
            pub_if,
            TC_ACT_REDIRECT,
            &want,
        );
        check_tc(
            dp,
            "IP options",
            &with_ip_options(&frame(m.client, m.gw_pub, c, g, 64, &data, body)),
            pub_if,
            TC_ACT_REDIRECT,
            &with_ip_options(&want),
        );
        let flows = dp.flows().unwrap();
        assert!(
            flows.iter().all(|(_, e)| e.state == forwarder_common::conntrack::CT_ESTABLISHED),
            "{flows:?}"
        );
        let pu = snat_port(c, 41000, 5353);
        let q = L4::Udp { sport: 41000, dport: 5353 };
        let q_out = L4::Udp { sport: pu, dport: 53 };
        check_tc(
            dp,
            "UDP",
            &frame(m.client, m.gw_pub, c, g, 64, &q, b"query"),
            pub_if,
            TC_ACT_REDIRECT,
            &frame(m.gw_int, m.server, gi, s, 63, &q_out, b"query"),
        );
        let mut zero_in = frame(m.client, m.gw_pub, c, g, 64, &q, b"nocsum");
        zero_in[40..42].copy_from_slice(&[0, 0]);
        let mut zero_out = frame(m.gw_int, m.server, gi, s, 63, &q_out, b"nocsum");
        zero_out[40..42].copy_from_slice(&[0, 0]);
        check_tc(dp, "UDP checksum 0", &zero_in, pub_if, TC_ACT_REDIRECT, &zero_out);
        let r = L4::Udp { sport: 53, dport: pu };
        let r_out = L4::Udp { sport: 5353, dport: 41000 };
        check_tc(
            dp,
            "UDP reply",
            &frame(m.server, m.gw_int, s, gi, 64, &r, b"answer"),
            int_if,
            TC_ACT_REDIRECT,
            &frame(m.gw_pub, m.client, g, c, 63, &r_out, b"answer"),
        );
        let pb = snat_port(c, 41001, 7000);
        check_tc(
            dp,
            "interface-bound rule",
            &frame(m.client, m.gw_pub, c, g, 64, &L4::Udp { sport: 41001, dport: 7000 }, b"x"),
            pub_if,
            TC_ACT_REDIRECT,
            &frame(m.gw_int, m.server, gi, s, 63, &L4::Udp { sport: pb, dport: 7001 }, b"x"),
        );
        let other = frame(
            m.client,
            m.gw_pub,
            c,
            g,
            64,
            &L4::Tcp { sport: 40001, dport: 9999, seq: 1, flags: "S" },
            &[],
        );
        check_tc(dp, "TCP to a port without rule", &other, pub_if, TC_ACT_OK, &other);
        let ttl1 = frame(
            m.client,
            m.gw_pub,
            c,
            g,
            1,
            &L4::Tcp { sport: 40004, dport: 8080, seq: 1, flags: "S" },
            &[],
        );
        assert_eq!(dp.test_run_tc(&ttl1, pub_if).unwrap().0, TC_ACT_SHOT, "TTL 1");
        assert_eq!(dp.flows().unwrap().len(), 6);
    });
}

#[test]
#[expect(clippy::many_single_char_names, reason = "c/g/gi/s mirror the lab diagram")]
#[expect(clippy::too_many_lines, reason = "a fixture table, row by row")]
fn xdp_hands_packets_to_tc_and_tc_sends_them() {
    // XDP mode, programs attached; the internal interface leaves XDP's
    // transmit set (as an egress found unable to take XDP frames does).
    let lab = Lab::new().unwrap();
    let m = lab.prime_gateway().unwrap();
    let wire = forwarder_testkit::Capture::open(&lab.server, "eth0").unwrap();
    let client = forwarder_testkit::Netns { name: lab.client.name.clone() };
    lab.gateway
        .enter(move || {
            let (mut dp, compiled) = load(1024, Mode::Xdp);
            dp.attach(&compiled, XdpAttach::Native).unwrap();
            let (pub_if, int_if) =
                (iface::index(GW_PUBLIC_IF).unwrap(), iface::index(GW_INTERNAL_IF).unwrap());
            let (c, g, gi, s) = (ADDRS.client, ADDRS.gw_public, ADDRS.gw_internal, ADDRS.server);
            let p = snat_port(c, 40000, 8080);
            let tcp = |sport, seq, flags| {
                frame(
                    m.client,
                    m.gw_pub,
                    c,
                    g,
                    64,
                    &L4::Tcp { sport, dport: 8080, seq, flags },
                    &[],
                )
            };
            let tcp_out = |seq, flags| {
                frame(
                    m.gw_int,
                    m.server,
                    gi,
                    s,
                    63,
                    &L4::Tcp { sport: p, dport: 80, seq, flags },
                    &[],
                )
            };
            // A connection XDP set up and sent (its next hop cached by the
            // second packet) ...
            check(
                &dp,
                "new flow, XDP transmits",
                &tcp(40000, 1, "S"),
                pub_if,
                XDP_REDIRECT,
                &tcp_out(1, "S"),
            );
            check(
                &dp,
                "next packet, XDP transmits",
                &tcp(40000, 2, "A"),
                pub_if,
                XDP_REDIRECT,
                &tcp_out(2, "A"),
            );
            assert!(
                dp.set_xdp_egress(int_if, false).unwrap(),
                "int0 was not in XDP's transmit set"
            );
            // ... now handed to TC untouched: XDP asks the devmap for the
            // egress before it rewrites anything.
            let ack = tcp(40000, 3, "A");
            check(
                &dp,
                "cached next hop out of the transmit set",
                &ack,
                pub_if,
                XDP_PASS,
                &handed(&ack),
            );
            // A new connection towards it: XDP hands it over untouched and
            // sets nothing up; TC will.
            let syn = tcp(40006, 1, "S");
            check(
                &dp,
                "new flow towards an egress XDP may not use",
                &syn,
                pub_if,
                XDP_PASS,
                &handed(&syn),
            );
            assert_eq!(dp.flows().unwrap().len(), 2, "XDP set up a flow it handed over");
            // With XDP in front, TC leaves alone what XDP did not mark;
            // without metadata, nothing is marked and TC takes every packet,
            // as it does where XDP found it cannot mark (IFACE_F_TC_ALL, set
            // by XDP itself when the driver gives it no metadata area).
            assert_eq!(
                dp.iface_flags(pub_if).unwrap() & abi::IFACE_F_TC_ALL,
                0,
                "XDP found a hand-over it could not mark"
            );
            if xdp_meta() {
                check_tc(&dp, "not handed over", &syn, pub_if, TC_ACT_OK, &syn);
                dp.set_tc_takes_all(pub_if, true).unwrap();
            }
            {
                let p6 = snat_port(c, 40006, 8080);
                let (verdict, out) = dp.test_run_tc(&syn, pub_if).unwrap();
                assert_eq!(verdict, TC_ACT_REDIRECT, "unmarked SYN (TC)");
                let want = frame(
                    m.gw_int,
                    m.server,
                    gi,
                    s,
                    63,
                    &L4::Tcp { sport: p6, dport: 80, seq: 1, flags: "S" },
                    &[],
                );
                assert_eq!(hex(&out[14..]), hex(&want[14..]), "unmarked SYN (TC): its IP packet");
            }
            if xdp_meta() {
                dp.set_tc_takes_all(pub_if, false).unwrap();
            }
            let flows = 4;
            assert_eq!(dp.flows().unwrap().len(), flows, "entries (two a connection)");
            // Both halves, live: the client sends the frame to pub0, where
            // XDP passes it into the stack (marked, with metadata); TC sends
            // it; the server receives it.
            let expect = |what: &str, input: &[u8], want: &[u8], is: &dyn Fn(&[u8]) -> bool| {
                client.send_frame("eth0", input).unwrap();
                let got = wire.next(std::time::Duration::from_secs(2), is).unwrap_or_else(|| {
                    panic!(
                        "{what}: nothing arrived; counters {:?}",
                        dp.snapshot(&[]).map(|s| s.counters)
                    )
                });
                assert_eq!(hex(&got), hex(want), "{what}: the frame the server received");
            };
            expect("handoff, established flow", &tcp(40000, 4, "A"), &tcp_out(4, "A"), &|f| {
                forwarder_testkit::capture::is_l4_to(f, 6, 80)
            });
            let pu = snat_port(c, 41000, 5353);
            let q = frame(
                m.client,
                m.gw_pub,
                c,
                g,
                64,
                &L4::Udp { sport: 41000, dport: 5353 },
                b"query",
            );
            let q_out =
                frame(m.gw_int, m.server, gi, s, 63, &L4::Udp { sport: pu, dport: 53 }, b"query");
            expect("whole handoff, new UDP flow", &q, &q_out, &|f| {
                forwarder_testkit::capture::is_l4_to(f, 17, 53)
            });
            assert_eq!(dp.flows().unwrap().len(), flows + 2, "TC did not set the UDP flow up");
            let err = icmp_err(
                m.client,
                m.gw_pub,
                c,
                g,
                64,
                3,
                &quote(g, c, &L4::Udp { sport: 5353, dport: 41000 }, 8),
            );
            let err_out = icmp_err(
                m.gw_int,
                m.server,
                gi,
                s,
                63,
                3,
                &quote(s, gi, &L4::Udp { sport: 53, dport: pu }, 8),
            );
            expect("whole handoff, ICMP error", &err, &err_out, &|f| f.len() > 23 && f[23] == 1);
            // (The server answers the stray ACK and datagram, RST and ICMP,
            // through the datapath too: at least these.)
            let n = dp.snapshot(&[]).unwrap().counters;
            assert!(
                n["xdp_redirected"] >= 2
                    && n["xdp_to_tc"] >= 5
                    && n["tc_redirected"] >= 3
                    && n["icmp_translated"] >= 1,
                "{n:?}"
            );
            assert_eq!(
                (n["drop_redirect_failed"], n["drop_rewrite_failed"], n["pass_malformed"]),
                (0, 0, 0),
                "{n:?}"
            );
        })
        .unwrap()
        .join()
        .unwrap();
}
