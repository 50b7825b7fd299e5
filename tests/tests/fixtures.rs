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

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;
use forwarder::{
    config::{Mode, Rule, Settings},
    iface,
    loader::{CtUsage, Datapath, Sweep, SweepPass, XdpAttach},
};
use forwarder_common::{
    abi::{DEFAULT_SNAT_PORT_MAX, DEFAULT_SNAT_PORT_MIN},
    conntrack::{snat_candidate, tuple_hash},
    nat::Tuple,
};
use forwarder_testkit::{ADDRS, GW_INTERNAL_IF, GW_PUBLIC_IF, Lab, Macs};
use harness::TestRunExt;

#[path = "../harness/mod.rs"]
#[allow(dead_code, reason = "the fixtures run the forwarder's programs, not the benchmark object")]
mod harness;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

enum L4<'a> {
    Tcp { sport: u16, dport: u16, seq: u32, flags: &'a str },
    Udp { sport: u16, dport: u16 },
}

fn frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    l4: &L4,
    payload: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(smac, dmac).ipv4(src.octets(), dst.octets(), ttl);
    let mut v = Vec::new();
    match *l4 {
        L4::Tcp { sport, dport, seq, flags } => {
            let mut b = ip.tcp(sport, dport, seq, 64240);
            if flags.contains('S') {
                b = b.syn();
            }
            if flags.contains('A') {
                b = b.ack(7);
            }
            if flags.contains('R') {
                b = b.rst();
            }
            if flags.contains('P') {
                b = b.psh();
            }
            if flags.contains('F') {
                b = b.fin();
            }
            b.write(&mut v, payload).unwrap();
        }
        L4::Udp { sport, dport } => ip.udp(sport, dport).write(&mut v, payload).unwrap(),
    }
    v
}

/// The one's-complement sum of `bytes` (big-endian 16-bit words, an odd
/// last byte padded with zero) on top of `init`, folded to 16 bits: this
/// test's own RFC 1071, written apart from the datapath's `csum` module so
/// that a mistake there cannot hide in the expected values.
fn ones_sum(bytes: &[u8], init: u64) -> u16 {
    let mut s = init;
    for w in bytes.chunks(2) {
        s += u64::from(w[0]) << 8 | u64::from(w.get(1).copied().unwrap_or(0));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The IPv4 header checksum to write into the header `h` (whose own
/// checksum field is skipped).
fn ip_csum(h: &[u8]) -> u16 {
    let mut v = h.to_vec();
    v[10] = 0;
    v[11] = 0;
    !ones_sum(&v, 0)
}

/// Rewrites the IPv4 header checksum of frame `f` (IHL from the header).
fn fix_ip_csum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 15) * 4;
    let c = ip_csum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// The pseudo-header's sum (RFC 793/768) of frame `f` for an L4 segment of
/// `len` bytes, unfolded.
fn pseudo_sum(f: &[u8], proto: u8, len: usize) -> u64 {
    f[26..34].chunks(2).map(|w| u64::from(w[0]) << 8 | u64::from(w[1])).sum::<u64>()
        + u64::from(proto)
        + len as u64
}

/// Inserts 4 bytes of IP options (NOP NOP NOP EOL): IHL 6.
fn with_ip_options(f: &[u8]) -> Vec<u8> {
    let mut v = f[..34].to_vec();
    v.extend_from_slice(&[1, 1, 1, 0]);
    v.extend_from_slice(&f[34..]);
    v[14] = 0x46;
    let tot = u16::from_be_bytes([v[16], v[17]]) + 4;
    v[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ip_csum(&mut v);
    v
}

/// Replaces the TCP checksum of an IHL-5 frame with the bare pseudo-header
/// sum, as a `CHECKSUM_PARTIAL` skb from a local sender carries it.
fn as_partial(f: &[u8]) -> Vec<u8> {
    let mut v = f.to_vec();
    let p = ones_sum(&[], pseudo_sum(&v, 6, v.len() - 34));
    v[50..52].copy_from_slice(&p.to_be_bytes());
    v
}

/// The start of a packet as an ICMP error quotes it: IPv4 header (TTL 63)
/// and the first `n` bytes of `l4`.
fn quote(src: Ipv4Addr, dst: Ipv4Addr, l4: &L4, n: usize) -> Vec<u8> {
    let f = frame([0; 6], [0; 6], src, dst, 63, l4, &[]);
    f[14..14 + 20 + n].to_vec()
}

/// An ICMP "destination unreachable" frame quoting `q`: code 4
/// (fragmentation needed, MTU 1280) or port unreachable.
fn icmp_err(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    code: u8,
    q: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    let t = match code {
        4 => etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
        ),
        _ => etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ),
    };
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src.octets(), dst.octets(), ttl)
        .icmpv4(t)
        .write(&mut v, q)
        .unwrap();
    v
}

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// What XDP does with a packet it leaves to TC: passes it untouched, with
/// the handoff word (0xf04d7c01, host order) in the metadata area, which
/// `BPF_PROG_TEST_RUN` returns in front of the frame.
fn handed(f: &[u8]) -> Vec<u8> {
    let mut v = 0xf04d_7c01_u32.to_ne_bytes().to_vec();
    v.extend_from_slice(f);
    v
}

/// Checks a row through the TC program.
#[track_caller]
fn check_tc(dp: &Datapath, name: &str, input: &[u8], ifindex: u32, want_verdict: u32, want: &[u8]) {
    let (verdict, out) = dp.test_run_tc(input, ifindex).unwrap();
    assert_eq!(
        verdict,
        want_verdict,
        "{name} (TC): verdict; counters: {:?}",
        dp.snapshot(&[]).map(|s| s.counters)
    );
    assert_eq!(hex(&out), hex(want), "{name} (TC): output frame");
}

#[track_caller]
fn check(dp: &Datapath, name: &str, input: &[u8], ifindex: u32, want_verdict: u32, want: &[u8]) {
    let (verdict, out, _) = dp.test_run_xdp(input, ifindex, 1).unwrap();
    assert_eq!(verdict, want_verdict, "{name}: verdict");
    assert_eq!(hex(&out), hex(want), "{name}: output frame");
}

/// The rules every fixture runs with.
const RULES: [&str; 4] = [
    "tcp:8080=192.168.1.50:80",
    "udp:5353=192.168.1.50:53",
    "udp:7000=192.168.1.50:7002",
    "udp:7000@pub0=192.168.1.50:7001",
];

/// A lab whose gateway has permanent neighbours and forwarding on, and a
/// datapath loaded (not attached) with [`RULES`] and room for `conns`
/// connections, its interfaces flagged for TC mode (the TC program then
/// takes every packet in its own test runs; the XDP program does not look
/// at them); runs `f` on a thread inside the gateway namespace with
/// (datapath, MACs, pub0, int0, netns).
fn in_gateway(conns: u32, f: impl FnOnce(&mut Datapath, &Macs, u32, u32, &str) + Send + 'static) {
    let lab = Lab::new().unwrap();
    let m = lab.prime_gateway().unwrap();
    let gw_ns = lab.gateway.name.clone();
    lab.gateway
        .enter(move || {
            let (mut dp, _) = load(conns, Mode::Tc);
            let (pub_if, int_if) =
                (iface::index(GW_PUBLIC_IF).unwrap(), iface::index(GW_INTERNAL_IF).unwrap());
            f(&mut dp, &m, pub_if, int_if, &gw_ns);
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A datapath loaded (in the calling thread's namespace) and configured
/// with [`RULES`], its interfaces in `mode`.
fn load(conns: u32, mode: Mode) -> (Datapath, forwarder::config::Compiled) {
    let settings = Settings {
        public: vec![GW_PUBLIC_IF.into()],
        internal: vec![GW_INTERNAL_IF.into()],
        rules: RULES.iter().map(|r| Rule::parse_spec(r).unwrap()).collect(),
        mode,
        ..Default::default()
    };
    let compiled = settings.compile(iface::index).unwrap();
    let mut dp = Datapath::load(conns).unwrap();
    dp.configure(&compiled).unwrap();
    (dp, compiled)
}

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
            )
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

/// What XDP does with a packet it translated for an egress it may not
/// transmit into: passes it with the transmit handoff (0xf04d7c02, then
/// the egress ifindex, host order) in the metadata area.
fn handed_tx(ifindex: u32, f: &[u8]) -> Vec<u8> {
    let mut v = 0xf04d_7c02_u32.to_ne_bytes().to_vec();
    v.extend_from_slice(&ifindex.to_ne_bytes());
    v.extend_from_slice(f);
    v
}

#[test]
#[expect(clippy::many_single_char_names, reason = "c/g/gi/s mirror the lab diagram")]
fn xdp_hands_packets_to_tc_through_the_metadata_area_and_tc_sends_them() {
    // XDP mode, programs attached; the internal interface leaves XDP's
    // transmit set (as an egress found unable to take XDP frames does).
    let lab = Lab::new().unwrap();
    let m = lab.prime_gateway().unwrap();
    let wire = forwarder_testkit::Capture::open(&lab.server, "eth0").unwrap();
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
            // ... now translated by XDP and handed to TC only to be sent.
            check(
                &dp,
                "cached next hop out of the transmit set",
                &tcp(40000, 3, "A"),
                pub_if,
                XDP_PASS,
                &handed_tx(int_if, &tcp_out(3, "A")),
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
            // With XDP in front, TC leaves alone what XDP did not hand it.
            check_tc(&dp, "not handed over", &syn, pub_if, TC_ACT_OK, &syn);
            assert_eq!(dp.flows().unwrap().len(), 2, "a flow was set up by a packet only passed");
            // Both halves, live: the frame XDP passes enters the stack on
            // pub0 with its metadata; TC sends it; the server receives it.
            let expect = |what: &str, input: &[u8], want: &[u8], is: &dyn Fn(&[u8]) -> bool| {
                dp.run_xdp_live(input, pub_if).unwrap();
                let got = wire.next(std::time::Duration::from_secs(2), is).unwrap_or_else(|| {
                    panic!(
                        "{what}: nothing arrived; counters {:?}",
                        dp.snapshot(&[]).map(|s| s.counters)
                    )
                });
                assert_eq!(hex(&got), hex(want), "{what}: the frame the server received");
            };
            expect("transmit handoff", &tcp(40000, 4, "A"), &tcp_out(4, "A"), &|f| {
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
            assert_eq!(dp.flows().unwrap().len(), 4, "TC did not set the UDP flow up");
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
            assert_eq!((n["drop_redirect_failed"], n["pass_malformed"]), (0, 0), "{n:?}");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_closed_tuple_opened_again_is_a_new_connection_in_both_hooks() {
    // A client that reuses its port after the connection closed (it was
    // not the side in TIME_WAIT): the new SYN meets the old entry, which
    // must start over as a new connection, counted as one, same
    // translation.
    in_gateway(1024, |dp, m, pub_if, int_if, _| {
        let (client, public, internal, server) =
            (ADDRS.client, ADDRS.gw_public, ADDRS.gw_internal, ADDRS.server);
        let rules: Vec<Rule> = RULES.iter().map(|r| Rule::parse_spec(r).unwrap()).collect();
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
        assert_eq!((snap.flow_entries, snap.snat_ports_in_use), (2 * u64::from(n), u64::from(n)));
        // Nothing idle yet; the pass reports what is left (the figures the
        // stats file shows).
        let t = forwarder_common::conntrack::Timeouts::default();
        let now = forwarder::loader::monotonic_ns();
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

fn snat_port(client: Ipv4Addr, cport: u16, dport: u16) -> u16 {
    let t = Tuple {
        saddr: client.octets(),
        daddr: ADDRS.gw_public.octets(),
        sport: cport.to_be_bytes(),
        dport: dport.to_be_bytes(),
    };
    snat_candidate(tuple_hash(&t), 0, DEFAULT_SNAT_PORT_MIN, DEFAULT_SNAT_PORT_MAX)
}

#[expect(clippy::many_single_char_names, reason = "c/g/gi/s mirror the lab diagram")]
#[expect(
    clippy::too_many_lines,
    reason = "a table: one row after the other reads best in one place"
)]
fn run_table(dp: &Datapath, m: &Macs, pub_if: u32, int_if: u32) {
    let (c, g, gi, s) = (ADDRS.client, ADDRS.gw_public, ADDRS.gw_internal, ADDRS.server);
    let p = snat_port(c, 40000, 8080);

    // 1. First packet of a TCP connection: DNAT + masquerade + route.
    let syn = L4::Tcp { sport: 40000, dport: 8080, seq: 1, flags: "S" };
    let syn_out = L4::Tcp { sport: p, dport: 80, seq: 1, flags: "S" };
    check(
        dp,
        "new TCP flow",
        &frame(m.client, m.gw_pub, c, g, 64, &syn, &[]),
        pub_if,
        XDP_REDIRECT,
        &frame(m.gw_int, m.server, gi, s, 63, &syn_out, &[]),
    );
    let flows = dp.flows().unwrap();
    assert_eq!(flows.len(), 2, "one connection = two entries: {flows:?}");

    // 2. The backend's answer, on the internal side: translated back.
    let synack = L4::Tcp { sport: 80, dport: p, seq: 9, flags: "SA" };
    let synack_out = L4::Tcp { sport: 8080, dport: 40000, seq: 9, flags: "SA" };
    check(
        dp,
        "reply",
        &frame(m.server, m.gw_int, s, gi, 64, &synack, &[]),
        int_if,
        XDP_REDIRECT,
        &frame(m.gw_pub, m.client, g, c, 63, &synack_out, &[]),
    );

    // 3. Established, with payload.
    let data = L4::Tcp { sport: 40000, dport: 8080, seq: 2, flags: "PA" };
    let data_out = L4::Tcp { sport: p, dport: 80, seq: 2, flags: "PA" };
    let body = b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n";
    let want = frame(m.gw_int, m.server, gi, s, 63, &data_out, body);
    check(
        dp,
        "established",
        &frame(m.client, m.gw_pub, c, g, 64, &data, body),
        pub_if,
        XDP_REDIRECT,
        &want,
    );
    // Its next hop is cached in the entry (the next packets skip the FIB
    // lookup for a second): the internal interface, the gateway's and the
    // server's MAC, the MTU.
    let flows = dp.flows().unwrap();
    let (_, e) = flows
        .iter()
        .find(|(k, _)| k.saddr == c.octets() && k.sport == 40000u16.to_be_bytes())
        .expect("original entry");
    assert_eq!(
        (e.nh_ifindex, e.nh_smac, e.nh_dmac, e.nh_mtu),
        (int_if, m.gw_int, m.server, 1500),
        "{e:?}"
    );
    assert!(e.nh_checked_ns > 0);

    // 4. The same packet with a partial checksum (local sender over veth):
    //    the output checksum must be complete and correct.
    check(
        dp,
        "partial checksum",
        &as_partial(&frame(m.client, m.gw_pub, c, g, 64, &data, body)),
        pub_if,
        XDP_REDIRECT,
        &want,
    );

    // 5. IP options (IHL 6): L4 found after them, options kept.
    check(
        dp,
        "IP options",
        &with_ip_options(&frame(m.client, m.gw_pub, c, g, 64, &data, body)),
        pub_if,
        XDP_REDIRECT,
        &with_ip_options(&want),
    );

    // 6. UDP: checksum computed, and a checksum of 0 stays 0.
    let pu = snat_port(c, 41000, 5353);
    let q = L4::Udp { sport: 41000, dport: 5353 };
    let q_out = L4::Udp { sport: pu, dport: 53 };
    check(
        dp,
        "UDP",
        &frame(m.client, m.gw_pub, c, g, 64, &q, b"query"),
        pub_if,
        XDP_REDIRECT,
        &frame(m.gw_int, m.server, gi, s, 63, &q_out, b"query"),
    );
    let mut zero_in = frame(m.client, m.gw_pub, c, g, 64, &q, b"nocsum");
    zero_in[40..42].copy_from_slice(&[0, 0]);
    let mut zero_out = frame(m.gw_int, m.server, gi, s, 63, &q_out, b"nocsum");
    zero_out[40..42].copy_from_slice(&[0, 0]);
    check(dp, "UDP checksum 0", &zero_in, pub_if, XDP_REDIRECT, &zero_out);
    assert_eq!(dp.flows().unwrap().len(), 4);

    // 6b. A rule bound to the ingress interface wins over the wildcard.
    let pb = snat_port(c, 41001, 7000);
    check(
        dp,
        "interface-bound rule",
        &frame(m.client, m.gw_pub, c, g, 64, &L4::Udp { sport: 41001, dport: 7000 }, b"x"),
        pub_if,
        XDP_REDIRECT,
        &frame(m.gw_int, m.server, gi, s, 63, &L4::Udp { sport: pb, dport: 7001 }, b"x"),
    );
    assert_eq!(dp.flows().unwrap().len(), 6);

    // 7. What is not ours passes untouched.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&m.client);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 28]);
    let other_port = frame(
        m.client,
        m.gw_pub,
        c,
        g,
        64,
        &L4::Tcp { sport: 40001, dport: 9999, seq: 1, flags: "S" },
        &[],
    );
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(m.client, m.gw_pub)
        .ipv4(c.octets(), g.octets(), 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut icmp, b"ping")
        .unwrap();
    let mut ipv6 = Vec::new();
    PacketBuilder::ethernet2(m.client, m.gw_pub)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(1, 8080)
        .write(&mut ipv6, b"v6")
        .unwrap();
    let new_syn = frame(
        m.client,
        m.gw_pub,
        c,
        g,
        64,
        &L4::Tcp { sport: 40002, dport: 8080, seq: 1, flags: "S" },
        &[],
    );
    let truncated = new_syn[..new_syn.len() - 4].to_vec();
    let mut fragment = new_syn.clone();
    fragment[20] |= 0x20; // more fragments
    fix_ip_csum(&mut fragment);
    let mut bad_ip_csum = new_syn.clone();
    bad_ip_csum[25] ^= 0x40;
    let mut bad_ihl = new_syn.clone();
    bad_ihl[14] = 0x44;
    let rst = frame(
        m.client,
        m.gw_pub,
        c,
        g,
        64,
        &L4::Tcp { sport: 40003, dport: 8080, seq: 1, flags: "R" },
        &[],
    );
    let on_internal = frame(
        m.server,
        m.gw_int,
        s,
        gi,
        64,
        &L4::Tcp { sport: 80, dport: 8080, seq: 1, flags: "S" },
        &[],
    );
    check(dp, "ICMP to the gateway", &icmp, pub_if, XDP_PASS, &handed(&icmp));
    check_tc(dp, "ICMP to the gateway", &icmp, pub_if, TC_ACT_OK, &icmp);
    check(dp, "fragment", &fragment, pub_if, XDP_PASS, &handed(&fragment));
    for (name, f, ifx) in [
        ("ARP", &arp, pub_if),
        ("TCP to a port without rule", &other_port, pub_if),
        ("IPv6", &ipv6, pub_if),
        ("truncated IPv4", &truncated, pub_if),
        ("IHL < 5", &bad_ihl, pub_if),
        ("bad IPv4 header checksum", &bad_ip_csum, pub_if),
        ("RST without a flow", &rst, pub_if),
        ("rule port on an internal interface", &on_internal, int_if),
    ] {
        check(dp, name, f, ifx, XDP_PASS, f);
    }
    assert_eq!(dp.flows().unwrap().len(), 6, "a passed packet created state");

    // 7b. ICMP errors about translated flows, both directions. The backend
    //     says "fragmentation needed" about the SYN we sent it (quoting
    //     gi:p -> s:80, 8 bytes of TCP): the client gets it from the public
    //     address, quoting its own packet c:40000 -> g:8080.
    // ICMP is rare: XDP leaves it to TC, which translates it.
    let e = icmp_err(m.server, m.gw_int, s, gi, 64, 4, &quote(gi, s, &syn_out, 8));
    check(dp, "ICMP frag-needed from the backend side", &e, int_if, XDP_PASS, &handed(&e));
    check_tc(
        dp,
        "ICMP frag-needed from the backend side",
        &e,
        int_if,
        TC_ACT_REDIRECT,
        &icmp_err(m.gw_pub, m.client, g, c, 63, 4, &quote(c, g, &syn, 8)),
    );
    // The client says "port unreachable" about a UDP reply (quoting
    // g:5353 -> c:41000, whole UDP header incl. its checksum): the backend
    // gets it from the gateway's internal address, quoting s:53 -> gi:pu.
    let reply = L4::Udp { sport: 5353, dport: 41000 };
    let reply_out = L4::Udp { sport: 53, dport: pu };
    check_tc(
        dp,
        "ICMP port unreachable from the client side",
        &icmp_err(m.client, m.gw_pub, c, g, 64, 3, &quote(g, c, &reply, 8)),
        pub_if,
        TC_ACT_REDIRECT,
        &icmp_err(m.gw_int, m.server, gi, s, 63, 3, &quote(s, gi, &reply_out, 8)),
    );
    // An error about a flow we do not know: untouched.
    let stranger =
        icmp_err(m.client, m.gw_pub, c, g, 64, 3, &quote(g, c, &L4::Udp { sport: 1, dport: 2 }, 8));
    check_tc(dp, "ICMP error about no flow of ours", &stranger, pub_if, TC_ACT_OK, &stranger);

    // 7c. A fragmented UDP datagram (2000 bytes of payload): the first
    //     fragment carries the UDP header, the second only data. Through
    //     TC (XDP leaves fragments to it): both leave translated, and the
    //     UDP checksum (over the whole datagram) is right.
    let big = vec![0x5a_u8; 2000];
    let split = |f: &[u8]| -> [Vec<u8>; 2] {
        // IP payload 1480 in the first fragment (a multiple of 8).
        let (hdr, payload) = (&f[..34], &f[34..]);
        let mut a = hdr.to_vec();
        a.extend_from_slice(&payload[..1480]);
        let mut b = hdr.to_vec();
        b.extend_from_slice(&payload[1480..]);
        for (v, flags_off) in [(&mut a, 0x2000u16), (&mut b, 1480 / 8)] {
            let tot = (v.len() - 14) as u16;
            v[16..18].copy_from_slice(&tot.to_be_bytes());
            v[20..22].copy_from_slice(&flags_off.to_be_bytes());
            fix_ip_csum(v);
        }
        [a, b]
    };
    let pf = snat_port(c, 42000, 5353);
    let [f1, f2] =
        split(&frame(m.client, m.gw_pub, c, g, 64, &L4::Udp { sport: 42000, dport: 5353 }, &big));
    let [w1, w2] =
        split(&frame(m.gw_int, m.server, gi, s, 63, &L4::Udp { sport: pf, dport: 53 }, &big));
    check(dp, "first fragment", &f1, pub_if, XDP_PASS, &handed(&f1));
    check_tc(dp, "first fragment", &f1, pub_if, TC_ACT_REDIRECT, &w1);
    check_tc(dp, "later fragment", &f2, pub_if, TC_ACT_REDIRECT, &w2);
    // A later fragment of a datagram whose first was never seen: untouched.
    let [_, orphan] =
        split(&frame(m.client, m.gw_pub, c, g, 64, &L4::Udp { sport: 42001, dport: 5353 }, &big));
    let mut orphan = orphan;
    orphan[18] ^= 0xff; // another IP identification
    fix_ip_csum(&mut orphan);
    check_tc(dp, "orphan later fragment", &orphan, pub_if, TC_ACT_OK, &orphan);

    // 8. A new flow whose TTL would expire at the gateway is dropped.
    let ttl1 = frame(
        m.client,
        m.gw_pub,
        c,
        g,
        1,
        &L4::Tcp { sport: 40004, dport: 8080, seq: 1, flags: "S" },
        &[],
    );
    let (verdict, _, _) = dp.test_run_xdp(&ttl1, pub_if, 1).unwrap();
    assert_eq!(verdict, XDP_DROP, "TTL 1");
    assert_eq!(dp.flows().unwrap().len(), 8);
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The TCP or UDP segment of an IPv4 frame: (IHL in bytes, protocol, the
/// segment's range in the frame); `None` for anything else.
fn segment(f: &[u8]) -> Option<(usize, u8, std::ops::Range<usize>)> {
    if f.len() < 34 || f[12..14] != [8, 0] || f[14] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(f[14] & 15) * 4;
    let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let min = match f[23] {
        6 => 20,
        17 => 8,
        _ => return None,
    };
    (ihl >= 20 && tot >= ihl + min && 14 + tot <= f.len()).then_some((
        ihl,
        f[23],
        14 + ihl..14 + tot,
    ))
}

/// Offset of the checksum in a TCP (6) or UDP segment.
const fn check_off(proto: u8) -> usize {
    if proto == 6 { 16 } else { 6 }
}

/// Whether a frame is a fragment (MF set or an offset).
fn is_fragment(f: &[u8]) -> bool {
    u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0
}

/// Whether the segment's checksum verifies (a UDP checksum of 0, none,
/// counts as verifying); `None` when the frame holds no segment.
fn l4_ok(f: &[u8]) -> Option<bool> {
    let (_, proto, r) = segment(f)?;
    let l4 = &f[r];
    if proto == 17 && l4[6..8] == [0, 0] {
        return Some(true);
    }
    Some(ones_sum(l4, pseudo_sum(f, proto, l4.len())) == 0xffff)
}

/// Whether the segment's checksum field holds only the pseudo-header's
/// sum, as a `CHECKSUM_PARTIAL` packet from a local sender carries it (0
/// and 0xffff being the same sum).
fn l4_partial(f: &[u8]) -> bool {
    segment(f).is_some_and(|(_, proto, r)| {
        let at = r.start + check_off(proto);
        let c = u16::from_be_bytes([f[at], f[at + 1]]);
        let p = ones_sum(&[], pseudo_sum(f, proto, r.len()));
        !(proto == 17 && c == 0) && (c == p || (c == 0 && p == 0xffff) || (c == 0xffff && p == 0))
    })
}

/// The flow-table key of a frame's segment.
fn key_of(f: &[u8], proto: u8, l4: usize) -> forwarder_common::abi::FlowKey {
    let t = Tuple {
        saddr: f[26..30].try_into().unwrap(),
        daddr: f[30..34].try_into().unwrap(),
        sport: [f[l4], f[l4 + 1]],
        dport: [f[l4 + 2], f[l4 + 3]],
    };
    forwarder_common::abi::FlowKey::new(&t, proto)
}

/// Checks a TCP/UDP frame the datapath translated and sent (`out`, from
/// `input`) against the flow table and the lab: the addresses and ports
/// its flow entry holds, the entry's peer present, the MACs of the next hop
/// towards its new destination, TTL one less, the IPv4 header checksum
/// right, every other byte as it came; and the L4 checksum right exactly
/// when the input's was, or was partial and `xdp` (XDP sums those in full;
/// TC's test runs carry no partial skbs). TC sends towards an unresolved
/// neighbour with `bpf_redirect_neigh`, which fills the MACs in later:
/// those it leaves as they came. `Err` says what is wrong.
fn check_translated(
    dp: &Datapath,
    m: &Macs,
    input: &[u8],
    out: &[u8],
    xdp: bool,
) -> Result<(), String> {
    let (ihl, proto, r) = segment(input).ok_or("translated a frame without a TCP/UDP segment")?;
    if out.len() != input.len() {
        return Err(format!("length {} became {}", input.len(), out.len()));
    }
    if segment(out).map(|(i, p, _)| (i, p)) != Some((ihl, proto)) {
        return Err("the output's IPv4 header or protocol changed".into());
    }
    if ones_sum(&out[14..14 + ihl], 0) != 0xffff {
        return Err("IPv4 header checksum".into());
    }
    if out[22] != input[22].wrapping_sub(1) {
        return Err(format!("TTL {} became {}", input[22], out[22]));
    }
    let e = dp
        .flow(&key_of(input, proto, r.start))
        .unwrap()
        .ok_or("no flow entry for the input's tuple")?;
    let got = key_of(out, proto, r.start);
    if (got.saddr, got.daddr, got.sport, got.dport) != (e.saddr, e.daddr, e.sport, e.dport) {
        return Err(format!("left as {got:?}, its flow entry says {e:?}"));
    }
    if dp
        .flow(&forwarder_common::abi::FlowKey::new(&e.tuple().reversed(), proto))
        .unwrap()
        .is_none()
    {
        return Err(format!("the flow entry {e:?} has no peer"));
    }
    let macs = match Ipv4Addr::from(e.daddr) {
        a if a == ADDRS.server => (m.server, m.gw_int),
        a if a == ADDRS.client => (m.client, m.gw_pub),
        _ if !xdp => (input[0..6].try_into().unwrap(), input[6..12].try_into().unwrap()),
        a => return Err(format!("sent towards {a}, which has no neighbour")),
    };
    if (&out[0..6], &out[6..12]) != (&macs.0[..], &macs.1[..]) {
        return Err(format!(
            "MACs {:02x?} -> {:02x?}, the next hop's are {:02x?} -> {:02x?}",
            &out[6..12],
            &out[0..6],
            macs.1,
            macs.0
        ));
    }
    let csum_at = r.start + check_off(proto);
    let rewritten = |i: usize| {
        (0..12).contains(&i)
            || i == 22
            || (24..34).contains(&i)
            || (r.start..r.start + 4).contains(&i)
            || (csum_at..csum_at + 2).contains(&i)
    };
    if let Some(i) = (0..out.len()).find(|&i| !rewritten(i) && out[i] != input[i]) {
        return Err(format!("byte {i} changed"));
    }
    let (ok_in, ok_out) = (l4_ok(input) == Some(true), l4_ok(out) == Some(true));
    if proto == 17 && input[csum_at..csum_at + 2] == [0, 0] && out[csum_at..csum_at + 2] != [0, 0] {
        return Err("a UDP checksum of 0 (none) became one".into());
    }
    match (ok_in || (xdp && l4_partial(input)), ok_out) {
        (true, false) => Err("rewritten with a bad L4 checksum".into()),
        (false, true) => Err("a corrupt L4 checksum was laundered into a good one".into()),
        _ => Ok(()),
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one generator loop with its checks, read top to bottom")]
fn fuzz_hundred_thousand_malformed_and_random_packets() {
    // Room for 65 536 connections: the mutations never fill the table, so
    // every packet meets the translation, not a refusal.
    in_gateway(1 << 16, |dp, m, pub_if, int_if, _| {
        let (c, g) = (ADDRS.client, ADDRS.gw_public);
        let seeds: Vec<Vec<u8>> = vec![
            frame(
                m.client,
                m.gw_pub,
                c,
                g,
                64,
                &L4::Tcp { sport: 40000, dport: 8080, seq: 1, flags: "S" },
                &[],
            ),
            frame(
                m.client,
                m.gw_pub,
                c,
                g,
                64,
                &L4::Tcp { sport: 40001, dport: 8080, seq: 1, flags: "PA" },
                b"GET / HTTP/1.1\r\n\r\n",
            ),
            as_partial(&frame(
                m.client,
                m.gw_pub,
                c,
                g,
                64,
                &L4::Tcp { sport: 40002, dport: 8080, seq: 1, flags: "PA" },
                b"partial checksum",
            )),
            frame(m.client, m.gw_pub, c, g, 64, &L4::Udp { sport: 41000, dport: 5353 }, b"query"),
            with_ip_options(&frame(
                m.client,
                m.gw_pub,
                c,
                g,
                64,
                &L4::Udp { sport: 41001, dport: 7000 },
                b"opts",
            )),
            frame(
                m.server,
                m.gw_int,
                ADDRS.server,
                ADDRS.gw_internal,
                64,
                &L4::Tcp { sport: 80, dport: 20000, seq: 1, flags: "SA" },
                &[],
            ),
        ];
        let mut rng = Rng(0x5eed_f00d_cafe_f00d);
        let (mut redirected, mut passed, mut dropped) = (0, 0, 0);
        let (mut laundering_chances, mut partial_fixed) = (0, 0);
        let mut tc_verdicts = [0u32; 3];
        let mut tc_translated = 0;
        for i in 0..100_000 {
            let mut f = if i % 10 == 0 {
                // Pure noise, sometimes behind a valid Ethernet/IPv4 start.
                // (BPF_PROG_TEST_RUN, like any NIC, takes no frame below
                // the 14-byte Ethernet header.)
                let len = 14 + rng.below(200);
                let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if i % 20 == 0 {
                    v[12] = 8;
                    v[13] = 0;
                }
                v
            } else {
                seeds[rng.below(seeds.len())].clone()
            };
            if i % 10 != 0 {
                // Mutate: flip bytes, set interesting header fields, truncate.
                for _ in 0..=rng.below(3) {
                    let at = rng.below(f.len());
                    match rng.below(7) {
                        6 => f[22] = rng.below(3) as u8, // TTL 0, 1, 2
                        0 => f[at] ^= 1 << rng.below(8),
                        1 => f[14] = rng.next() as u8, // version/IHL
                        2 => f[16..18].copy_from_slice(&(rng.next() as u16).to_be_bytes()), // total length
                        3 => f[20] = rng.next() as u8, // flags/fragment
                        4 => f[26 + rng.below(8)] = rng.next() as u8, // addresses
                        _ => f[at] = rng.next() as u8,
                    }
                }
                // Half the time, make the IPv4 header checksum right again,
                // so the mutation reaches past header validation.
                let ihl = usize::from(f[14] & 15) * 4;
                if rng.below(2) == 0 && ihl >= 20 && f.len() >= 14 + ihl {
                    fix_ip_csum(&mut f);
                }
                if rng.below(4) == 0 {
                    f.truncate(14 + rng.below(f.len() - 13));
                }
            }
            let ingress = if rng.below(5) == 0 { int_if } else { pub_if };
            let (verdict, out, _) =
                dp.test_run_xdp(&f, ingress, 1).unwrap_or_else(|e| panic!("packet {i}: {e}"));
            match verdict {
                XDP_PASS => {
                    passed += 1;
                    assert!(
                        out == f || out == handed(&f),
                        "packet {i}: passed but changed\nin  {}\nout {}",
                        hex(&f),
                        hex(&out)
                    );
                }
                XDP_DROP => dropped += 1,
                XDP_REDIRECT => {
                    redirected += 1;
                    if l4_ok(&f) == Some(false) {
                        if l4_partial(&f) {
                            partial_fixed += 1;
                        } else {
                            laundering_chances += 1;
                        }
                    }
                    if let Err(e) = check_translated(dp, m, &f, &out, true) {
                        panic!("packet {i} (XDP): {e}\nin  {}\nout {}", hex(&f), hex(&out));
                    }
                }
                v => panic!("packet {i}: verdict {v}\n{}", hex(&f)),
            }
            // The same frame through the TC program (which in this datapath
            // takes every packet, as in TC mode). BPF_PROG_TEST_RUN refuses
            // skbs shorter than Ethernet + an IPv4 header (no NIC delivers
            // frames below 60 bytes anyway).
            if f.len() < 34 {
                continue;
            }
            let (tv, tout) = dp
                .test_run_tc(&f, ingress)
                .unwrap_or_else(|e| panic!("packet {i} (TC): {e:?}\n{}", hex(&f)));
            tc_verdicts[match tv {
                TC_ACT_OK => 0,
                TC_ACT_SHOT => 1,
                TC_ACT_REDIRECT => 2,
                v => panic!("packet {i} (TC): verdict {v}\n{}", hex(&f)),
            }] += 1;
            if tv == TC_ACT_OK {
                assert_eq!(hex(&tout), hex(&f), "packet {i} (TC): passed but changed");
            }
            if tv == TC_ACT_REDIRECT {
                let outcome = if segment(&f).is_some() && !is_fragment(&f) {
                    tc_translated += 1;
                    check_translated(dp, m, &f, &tout, false)
                } else {
                    check_redirected_other(&f, &tout)
                };
                if let Err(e) = outcome {
                    panic!("packet {i} (TC): {e}\nin  {}\nout {}", hex(&f), hex(&tout));
                }
            }
        }
        let n = dp.snapshot(&[]).unwrap().counters;
        // The mix exercised every outcome, and a corrupt checksum met the
        // translation often enough for laundering to show.
        assert!(
            redirected > 1000 && passed > 10_000 && dropped > 0,
            "redirected {redirected} passed {passed} dropped {dropped}"
        );
        assert!(
            n["drop_ttl"] > 0 && n["pass_malformed"] > 0 && n["csum_full_recompute"] > 0,
            "{n:?}"
        );
        assert!(
            laundering_chances > 100 && partial_fixed > 100 && tc_translated > 1000,
            "{laundering_chances} corrupt, {partial_fixed} partial, TC {tc_translated}"
        );
        assert!(
            tc_verdicts.iter().all(|n| *n > 0),
            "TC verdicts (ok, shot, redirect): {tc_verdicts:?}"
        );
        // Nothing met a full table; every entry kept its peer.
        assert_eq!(
            (n["table_full_refused"], n["early_drop"], n["drop_ct_insert"]),
            (0, 0, 0),
            "{n:?}"
        );
        let flows = dp.flows().unwrap();
        let keys: std::collections::HashSet<_> = flows.iter().map(|(k, _)| *k).collect();
        for (k, e) in &flows {
            assert!(
                keys.contains(&forwarder_common::abi::FlowKey::new(&e.tuple().reversed(), k.proto)),
                "{k:?} without its peer"
            );
        }
        eprintln!(
            "fuzz: 100000 packets: XDP {redirected} redirected ({laundering_chances} with a corrupt L4 checksum, {partial_fixed} partial), {passed} passed, {dropped} dropped; TC (ok, shot, redirect) {tc_verdicts:?}; {} flow entries",
            flows.len()
        );
    });
}

/// Checks a frame TC sent that is no plain TCP/UDP translation (ICMP
/// errors, fragments, answers it generated): IPv4, its header checksum
/// right; when the length is unchanged, the TTL one less.
fn check_redirected_other(input: &[u8], out: &[u8]) -> Result<(), String> {
    if out.len() < 34 || out[12..14] != [8, 0] || out[14] >> 4 != 4 {
        return Err("sent something that is not IPv4".into());
    }
    let ihl = usize::from(out[14] & 15) * 4;
    if ones_sum(&out[14..14 + ihl], 0) != 0xffff {
        return Err("IPv4 header checksum".into());
    }
    if out.len() == input.len() && out[22] != input[22].wrapping_sub(1) {
        return Err(format!("TTL {} became {}", input[22], out[22]));
    }
    Ok(())
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
