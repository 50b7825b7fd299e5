//! Watching the kernel refuse our XDP redirects: a raw tracepoint program
//! on `xdp_redirect_err`, which fires when a frame redirected through a
//! devmap cannot be queued for its egress (e.g. `-EOPNOTSUPP` from a veth
//! whose peer has no NAPI: no XDP program and GRO off). The kernel drops
//! such frames and says so nowhere else; the program counts them per
//! egress ifindex (the devmap key), for this datapath's devmap only (the
//! tracepoint fires for every XDP program of the machine), and the daemon
//! moves an egress that collects errors to the TC path.
//!
//! Arguments (`TP_PROTO` of `xdp_redirect_err`): dev, xdp, tgt, err,
//! `map_type`, `map_id`, index.

use aya_ebpf::programs::RawTracePointContext;
use forwarder_common::abi::XdpTxErrors;

use crate::maps::{FWD_TX_WATCH, FWD_XDP_TX_ERR};

#[inline(always)]
pub fn on_redirect_err(ctx: &RawTracePointContext) {
    let err: u64 = ctx.arg(3);
    let map_id: u64 = ctx.arg(5);
    let index: u64 = ctx.arg(6);
    let Some(watch) = FWD_TX_WATCH.get(0) else { return };
    if *watch == 0 || map_id as u32 != *watch {
        return;
    }
    let ifindex = index as u32;
    let last_err = err as i32;
    match FWD_XDP_TX_ERR.get_ptr_mut(&ifindex) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        Some(v) => unsafe {
            (*v).frames += 1;
            (*v).last_err = last_err;
        },
        None => {
            let _ =
                FWD_XDP_TX_ERR.insert(&ifindex, &XdpTxErrors { frames: 1, last_err, _pad: 0 }, 0);
        }
    }
}
