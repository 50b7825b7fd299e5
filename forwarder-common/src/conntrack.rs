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
            _pad: [0; 6],
        }
    }

    /// The tuple a packet matching this entry leaves with.
    #[inline(always)]
    pub const fn tuple(&self) -> Tuple {
        Tuple { saddr: self.saddr, daddr: self.daddr, sport: self.sport, dport: self.dport }
    }
}

/// The two entries of a connection whose packets arrive as `orig` and leave
/// as `translated`: the original-direction pair first, the reply pair second.
#[inline(always)]
pub const fn entry_pair(orig: &Tuple, translated: &Tuple, proto: u8, rule_id: u32, now_ns: u64) -> [(FlowKey, FlowEntry); 2] {
    [
        (FlowKey::new(orig, proto), FlowEntry::new(translated, rule_id, DIR_ORIGINAL, now_ns)),
        (FlowKey::new(&translated.reversed(), proto), FlowEntry::new(&orig.reversed(), rule_id, DIR_REPLY, now_ns)),
    ]
}

/// A 32-bit mix of a tuple (murmur3 finalizer over xor-folded words): the
/// seed of the masquerade port search, so that concurrent new flows spread
/// over the port range instead of racing for the same ports.
#[inline(always)]
pub const fn tuple_hash(t: &Tuple) -> u32 {
    let mut h = u32::from_ne_bytes(t.saddr) ^ u32::from_ne_bytes(t.daddr).rotate_left(7);
    h ^= (u16::from_ne_bytes(t.sport) as u32) << 16 | u16::from_ne_bytes(t.dport) as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Stride between successive candidates: odd and large, so a handful of
/// attempts land far apart in the range.
pub const SNAT_STRIDE: u32 = 7919;

/// The `attempt`-th candidate masquerade port (host order) in
/// `[min, max]`. `min <= max` is enforced by userspace; an inverted range
/// degrades to `min`.
#[inline(always)]
pub const fn snat_candidate(seed: u32, attempt: u32, min: u16, max: u16) -> u16 {
    if max < min {
        return min;
    }
    let span = (max - min) as u32 + 1;
    let off = seed.wrapping_add(attempt.wrapping_mul(SNAT_STRIDE)) % span;
    min + off as u16
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
        let client = Tuple { saddr: [203, 0, 113, 5], daddr: [198, 51, 100, 1], sport: 40000u16.to_be_bytes(), dport: 8080u16.to_be_bytes() };
        let out = Tuple { saddr: [10, 0, 2, 1], daddr: [10, 0, 2, 2], sport: 12345u16.to_be_bytes(), dport: 80u16.to_be_bytes() };
        let [(ok, oe), (rk, re)] = entry_pair(&client, &out, 6, 3, 99);
        assert_eq!(ok.tuple(), client);
        assert_eq!(oe.tuple(), out);
        assert_eq!(oe.dir, DIR_ORIGINAL);
        // The backend answers from 10.0.2.2:80 to 10.0.2.1:12345 ...
        assert_eq!(rk.tuple(), Tuple { saddr: [10, 0, 2, 2], daddr: [10, 0, 2, 1], sport: 80u16.to_be_bytes(), dport: 12345u16.to_be_bytes() });
        // ... and the client must see 198.51.100.1:8080 → 203.0.113.5:40000.
        assert_eq!(re.tuple(), client.reversed());
        assert_eq!((re.dir, re.rule_id, rk.proto), (DIR_REPLY, 3, 6));
    }

    proptest! {
        #[test]
        fn candidates_stay_in_range(seed in any::<u32>(), attempt in 0u32..64, min in any::<u16>(), span in any::<u16>()) {
            let max = min.saturating_add(span);
            let p = snat_candidate(seed, attempt, min, max);
            prop_assert!(p >= min && p <= max);
        }

        #[test]
        fn candidates_differ_between_attempts(seed in any::<u32>()) {
            let ports: std::collections::HashSet<u16> = (0..16).map(|a| snat_candidate(seed, a, 10000, 32767)).collect();
            prop_assert_eq!(ports.len(), 16);
        }
    }

    #[test]
    fn refresh_is_coarse() {
        assert!(!needs_refresh(10, 10 + REFRESH_NS));
        assert!(needs_refresh(10, 11 + REFRESH_NS));
    }
}
