//! Header validation decisions, as plain functions over header fields.
//!
//! The eBPF side does the bounds checks against `data_end` (which only the
//! verifier can reason about) and hands the raw field values here; what is a
//! valid, forwardable IPv4/TCP/UDP packet is decided in one place and tested
//! on the host.

/// Why a packet is left to the kernel untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Version field is not 4.
    Version,
    /// IHL below 5 (20 bytes).
    HeaderLength,
    /// Total length shorter than the header, or longer than the frame.
    TotalLength,
    /// L4 header does not fit in the IP payload.
    L4Length,
}

/// What the datapath needs from a valid IPv4 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Meta {
    /// Header length in bytes (IHL × 4, 20..=60).
    pub header_len: usize,
    /// Total length (header + payload) in bytes.
    pub total_len: usize,
    /// More-fragments set or a non-zero offset.
    pub is_fragment: bool,
    /// The fragment that carries the L4 header (offset 0, more-fragments).
    pub first_fragment: bool,
}

/// IPv4 flag/offset field (host order): more-fragments bit and offset mask.
pub const IP_MF: u16 = 0x2000;
/// Don't-fragment bit of the same field.
pub const IP_DF: u16 = 0x4000;
pub const IP_OFFSET_MASK: u16 = 0x1fff;

/// Validates an IPv4 header: `vihl` (version/IHL byte), `total_len` and
/// `frags` (host order), and `avail`, the bytes from the start of the IP
/// header to the end of the frame. Shorter-than-frame totals are fine
/// (Ethernet pads small frames); longer ones are truncated packets.
#[inline(always)]
pub const fn ipv4(
    vihl: u8,
    total_len: u16,
    frags: u16,
    avail: usize,
) -> Result<Ipv4Meta, Malformed> {
    if vihl >> 4 != 4 {
        return Err(Malformed::Version);
    }
    let header_len = ((vihl & 0x0f) as usize) * 4;
    if header_len < 20 {
        return Err(Malformed::HeaderLength);
    }
    let total_len = total_len as usize;
    if total_len < header_len || total_len > avail {
        return Err(Malformed::TotalLength);
    }
    Ok(Ipv4Meta {
        header_len,
        total_len,
        is_fragment: frags & (IP_MF | IP_OFFSET_MASK) != 0,
        first_fragment: frags & IP_MF != 0 && frags & IP_OFFSET_MASK == 0,
    })
}

/// Minimum L4 header length for the protocols we translate.
#[inline(always)]
pub const fn l4_min_len(proto: u8) -> usize {
    if proto == crate::abi::PROTO_TCP { 20 } else { 8 }
}

/// Checks that the L4 header of `proto` fits into `l4_len` payload bytes, and
/// for UDP that its length field (host order) is consistent: at most the
/// payload, or, in a first fragment, at least the payload.
#[inline(always)]
pub const fn l4(
    proto: u8,
    l4_len: usize,
    udp_len: u16,
    first_fragment: bool,
) -> Result<(), Malformed> {
    if l4_len < l4_min_len(proto) {
        return Err(Malformed::L4Length);
    }
    let udp_len = udp_len as usize;
    let consistent = if first_fragment { udp_len > l4_len } else { udp_len <= l4_len };
    if proto == crate::abi::PROTO_UDP && (udp_len < 8 || !consistent) {
        return Err(Malformed::L4Length);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_options() {
        assert_eq!(
            ipv4(0x45, 40, 0x4000, 60),
            Ok(Ipv4Meta {
                header_len: 20,
                total_len: 40,
                is_fragment: false,
                first_fragment: false
            })
        );
        assert_eq!(ipv4(0x46, 44, 0, 44).unwrap().header_len, 24);
        assert_eq!(ipv4(0x4f, 60, 0, 60).unwrap().header_len, 60);
    }

    #[test]
    fn refuses_bad_headers() {
        assert_eq!(ipv4(0x65, 40, 0, 40), Err(Malformed::Version));
        assert_eq!(ipv4(0x44, 40, 0, 40), Err(Malformed::HeaderLength));
        assert_eq!(ipv4(0x46, 20, 0, 40), Err(Malformed::TotalLength));
        assert_eq!(ipv4(0x45, 41, 0, 40), Err(Malformed::TotalLength));
    }

    #[test]
    fn fragments_are_flagged() {
        assert!(ipv4(0x45, 40, IP_MF, 40).unwrap().is_fragment);
        assert!(ipv4(0x45, 40, 185, 40).unwrap().is_fragment);
        assert!(!ipv4(0x45, 40, 0x4000, 40).unwrap().is_fragment);
        assert!(ipv4(0x45, 40, IP_MF, 40).unwrap().first_fragment);
        assert!(!ipv4(0x45, 40, IP_MF | 0xb9, 40).unwrap().first_fragment);
        assert!(!ipv4(0x45, 40, 185, 40).unwrap().first_fragment);
    }

    #[test]
    fn l4_lengths() {
        assert!(l4(6, 20, 0, false).is_ok());
        assert_eq!(l4(6, 19, 0, false), Err(Malformed::L4Length));
        assert!(l4(17, 8, 8, false).is_ok());
        assert_eq!(l4(17, 8, 9, false), Err(Malformed::L4Length));
        assert_eq!(l4(17, 16, 7, false), Err(Malformed::L4Length));
        // A first fragment carries less than the datagram's UDP length.
        assert!(l4(17, 1480, 4008, true).is_ok());
        assert_eq!(l4(17, 1480, 1000, true), Err(Malformed::L4Length));
    }
}
