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
    /// The state its idle timeout follows: a connection the daemon reset
    /// ([`crate::abi::VLAN_RESET`]) counts as closed, so that the sweep
    /// frees it soon even if the daemon that flagged it is gone.
    pub const fn expiry_state(&self) -> u8 {
        if self.vlan == crate::abi::VLAN_RESET { CT_CLOSED } else { self.state }
    }

    #[inline(always)]
    pub const fn new(out: &Tuple, rule_id: u32, dir: u8, now_ns: u64) -> Self {
        Self {
            last_seen: tick(now_ns),
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
            backend_slot: 0,
            nh_checked: 0,
        }
    }

    /// The cached next hop, if there is one, it is younger than
    /// [`NEXT_HOP_TTL_NS`], and a packet of `l3_len` bytes fits its MTU.
    #[inline(always)]
    pub const fn next_hop(&self, now_ns: u64, l3_len: u16) -> Option<NextHop> {
        if self.nh_ifindex == 0
            || age_ns(self.nh_checked, now_ns) >= NEXT_HOP_TTL_NS
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
        self.nh_checked = tick(now_ns);
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
/// which replies get back; `backend_slot`: where the backend counts the
/// connection's packets (`FlowEntry::backend_slot`; 0: its rule only).
#[inline(always)]
pub const fn entry_pair(
    orig: &Tuple,
    translated: &Tuple,
    proto: u8,
    rule_id: u32,
    backend_slot: u16,
    now_ns: u64,
    client_vlan: u16,
) -> [(FlowKey, FlowEntry); 2] {
    let mut original = FlowEntry::new(translated, rule_id, DIR_ORIGINAL, now_ns);
    original.backend_slot = backend_slot;
    let mut reply = FlowEntry::new(&orig.reversed(), rule_id, DIR_REPLY, now_ns);
    reply.vlan = client_vlan;
    reply.backend_slot = backend_slot;
    [(FlowKey::new(orig, proto), original), (FlowKey::new(&translated.reversed(), proto), reply)]
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
/// fixed stride from the seed would make every flow walk the same cycle
/// through the range: occupied ports cluster like linear probing, and new
/// flows fail at a third of the range in use.) `min <= max` is enforced by
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

use crate::abi::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

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
pub const fn expired(t: &Timeouts, proto: u8, sa: u8, sb: u8, a: u32, b: u32, now_ns: u64) -> bool {
    let state = if sa > sb { sa } else { sb };
    age_ns(later(a, b), now_ns) > t.for_state(proto, state) as u64 * 1_000_000_000
}

/// Whether a refresh of `last_seen` is worth a write: at most once per
/// second per entry, so established flows do not dirty the cache line on
/// every packet.
pub const REFRESH_NS: u64 = 1_000_000_000;
#[inline(always)]
pub const fn needs_refresh(last_seen: u32, now_ns: u64) -> bool {
    age_ns(last_seen, now_ns) > REFRESH_NS
}

/// The flow entries keep their times as ticks of the flow clock:
/// `CLOCK_MONOTONIC` in units of 2^20 ns (about 1.05 ms) in 32 bits,
/// which keeps an entry at 48 bytes. The ticks wrap after about 52 days;
/// an age is read in half of that ([`age_ns`]), more than any timeout
/// ([`MAX_TIMEOUT_S`]).
pub const TICK_SHIFT: u32 = 20;

/// `now_ns` on the flow clock, in ticks.
#[inline(always)]
pub const fn tick(now_ns: u64) -> u32 {
    (now_ns >> TICK_SHIFT) as u32
}

/// How long before `now_ns` tick `then` was, in ns (to a tick's
/// precision); 0 for a tick after `now_ns` (an entry refreshed by the
/// datapath after the daemon read the clock).
#[inline(always)]
pub const fn age_ns(then: u32, now_ns: u64) -> u64 {
    let now = tick(now_ns);
    if later(now, then) == then { 0 } else { (now.wrapping_sub(then) as u64) << TICK_SHIFT }
}

/// The later of two ticks: the one ahead of the other by less than half
/// the ticks' range (they wrap).
#[inline(always)]
pub const fn later(a: u32, b: u32) -> u32 {
    if b.wrapping_sub(a) <= u32::MAX / 2 { b } else { a }
}

/// The longest idle timeout the table can keep (24 days): ages are read
/// within half the ticks' wrap (26 days).
pub const MAX_TIMEOUT_S: u32 = 24 * 86_400;

#[cfg(test)]
mod tests;
