//! XDP entry: apply the pipeline's verdict. Checksums are fixed by hand
//! (RFC 1624), with a full recomputation for partial-checksum packets; the
//! frame leaves through the devmap.

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
    helpers::generated::bpf_xdp_adjust_meta,
    programs::XdpContext,
};
use forwarder_common::{
    abi::{XDP_HANDOFF_MAGIC, XDP_TAIL_FULL_CSUM, XDP_TAIL_NEW_FLOW},
    nat::{delta, l4_csum, l4_csum_full},
    stats,
};

use crate::{
    ctx::ptr_at,
    flow::new::create,
    maps::{
        FWD_NEW_SCRATCH, FWD_SCRATCH, FWD_TX_PORTS, FWD_XDP_TAILS, count, tc_takes_all, xdp_meta,
    },
    ops::{
        audit, csum,
        parse::{l4_off_again, needs_full_sum, rebased},
        rewrite,
    },
    pipeline::decide,
    types::{FRAG_NONE, Forward, FullCsum, NewFlowPlan, Parsed, Verdict},
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    match decide(ctx) {
        Verdict::NewFlow(parsed, target, hairpin) => {
            if let Some(slot) = FWD_NEW_SCRATCH.get_ptr_mut(0) {
                // SAFETY: per-CPU slot; the tail call below runs at once,
                // on this CPU.
                unsafe {
                    *slot = NewFlowPlan { parsed, target, hairpin };
                    FWD_XDP_TAILS.tail_call(ctx, XDP_TAIL_NEW_FLOW);
                }
            }
            // Only reached when the new-flow program is not installed: TC
            // can set the connection up.
            to_tc(ctx)
        }
        v => apply::<false>(ctx, v),
    }
}

/// Carries out a verdict; `FIRST`: in the new-flow program, where a
/// translated first packet also gets its audit event.
#[inline(always)]
fn apply<const FIRST: bool>(ctx: &XdpContext, v: Verdict) -> u32 {
    match v {
        Verdict::Pass(s) => {
            count(s);
            XDP_PASS
        }
        Verdict::Drop(s) => {
            count(s);
            XDP_DROP
        }
        Verdict::ToTc => to_tc(ctx),
        // Decided by the new-flow program (the verdict never gets here).
        Verdict::NewFlow(..) => {
            count(stats::PASS_NOT_OURS);
            XDP_PASS
        }
        Verdict::Forward(parsed, fwd) => {
            if FIRST && parsed.created_by.is_some() {
                let ifindex = ctx.ingress_ifindex() as u32;
                audit::emit(|now| audit::accepted(&parsed, &fwd, ifindex, now));
            }
            // The full-checksum program asks for the egress itself.
            if needs_full_sum(&parsed) {
                return tail_full_csum(ctx, parsed, fwd);
            }
            let Some(out) = egress(&fwd) else { return to_tc(ctx) };
            if rewrite::<FIRST>(ctx, &parsed, &fwd).is_none() {
                // Bounds re-checks cannot fail after parse; be safe anyway.
                count(stats::DROP_REWRITE_FAILED);
                return XDP_ABORTED;
            }
            if parsed.fragment != FRAG_NONE {
                count(stats::FRAGMENT_TRANSLATED);
            }
            sent(out)
        }
        Verdict::ForwardL3(parsed, fwd) => {
            let Some(out) = egress(&fwd) else { return to_tc(ctx) };
            let d = forwarder_common::nat::delta(&parsed.tuple, &fwd.new);
            if rewrite::ip_header(ctx, &fwd.new, &d)
                .and_then(|()| rewrite::macs(ctx, &fwd))
                .is_none()
            {
                count(stats::DROP_REWRITE_FAILED);
                return XDP_ABORTED;
            }
            count(stats::FRAGMENT_TRANSLATED);
            sent(out)
        }
        Verdict::ForwardIcmp(parsed, fwd, quote) => {
            let Some(out) = egress(&fwd) else { return to_tc(ctx) };
            if rewrite::icmp_error(ctx, &parsed, &fwd.new, &quote)
                .and_then(|()| rewrite::macs(ctx, &fwd))
                .is_none()
            {
                count(stats::DROP_REWRITE_FAILED);
                return XDP_ABORTED;
            }
            count(stats::ICMP_TRANSLATED);
            sent(out)
        }
    }
}

/// Notes `fwd.ifindex` as the packet's way out through the devmap, before
/// anything is rewritten: `bpf_redirect_map` only records the target, and
/// the frame leaves when the program returns what it returned here
/// (`XDP_REDIRECT`). `None` when the egress is not in the devmap (any
/// more: the daemon takes out the egresses XDP cannot transmit into, and
/// a flow's cached next hop may predate that): the packet, untouched,
/// is then TC's ([`to_tc`]).
#[inline(always)]
fn egress(fwd: &Forward) -> Option<u32> {
    // The flags' action bits: what the helper returns on a lookup miss.
    FWD_TX_PORTS.redirect(fwd.ifindex, u64::from(XDP_PASS)).ok()
}

/// The rewritten packet leaves through the egress [`egress`] noted.
#[inline(always)]
fn sent(action: u32) -> u32 {
    count(stats::XDP_REDIRECTED);
    action
}

/// Leaves the untouched packet to the TC program: marked through the
/// metadata area ([`XDP_HANDOFF_MAGIC`]); without metadata (the kernel
/// refuses XDP the helper, or the driver gives it no area), unmarked, as
/// TC then looks at every packet XDP lets through.
#[inline(always)]
fn to_tc(ctx: &XdpContext) -> u32 {
    count(stats::XDP_TO_TC);
    if xdp_meta() {
        mark_for_tc(ctx);
    }
    XDP_PASS
}

/// Marks the packet for TC; where the driver gives XDP no metadata area
/// (the helper fails), the interface's TC program is told to look at
/// every packet XDP lets through, this one included, instead: never a
/// hand-over TC would leave alone.
#[inline(always)]
fn mark_for_tc(ctx: &XdpContext) {
    // SAFETY: valid context; the helper only moves data_meta.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -4) } == 0 {
        let meta = ctx.metadata();
        if meta + 4 <= ctx.data() {
            // SAFETY: 4 bytes between data_meta and data, checked above.
            unsafe { *(meta as *mut u32) = XDP_HANDOFF_MAGIC };
            return;
        }
    }
    count(stats::XDP_META_FAILED);
    tc_takes_all(ctx.ingress_ifindex() as u32);
}

/// The incremental rewrite (RFC 1624), for packets with a complete checksum.
#[inline(always)]
fn rewrite<const FIRST: bool>(ctx: &XdpContext, parsed: &Parsed, fwd: &Forward) -> Option<()> {
    // The new-flow program: the connection setup keeps `parsed` on the
    // stack, where LLVM may store the L4 offset bytewise and the verifier
    // forgets its bounds; the masked offset bounds it again.
    let l4_off = if FIRST { parsed.l4() } else { parsed.l4_off };
    let d = delta(&parsed.tuple, &fwd.new);
    rewrite::ip_and_ports(ctx, &fwd.new, &d, l4_off)?;
    let l4c: *mut [u8; 2] = ptr_at(ctx, rewrite::l4_csum_off(l4_off, parsed.proto))?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *l4c = l4_csum(parsed.l4_check, &d, parsed.proto).to_be_bytes() };
    rewrite::macs(ctx, fwd)
}

/// Hands `parsed`/`fwd` to [`run_full_csum`]; TC's when that program is
/// not installed.
#[inline(always)]
fn tail_full_csum(ctx: &XdpContext, parsed: Parsed, fwd: Forward) -> u32 {
    if let Some(slot) = FWD_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; the tail call below runs on this CPU.
        unsafe {
            *slot = FullCsum { parsed, fwd };
            FWD_XDP_TAILS.tail_call(ctx, XDP_TAIL_FULL_CSUM);
        }
    }
    // Only reached when the tail call is not installed: TC can do it.
    to_tc(ctx)
}

/// The hand-over from [`tail_full_csum`], with the L4 offset read from
/// the packet again ([`l4_off_again`]).
#[inline(always)]
fn scratch(ctx: &XdpContext) -> Option<FullCsum> {
    let mut plan = *FWD_SCRATCH.get(0)?;
    plan.parsed.l4_off = l4_off_again(ctx)?;
    Some(plan)
}

/// Entry of the new-flow program (tail call of the main one): the
/// connection's setup (kept out of the main program, whose verification
/// the setup's branches would multiply past the verifier's budget and
/// whose stack it would overflow), then its first packet with its audit
/// event.
#[inline(always)]
pub fn run_new_flow(ctx: &XdpContext) -> u32 {
    let Some(plan) = FWD_NEW_SCRATCH.get(0).and_then(|plan| rebased(*plan, ctx)) else {
        return XDP_ABORTED;
    };
    let v = create(ctx, plan.parsed, &plan.target, plan.hairpin);
    apply::<true>(ctx, v)
}

/// Entry of the tail-called program: rewrite with a full L4 checksum
/// (`CHECKSUM_PARTIAL` from a local sender: the payload was never summed, an
/// incremental fix cannot help), then redirect.
#[inline(always)]
pub fn run_full_csum(ctx: &XdpContext) -> u32 {
    let Some(FullCsum { parsed, fwd }) = scratch(ctx) else { return XDP_ABORTED };
    let Some(out) = egress(&fwd) else { return to_tc(ctx) };
    if full_csum_rewrite(ctx, &parsed, &fwd).is_none() {
        count(stats::DROP_REWRITE_FAILED);
        return XDP_ABORTED;
    }
    count(stats::CSUM_FULL_RECOMPUTE);
    sent(out)
}

#[inline(always)]
fn full_csum_rewrite(ctx: &XdpContext, parsed: &Parsed, fwd: &Forward) -> Option<()> {
    let new = fwd.new;
    rewrite::ip_and_ports(ctx, &new, &delta(&parsed.tuple, &new), parsed.l4_off)?;
    let off = rewrite::l4_csum_off(parsed.l4_off, parsed.proto);
    let l4c: *mut [u8; 2] = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *l4c = [0, 0] };
    let s = csum::sum(ctx, parsed.l4_off, usize::from(parsed.l4_len))?;
    let l4c: *mut [u8; 2] = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *l4c = l4_csum_full(&new, parsed.proto, parsed.l4_len, s).to_be_bytes() };
    rewrite::macs(ctx, fwd)
}
