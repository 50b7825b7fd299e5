//! The datapath decision for one packet, shared by XDP and TC: parse, then
//! hand it to the flow it belongs to (an ICMP error, a later fragment, a
//! tracked connection, or a first packet that matches a rule). Applying the
//! decision (rewrite, checksums, redirect) is the hook's job, because XDP
//! and TC do that differently.

use forwarder_common::{abi::FlowKey, icmp::PROTO_ICMP, stats};

use crate::{
    ctx::Packet,
    flow::{established, frag, icmp, new},
    maps::FWD_FLOWS,
    ops::parse,
    types::{FRAG_LATER, Verdict},
};

/// The whole decision for one packet.
#[inline(always)]
pub fn decide<P: Packet>(p: &P) -> Verdict {
    let parsed = match parse::parse(p) {
        Ok(v) => v,
        Err(v) => return v,
    };
    // ICMP errors and fragments never reach here in XDP (`parse` hands
    // them to TC): spelled out, so that the XDP programs carry neither.
    if !P::IS_XDP && parsed.proto == PROTO_ICMP {
        return icmp::decide(p, parsed);
    }
    if !P::IS_XDP && parsed.fragment == FRAG_LATER {
        return frag::later(p, parsed);
    }
    let key = FlowKey::new(&parsed.tuple, parsed.proto);
    if let Some(entry) = FWD_FLOWS.get_ptr_mut(&key) {
        // SAFETY: map value pointer valid until program exit.
        let entry = unsafe { &mut *entry };
        return established::established(p, parsed, entry);
    }
    let Some((target, hairpin)) = new::match_rule(p, &parsed) else {
        return Verdict::Pass(stats::PASS_NOT_OURS);
    };
    Verdict::NewFlow(parsed, target, hairpin)
}
