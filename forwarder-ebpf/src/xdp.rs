//! XDP entry: apply the pipeline's verdict. Checksums are fixed by hand
//! (RFC 1624), with a full recomputation for partial-checksum packets; the
//! frame leaves through the devmap.

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
    helpers::generated::bpf_xdp_adjust_meta,
    programs::XdpContext,
};
use forwarder_common::{
    nat::{delta, l4_csum, l4_csum_full},
    stats,
};

use crate::{
    csum,
    ctx::ptr_at,
    maps::{FWD_SCRATCH, FWD_TX_PORTS, FWD_XDP_TAILS, count},
    pipeline::{Forward, Parsed, Verdict, decide, needs_full_sum},
    rewrite,
};

/// Written into the XDP metadata area when XDP hands a packet to TC.
pub const TC_HANDOFF_MAGIC: u32 = 0xf0_4d_7c_01;

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    match decide(ctx) {
        Verdict::Pass(s) => {
            count(s);
            XDP_PASS
        }
        Verdict::Drop(s) => {
            count(s);
            XDP_DROP
        }
        Verdict::ToTc(s) => {
            count(s);
            hand_to_tc(ctx);
            XDP_PASS
        }
        Verdict::Forward(parsed, fwd) => {
            if parsed.audit_rule != 0 {
                // Returns only when the tail call is missing: forward
                // without the event then.
                tail_call(ctx, parsed, fwd, TAIL_NEW_FLOW);
            }
            if needs_full_sum(&parsed) {
                return tail_full_csum(ctx, parsed, fwd);
            }
            if rewrite(ctx, &parsed, &fwd).is_none() {
                // Bounds re-checks cannot fail after parse; be safe anyway.
                count(stats::PASS_MALFORMED);
                return XDP_ABORTED;
            }
            if parsed.fragment != crate::pipeline::FRAG_NONE {
                count(stats::FRAGMENT_TRANSLATED);
            }
            redirect(&fwd)
        }
        Verdict::ForwardL3(parsed, fwd) => {
            let d = forwarder_common::nat::delta(&parsed.tuple, &fwd.new);
            if rewrite::ip_header(ctx, &fwd.new, &d).and_then(|()| rewrite::macs(ctx, &fwd)).is_none() {
                count(stats::PASS_MALFORMED);
                return XDP_ABORTED;
            }
            count(stats::FRAGMENT_TRANSLATED);
            redirect(&fwd)
        }
        Verdict::ForwardIcmp(parsed, fwd, quote) => {
            if crate::icmp::rewrite(ctx, &parsed, &fwd.new, &quote).and_then(|()| rewrite::macs(ctx, &fwd)).is_none() {
                count(stats::PASS_MALFORMED);
                return XDP_ABORTED;
            }
            count(stats::ICMP_TRANSLATED);
            redirect(&fwd)
        }
    }
}

#[inline(always)]
fn redirect(fwd: &Forward) -> u32 {
    match FWD_TX_PORTS.redirect(fwd.ifindex, 0) {
        Ok(a) => {
            count(stats::XDP_REDIRECTED);
            a
        }
        Err(_) => {
            count(stats::DROP_REDIRECT_FAILED);
            XDP_DROP
        }
    }
}

/// Marks the packet for the TC program through the metadata area.
#[inline(always)]
fn hand_to_tc(ctx: &XdpContext) {
    // SAFETY: valid context; the helper only moves data_meta.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -4) } != 0 {
        return;
    }
    let meta = ctx.metadata();
    if meta + 4 > ctx.data() {
        return;
    }
    // SAFETY: 4 bytes between data_meta and data, checked above.
    unsafe { *(meta as *mut u32) = TC_HANDOFF_MAGIC };
}

/// The incremental rewrite (RFC 1624), for packets with a complete checksum.
#[inline(always)]
fn rewrite(ctx: &XdpContext, parsed: &Parsed, fwd: &Forward) -> Option<()> {
    let d = delta(&parsed.tuple, &fwd.new);
    rewrite::ip_and_ports(ctx, &fwd.new, &d, parsed.l4_off)?;
    let l4c: *mut [u8; 2] = ptr_at(ctx, rewrite::l4_csum_off(parsed.l4_off, parsed.proto))?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *l4c = l4_csum(parsed.l4_check, &d, parsed.proto).to_be_bytes() };
    rewrite::macs(ctx, fwd)
}

/// A packet whose checksum must be summed in full, handed by the main
/// program to [`run_full_csum`] through a tail call (per-CPU scratch: the
/// tail call runs at once, on the same CPU). Summing a whole segment is a
/// long loop; in the main program it multiplied the paths the verifier
/// must walk past its limit, in a program of its own it is walked once.
#[derive(Clone, Copy)]
pub struct FullCsum {
    parsed: Parsed,
    fwd: Forward,
}

/// Index of [`run_full_csum`]'s program in `FWD_XDP_TAILS`.
pub const TAIL_FULL_CSUM: u32 = 0;
/// Index of [`run_new_flow`]'s program in `FWD_XDP_TAILS`.
pub const TAIL_NEW_FLOW: u32 = 1;

/// Hands `parsed`/`fwd` to tail program `index`; returns only if that
/// program is not installed.
#[inline(always)]
fn tail_call(ctx: &XdpContext, parsed: Parsed, fwd: Forward, index: u32) {
    if let Some(slot) = FWD_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; the tail call below runs on this CPU.
        unsafe {
            *slot = FullCsum { parsed, fwd };
            FWD_XDP_TAILS.tail_call(ctx, index);
        }
    }
}

#[inline(always)]
fn tail_full_csum(ctx: &XdpContext, parsed: Parsed, fwd: Forward) -> u32 {
    tail_call(ctx, parsed, fwd, TAIL_FULL_CSUM);
    // Only reached when the tail call is not installed: TC can do it.
    count(stats::XDP_TO_TC);
    hand_to_tc(ctx);
    XDP_PASS
}

/// The hand-over from [`tail_call`], with the L4 offset bounded again:
/// values from a map are unknown to the verifier (Ethernet + 20..60 bytes
/// of IPv4 header).
#[inline(always)]
fn scratch() -> Option<FullCsum> {
    let mut plan = *FWD_SCRATCH.get(0)?;
    if plan.parsed.l4_off < 34 || plan.parsed.l4_off > 74 {
        return None;
    }
    plan.parsed.l4_off &= 0x7f;
    Some(plan)
}

/// Entry of the tail program for the first packet of a connection: its
/// audit event (kept out of the main program, whose verification the
/// event's branches would multiply past the verifier's budget), then the
/// rewrite and redirect.
#[inline(always)]
pub fn run_new_flow(ctx: &XdpContext) -> u32 {
    let Some(FullCsum { parsed, fwd }) = scratch() else { return XDP_ABORTED };
    // SAFETY: helper without side effects.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    crate::audit::emit(&crate::audit::accepted(&parsed, &fwd, ctx.ingress_ifindex() as u32, now));
    if needs_full_sum(&parsed) {
        // The scratch slot still holds the plan.
        return tail_full_csum(ctx, parsed, fwd);
    }
    if rewrite(ctx, &parsed, &fwd).is_none() {
        count(stats::PASS_MALFORMED);
        return XDP_ABORTED;
    }
    redirect(&fwd)
}

/// Entry of the tail-called program: rewrite with a full L4 checksum
/// (CHECKSUM_PARTIAL from a local sender: the payload was never summed, an
/// incremental fix cannot help), then redirect.
#[inline(always)]
pub fn run_full_csum(ctx: &XdpContext) -> u32 {
    let Some(FullCsum { parsed, fwd }) = scratch() else { return XDP_ABORTED };
    if full_csum_rewrite(ctx, &parsed, &fwd).is_none() {
        count(stats::PASS_MALFORMED);
        return XDP_ABORTED;
    }
    count(stats::CSUM_FULL_RECOMPUTE);
    redirect(&fwd)
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
