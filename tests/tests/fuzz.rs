//! A hundred thousand malformed and random packets through the real XDP
//! and TC programs (`BPF_PROG_TEST_RUN`): every translated frame is checked
//! against its flow entry and this file's own checksum arithmetic, in a
//! table that never fills.

use std::net::Ipv4Addr;

use forwarder::datapath::Datapath;
use forwarder_common::nat::Tuple;
use forwarder_testkit::{ADDRS, Macs};
use frames::*;
use harness::TestRunExt;

mod frames;
#[path = "../harness/mod.rs"]
#[allow(dead_code, reason = "the fixtures run the forwarder's programs, not the benchmark object")]
mod harness;

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
