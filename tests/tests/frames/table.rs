//! The XDP fixture table: every row an input frame and map state, the
//! verdict and the output frame it must give, byte for byte.

use super::*;

use crate::harness::TestRunExt;
use etherparse::PacketBuilder;
use forwarder::datapath::Datapath;
use forwarder_testkit::{ADDRS, Macs};

#[expect(clippy::many_single_char_names, reason = "c/g/gi/s mirror the lab diagram")]
#[expect(
    clippy::too_many_lines,
    reason = "a table: one row after the other reads best in one place"
)]
pub fn run_table(dp: &Datapath, m: &Macs, pub_if: u32, int_if: u32) {
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
    assert!(e.nh_checked > 0);

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
