//! ICMP errors about translated connections (destination unreachable, incl.
//! fragmentation needed; time exceeded; parameter problem). Such an error
//! quotes the packet it is about: that quoted IPv4 header and its first L4
//! bytes are rewritten like the connection's own packets, in the direction
//! the error travels, so Path MTU discovery and error reporting work through
//! the gateway. All checksums are updated incrementally: the quoted IPv4
//! header's, the quoted TCP/UDP checksum when it is present in the quote,
//! and the ICMP checksum over all of it (ICMP has no pseudo-header).

use crate::{
    csum::update16,
    nat::{Tuple, apply, delta, ip_csum, l4_csum},
};

pub const PROTO_ICMP: u8 = 1;
pub const DEST_UNREACHABLE: u8 = 3;
pub const TIME_EXCEEDED: u8 = 11;
pub const PARAMETER_PROBLEM: u8 = 12;
/// Code of "fragmentation needed and DF set" under [`DEST_UNREACHABLE`].
pub const FRAG_NEEDED: u8 = 4;
/// Code of "port unreachable" under [`DEST_UNREACHABLE`]: a UDP sender
/// sees `ECONNREFUSED`, and so does a TCP connect in `SYN_SENT` (a hard
/// error, RFC 1122 4.2.3.9; Linux aborts the attempt).
pub const PORT_UNREACHABLE: u8 = 3;

/// Whether an ICMP type is an error that quotes a packet.
#[inline(always)]
pub const fn is_error(icmp_type: u8) -> bool {
    icmp_type == DEST_UNREACHABLE || icmp_type == TIME_EXCEEDED || icmp_type == PARAMETER_PROBLEM
}

/// The new checksums after the quoted packet's tuple changes `old` → `new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuoteCsums {
    pub icmp: u16,
    pub ip: u16,
    /// The quoted TCP/UDP checksum (unchanged when not in the quote).
    pub l4: u16,
}

/// `icmp`, `ip`, `l4`: the checksums as they are; `l4_present`: whether the
/// quote reaches the quoted L4 checksum field (a TCP quote of 8 bytes does
/// not).
#[inline(always)]
pub const fn quote_rewrite(
    icmp: u16,
    ip: u16,
    l4: u16,
    l4_present: bool,
    proto: u8,
    old: &Tuple,
    new: &Tuple,
) -> QuoteCsums {
    let d = delta(old, new);
    let new_ip = ip_csum(ip, &d);
    let new_l4 = if l4_present { l4_csum(l4, &d, proto) } else { l4 };
    // The quoted addresses and ports, then the two quoted checksums.
    let mut c = apply(icmp, d.l4);
    c = update16(c, ip, new_ip);
    if l4_present {
        c = update16(c, l4, new_l4);
    }
    QuoteCsums { icmp: c, ip: new_ip, l4: new_l4 }
}

/// The IPv4 and ICMP headers of a "destination unreachable" error with
/// `code` from `src` to `dst`, quoting `quote_len` bytes; `mtu` is the
/// next-hop MTU of [`FRAG_NEEDED`] (0 otherwise). The ICMP checksum field
/// is 0: [`icmp_checksum`] fills it from the quote's sum.
pub const fn unreachable_headers(
    src: [u8; 4],
    dst: [u8; 4],
    code: u8,
    mtu: u16,
    quote_len: u16,
) -> ([u8; 20], [u8; 8]) {
    let ip = crate::reply::ipv4_header(src, dst, PROTO_ICMP, 20 + 8 + quote_len);
    let m = mtu.to_be_bytes();
    (ip, [DEST_UNREACHABLE, code, 0, 0, 0, 0, m[0], m[1]])
}

/// [`unreachable_headers`] of a "fragmentation needed" error announcing
/// `mtu`.
pub const fn frag_needed_headers(
    src: [u8; 4],
    dst: [u8; 4],
    mtu: u16,
    quote_len: u16,
) -> ([u8; 20], [u8; 8]) {
    unreachable_headers(src, dst, FRAG_NEEDED, mtu, quote_len)
}

/// The ICMP checksum of an 8-byte ICMP header (checksum field 0) followed
/// by a payload whose unfolded sum is `payload_sum`.
pub const fn icmp_checksum(hdr: &[u8; 8], payload_sum: u32) -> u16 {
    let mut s = payload_sum;
    let mut i = 0;
    while i < 8 {
        s += u16::from_be_bytes([hdr[i], hdr[i + 1]]) as u32;
        i += 2;
    }
    !crate::csum::fold(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::checksum;
    use etherparse::{Icmpv4Type, PacketBuilder, icmpv4::DestUnreachableHeader};

    fn quoted(t: &Tuple, tcp: bool) -> Vec<u8> {
        let b = PacketBuilder::ipv4(t.saddr, t.daddr, 63);
        let mut v = Vec::new();
        if tcp {
            b.tcp(u16::from_be_bytes(t.sport), u16::from_be_bytes(t.dport), 7, 100)
                .write(&mut v, &[0u8; 1400])
                .unwrap();
        } else {
            b.udp(u16::from_be_bytes(t.sport), u16::from_be_bytes(t.dport))
                .write(&mut v, &[1u8; 1400])
                .unwrap();
        }
        v
    }

    /// ICMP "fragmentation needed" quoting `q` (IP header + `quote` bytes).
    fn icmp_error(q: &[u8], quote: usize) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ipv4([10, 0, 2, 2], [10, 0, 2, 1], 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
            ))
            .write(&mut v, &q[..20 + quote])
            .unwrap();
        v
    }

    #[test]
    fn rewritten_quote_matches_a_fresh_error() {
        let old = Tuple {
            saddr: [10, 0, 2, 1],
            daddr: [10, 0, 2, 2],
            sport: 12345u16.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
        };
        let new = Tuple {
            saddr: [203, 0, 113, 10],
            daddr: [198, 51, 100, 1],
            sport: 40000u16.to_be_bytes(),
            dport: 8080u16.to_be_bytes(),
        };
        for (tcp, quote) in [(true, 8), (true, 28), (false, 8), (false, 100)] {
            let mut e = icmp_error(&quoted(&old, tcp), quote);
            let (ip0, icmp0, q0) = (0, 20, 28);
            let l4_off = q0 + 20 + if tcp { 16 } else { 6 };
            let present = l4_off + 2 <= e.len();
            let g = |v: &[u8], o: usize| u16::from_be_bytes([v[o], v[o + 1]]);
            let l4 = if present { g(&e, l4_off) } else { 0 };
            let c = quote_rewrite(
                g(&e, icmp0 + 2),
                g(&e, q0 + 10),
                l4,
                present,
                if tcp { 6 } else { 17 },
                &old,
                &new,
            );
            e[q0 + 12..q0 + 16].copy_from_slice(&new.saddr);
            e[q0 + 16..q0 + 20].copy_from_slice(&new.daddr);
            e[q0 + 20..q0 + 22].copy_from_slice(&new.sport);
            e[q0 + 22..q0 + 24].copy_from_slice(&new.dport);
            e[q0 + 10..q0 + 12].copy_from_slice(&c.ip.to_be_bytes());
            if present {
                e[l4_off..l4_off + 2].copy_from_slice(&c.l4.to_be_bytes());
            }
            e[icmp0 + 2..icmp0 + 4].copy_from_slice(&c.icmp.to_be_bytes());
            let want = icmp_error(&quoted(&new, tcp), quote);
            assert_eq!(e, want, "tcp={tcp} quote={quote}");
            assert_eq!(checksum(&e[ip0..20]), 0);
        }
    }

    #[test]
    fn generated_errors_match_etherparse() {
        for (code, mtu, kind) in [
            (FRAG_NEEDED, 1280, DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 }),
            (PORT_UNREACHABLE, 0, DestUnreachableHeader::Port),
        ] {
            generated_error_matches_etherparse(code, mtu, kind);
        }
    }

    fn generated_error_matches_etherparse(code: u8, mtu: u16, kind: DestUnreachableHeader) {
        let orig = quoted(
            &Tuple {
                saddr: [203, 0, 113, 10],
                daddr: [203, 0, 113, 1],
                sport: 40000u16.to_be_bytes(),
                dport: 8080u16.to_be_bytes(),
            },
            true,
        );
        let q = &orig[..28];
        let (ip, mut icmp) =
            unreachable_headers([203, 0, 113, 1], [203, 0, 113, 10], code, mtu, 28);
        if code == FRAG_NEEDED {
            assert_eq!(
                (ip, icmp),
                frag_needed_headers([203, 0, 113, 1], [203, 0, 113, 10], mtu, 28)
            );
        }
        let c = icmp_checksum(&icmp, crate::csum::sum_bytes(q, 0));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut ours = ip.to_vec();
        ours.extend_from_slice(&icmp);
        ours.extend_from_slice(q);
        let mut want = Vec::new();
        let mut h = etherparse::Ipv4Header::new(
            36,
            64,
            etherparse::IpNumber::ICMP,
            [203, 0, 113, 1],
            [203, 0, 113, 10],
        )
        .unwrap();
        h.dscp = etherparse::Ipv4Dscp::try_new(0x30).unwrap();
        h.dont_fragment = false; // like the kernel's own ICMP errors
        PacketBuilder::ip(etherparse::IpHeaders::Ipv4(h, etherparse::Ipv4Extensions::default()))
            .icmpv4(Icmpv4Type::DestinationUnreachable(kind))
            .write(&mut want, q)
            .unwrap();
        assert_eq!(ours, want);
    }

    #[test]
    fn error_types() {
        assert!(is_error(3) && is_error(11) && is_error(12));
        assert!(!is_error(0) && !is_error(8) && !is_error(5));
    }
}
