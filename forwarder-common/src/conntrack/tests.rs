use super::*;
use proptest::prelude::*;

#[test]
fn pair_translates_both_ways() {
    let client = Tuple {
        saddr: [203, 0, 113, 5],
        daddr: [198, 51, 100, 1],
        sport: 40000u16.to_be_bytes(),
        dport: 8080u16.to_be_bytes(),
    };
    let out = Tuple {
        saddr: [10, 0, 2, 1],
        daddr: [10, 0, 2, 2],
        sport: 12345u16.to_be_bytes(),
        dport: 80u16.to_be_bytes(),
    };
    let [(ok, oe), (rk, re)] = entry_pair(&client, &out, 6, 3, 0, 99, 100);
    assert_eq!(ok.tuple(), client);
    assert_eq!(oe.tuple(), out);
    assert_eq!(oe.dir, DIR_ORIGINAL);
    // The backend answers from 10.0.2.2:80 to 10.0.2.1:12345 ...
    assert_eq!(
        rk.tuple(),
        Tuple {
            saddr: [10, 0, 2, 2],
            daddr: [10, 0, 2, 1],
            sport: 80u16.to_be_bytes(),
            dport: 12345u16.to_be_bytes()
        }
    );
    // ... and the client must see 198.51.100.1:8080 → 203.0.113.5:40000.
    assert_eq!(re.tuple(), client.reversed());
    assert_eq!((re.dir, re.rule_id, rk.proto), (DIR_REPLY, 3, 6));
    // Only replies go back tagged.
    assert_eq!((oe.vlan, re.vlan), (0, 100));
}

proptest! {
    #[test]
    fn candidates_stay_in_range(seed in any::<u32>(), attempt in 0u32..64, min in any::<u16>(), span in any::<u16>()) {
        let max = min.saturating_add(span);
        let p = snat_candidate(seed, attempt, min, max);
        prop_assert!(p >= min && p <= max);
    }

    #[test]
    fn candidates_mostly_differ_between_attempts(seed in any::<u32>()) {
        let ports: std::collections::HashSet<u16> = (0..16).map(|a| snat_candidate(seed, a, 10000, 32767)).collect();
        prop_assert!(ports.len() >= 14);
    }
}

#[test]
fn tcp_lifecycle() {
    let (o, r, t) = (DIR_ORIGINAL, DIR_REPLY, crate::abi::PROTO_TCP);
    let mut s = CT_NEW;
    s = next_state(s, o, t, TCP_SYN);
    assert_eq!(s, CT_NEW, "a retransmitted SYN");
    s = next_state(s, r, t, TCP_SYN | TCP_ACK);
    assert_eq!(s, CT_REPLIED, "SYN-ACK: replied, not assured");
    assert_eq!(
        next_state(s, o, t, TCP_SYN),
        CT_REPLIED,
        "a SYN again does not complete the handshake"
    );
    assert_eq!(next_state(s, r, t, TCP_SYN | TCP_ACK), CT_REPLIED);
    s = next_state(s, o, t, TCP_ACK);
    assert_eq!(s, CT_ESTABLISHED, "the client's ACK completes it");
    s = next_state(s, o, t, TCP_ACK | 0x08);
    assert_eq!(s, CT_ESTABLISHED);
    s = next_state(s, o, t, TCP_FIN | TCP_ACK);
    assert_eq!(s, CT_FIN);
    s = next_state(s, r, t, TCP_ACK);
    assert_eq!(s, CT_FIN, "a reply does not reopen a closing flow");
    assert_eq!(next_state(s, o, t, TCP_SYN), CT_NEW, "port reuse reopens");
    assert_eq!(next_state(CT_ESTABLISHED, r, t, TCP_RST | TCP_ACK), CT_CLOSED);
    assert_eq!(next_state(CT_REPLIED, o, t, TCP_RST), CT_CLOSED);
    assert_eq!(
        next_state(CT_ESTABLISHED, o, t, TCP_SYN),
        CT_ESTABLISHED,
        "a stray SYN does not reset a live flow"
    );
    assert_eq!(next_state(CT_NEW, o, t, TCP_FIN), CT_FIN);
}

#[test]
fn udp_lifecycle() {
    let u = crate::abi::PROTO_UDP;
    assert_eq!(next_state(CT_NEW, DIR_ORIGINAL, u, 0), CT_NEW);
    assert_eq!(next_state(CT_NEW, DIR_REPLY, u, 0), CT_REPLIED, "answered once: not a stream yet");
    assert_eq!(next_state(CT_REPLIED, DIR_REPLY, u, 0), CT_REPLIED);
    assert_eq!(
        next_state(CT_REPLIED, DIR_ORIGINAL, u, 0),
        CT_ESTABLISHED,
        "the client spoke again"
    );
    // TCP flag bits mean nothing for UDP.
    assert_eq!(next_state(CT_ESTABLISHED, DIR_ORIGINAL, u, TCP_RST), CT_ESTABLISHED);
    assert_eq!(next_state(CT_REPLIED, DIR_ORIGINAL, u, TCP_SYN), CT_ESTABLISHED);
}

#[test]
fn only_assured_connections_are_safe_from_early_drop() {
    let all = [CT_NEW, CT_REPLIED, CT_ESTABLISHED, CT_FIN, CT_CLOSED];
    let safe: Vec<u8> = all.into_iter().filter(|s| !evictable(*s)).collect();
    assert_eq!(safe, [CT_ESTABLISHED]);
    // States are ordered by progress: the pair's state is the larger.
    assert!(all.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn rings_hand_out_candidates_oldest_first_and_never_an_overwritten_slot() {
    let n = 8;
    assert_eq!(
        (0..5).map(|t| ring_next(5, t, n)).collect::<Vec<_>>(),
        (0..5).map(|t| Some((t, t + 1))).collect::<Vec<_>>()
    );
    assert_eq!(ring_next(5, 5, n), None, "all taken");
    assert_eq!(ring_next(5, 7, n), None, "a tail past the head (another CPU took) is empty too");
    // 20 pushed into 8 slots, tail at 3: 3..12 were overwritten.
    assert_eq!(ring_next(20, 3, n), Some((12, 13)));
    assert_eq!(ring_next(u64::MAX, u64::MAX - 1, n), Some((u64::MAX - 1, u64::MAX)));
    assert!(CT_CANDIDATES.is_power_of_two());
    // Four from the own CPU's ring, then the others in turn.
    let cpus: Vec<u32> = (0..EARLY_DROP_TRIES).map(|a| early_drop_cpu(a, 2, 4)).collect();
    assert_eq!(cpus, [2, 2, 2, 2, 3, 0, 1, 2]);
    assert_eq!(early_drop_cpu(5, 0, 1), 0);
    assert_eq!(early_drop_cpu(5, 3, 0), 3, "no CPU count: the own");
}

#[test]
fn each_state_has_its_own_timeout() {
    // Every timeout different, so a mix-up shows.
    let t = Timeouts {
        tcp_syn: 1,
        tcp_syn_recv: 2,
        tcp_established: 3,
        tcp_fin: 4,
        tcp_close: 5,
        udp: 6,
        udp_stream: 7,
    };
    let tcp: Vec<u32> = [CT_NEW, CT_REPLIED, CT_ESTABLISHED, CT_FIN, CT_CLOSED]
        .iter()
        .map(|s| t.for_state(6, *s))
        .collect();
    assert_eq!(tcp, [1, 2, 3, 4, 5]);
    let udp: Vec<u32> =
        [CT_NEW, CT_REPLIED, CT_ESTABLISHED].iter().map(|s| t.for_state(17, *s)).collect();
    assert_eq!(udp, [6, 6, 7]);
    assert_eq!(t.shortest(), 1);
    assert_eq!(Timeouts { udp_stream: 0, ..t }.shortest(), 0);
    assert_eq!(Timeouts::default().shortest(), 10);
}

#[test]
fn expiry_uses_latest_activity_and_most_advanced_state() {
    let t = Timeouts {
        tcp_syn: 5,
        tcp_syn_recv: 4,
        tcp_established: 100,
        tcp_fin: 10,
        tcp_close: 1,
        udp: 3,
        udp_stream: 50,
    };
    let s = 1_000_000_000u64;
    assert!(
        !expired(&t, 6, CT_ESTABLISHED, CT_ESTABLISHED, tick(0), tick(90 * s), 150 * s),
        "the reply side was active"
    );
    assert!(expired(&t, 6, CT_ESTABLISHED, CT_ESTABLISHED, tick(0), tick(40 * s), 150 * s));
    assert!(
        expired(&t, 6, CT_ESTABLISHED, CT_CLOSED, tick(0), tick(148 * s), 150 * s),
        "RST either way closes"
    );
    assert!(
        expired(&t, 6, CT_REPLIED, CT_NEW, tick(0), tick(0), 9 * s / 2),
        "half-open after SYN-ACK: tcp_syn_recv"
    );
    assert!(!expired(&t, 17, CT_NEW, CT_NEW, tick(0), tick(0), 2 * s));
    assert!(expired(&t, 17, CT_NEW, CT_NEW, tick(0), tick(0), 4 * s));
    assert!(expired(&t, 17, CT_REPLIED, CT_NEW, tick(0), tick(0), 4 * s), "answered once: udp");
    assert!(
        !expired(&t, 17, CT_ESTABLISHED, CT_NEW, tick(0), tick(0), 4 * s),
        "a stream: udp_stream"
    );
    // A reset connection expires as a closed one.
    let mut e = FlowEntry::new(&Tuple::default(), 0, DIR_ORIGINAL, 0);
    e.state = CT_ESTABLISHED;
    assert_eq!(e.expiry_state(), CT_ESTABLISHED);
    e.vlan = crate::abi::VLAN_RESET;
    assert_eq!(e.expiry_state(), CT_CLOSED);
    assert!(expired(&t, 6, e.expiry_state(), e.expiry_state(), 0, 0, 2 * s));
}

/// Allocating ports flow after flow, as the datapath does, a range 60%
/// full must still find a port for every new flow within 16 attempts
/// (independent probes fail with probability below 0.6^16 per flow;
/// probes at a fixed stride cluster, and fail this).
#[test]
fn allocation_does_not_cluster() {
    let (min, max) = (20_000u16, 24_095u16); // 4096 ports
    let mut used = std::collections::HashSet::new();
    let mut failures = 0;
    for client_port in 0..2_450u16 {
        let t = Tuple {
            saddr: [203, 0, 113, 10],
            daddr: [203, 0, 113, 1],
            sport: client_port.to_be_bytes(),
            dport: 8080u16.to_be_bytes(),
        };
        let seed = tuple_hash(&t);
        match (0..16).map(|a| snat_candidate(seed, a, min, max)).find(|p| !used.contains(p)) {
            Some(p) => {
                used.insert(p);
            }
            None => failures += 1,
        }
    }
    assert_eq!(failures, 0, "{failures} flows found no port at under 60% load");
}

#[test]
fn small_ranges_are_walked_whole() {
    for seed in [0, 7, u32::MAX] {
        let ports: std::collections::HashSet<u16> =
            (0..16).map(|a| snat_candidate(seed, a, 20_000, 20_015)).collect();
        assert_eq!(ports.len(), 16);
    }
}

#[test]
fn refresh_is_coarse() {
    let t = 1u64 << TICK_SHIFT;
    assert!(!needs_refresh(tick(0), REFRESH_NS));
    assert!(needs_refresh(tick(0), REFRESH_NS + t));
}

#[test]
fn ticks_age_across_their_wrap_and_never_below_zero() {
    let t = 1u64 << TICK_SHIFT;
    assert_eq!(age_ns(tick(10 * t), 15 * t), 5 * t);
    // A tick ahead of the reader's clock (the datapath refreshed the
    // entry after the daemon read it): no age, not an age of 52 days.
    assert_eq!(age_ns(tick(15 * t), 10 * t), 0);
    // Across the wrap of the 32-bit ticks.
    let wrap = 1u64 << (32 + TICK_SHIFT);
    assert_eq!(age_ns(tick(wrap - 2 * t), wrap + 3 * t), 5 * t);
    // Every timeout fits in the half of the range where ages are read.
    assert!(u64::from(MAX_TIMEOUT_S) * 1_000_000_000 < (u64::from(u32::MAX / 2) << TICK_SHIFT));
}

#[test]
fn next_hop_cache_is_used_fresh_and_fitting_only() {
    let t = Tuple { saddr: [10, 0, 0, 1], daddr: [10, 0, 0, 2], sport: [0, 1], dport: [0, 2] };
    let mut e = FlowEntry::new(&t, 0, DIR_ORIGINAL, 5);
    // Nothing cached yet.
    assert_eq!(e.next_hop(5, 60), None);
    let nh = NextHop { ifindex: 3, smac: [2; 6], dmac: [4; 6], mtu: 1500 };
    e.cache_next_hop(&nh, 1_000);
    assert_eq!(e.next_hop(1_000, 1500), Some(nh));
    assert_eq!(e.next_hop(NEXT_HOP_TTL_NS - 1, 40), Some(nh));
    // Too old (to a tick's precision): look it up again.
    assert_eq!(e.next_hop(NEXT_HOP_TTL_NS + (1 << TICK_SHIFT), 40), None);
    // Too big for the cached MTU: the full lookup decides (fragmentation needed).
    assert_eq!(e.next_hop(1_000, 1501), None);
    // The tuple is untouched by caching.
    assert_eq!(e.tuple(), t);
}
