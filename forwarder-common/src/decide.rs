//! The datapath's pure decisions, as plain functions over plain values:
//! what a FIB result means in each hook, which first packets may create
//! state, when XDP must sum a segment in full (and when it cannot), the
//! length of a GSO skb's segments, and how a "too big" drop carries the
//! MTU to the code that answers it. The eBPF programs gather the values
//! (packet bytes, helper results) and act on the answer; the host tests
//! below pin every case down.

use crate::{
    abi::{PROTO_UDP, TCP_RST},
    csum::looks_partial,
    stats,
};

/// `bpf_fib_lookup` results (`BPF_FIB_LKUP_RET_*`, uapi `linux/bpf.h`).
pub mod fib {
    pub const SUCCESS: u32 = 0;
    pub const BLACKHOLE: u32 = 1;
    pub const UNREACHABLE: u32 = 2;
    pub const PROHIBIT: u32 = 3;
    pub const NOT_FWDED: u32 = 4;
    pub const FWD_DISABLED: u32 = 5;
    pub const UNSUPP_LWT: u32 = 6;
    pub const NO_NEIGH: u32 = 7;
    pub const FRAG_NEEDED: u32 = 8;
    pub const NO_SRC_ADDR: u32 = 9;
}

/// What a FIB result means for a translated packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FibOutcome {
    /// Route and neighbour known: rewrite and send (XDP: if the egress is
    /// one it can transmit into; the caller checks the devmap).
    Send,
    /// TC only: the route is known, the neighbour not: send with
    /// `bpf_redirect_neigh`, which resolves it.
    Resolve,
    /// XDP only: leave the packet untouched for TC (counted `XDP_TO_TC`).
    ToTc,
    /// TC only: too big for the egress link: answer "fragmentation needed"
    /// (DF) or drop.
    TooBig,
    /// Drop; the counter says why.
    Drop(u32),
    /// Leave it to the kernel; the counter says why.
    Pass(u32),
}

/// The meaning of FIB result `ret` in XDP (`is_xdp`) or TC.
///
/// XDP cannot resolve neighbours, and checks the MTU against the frame (a
/// GRO'd skb in generic XDP exceeds it without being too big for the
/// wire): both go to TC. TC asks the FIB with `tot_len` 0, so its
/// "fragmentation needed" is about the packet itself.
#[inline(always)]
pub const fn fib_outcome(ret: u32, is_xdp: bool) -> FibOutcome {
    match ret {
        fib::SUCCESS => FibOutcome::Send,
        // XDP: neither resolves a neighbour nor knows a GRO'd skb's size.
        fib::NO_NEIGH | fib::FRAG_NEEDED if is_xdp => FibOutcome::ToTc,
        fib::NO_NEIGH => FibOutcome::Resolve,
        fib::BLACKHOLE | fib::UNREACHABLE | fib::PROHIBIT => FibOutcome::Drop(stats::DROP_NO_ROUTE),
        fib::FWD_DISABLED => FibOutcome::Pass(stats::PASS_FWD_DISABLED),
        fib::NOT_FWDED => FibOutcome::Pass(stats::PASS_NOT_FORWARDED),
        fib::FRAG_NEEDED => FibOutcome::TooBig,
        fib::NO_SRC_ADDR => FibOutcome::Drop(stats::DROP_NO_SRC_ADDR),
        _ => FibOutcome::Pass(stats::PASS_FIB_OTHER),
    }
}

/// The gate a first packet passes before any state exists: a stray RST
/// never creates state (passed, as not ours), a packet whose TTL runs out
/// here is dropped. `None`: it may go on (source list, route, rate limit,
/// masquerade port come next). `tcp_flags` is 0 for UDP.
#[inline(always)]
pub const fn first_packet_gate(tcp_flags: u8, ttl: u8) -> Option<Gate> {
    if tcp_flags & TCP_RST != 0 {
        return Some(Gate::Pass(stats::PASS_NOT_OURS));
    }
    if ttl <= 1 {
        return Some(Gate::Drop(stats::DROP_TTL));
    }
    None
}

/// A first packet stopped at the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Pass(u32),
    Drop(u32),
}

/// Whether a new connection is masqueraded: when its rule says so, and
/// always for hairpin (without it the backend would answer the internal
/// client directly, from an address the client never called).
#[inline(always)]
pub const fn masquerades(hairpin: bool, rule_flags: u16) -> bool {
    hairpin || rule_flags & crate::abi::RULE_F_MASQUERADE != 0
}

/// Whether the L4 checksum holds only the pseudo-header sum (a
/// `CHECKSUM_PARTIAL` packet from a local sender), so that XDP must sum
/// the whole segment. Never for a fragment (its checksum covers the whole
/// datagram: the sender resolves offloads before fragmenting) nor for UDP
/// without a checksum (0).
#[inline(always)]
pub fn needs_full_sum(
    proto: u8,
    l4_check: u16,
    fragment: bool,
    saddr: [u8; 4],
    daddr: [u8; 4],
    l4_len: u16,
) -> bool {
    let udp_none = proto == PROTO_UDP && l4_check == 0;
    !fragment && !udp_none && looks_partial(l4_check, saddr, daddr, proto, l4_len)
}

/// Whether the segment is longer than XDP can sum (`max_sum_len`: a
/// GRO'd skb in generic XDP): if it also needs a full sum, it goes to TC,
/// whose helpers sum any skb. Always false in TC.
#[inline(always)]
pub const fn beyond_xdp_sum(is_xdp: bool, l4_len: u16, max_sum_len: usize) -> bool {
    is_xdp && l4_len as usize > max_sum_len
}

/// The IPv4 length of the segments a GSO skb is cut into: its IPv4 header
/// (the L4 offset minus the 14-byte Ethernet header), the L4 header, and
/// `gso_size` bytes of payload. What must fit the egress MTU, as the
/// kernel's `ip_forward` checks.
#[inline(always)]
pub const fn gso_segment_len(l4_off: usize, l4_header_len: u32, gso_size: u32) -> u32 {
    (l4_off as u32 - 14) + l4_header_len + gso_size
}

/// The TCP header length from its data-offset byte (upper 4 bits, in
/// 32-bit words).
#[inline(always)]
pub const fn tcp_header_len(data_offset_byte: u8) -> u32 {
    (data_offset_byte >> 4) as u32 * 4
}

/// A "too big for the egress link" drop that TC answers with ICMP
/// "fragmentation needed": the drop reason carries the MTU in its upper 16
/// bits (a verdict variant of its own made LLVM read an undefined
/// register on another path, which the verifier refuses). 0: no MTU known,
/// a plain drop.
#[inline(always)]
pub const fn too_big(mtu: u16) -> u32 {
    stats::DROP_TOO_BIG | (mtu as u32) << 16
}

/// The MTU a drop reason made by [`too_big`] carries, if any.
#[inline(always)]
pub const fn too_big_mtu(reason: u32) -> Option<u32> {
    if reason & 0xffff == stats::DROP_TOO_BIG && reason >> 16 != 0 {
        Some(reason >> 16)
    } else {
        None
    }
}

/// The counter of a drop reason (without the MTU [`too_big`] may carry).
#[inline(always)]
pub const fn drop_counter(reason: u32) -> u32 {
    reason & 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{abi::PROTO_TCP, csum};

    #[test]
    fn every_fib_result_means_what_each_hook_can_do() {
        use FibOutcome::*;
        let table = [
            (fib::SUCCESS, Send, Send),
            (fib::NO_NEIGH, ToTc, Resolve),
            (fib::FRAG_NEEDED, ToTc, TooBig),
            (fib::BLACKHOLE, Drop(stats::DROP_NO_ROUTE), Drop(stats::DROP_NO_ROUTE)),
            (fib::UNREACHABLE, Drop(stats::DROP_NO_ROUTE), Drop(stats::DROP_NO_ROUTE)),
            (fib::PROHIBIT, Drop(stats::DROP_NO_ROUTE), Drop(stats::DROP_NO_ROUTE)),
            (fib::NO_SRC_ADDR, Drop(stats::DROP_NO_SRC_ADDR), Drop(stats::DROP_NO_SRC_ADDR)),
            (fib::FWD_DISABLED, Pass(stats::PASS_FWD_DISABLED), Pass(stats::PASS_FWD_DISABLED)),
            (fib::NOT_FWDED, Pass(stats::PASS_NOT_FORWARDED), Pass(stats::PASS_NOT_FORWARDED)),
            (fib::UNSUPP_LWT, Pass(stats::PASS_FIB_OTHER), Pass(stats::PASS_FIB_OTHER)),
            (99, Pass(stats::PASS_FIB_OTHER), Pass(stats::PASS_FIB_OTHER)),
        ];
        for (ret, xdp, tc) in table {
            assert_eq!(fib_outcome(ret, true), xdp, "XDP, result {ret}");
            assert_eq!(fib_outcome(ret, false), tc, "TC, result {ret}");
        }
    }

    #[test]
    fn a_stray_rst_or_a_dying_ttl_never_creates_state() {
        assert_eq!(first_packet_gate(0x02, 64), None, "SYN");
        assert_eq!(first_packet_gate(0, 64), None, "UDP");
        assert_eq!(first_packet_gate(0x04, 64), Some(Gate::Pass(stats::PASS_NOT_OURS)), "RST");
        assert_eq!(first_packet_gate(0x14, 1), Some(Gate::Pass(stats::PASS_NOT_OURS)), "RST first");
        assert_eq!(first_packet_gate(0x02, 1), Some(Gate::Drop(stats::DROP_TTL)), "TTL 1");
        assert_eq!(first_packet_gate(0x02, 0), Some(Gate::Drop(stats::DROP_TTL)), "TTL 0");
        assert_eq!(first_packet_gate(0x02, 2), None, "TTL 2 leaves with 1");
    }

    #[test]
    fn hairpin_always_masquerades() {
        let m = crate::abi::RULE_F_MASQUERADE;
        assert!(masquerades(true, 0));
        assert!(masquerades(false, m));
        assert!(!masquerades(false, 0));
        assert!(!masquerades(false, !m));
    }

    #[test]
    fn full_sum_only_for_a_pseudo_header_sum_outside_fragments() {
        let (s, d) = ([203, 0, 113, 10], [203, 0, 113, 1]);
        let partial = csum::fold(csum::pseudo_header_sum(s, d, PROTO_TCP, 60));
        assert!(needs_full_sum(PROTO_TCP, partial, false, s, d, 60));
        assert!(!needs_full_sum(PROTO_TCP, partial, true, s, d, 60), "a fragment");
        assert!(!needs_full_sum(PROTO_TCP, partial ^ 0x0101, false, s, d, 60), "a full checksum");
        assert!(!needs_full_sum(PROTO_UDP, 0, false, s, d, 60), "UDP without a checksum");
        let udp_partial = csum::fold(csum::pseudo_header_sum(s, d, PROTO_UDP, 60));
        assert!(needs_full_sum(PROTO_UDP, udp_partial, false, s, d, 60));
    }

    #[test]
    fn xdp_hands_over_only_what_it_cannot_sum() {
        assert!(!beyond_xdp_sum(false, 60_000, 1500), "TC sums anything");
        assert!(!beyond_xdp_sum(true, 1500, 1500), "up to the limit");
        assert!(beyond_xdp_sum(true, 1501, 1500), "past it");
    }

    #[test]
    fn gso_segments_are_measured_as_ip_forward_does() {
        // 14 + 20 (IPv4) | 20 (TCP) | 1448 payload: 1488-byte segments.
        assert_eq!(gso_segment_len(34, tcp_header_len(0x50), 1448), 1488);
        // IP options (24-byte header), TCP with timestamps (32 bytes).
        assert_eq!(gso_segment_len(38, tcp_header_len(0x80), 1436), 1492);
        assert_eq!(gso_segment_len(34, 8, 1472), 1500, "UDP");
    }

    #[test]
    fn a_too_big_drop_carries_its_mtu_and_counts_as_too_big() {
        for mtu in [68u16, 1280, 1400, 9000, u16::MAX] {
            let r = too_big(mtu);
            assert_eq!(too_big_mtu(r), Some(u32::from(mtu)));
            assert_eq!(drop_counter(r), stats::DROP_TOO_BIG);
        }
        assert_eq!(too_big_mtu(too_big(0)), None, "no MTU: a plain drop");
        assert_eq!(too_big_mtu(stats::DROP_TTL), None);
        assert_eq!(drop_counter(stats::DROP_TTL), stats::DROP_TTL);
    }
}
