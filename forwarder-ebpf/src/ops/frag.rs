//! The fragment table: the translation a first fragment left for the
//! later ones of its datagram (see `flow::frag`).

use forwarder_common::abi::{FlowKey, FragEntry, FragKey};

use crate::{
    ctx::Packet,
    maps::{FWD_FLOWS, FWD_FRAGS},
    types::{FRAG_FIRST, Forward, Parsed, Verdict},
};

#[inline(always)]
pub fn key(parsed: &Parsed) -> FragKey {
    FragKey {
        saddr: parsed.tuple.saddr,
        daddr: parsed.tuple.daddr,
        id: parsed.ip_id,
        proto: parsed.proto,
        _pad: 0,
    }
}

/// Called for a translated first fragment of a flow of `rule_id`, `dir`.
#[inline(always)]
pub fn remember(parsed: &Parsed, fwd: &Forward, rule_id: u32, dir: u8) {
    // The tag the fragments leave with: that of the flow direction.
    let vlan = FWD_FLOWS.get_ptr(&FlowKey::new(&parsed.tuple, parsed.proto)).map_or(0, |e| {
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

/// The verdict for a translated packet; a first fragment also leaves its
/// translation for the later ones.
#[inline(always)]
pub fn forward<P: Packet>(parsed: Parsed, fwd: Forward, rule_id: u32, dir: u8) -> Verdict {
    if !P::IS_XDP && parsed.fragment == FRAG_FIRST {
        remember(&parsed, &fwd, rule_id, dir);
    }
    Verdict::Forward(parsed, fwd)
}
