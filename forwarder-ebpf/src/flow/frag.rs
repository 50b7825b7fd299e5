//! Fragments of translated datagrams. The first fragment carries the L4
//! header: it is looked up and translated like any packet (its L4 checksum
//! covers the whole datagram, so the incremental update is right), and the
//! addresses it left with are remembered under what all fragments share
//! (source, destination, identification, protocol). Later fragments carry
//! no ports: they take the remembered addresses. A later fragment that
//! arrives before its first is passed to the kernel (counted).

use forwarder_common::{nat::Tuple, stats};

use crate::{
    ctx::Packet,
    maps::{FWD_FRAGS, count_rule},
    ops::{
        fib::{fib_verdict, route},
        frag::key,
    },
    types::{Parsed, Verdict},
};

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
