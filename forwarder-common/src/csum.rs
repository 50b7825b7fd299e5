//! One's-complement Internet checksum arithmetic (RFC 1071) and incremental
//! updates (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
//!
//! All 16-bit values here are *numeric* big-endian words: the value of the two
//! bytes on the wire read with `u16::from_be_bytes`. Sums are carried in a
//! `u32` accumulator and folded at the end; no function loops more than a
//! fixed number of times, so all of them are usable from eBPF.

/// Folds a 32-bit one's-complement accumulator into 16 bits (no complement).
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// One's-complement addition of two 16-bit words.
#[inline(always)]
pub const fn add16(a: u16, b: u16) -> u16 {
    fold(a as u32 + b as u32)
}

/// Adds the two 16-bit halves of a 4-byte field (an IPv4 address) to `sum`.
#[inline(always)]
pub const fn add_addr(sum: u32, addr: [u8; 4]) -> u32 {
    sum + u16::from_be_bytes([addr[0], addr[1]]) as u32
        + u16::from_be_bytes([addr[2], addr[3]]) as u32
}

/// The one's-complement sum of `data` (big-endian words, odd byte padded), on
/// top of `initial`. Host-side reference; the eBPF side uses a bounded loop.
pub fn sum_bytes(data: &[u8], initial: u32) -> u32 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff_ffff {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// The one's-complement sum of a 20-byte IPv4 header (no options); a valid
/// header folds to 0xffff. Unrolled, for eBPF.
#[inline(always)]
pub const fn sum20(h: &[u8; 20]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i < 20 {
        s += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    s
}

/// The full checksum (complemented) of `data`, e.g. an IPv4 header whose
/// checksum field is zero.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_bytes(data, 0))
}

/// The sum of the TCP/UDP pseudo-header (RFC 793 / RFC 768), unfolded.
#[inline(always)]
pub const fn pseudo_header_sum(saddr: [u8; 4], daddr: [u8; 4], proto: u8, l4_len: u16) -> u32 {
    add_addr(add_addr(0, saddr), daddr) + proto as u32 + l4_len as u32
}

/// RFC 1624 eqn. 3 for one 16-bit field changing from `old` to `new`.
#[inline(always)]
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// RFC 1624 for a 4-byte field (an IPv4 address) changing from `old` to `new`.
#[inline(always)]
pub const fn update_addr(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let mut sum = !check as u32;
    sum += !u16::from_be_bytes([old[0], old[1]]) as u32;
    sum += !u16::from_be_bytes([old[2], old[3]]) as u32;
    sum = add_addr(sum, new);
    !fold(sum)
}

/// UDP variant of an update: a checksum of 0 means "none" (RFC 768) and stays
/// 0; a computed 0 is sent as 0xffff.
#[inline(always)]
pub const fn udp_fixup(old_check: u16, new_check: u16) -> u16 {
    if old_check == 0 {
        0
    } else if new_check == 0 {
        0xffff
    } else {
        new_check
    }
}

/// The IPv4 header checksum after decrementing the TTL by one (the TTL is
/// the high byte of the word it shares with the protocol).
#[inline(always)]
pub const fn ttl_decrement(check: u16, ttl: u8, proto: u8) -> u16 {
    let old = u16::from_be_bytes([ttl, proto]);
    let new = u16::from_be_bytes([ttl.wrapping_sub(1), proto]);
    update16(check, old, new)
}

/// Whether an L4 checksum field holds only the (uncomplemented, folded)
/// pseudo-header sum: the mark of a `CHECKSUM_PARTIAL` packet whose checksum
/// the sender left to an offload that a veth never performs. Such a packet
/// needs a full recomputation after translation; an incremental fix would
/// carry the missing payload sum along. A complete checksum collides with
/// this value once in 65 536 packets, and then a full recomputation is merely
/// redundant, never wrong.
#[inline(always)]
pub const fn looks_partial(
    check: u16,
    saddr: [u8; 4],
    daddr: [u8; 4],
    proto: u8,
    l4_len: u16,
) -> bool {
    let p = fold(pseudo_header_sum(saddr, daddr, proto, l4_len));
    check == p || (check == 0xffff && p == 0) || (check == 0 && p == 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_bytes(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn header_sum_verifies() {
        let mut h = [0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(fold(sum20(&h)), 0xffff);
        h[15] ^= 1;
        assert_ne!(fold(sum20(&h)), 0xffff);
    }

    #[test]
    fn udp_zero_stays_zero() {
        assert_eq!(udp_fixup(0, 0x1234), 0);
        assert_eq!(udp_fixup(0x5555, 0), 0xffff);
        assert_eq!(udp_fixup(0x5555, 0x1234), 0x1234);
    }

    fn with_field(data: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        v
    }

    proptest! {
        #[test]
        fn incremental16_equals_full(mut data in proptest::collection::vec(any::<u8>(), 4..200), idx in any::<usize>(), new in any::<u16>()) {
            // Checksum at [0..2], the changed word somewhere after it.
            data[0] = 0; data[1] = 0;
            let words = data.len() / 2;
            let at = 2 + 2 * (idx % (words - 1));
            let c = checksum(&data);
            let old = u16::from_be_bytes([data[at], data[at + 1]]);
            let changed = with_field(&data, at, &new.to_be_bytes());
            let full = checksum(&changed);
            let inc = update16(c, old, new);
            // 0x0000 and 0xffff are the same number in one's complement.
            prop_assert!(inc == full || (inc ^ full) == 0xffff && (inc == 0 || full == 0), "inc {inc:#x} full {full:#x}");
        }

        #[test]
        fn incremental_addr_equals_full(mut data in proptest::collection::vec(any::<u8>(), 8..200), idx in any::<usize>(), new in any::<[u8; 4]>()) {
            data[0] = 0; data[1] = 0;
            let at = 2 + 2 * (idx % ((data.len() - 4) / 2));
            let c = checksum(&data);
            let old = [data[at], data[at + 1], data[at + 2], data[at + 3]];
            let full = checksum(&with_field(&data, at, &new));
            let inc = update_addr(c, old, new);
            prop_assert!(inc == full || (inc ^ full) == 0xffff && (inc == 0 || full == 0));
        }

        #[test]
        fn ttl_decrement_equals_full(mut hdr in any::<[u8; 20]>()) {
            hdr[10] = 0; hdr[11] = 0;
            let c = checksum(&hdr);
            let full = checksum(&with_field(&hdr, 8, &[hdr[8].wrapping_sub(1)]));
            let inc = ttl_decrement(c, hdr[8], hdr[9]);
            prop_assert!(inc == full || (inc ^ full) == 0xffff && (inc == 0 || full == 0));
        }

        #[test]
        fn partial_checksum_is_recognised(s in any::<[u8; 4]>(), d in any::<[u8; 4]>(), payload in proptest::collection::vec(any::<u8>(), 0..1400)) {
            // What a CHECKSUM_PARTIAL segment carries is what the NIC
            // completes into the real checksum: the value P with
            // ~fold(P + sum of the segment with the field 0) == C, where C
            // is the checksum etherparse computes. Solved for P from C.
            let mut tcp = etherparse::TcpHeader::new(40000, 80, 1, 64240);
            tcp.checksum = tcp.calc_checksum_ipv4_raw(s, d, &payload).unwrap();
            let full = tcp.checksum;
            let mut seg = tcp.to_bytes().to_vec();
            seg[16..18].copy_from_slice(&[0, 0]);
            seg.extend_from_slice(&payload);
            let len = seg.len() as u16;
            let rest = u32::from(!fold(sum_bytes(&seg, 0)));
            let partial = fold(u32::from(!full) + rest);
            prop_assert!(looks_partial(partial, s, d, 6, len), "{partial:#06x} for {s:?} -> {d:?}, {len} bytes");
            // And the complete checksum is not taken for a partial one
            // (unless it collides, once in 65 536).
            prop_assert!(full == partial || !looks_partial(full, s, d, 6, len));
        }
    }
}
