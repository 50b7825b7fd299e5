//! "Fragmentation needed" from the gateway itself (TC): a packet with DF
//! that does not fit the egress link is turned, in place, into the ICMP
//! error its sender needs: 28 bytes of room after the Ethernet header for
//! a new IPv4 + ICMP header, the original IPv4 header and first 8 bytes of
//! its payload kept as the quote, the rest trimmed, MACs swapped, and sent
//! back out of the interface it came in on. The quote is the packet as the
//! sender sent it (untranslated), so the sender matches it to its socket.
//! Without DF we cannot fragment: dropped and counted.
//!
//! A new connection to a rule none of whose backends can take it is
//! refused at once instead of left to time out: TCP with a reset (the
//! packet trimmed to 40 bytes of IPv4 + TCP header, rewritten in place),
//! UDP — and TCP whose reset cannot be built — with "port unreachable",
//! by the same construction as "fragmentation needed". A packet of a
//! connection the daemon resets gets the same reset back.
//!
//! A `CHECKSUM_PARTIAL` skb (a local sender over veth) keeps its flag (no
//! helper clears it): its checksum start then points into the quote, and
//! the error goes back out of the veth it came from, whose receiver takes
//! the checksum as verified; ours is complete anyway.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::generated::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use forwarder_common::{
    abi::PROTO_TCP,
    icmp::{FRAG_NEEDED, PORT_UNREACHABLE, icmp_checksum, unreachable_headers},
    parse::IP_DF,
    reply::{Segment, reset_headers},
    stats,
};
use network_types::eth::EthHdr;

use crate::{
    ctx::{Packet, ptr_at},
    maps::count,
    ops::csum,
};

#[inline(always)]
pub fn answer(ctx: &TcContext, mtu: u32) -> i32 {
    if let Some(()) = build(ctx, FRAG_NEEDED, mtu) {
        count(stats::ICMP_FRAG_NEEDED_SENT);
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(ctx.ingress_ifindex(), 0) as i32 }
    } else {
        count(stats::DROP_TOO_BIG);
        TC_ACT_SHOT
    }
}

/// Refuses a packet with a TCP reset back to its sender, counted as
/// `why`: a new connection no backend can take ([`stats::DROP_NO_BACKEND`],
/// which falls back to "port unreachable", e.g. for UDP), or a packet of a
/// connection the daemon resets ([`stats::DROP_CONN_RESET`]). Dropped if
/// no answer can be built.
#[inline(always)]
pub fn refuse(ctx: &TcContext, why: u32) -> i32 {
    count(why);
    let answered = reset(ctx).is_some()
        || (why == stats::DROP_NO_BACKEND && build(ctx, PORT_UNREACHABLE, 0).is_some());
    if answered {
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(ctx.ingress_ifindex(), 0) as i32 }
    } else {
        TC_ACT_SHOT
    }
}

/// Turns a TCP segment into the reset that answers it. `None` (the
/// packet unchanged): not TCP, or it cannot be trimmed (a
/// `CHECKSUM_PARTIAL` skb whose checksum field lies beyond 40 bytes, as
/// behind IPv4 options).
#[inline(always)]
fn reset(ctx: &TcContext) -> Option<()> {
    let ip: *const [u8; 20] = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { *ip };
    if ip[9] != PROTO_TCP {
        return None;
    }
    let ihl = (usize::from(ip[0] & 0x0f) * 4) & 0x3c;
    let tcp: *const [u8; 20] = ptr_at(ctx, EthHdr::LEN + ihl)?;
    // SAFETY: bounds checked by ptr_at.
    let tcp = unsafe { *tcp };
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let (dmac, smac) = unsafe { ((*eth).dst_addr, (*eth).src_addr) };
    let be32 = |o: usize| u32::from_be_bytes([tcp[o], tcp[o + 1], tcp[o + 2], tcp[o + 3]]);
    let headers = ihl as u32 + u32::from(tcp[12] >> 4) * 4;
    let segment = Segment {
        flags: tcp[13],
        seq: be32(4),
        ack: be32(8),
        payload: u32::from(u16::from_be_bytes([ip[2], ip[3]])).saturating_sub(headers),
    };
    let (hdr, th) = reset_headers(
        [ip[12], ip[13], ip[14], ip[15]],
        [ip[16], ip[17], ip[18], ip[19]],
        [tcp[0], tcp[1]],
        [tcp[2], tcp[3]],
        &segment,
    );
    // SAFETY: plain helper call; shrinks the packet.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (EthHdr::LEN + 40) as u32, 0) } != 0 {
        return None;
    }
    let e: *mut EthHdr = ptr_at(ctx, 0)?;
    let h: *mut [u8; 20] = ptr_at(ctx, EthHdr::LEN)?;
    let t: *mut [u8; 20] = ptr_at(ctx, EthHdr::LEN + 20)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*e).dst_addr = smac;
        (*e).src_addr = dmac;
        *h = hdr;
        *t = th;
    }
    Some(())
}

#[inline(always)]
fn build(ctx: &TcContext, code: u8, mtu: u32) -> Option<()> {
    let ip: *const [u8; 20] = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { *ip };
    if code == FRAG_NEEDED && u16::from_be_bytes([ip[6], ip[7]]) & IP_DF == 0 {
        return None;
    }
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let (dmac, smac) = unsafe { ((*eth).dst_addr, (*eth).src_addr) };
    // Quote the IPv4 header and 8 bytes (RFC 792) — for TCP the whole
    // 20-byte header: a CHECKSUM_PARTIAL skb cannot be trimmed in front of
    // its checksum field (`bpf_skb_change_tail` refuses), and quoting more
    // is allowed (RFC 1812 4.3.2.3).
    let l4_quote = if ip[9] == PROTO_TCP { 20 } else { 8 };
    let quote_len = ((usize::from(ip[0] & 0x0f) * 4) & 0x3c) + l4_quote;
    // Trim first (this also ends a GRO'd skb's GSO state), then make room.
    // SAFETY: plain helper call; shrinks the packet.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (EthHdr::LEN + quote_len) as u32, 0) } != 0 {
        return None;
    }
    ctx.adjust_room(28, BPF_ADJ_ROOM_MAC, 0).ok()?;
    // The error goes back: from the address the sender talked to.
    let (hdr, mut icmp) = unreachable_headers(
        [ip[16], ip[17], ip[18], ip[19]],
        [ip[12], ip[13], ip[14], ip[15]],
        code,
        mtu as u16,
        quote_len as u16,
    );
    let sum = csum::sum(ctx, EthHdr::LEN + 28, quote_len)?;
    let c = icmp_checksum(&icmp, sum).to_be_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    let e: *mut EthHdr = ptr_at(ctx, 0)?;
    let h: *mut [u8; 20] = ptr_at(ctx, EthHdr::LEN)?;
    let i: *mut [u8; 8] = ptr_at(ctx, EthHdr::LEN + 20)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*e).dst_addr = smac;
        (*e).src_addr = dmac;
        *h = hdr;
        *i = icmp;
    }
    Some(())
}
