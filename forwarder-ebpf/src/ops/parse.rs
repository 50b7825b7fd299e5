//! Parsing a frame into [`Parsed`] (or the verdict for one that is not
//! ours), and what the parse says about the work ahead.

use forwarder_common::{
    abi::{PROTO_TCP, PROTO_UDP},
    decide,
    icmp::PROTO_ICMP,
    nat::Tuple,
    parse, stats,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    ctx::{Packet, ptr_at},
    ops::csum,
    types::{CreatedBy, FRAG_FIRST, FRAG_LATER, FRAG_NONE, NewFlowPlan, Parsed, Verdict},
};

/// Parses Ethernet / IPv4 (any IHL) / TCP or UDP. `Err` carries the verdict
/// for packets that are not ours or not valid.
#[inline(always)]
pub fn parse<P: Packet>(p: &P) -> Result<Parsed, Verdict> {
    let eth: *const EthHdr = ptr_at(p, 0).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    let ether_type = unsafe { (*eth).ether_type };
    // 802.1Q: XDP leaves tagged frames to TC, which sees them untagged (the
    // kernel moves the tag into the skb) and tags replies again.
    if P::IS_XDP
        && (ether_type == EtherType::Ieee8021q as u16 || ether_type == EtherType::Ieee8021ad as u16)
    {
        return Err(Verdict::ToTc);
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return Err(Verdict::Pass(stats::PASS_NOT_IPV4));
    }
    let ip: *const Ipv4Hdr = ptr_at(p, EthHdr::LEN).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    // The whole packet, not just its linear part: in TC the payload of a
    // large skb sits in fragments; only the headers must be linear.
    let avail = (p.len() as usize).saturating_sub(EthHdr::LEN);
    let meta =
        parse::ipv4(ip.vihl, u16::from_be_bytes(ip.tot_len), u16::from_be_bytes(ip.frags), avail)
            .map_err(|_| Verdict::Pass(stats::PASS_MALFORMED))?;
    let proto = ip.proto;
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
        return Err(Verdict::Pass(stats::PASS_NOT_OURS));
    }
    // A corrupt header is the kernel's to drop (and count), never ours to
    // forward: the incremental update would carry the corruption along.
    let header_sum = if meta.header_len == 20 {
        // SAFETY: the 20 bytes were bounds-checked as the Ipv4Hdr.
        forwarder_common::csum::sum20(unsafe { &*(core::ptr::from_ref(ip).cast::<[u8; 20]>()) })
    } else {
        csum::sum(p, EthHdr::LEN, meta.header_len & 0x3c)
            .ok_or(Verdict::Pass(stats::PASS_MALFORMED))?
    };
    if forwarder_common::csum::fold(header_sum) != 0xffff {
        return Err(Verdict::Pass(stats::PASS_MALFORMED));
    }
    // IHL is 4 bits: masking keeps the offset provably bounded.
    let l4_off = EthHdr::LEN + (meta.header_len & 0x3c);
    let l4_len = (meta.total_len - meta.header_len) as u16;
    // ICMP fragments are never ours; TCP/UDP fragments after the first
    // carry no L4 header: they follow their first fragment (flow::frag).
    if proto == PROTO_ICMP && meta.is_fragment {
        return Err(Verdict::Pass(stats::PASS_FRAGMENT));
    }
    // ICMP and fragments are rare: XDP hands them to TC, which keeps the
    // XDP program (the hot path) small enough for the verifier to explore
    // every path of it.
    if P::IS_XDP && (proto == PROTO_ICMP || meta.is_fragment) {
        return Err(Verdict::ToTc);
    }
    let fragment = if !meta.is_fragment {
        FRAG_NONE
    } else if meta.first_fragment {
        FRAG_FIRST
    } else {
        FRAG_LATER
    };
    // What every packet shares; the ports, L4 checksum and TCP flags
    // (or ICMP type) come from the L4 header, if the packet has one.
    let parsed = |ports: [u8; 4], l4_check: u16, flags_or_type: u8| Parsed {
        l4_off,
        l4_len,
        l3_len: meta.total_len as u16,
        proto,
        ttl: ip.ttl,
        tuple: Tuple {
            saddr: ip.src_addr,
            daddr: ip.dst_addr,
            sport: [ports[0], ports[1]],
            dport: [ports[2], ports[3]],
        },
        l4_check,
        flags_or_type,
        frame_len: p.len(),
        ip_id: ip.id,
        fragment,
        created_by: CreatedBy::NONE,
    };
    // Packets without ports (later fragments, ICMP): the tuple carries
    // zeros, `l4_check`/`flags_or_type` what the caller says.
    let portless = |l4_check: u16, flags_or_type: u8| parsed([0; 4], l4_check, flags_or_type);
    if fragment == FRAG_LATER {
        return Ok(portless(0, 0));
    }
    if proto == PROTO_ICMP {
        // Errors about our flows are translated (flow::icmp); the 8-byte
        // ICMP header must be there; its type goes in `flags_or_type`.
        let h: *const [u8; 8] = ptr_at(p, l4_off).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?;
        // SAFETY: bounds checked by ptr_at.
        let h = unsafe { *h };
        return Ok(portless(u16::from_be_bytes([h[2], h[3]]), h[0]));
    }
    // Ports are the first 4 bytes of both TCP and UDP.
    let ports: *const [u8; 4] = ptr_at(p, l4_off).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { *ports };
    let mut udp_len = 0;
    let l4_check;
    let mut tcp_flags = 0;
    if proto == PROTO_UDP {
        let u: *const [u8; 8] = ptr_at(p, l4_off).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?;
        // SAFETY: bounds checked by ptr_at.
        let u = unsafe { *u };
        udp_len = u16::from_be_bytes([u[4], u[5]]);
        l4_check = u16::from_be_bytes([u[6], u[7]]);
    } else {
        let t: *const [u8; 20] = ptr_at(p, l4_off).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?;
        // SAFETY: bounds checked by ptr_at.
        let t = unsafe { &*t };
        l4_check = u16::from_be_bytes([t[16], t[17]]);
        tcp_flags = t[13];
    }
    parse::l4(proto, l4_len as usize, udp_len, fragment == FRAG_FIRST)
        .map_err(|_| Verdict::Pass(stats::PASS_MALFORMED))?;
    Ok(parsed(ports, l4_check, tcp_flags))
}

/// Whether the L4 checksum holds only the pseudo-header sum (a
/// `CHECKSUM_PARTIAL` packet from a local sender): XDP must then sum the
/// whole segment.
#[inline(always)]
pub fn needs_full_sum(parsed: &Parsed) -> bool {
    let t = &parsed.tuple;
    let fragment = parsed.fragment != FRAG_NONE;
    decide::needs_full_sum(parsed.proto, parsed.l4_check, fragment, t.saddr, t.daddr, parsed.l4_len)
}

/// Whether this hook can finish the packet: not XDP with a segment longer
/// than it can sum that needs a full sum (`decide::beyond_xdp_sum`).
#[inline(always)]
pub fn xdp_can_finish<P: Packet>(parsed: &Parsed) -> bool {
    !(decide::beyond_xdp_sum(P::IS_XDP, parsed.l4_len, csum::MAX_SUM_LEN) && needs_full_sum(parsed))
}

/// The L4 offset of a packet whose IPv4 header `parse` validated, read
/// from the header again, for a program reached by tail call: a value
/// handed over in a map is unknown to the verifier, and bounding it there
/// does not last (LLVM drops a mask it can prove changes nothing, and
/// reloads the unbounded copy).
#[inline(always)]
pub fn l4_off_again<P: Packet>(p: &P) -> Option<usize> {
    let vihl: *const u8 = ptr_at(p, EthHdr::LEN)?;
    // SAFETY: bounds checked by ptr_at.
    Some(EthHdr::LEN + (usize::from(unsafe { *vihl }) & 0x0f) * 4)
}

/// `plan` with its L4 offset taken from the packet again (see
/// [`l4_off_again`]).
#[inline(always)]
pub fn rebased<P: Packet>(mut plan: NewFlowPlan, p: &P) -> Option<NewFlowPlan> {
    plan.parsed.l4_off = l4_off_again(p)?;
    Some(plan)
}
