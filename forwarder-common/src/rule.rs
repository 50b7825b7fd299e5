//! Rules in the datapath's terms: a public port range becomes the LPM-trie
//! prefixes that cover it exactly, and a match yields its backend port.

use crate::abi::{RULE_F_PORT_RANGE, RULE_KEY_FIXED_BITS, RuleKey, RuleTarget};

/// The CIDR-style cover of `[lo, hi]`: `(first port, prefix bits)` pairs,
/// in order, at most 30 of them (2 × 15 for the worst range).
pub fn port_prefixes(lo: u16, hi: u16) -> impl Iterator<Item = (u16, u32)> {
    let mut next = Some(u32::from(lo));
    let hi = u32::from(hi);
    core::iter::from_fn(move || {
        let start = next?;
        if start > hi {
            return None;
        }
        // The largest aligned block starting at `start` that fits.
        let mut size = if start == 0 { 1 << 16 } else { 1u32 << start.trailing_zeros().min(16) };
        while start + size - 1 > hi {
            size >>= 1;
        }
        next = Some(start + size);
        Some((start as u16, 16 - size.trailing_zeros()))
    })
}

/// The trie key (prefix length, data) for a public port block.
pub const fn key(ifindex: u32, proto: u8, port: u16, port_bits: u32) -> (u32, RuleKey) {
    (RULE_KEY_FIXED_BITS + port_bits, RuleKey { ifindex, proto, port: port.to_be_bytes(), _pad: 0 })
}

/// The backend port (network order) for a packet to public port `dport`
/// (host order) that matched `t`.
#[inline(always)]
pub const fn backend_port(t: &RuleTarget, dport: u16) -> [u8; 2] {
    backend_port_from(t.port, t, dport)
}

/// [`backend_port`] for a backend whose first port is `base` (one of the
/// rule's several backends: each has the rule's port mapping).
#[inline(always)]
pub const fn backend_port_from(base: [u8; 2], t: &RuleTarget, dport: u16) -> [u8; 2] {
    if t.flags & RULE_F_PORT_RANGE == 0 {
        return base;
    }
    u16::from_be_bytes(base).wrapping_add(dport.wrapping_sub(t.public_lo)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(port_prefixes(8080, 8080).collect::<Vec<_>>(), [(8080, 16)]);
        assert_eq!(port_prefixes(8000, 8003).collect::<Vec<_>>(), [(8000, 14)]);
        assert_eq!(port_prefixes(1, 65535).count(), 16);
        assert_eq!(port_prefixes(0, 65535).collect::<Vec<_>>(), [(0, 0)]);
        assert!(port_prefixes(8000, 9000).count() <= 30);
    }

    proptest! {
        /// The prefixes cover exactly [lo, hi], without overlap, and few.
        #[test]
        fn cover_is_exact(a in any::<u16>(), b in any::<u16>()) {
            let (lo, hi) = (a.min(b), a.max(b));
            let mut covered = 0u32;
            let mut expect_next = u32::from(lo);
            for (start, bits) in port_prefixes(lo, hi) {
                let size = 1u32 << (16 - bits);
                prop_assert_eq!(u32::from(start), expect_next);
                prop_assert_eq!(u32::from(start) % size, 0, "aligned");
                expect_next += size;
                covered += size;
            }
            prop_assert_eq!(covered, u32::from(hi) - u32::from(lo) + 1);
            prop_assert!(port_prefixes(lo, hi).count() <= 30);
        }

        #[test]
        fn range_maps_onto_range(lo in 1u16..60000, len in 0u16..5000, off in 0u16..5000, blo in 1u16..60000) {
            let off = off.min(len);
            let t = RuleTarget { port: blo.to_be_bytes(), flags: RULE_F_PORT_RANGE, public_lo: lo, ..Default::default() };
            // Port arithmetic modulo 2^16, done in u32.
            let want = ((u32::from(blo) + u32::from(off)) % 65_536) as u16;
            prop_assert_eq!(backend_port(&t, lo + off), want.to_be_bytes());
            let single = RuleTarget { port: 80u16.to_be_bytes(), public_lo: lo, ..Default::default() };
            prop_assert_eq!(backend_port(&single, lo + off), 80u16.to_be_bytes());
        }
    }
}
