//! ICMP errors about translated connections, in both directions: an error
//! from the backend side about a packet we sent there (e.g. "fragmentation
//! needed" from a link with a smaller MTU) goes to the client as if the
//! public address had sent it, quoting the packet as the client sent it; an
//! error from the public side about a reply goes to the backend likewise.
//!
//! The quoted packet is one we sent, so its tuple is some entry's outgoing
//! tuple; the entry of the *other* direction is keyed by the quote
//! reversed, and its outgoing tuple is exactly the translation the error
//! needs: outer header from its source to its destination, quote as its
//! reverse.

use forwarder_common::{
    abi::{FlowKey, PROTO_TCP, PROTO_UDP, VLAN_RESET},
    icmp::is_error,
    nat::Tuple,
    stats,
};

use crate::{
    ctx::{Packet, ptr_at},
    maps::{FWD_FLOWS, count_flow},
    ops::fib::{fib_verdict, route},
    types::{Parsed, Quote, Verdict},
};

/// The 802.1Q TCI the translated error leaves with: that of the flow
/// direction it travels in (untagged for a connection being reset, whose
/// entry holds `VLAN_RESET`, not a tag).
#[inline(always)]
pub fn vlan(q: &Quote) -> u16 {
    // SAFETY: map value pointer valid until program exit.
    let tci = FWD_FLOWS
        .get_ptr(&FlowKey::new(&q.old.reversed(), q.proto))
        .map_or(0, |e| unsafe { (*e).vlan });
    if tci == VLAN_RESET { 0 } else { tci }
}

#[inline(always)]
pub fn decide<P: Packet>(p: &P, parsed: Parsed) -> Verdict {
    if !is_error(parsed.flags_or_type) {
        return Verdict::Pass(stats::PASS_NOT_OURS);
    }
    let ip_off = parsed.l4() + 8;
    let Some(q) = ptr_at::<[u8; 20], P>(p, ip_off) else {
        return Verdict::Pass(stats::PASS_NOT_OURS);
    };
    // SAFETY: bounds checked by ptr_at.
    let q = unsafe { *q };
    let proto = q[9];
    if q[0] >> 4 != 4 || q[0] & 0x0f < 5 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return Verdict::Pass(stats::PASS_NOT_OURS);
    }
    let l4_off = ip_off + ((usize::from(q[0] & 0x0f) * 4) & 0x3c);
    let Some(ports) = ptr_at::<[u8; 4], P>(p, l4_off) else {
        return Verdict::Pass(stats::PASS_NOT_OURS);
    };
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { *ports };
    let old = Tuple {
        saddr: [q[12], q[13], q[14], q[15]],
        daddr: [q[16], q[17], q[18], q[19]],
        sport: [ports[0], ports[1]],
        dport: [ports[2], ports[3]],
    };
    let Some(entry) = FWD_FLOWS.get_ptr(&FlowKey::new(&old.reversed(), proto)) else {
        return Verdict::Pass(stats::PASS_NOT_OURS); // about the gateway's own traffic
    };
    // SAFETY: map value pointer valid until program exit.
    let entry = unsafe { *entry };
    if parsed.ttl <= 1 {
        return Verdict::Drop(stats::DROP_TTL);
    }
    let out = entry.tuple();
    let outer = Tuple { saddr: out.saddr, daddr: out.daddr, sport: [0; 2], dport: [0; 2] };
    let r = route(p, &parsed, &outer, 0);
    // Never an ICMP error about an ICMP error (RFC 1122).
    if r.too_big() {
        return Verdict::Drop(stats::DROP_TOO_BIG);
    }
    let fwd = match fib_verdict::<P>(&r, outer) {
        Ok(f) => f,
        Err(v) => return v,
    };
    count_flow(&entry, parsed.frame_len);
    Verdict::ForwardIcmp(parsed, fwd, Quote { ip_off, l4_off, proto, old, new: out.reversed() })
}
