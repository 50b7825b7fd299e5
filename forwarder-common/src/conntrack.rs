//! Connection tracking: flow keys, the two entries of a translated
//! connection, and the choice of a masquerade source port.
//!
//! A connection owns two entries in the LRU flow table, keyed by the tuple a
//! packet *arrives* with: the original direction (client → public address)
//! and the reply direction (backend → masquerade address). Each entry holds
//! the tuple the packet *leaves* with, so the datapath needs exactly one
//! lookup per packet on the established path.

use crate::abi::{DIR_ORIGINAL, DIR_REPLY, FlowEntry, FlowKey};
use crate::nat::Tuple;

impl FlowKey {
    #[inline(always)]
    pub const fn new(t: &Tuple, proto: u8) -> Self {
        Self { saddr: t.saddr, daddr: t.daddr, sport: t.sport, dport: t.dport, proto, _pad: [0; 3] }
    }

    #[inline(always)]
    pub const fn tuple(&self) -> Tuple {
        Tuple { saddr: self.saddr, daddr: self.daddr, sport: self.sport, dport: self.dport }
    }
}

impl FlowEntry {
    #[inline(always)]
    pub const fn new(out: &Tuple, rule_id: u32, dir: u8, now_ns: u64) -> Self {
        Self {
            last_seen_ns: now_ns,
            saddr: out.saddr,
            daddr: out.daddr,
            sport: out.sport,
            dport: out.dport,
            rule_id,
            dir,
            state: 0,
            vlan: 0,
            nh_ifindex: 0,
            nh_smac: [0; 6],
            nh_dmac: [0; 6],
            nh_mtu: 0,
            _pad: [0; 2],
            nh_checked_ns: 0,
        }
    }

    /// The cached next hop, if there is one, it is younger than
    /// [`NEXT_HOP_TTL_NS`], and a packet of `l3_len` bytes fits its MTU.
    #[inline(always)]
    pub const fn next_hop(&self, now_ns: u64, l3_len: u16) -> Option<NextHop> {
        if self.nh_ifindex == 0
            || now_ns.wrapping_sub(self.nh_checked_ns) >= NEXT_HOP_TTL_NS
            || l3_len > self.nh_mtu
        {
            return None;
        }
        Some(NextHop {
            ifindex: self.nh_ifindex,
            smac: self.nh_smac,
            dmac: self.nh_dmac,
            mtu: self.nh_mtu,
        })
    }

    /// Caches `nh`, looked up at `now_ns`.
    #[inline(always)]
    pub const fn cache_next_hop(&mut self, nh: &NextHop, now_ns: u64) {
        self.nh_ifindex = nh.ifindex;
        self.nh_smac = nh.smac;
        self.nh_dmac = nh.dmac;
        self.nh_mtu = nh.mtu;
        self.nh_checked_ns = now_ns;
    }

    /// The tuple a packet matching this entry leaves with.
    #[inline(always)]
    pub const fn tuple(&self) -> Tuple {
        Tuple { saddr: self.saddr, daddr: self.daddr, sport: self.sport, dport: self.dport }
    }
}

/// Where a flow's packets go next: what `bpf_fib_lookup` said, cached in
/// the flow entry so the established path skips the lookup. Routes and
/// neighbours change rarely; a cached next hop is used for at most
/// [`NEXT_HOP_TTL_NS`], then looked up again, so a route or neighbour
/// change reaches established flows within that time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub mtu: u16,
}

/// How long a cached next hop is trusted: 1 s.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// The two entries of a connection whose packets arrive as `orig` and leave
/// as `translated`: the original-direction pair first, the reply pair second.
/// `client_vlan`: the 802.1Q TCI the client's packets came with (0: none),
/// which replies get back.
#[inline(always)]
pub const fn entry_pair(
    orig: &Tuple,
    translated: &Tuple,
    proto: u8,
    rule_id: u32,
    now_ns: u64,
    client_vlan: u16,
) -> [(FlowKey, FlowEntry); 2] {
    let mut reply = FlowEntry::new(&orig.reversed(), rule_id, DIR_REPLY, now_ns);
    reply.vlan = client_vlan;
    [
        (FlowKey::new(orig, proto), FlowEntry::new(translated, rule_id, DIR_ORIGINAL, now_ns)),
        (FlowKey::new(&translated.reversed(), proto), reply),
    ]
}

/// The murmur3 32-bit finalizer: a cheap full-avalanche mix.
#[inline(always)]
pub const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// A 32-bit hash of a tuple: the seed of the masquerade port search, so
/// that concurrent new flows spread over the port range instead of racing
/// for the same ports.
#[inline(always)]
pub const fn tuple_hash(t: &Tuple) -> u32 {
    let mut h = u32::from_ne_bytes(t.saddr) ^ u32::from_ne_bytes(t.daddr).rotate_left(7);
    h ^= (u16::from_ne_bytes(t.sport) as u32) << 16 | u16::from_ne_bytes(t.dport) as u32;
    mix32(h)
}

/// The `attempt`-th candidate masquerade port (host order) in
/// `[min, max]`: an independent hash of (seed, attempt) per attempt. (A
/// fixed stride from the seed made every flow walk the same cycle through
/// the range: occupied ports clustered like linear probing, and new flows
/// failed at a third of the range in use.) `min <= max` is enforced by
/// userspace; an inverted range degrades to `min`.
#[inline(always)]
pub const fn snat_candidate(seed: u32, attempt: u32, min: u16, max: u16) -> u16 {
    if max < min {
        return min;
    }
    let span = (max - min) as u32 + 1;
    // A range no larger than the attempts is walked port by port, so every
    // port of it is tried.
    let off = if span <= crate::abi::MAX_SNAT_ATTEMPTS {
        seed.wrapping_add(attempt) % span
    } else {
        mix32(seed ^ attempt.wrapping_mul(0x9e37_79b9)) % span
    };
    min + off as u16
}

/// `FlowEntry::state` values: how far a connection has got, in order of
/// progress (the more advanced of a pair's two states is the pair's).
/// Both entries of a connection carry it; the datapath updates both on a
/// transition.
///
/// Seen one way only (TCP: SYN sent; UDP: unanswered).
pub const CT_NEW: u8 = 0;
/// A reply has been seen but the connection is not assured yet (TCP:
/// SYN-ACK, handshake not completed; UDP: answered, the client has not
/// spoken again since). Like netfilter's unassured entries, these may give
/// way to new connections when the table is full ([`evictable`]).
pub const CT_REPLIED: u8 = 1;
/// Assured (TCP: the client's ACK completed the handshake; UDP: the client
/// sent again after an answer: a stream).
pub const CT_ESTABLISHED: u8 = 2;
/// A FIN has been seen (TCP): closing.
pub const CT_FIN: u8 = 3;
/// An RST has been seen (TCP): closed.
pub const CT_CLOSED: u8 = 4;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The state after a packet with `tcp_flags` (0 for UDP) travelling in
/// direction `dir` (`DIR_ORIGINAL`/`DIR_REPLY`) met a flow in `state`.
#[inline(always)]
pub const fn next_state(state: u8, dir: u8, proto: u8, tcp_flags: u8) -> u8 {
    let tcp = proto == crate::abi::PROTO_TCP;
    if tcp {
        if tcp_flags & TCP_RST != 0 {
            return CT_CLOSED;
        }
        // A new SYN from the client on a closing/closed tuple reopens it
        // (port reuse after TIME_WAIT).
        if dir == DIR_ORIGINAL && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && state >= CT_FIN {
            return CT_NEW;
        }
        if tcp_flags & TCP_FIN != 0 && state < CT_FIN {
            return CT_FIN;
        }
    }
    if dir == DIR_REPLY && state == CT_NEW {
        return CT_REPLIED;
    }
    // The client speaks after the answer: TCP's third handshake packet
    // (an ACK without SYN), or a UDP client's next datagram.
    if dir == DIR_ORIGINAL
        && state == CT_REPLIED
        && (!tcp || tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK)
    {
        return CT_ESTABLISHED;
    }
    state
}

/// Whether a connection in `state` may give way to a new one when the
/// table is full: any that is not assured (seen one way only, or replied
/// but not completed) or that is closing — never an established one
/// (netfilter's `early_drop`: unassured entries, and TCP's
/// `tcp_can_early_drop` closing states).
#[inline(always)]
pub const fn evictable(state: u8) -> bool {
    state != CT_ESTABLISHED
}

/// Slots per CPU of the early-drop candidate rings
/// (`abi::MAP_CT_CANDIDATES`): each CPU's most recent new connections and
/// transitions to a closing state, written round and round. A power of
/// two.
pub const CT_CANDIDATES: u32 = 16_384;
/// Candidates looked at per new connection when the table is full: the
/// first [`EARLY_DROP_OWN`] from the CPU's own ring, then one from each of
/// the next CPUs' in turn.
pub const EARLY_DROP_TRIES: u32 = 8;
pub const EARLY_DROP_OWN: u32 = 4;

/// The next candidate of a ring whose pushes have reached `head` and
/// whose takes `tail` (both count up for ever; slot = count % `slots`):
/// `Some((seq, new tail))`, or `None` when every candidate pushed has been
/// taken. A tail that fell more than `slots` behind skips to the oldest
/// candidate the ring still holds.
#[inline(always)]
pub const fn ring_next(head: u64, tail: u64, slots: u64) -> Option<(u64, u64)> {
    if tail >= head {
        return None;
    }
    let tail = if head - tail > slots { head - slots } else { tail };
    Some((tail, tail + 1))
}

/// The CPU the `try`-th early-drop attempt looks at, for a program
/// running on `cpu` of `cpus`.
#[inline(always)]
pub const fn early_drop_cpu(attempt: u32, cpu: u32, cpus: u32) -> u32 {
    let step = if attempt < EARLY_DROP_OWN { 0 } else { attempt - EARLY_DROP_OWN + 1 };
    if cpus == 0 { cpu } else { (cpu + step) % cpus }
}

/// Conntrack timeouts in seconds, like netfilter's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP, no reply yet (SYN sent).
    pub tcp_syn: u32,
    /// TCP, SYN-ACK seen, handshake not completed.
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    /// TCP after a FIN (covers `FIN_WAIT`, `CLOSE_WAIT`, `LAST_ACK`, `TIME_WAIT`).
    pub tcp_fin: u32,
    /// TCP after an RST.
    pub tcp_close: u32,
    /// UDP, not a stream yet (unanswered, or answered once).
    pub udp: u32,
    /// UDP stream (the client sent again after an answer).
    pub udp_stream: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        // `nf_conntrack_tcp_timeout_{syn_sent,syn_recv,established,time_wait,close}`,
        // `nf_conntrack_udp_timeout{,_stream}`.
        Self {
            tcp_syn: 120,
            tcp_syn_recv: 60,
            tcp_established: 432_000,
            tcp_fin: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 180,
        }
    }
}

impl Timeouts {
    /// Seconds a connection in `state` may stay idle.
    pub const fn for_state(&self, proto: u8, state: u8) -> u32 {
        if proto == crate::abi::PROTO_TCP {
            match state {
                CT_NEW => self.tcp_syn,
                CT_REPLIED => self.tcp_syn_recv,
                CT_ESTABLISHED => self.tcp_established,
                CT_FIN => self.tcp_fin,
                _ => self.tcp_close,
            }
        } else if state == CT_ESTABLISHED {
            self.udp_stream
        } else {
            self.udp
        }
    }

    /// The shortest of them (the sweep runs often enough for it).
    pub const fn shortest(&self) -> u32 {
        let all = [
            self.tcp_syn,
            self.tcp_syn_recv,
            self.tcp_established,
            self.tcp_fin,
            self.tcp_close,
            self.udp,
            self.udp_stream,
        ];
        let mut min = all[0];
        let mut i = 1;
        while i < all.len() {
            if all[i] < min {
                min = all[i];
            }
            i += 1;
        }
        min
    }
}

/// Whether a connection whose entries were last seen at `a_ns` and `b_ns`
/// (the peer may be gone: pass the same value twice) and whose states are
/// `sa`, `sb` has been idle longer than its timeout at `now_ns`. The more
/// advanced state decides (an RST seen either way closes both).
pub const fn expired(
    t: &Timeouts,
    proto: u8,
    sa: u8,
    sb: u8,
    a_ns: u64,
    b_ns: u64,
    now_ns: u64,
) -> bool {
    let state = if sa > sb { sa } else { sb };
    let last = if a_ns > b_ns { a_ns } else { b_ns };
    now_ns.saturating_sub(last) > t.for_state(proto, state) as u64 * 1_000_000_000
}

/// Whether a refresh of `last_seen_ns` is worth a write: at most once per
/// second per entry, so established flows do not dirty the cache line on
/// every packet.
pub const REFRESH_NS: u64 = 1_000_000_000;
#[inline(always)]
pub const fn needs_refresh(last_seen_ns: u64, now_ns: u64) -> bool {
    now_ns.wrapping_sub(last_seen_ns) > REFRESH_NS
}

#[cfg(test)]
mod tests {
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
        let [(ok, oe), (rk, re)] = entry_pair(&client, &out, 6, 3, 99, 100);
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
        assert_eq!(
            next_state(CT_NEW, DIR_REPLY, u, 0),
            CT_REPLIED,
            "answered once: not a stream yet"
        );
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
        assert_eq!(
            ring_next(5, 7, n),
            None,
            "a tail past the head (another CPU took) is empty too"
        );
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
            !expired(&t, 6, CT_ESTABLISHED, CT_ESTABLISHED, 0, 90 * s, 150 * s),
            "the reply side was active"
        );
        assert!(expired(&t, 6, CT_ESTABLISHED, CT_ESTABLISHED, 0, 40 * s, 150 * s));
        assert!(
            expired(&t, 6, CT_ESTABLISHED, CT_CLOSED, 0, 148 * s, 150 * s),
            "RST either way closes"
        );
        assert!(
            expired(&t, 6, CT_REPLIED, CT_NEW, 0, 0, 9 * s / 2),
            "half-open after SYN-ACK: tcp_syn_recv"
        );
        assert!(!expired(&t, 17, CT_NEW, CT_NEW, 0, 0, 2 * s));
        assert!(expired(&t, 17, CT_NEW, CT_NEW, 0, 0, 4 * s));
        assert!(expired(&t, 17, CT_REPLIED, CT_NEW, 0, 0, 4 * s), "answered once: udp");
        assert!(!expired(&t, 17, CT_ESTABLISHED, CT_NEW, 0, 0, 4 * s), "a stream: udp_stream");
    }

    /// Allocating ports flow after flow, as the datapath does, a range 60%
    /// full must still find a port for every new flow within 16 attempts
    /// (independent probes fail with probability below 0.6^16 per flow; the
    /// earlier fixed-stride probes clustered and failed here).
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
        assert!(!needs_refresh(10, 10 + REFRESH_NS));
        assert!(needs_refresh(10, 11 + REFRESH_NS));
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
        assert_eq!(e.next_hop(1_000 + NEXT_HOP_TTL_NS - 1, 40), Some(nh));
        // Too old: look it up again.
        assert_eq!(e.next_hop(1_000 + NEXT_HOP_TTL_NS, 40), None);
        // Too big for the cached MTU: the full lookup decides (fragmentation needed).
        assert_eq!(e.next_hop(1_000, 1501), None);
        // The tuple is untouched by caching.
        assert_eq!(e.tuple(), t);
    }
}
