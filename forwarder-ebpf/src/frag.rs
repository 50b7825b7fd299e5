//! Fragments of translated datagrams. The first fragment carries the L4
//! header: it is looked up and translated like any packet (its L4 checksum
//! covers the whole datagram, so the incremental update is right), and the
//! addresses it left with are remembered under what all fragments share
//! (source, destination, identification, protocol). Later fragments carry
//! no ports: they take the remembered addresses. A later fragment that
//! arrives before its first is passed to the kernel (counted).

use forwarder_common::{
    abi::{FragEntry, FragKey},
    nat::Tuple,
    stats,
};

use crate::{
    ctx::Packet,
    maps::{FWD_FRAGS, count_rule},
    pipeline::{Forward, Parsed, Verdict, fib_verdict, route},
};

#[inline(always)]
fn key(parsed: &Parsed) -> FragKey {
    FragKey { saddr: parsed.tuple.saddr, daddr: parsed.tuple.daddr, id: parsed.ip_id, proto: parsed.proto, _pad: 0 }
}

/// Called for a translated first fragment of a flow of `rule_id`, `dir`.
#[inline(always)]
pub fn remember(parsed: &Parsed, fwd: &Forward, rule_id: u32, dir: u8) {
    // The tag the fragments leave with: that of the flow direction.
    let vlan = crate::maps::FWD_FLOWS.get_ptr(&forwarder_common::abi::FlowKey::new(&parsed.tuple, parsed.proto)).map_or(0, |e| {
        // SAFETY: map value pointer valid until program exit.
        unsafe { (*e).vlan }
    });
    let e = FragEntry { saddr: fwd.new.saddr, daddr: fwd.new.daddr, rule_id, dir, _pad: 0, vlan };
    let _ = FWD_FRAGS.insert(&key(parsed), &e, 0);
}

/// The 802.1Q TCI the fragments of this datagram leave with.
#[inline(always)]
pub fn vlan(parsed: &Parsed) -> u16 {
    // SAFETY: map value pointer valid until program exit.
    FWD_FRAGS.get_ptr(&key(parsed)).map_or(0, |e| unsafe { (*e).vlan })
}

#[inline(always)]
pub fn later<P: Packet>(p: &P, parsed: Parsed) -> Verdict {
    let Some(e) = FWD_FRAGS.get_ptr(&key(&parsed)) else {
        return Verdict::Pass(stats::PASS_FRAGMENT);
    };
    // SAFETY: map value pointer valid until program exit.
    let e = unsafe { *e };
    if parsed.ttl <= 1 {
        return Verdict::Drop(stats::DROP_TTL);
    }
    let new = Tuple { saddr: e.saddr, daddr: e.daddr, sport: [0; 2], dport: [0; 2] };
    let fwd = match fib_verdict::<P>(&route(p, &parsed, &new, 0), new) {
        Ok(f) => f,
        Err(v) => return v,
    };
    count_rule(e.rule_id, e.dir, parsed.frame_len);
    Verdict::ForwardL3(parsed, fwd)
}
