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
    maps::{FWD_TX_PORTS, count},
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
            if rewrite(ctx, &parsed, &fwd).is_none() {
                // Bounds re-checks cannot fail after parse; be safe anyway.
                count(stats::PASS_MALFORMED);
                return XDP_ABORTED;
            }
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

#[inline(always)]
fn rewrite(ctx: &XdpContext, parsed: &Parsed, fwd: &Forward) -> Option<()> {
    let old = parsed.tuple;
    let new = fwd.new;
    let d = delta(&old, &new);
    rewrite::ip_and_ports(ctx, &new, &d, parsed.l4_off)?;
    let off = rewrite::l4_csum_off(parsed.l4_off, parsed.proto);
    let l4c: *mut [u8; 2] = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        if needs_full_sum(parsed) {
            // CHECKSUM_PARTIAL from a local sender: the payload was never
            // summed. Compute it whole; an incremental fix cannot.
            *l4c = [0, 0];
            let s = csum::sum(ctx, parsed.l4_off, usize::from(parsed.l4_len))?;
            let l4c: *mut [u8; 2] = ptr_at(ctx, off)?;
            *l4c = l4_csum_full(&new, parsed.proto, parsed.l4_len, s).to_be_bytes();
            count(stats::CSUM_FULL_RECOMPUTE);
        } else {
            *l4c = l4_csum(parsed.l4_check, &d, parsed.proto).to_be_bytes();
        }
    }
    rewrite::macs(ctx, fwd)
}
