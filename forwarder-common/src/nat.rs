//! The rewrite plan for a translated packet: which tuple it leaves with, and
//! how its checksums change.
//!
//! Address changes touch the IPv4 header checksum and (through the
//! pseudo-header) the TCP/UDP checksum; port changes touch only the latter.
//! The delta over the changed words is computed once and applied to both.

use crate::csum;

/// The addressing of a packet: who sends, to whom.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Network byte order.
    pub saddr: [u8; 4],
    /// Network byte order.
    pub daddr: [u8; 4],
    /// Network byte order.
    pub sport: [u8; 2],
    /// Network byte order.
    pub dport: [u8; 2],
}

impl Tuple {
    /// The tuple of the packets that answer this one.
    #[inline(always)]
    #[must_use]
    pub const fn reversed(&self) -> Self {
        Self { saddr: self.daddr, daddr: self.saddr, sport: self.dport, dport: self.sport }
    }
}

/// One's-complement sums of `~old + new` over the changed words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsumDelta {
    /// Over the addresses (IPv4 header and pseudo-header).
    pub addrs: u32,
    /// Over addresses and ports (TCP/UDP checksum).
    pub l4: u32,
}

#[inline(always)]
const fn word(b: [u8; 2]) -> u32 {
    u16::from_be_bytes(b) as u32
}

#[inline(always)]
const fn not_addr(sum: u32, a: [u8; 4]) -> u32 {
    sum + (!u16::from_be_bytes([a[0], a[1]])) as u32 + (!u16::from_be_bytes([a[2], a[3]])) as u32
}

/// The checksum delta of rewriting `old` into `new`.
#[inline(always)]
pub const fn delta(old: &Tuple, new: &Tuple) -> CsumDelta {
    let mut a = not_addr(0, old.saddr);
    a = not_addr(a, old.daddr);
    a = csum::add_addr(a, new.saddr);
    a = csum::add_addr(a, new.daddr);
    let a = csum::fold(a) as u32;
    let mut l4 = a;
    l4 += (!u16::from_be_bytes(old.sport)) as u32 + (!u16::from_be_bytes(old.dport)) as u32;
    l4 += word(new.sport) + word(new.dport);
    CsumDelta { addrs: a, l4: csum::fold(l4) as u32 }
}

/// Applies a delta to a complemented checksum (RFC 1624 eqn. 3).
#[inline(always)]
pub const fn apply(check: u16, delta: u32) -> u16 {
    !csum::fold(!check as u32 + delta)
}

/// The new IPv4 header checksum.
#[inline(always)]
pub const fn ip_csum(check: u16, d: &CsumDelta) -> u16 {
    apply(check, d.addrs)
}

/// The new TCP/UDP checksum of a packet whose checksum was complete. UDP's
/// "no checksum" (0) stays 0.
#[inline(always)]
pub const fn l4_csum(check: u16, d: &CsumDelta, proto: u8) -> u16 {
    let new = apply(check, d.l4);
    if proto == crate::abi::PROTO_UDP { csum::udp_fixup(check, new) } else { new }
}

/// The new TCP/UDP checksum computed from scratch: `payload_sum` is the
/// unfolded sum of the L4 header and payload *with the new ports and a zero
/// checksum field*.
#[inline(always)]
pub const fn l4_csum_full(new: &Tuple, proto: u8, l4_len: u16, payload_sum: u32) -> u16 {
    let s = csum::fold(
        csum::pseudo_header_sum(new.saddr, new.daddr, proto, l4_len)
            + csum::fold(payload_sum) as u32,
    );
    let c = !s;
    if proto == crate::abi::PROTO_UDP && c == 0 { 0xffff } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::{checksum, fold, sum_bytes};
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    /// Builds an IPv4 packet with a correct checksum, returns bytes (no L2).
    fn packet(t: &Tuple, tcp: bool, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4(t.saddr, t.daddr, 64);
        let b2 = if tcp {
            b.tcp(u16::from_be_bytes(t.sport), u16::from_be_bytes(t.dport), 1234, 4096)
        } else {
            return {
                let u = b.udp(u16::from_be_bytes(t.sport), u16::from_be_bytes(t.dport));
                let mut v = Vec::new();
                u.write(&mut v, payload).unwrap();
                v
            };
        };
        let mut v = Vec::new();
        b2.write(&mut v, payload).unwrap();
        v
    }

    /// Rewrites the tuple in place using the incremental plan.
    fn rewrite(pkt: &mut [u8], new: &Tuple, tcp: bool) {
        let old = Tuple {
            saddr: pkt[12..16].try_into().unwrap(),
            daddr: pkt[16..20].try_into().unwrap(),
            sport: pkt[20..22].try_into().unwrap(),
            dport: pkt[22..24].try_into().unwrap(),
        };
        let d = delta(&old, new);
        let ipc = u16::from_be_bytes([pkt[10], pkt[11]]);
        pkt[10..12].copy_from_slice(&ip_csum(ipc, &d).to_be_bytes());
        let off = if tcp { 20 + 16 } else { 20 + 6 };
        let l4c = u16::from_be_bytes([pkt[off], pkt[off + 1]]);
        let proto = if tcp { 6 } else { 17 };
        pkt[off..off + 2].copy_from_slice(&l4_csum(l4c, &d, proto).to_be_bytes());
        pkt[12..16].copy_from_slice(&new.saddr);
        pkt[16..20].copy_from_slice(&new.daddr);
        pkt[20..22].copy_from_slice(&new.sport);
        pkt[22..24].copy_from_slice(&new.dport);
    }

    fn tuple() -> impl Strategy<Value = Tuple> {
        (any::<[u8; 4]>(), any::<[u8; 4]>(), any::<[u8; 2]>(), any::<[u8; 2]>())
            .prop_map(|(saddr, daddr, sport, dport)| Tuple { saddr, daddr, sport, dport })
    }

    proptest! {
        /// Incremental update == what etherparse computes from scratch for
        /// the rewritten packet, for TCP and UDP, any tuple, any payload.
        #[test]
        fn incremental_equals_full(a in tuple(), b in tuple(), tcp in any::<bool>(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut pkt = packet(&a, tcp, &payload);
            rewrite(&mut pkt, &b, tcp);
            let expect = packet(&b, tcp, &payload);
            // The IP header checksum is exact; L4 may differ only by 0 vs
            // 0xffff (the same one's-complement value).
            prop_assert_eq!(&pkt[..20], &expect[..20]);
            let verify = |p: &[u8]| {
                let l4 = &p[20..];
                let proto = if tcp { 6 } else { 17 };
                fold(sum_bytes(l4, crate::csum::pseudo_header_sum(b.saddr, b.daddr, proto, l4.len() as u16)))
            };
            prop_assert_eq!(verify(&pkt), 0xffff);
            prop_assert_eq!(checksum(&pkt[..20]), 0);
        }

        /// The full recomputation used for partial-checksum packets.
        #[test]
        fn full_recompute_matches(b in tuple(), tcp in any::<bool>(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let expect = packet(&b, tcp, &payload);
            let mut l4 = expect[20..].to_vec();
            let off = if tcp { 16 } else { 6 };
            let want = u16::from_be_bytes([l4[off], l4[off + 1]]);
            l4[off] = 0; l4[off + 1] = 0;
            let got = l4_csum_full(&b, if tcp { 6 } else { 17 }, l4.len() as u16, sum_bytes(&l4, 0));
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let a = Tuple { saddr: [10, 0, 0, 1], daddr: [10, 0, 0, 2], sport: [0, 1], dport: [0, 2] };
        let b = Tuple { saddr: [10, 9, 0, 1], daddr: [10, 8, 0, 2], sport: [0, 3], dport: [0, 4] };
        assert_eq!(l4_csum(0, &delta(&a, &b), 17), 0);
        assert_ne!(l4_csum(0, &delta(&a, &b), 6), 0);
    }
}
