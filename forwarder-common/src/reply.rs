//! Packets the gateway sends itself in answer to one it received: the IPv4
//! header they share, and the TCP reset that refuses a connection no
//! backend can take (RFC 9293 3.10.7.1: the reset of a segment to a closed
//! port). The ICMP errors built on the same header are in [`crate::icmp`].

use crate::{
    abi::{PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    csum::{fold, sum20},
};

/// An IPv4 header without options from `src` to `dst` of protocol
/// `proto`, TOS 0xc0 (internetwork control, as the kernel's own errors
/// and resets), TTL 64, no fragment flags, checksum filled in.
#[inline(always)]
pub const fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, total_len: u16) -> [u8; 20] {
    let tot = total_len.to_be_bytes();
    let mut ip = [
        0x45, 0xc0, tot[0], tot[1], 0, 0, 0, 0, 64, proto, 0, 0, src[0], src[1], src[2], src[3],
        dst[0], dst[1], dst[2], dst[3],
    ];
    let c = (fold(sum20(&ip)) ^ 0xffff).to_be_bytes();
    ip[10] = c[0];
    ip[11] = c[1];
    ip
}

/// A TCP segment as the reset answering it needs it: its flags, sequence
/// and acknowledgment numbers, and its length in sequence space (payload
/// bytes, plus one each for SYN and FIN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload: u32,
}

/// The flags, sequence and acknowledgment numbers of the reset answering
/// `s`: with ACK set, `RST` with the sequence number it acknowledged (the
/// peer takes it as in its window); without, `RST|ACK` of sequence 0
/// acknowledging all of `s`.
#[inline(always)]
pub const fn reset_numbers(s: &Segment) -> (u8, u32, u32) {
    if s.flags & TCP_ACK != 0 {
        return (TCP_RST, s.ack, 0);
    }
    let mut len = s.payload;
    if s.flags & TCP_SYN != 0 {
        len = len.wrapping_add(1);
    }
    if s.flags & TCP_FIN != 0 {
        len = len.wrapping_add(1);
    }
    (TCP_RST | TCP_ACK, 0, s.seq.wrapping_add(len))
}

/// The IPv4 and TCP headers (40 bytes, no options, no payload) of the
/// reset that answers `s`, sent from `s`'s destination `dst`:`dport`
/// back to its source `src`:`sport`. Both checksums are filled in.
#[inline(always)]
pub const fn reset_headers(
    src: [u8; 4],
    dst: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
    s: &Segment,
) -> ([u8; 20], [u8; 20]) {
    let (flags, seq, ack) = reset_numbers(s);
    segment_headers(&Endpoints { src: dst, dst: src, sport: dport, dport: sport }, flags, seq, ack)
}

/// Who sends a segment to whom (addresses and ports in network order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// The IPv4 and TCP headers (40 bytes, no options, no payload, window 0)
/// of a segment with `flags`, `seq` and `ack` between `ends`. Both
/// checksums are filled in.
#[inline(always)]
pub const fn segment_headers(
    ends: &Endpoints,
    flags: u8,
    seq: u32,
    ack: u32,
) -> ([u8; 20], [u8; 20]) {
    let (src, dst) = (ends.src, ends.dst);
    let ip = ipv4_header(src, dst, PROTO_TCP, 40);
    let (q, a) = (seq.to_be_bytes(), ack.to_be_bytes());
    let mut tcp = [
        ends.sport[0],
        ends.sport[1],
        ends.dport[0],
        ends.dport[1],
        q[0],
        q[1],
        q[2],
        q[3],
        a[0],
        a[1],
        a[2],
        a[3],
        0x50,
        flags,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    // The pseudo-header: both addresses, protocol, TCP length (20).
    let pseudo = sum20(&[
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], 0, PROTO_TCP, 0, 20, 0, 0,
        0, 0, 0, 0, 0, 0,
    ]);
    let c = (!fold(pseudo + sum20(&tcp))).to_be_bytes();
    tcp[16] = c[0];
    tcp[17] = c[1];
    (ip, tcp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    #[test]
    fn reset_numbers_follow_rfc_9293() {
        // A SYN: RST|ACK acknowledging the SYN itself.
        let syn = Segment { flags: TCP_SYN, seq: 1000, ack: 0, payload: 0 };
        assert_eq!(reset_numbers(&syn), (TCP_RST | TCP_ACK, 0, 1001));
        // A SYN with data (TCP Fast Open): its bytes too.
        let tfo = Segment { payload: 100, ..syn };
        assert_eq!(reset_numbers(&tfo), (TCP_RST | TCP_ACK, 0, 1101));
        // Wrapping at 2^32.
        let top = Segment { flags: TCP_SYN | TCP_FIN, seq: u32::MAX, ack: 0, payload: 0 };
        assert_eq!(reset_numbers(&top), (TCP_RST | TCP_ACK, 0, 1));
        // A segment with ACK: RST whose sequence is what it acknowledged.
        let mid = Segment { flags: TCP_ACK | 0x08, seq: 5, ack: 77_000, payload: 10 };
        assert_eq!(reset_numbers(&mid), (TCP_RST, 77_000, 0));
    }

    #[test]
    fn reset_headers_match_etherparse() {
        let (client, gw) = ([203, 0, 113, 10], [203, 0, 113, 1]);
        for s in [
            Segment { flags: TCP_SYN, seq: 0xdead_beef, ack: 0, payload: 0 },
            Segment { flags: TCP_ACK, seq: 1, ack: 0x1234_5678, payload: 0 },
        ] {
            let (ip, tcp) =
                reset_headers(client, gw, 40000u16.to_be_bytes(), 8080u16.to_be_bytes(), &s);
            let mut ours = ip.to_vec();
            ours.extend_from_slice(&tcp);
            let (flags, seq, ack) = reset_numbers(&s);
            let mut h =
                etherparse::Ipv4Header::new(20, 64, etherparse::IpNumber::TCP, gw, client).unwrap();
            h.dscp = etherparse::Ipv4Dscp::try_new(0x30).unwrap();
            h.dont_fragment = false;
            let mut b = PacketBuilder::ip(etherparse::IpHeaders::Ipv4(
                h,
                etherparse::Ipv4Extensions::default(),
            ))
            .tcp(8080, 40000, seq, 0)
            .rst();
            if flags & TCP_ACK != 0 {
                b = b.ack(ack);
            }
            let mut want = Vec::new();
            b.write(&mut want, &[]).unwrap();
            assert_eq!(ours, want, "{s:?}");
            // And it reads back as meant.
            let p = SlicedPacket::from_ip(&ours).unwrap();
            let Some(TransportSlice::Tcp(t)) = p.transport else { panic!("not TCP") };
            assert!(t.rst() && !t.syn() && t.acknowledgment_number() == ack);
        }
    }

    #[test]
    fn a_bare_ack_matches_etherparse() {
        let ends = Endpoints {
            src: [192, 168, 1, 1],
            dst: [192, 168, 1, 50],
            sport: 40000u16.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
        };
        let (ip, tcp) = segment_headers(&ends, TCP_ACK, 7, 9);
        let mut ours = ip.to_vec();
        ours.extend_from_slice(&tcp);
        let mut h =
            etherparse::Ipv4Header::new(20, 64, etherparse::IpNumber::TCP, ends.src, ends.dst)
                .unwrap();
        h.dscp = etherparse::Ipv4Dscp::try_new(0x30).unwrap();
        h.dont_fragment = false;
        let mut want = Vec::new();
        PacketBuilder::ip(etherparse::IpHeaders::Ipv4(h, etherparse::Ipv4Extensions::default()))
            .tcp(40000, 80, 7, 0)
            .ack(9)
            .write(&mut want, &[])
            .unwrap();
        assert_eq!(ours, want);
    }

    #[test]
    fn ipv4_header_checksum_is_valid() {
        let h = ipv4_header([10, 0, 0, 1], [10, 0, 0, 2], PROTO_TCP, 40);
        assert_eq!(crate::csum::checksum(&h), 0);
        assert_eq!(h[9], PROTO_TCP);
    }
}
