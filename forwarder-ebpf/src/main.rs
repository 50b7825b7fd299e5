//! The forwarder's kernel side: an XDP program (the fast path) and a TC
//! clsact-ingress program (the assist path), both thin hooks around one
//! pipeline. This file holds the entry points and nothing else; the
//! benchmark's reference programs are a separate object (`bin/bench.rs`).
//!
//! One crate, one LLVM module: the datapath is compiled as a whole, as
//! the verifier has seen it (split into a library and a binary, LLVM
//! inlines and spills differently, and the new-flow program loses the
//! bounds of its L4 offset).
//!
//! A layer imports only the layers below it:
//!
//! ```text
//! hook/{xdp, tc, toobig, txwatch}   apply a verdict the way each hook can
//! pipeline                          parse, then dispatch to a flow
//! flow/{established, new, icmp, frag}   one kind of packet each; never each other
//! ops/{parse, fib, rewrite, csum, conntrack, frag, audit}   mechanics
//! maps                              every map, the counters
//! types                             Parsed, Forward, Verdict, Quote, hand-over plans
//! ctx                               one packet API over XDP and TC contexts
//! ```
//!
//! Verifier notes that shaped this crate:
//! - every packet access goes through [`ctx::ptr_at`], which checks against
//!   `data_end` right before the access;
//! - the IPv4 header length is variable (options), so the L4 offset is a
//!   bounded variable (masked IHL × 4), re-checked before each use;
//! - no loop is unbounded: the SNAT port search and the checksum sum have
//!   compile-time caps;
//! - no large structs on the 512-byte stack; helpers that change packet data
//!   (TC checksum helpers) are called after the last direct write.
#![no_std]
#![no_main]
// The verifier-bounding mask in `types::Parsed::l4`.
#![feature(asm_experimental_arch)]
// The workspace's lints hold here too, but for what the kernel's ABI and
// the verifier shape: entry points take their context by value (aya's
// macros), verdicts travel by value in registers and are matched whole,
// `Err(Verdict)` is the verdict, not an error to box, aya's map calls are
// written with the key's address (what the helper is handed), and the
// helpers' i64/i32 returns and sizes are cast where the ABI says so.
#![allow(
    clippy::needless_pass_by_value,
    clippy::result_large_err,
    clippy::needless_borrows_for_generic_args,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    reason = "the kernel ABI and the verifier shape these (see above)"
)]

// Bottom layer first.
mod ctx;
mod flow;
mod hook;
mod maps;
mod ops;
mod pipeline;
mod types;

use aya_ebpf::{
    macros::{classifier, raw_tracepoint, xdp},
    programs::{RawTracePointContext, TcContext, XdpContext},
};
use hook::{tc, txwatch, xdp};

#[xdp]
pub fn forwarder_xdp(ctx: XdpContext) -> u32 {
    xdp::run(&ctx)
}

/// Tail call of `forwarder_xdp` for packets that need a full L4 checksum.
#[xdp]
pub fn forwarder_xdp_csum(ctx: XdpContext) -> u32 {
    xdp::run_full_csum(&ctx)
}

/// Tail call of `forwarder_xdp` for the first packet of a connection:
/// audit event, then rewrite and redirect.
#[xdp]
pub fn forwarder_xdp_new(ctx: XdpContext) -> u32 {
    xdp::run_new_flow(&ctx)
}

// Inlined into the entry the macro exports: the tail call it makes must
// not sit in a BPF subprogram (refused without BTF).
#[classifier]
#[inline(always)]
pub fn forwarder_tc(ctx: TcContext) -> i32 {
    tc::run(&ctx)
}

/// Tail call of `forwarder_tc` for the first packet of a connection.
#[classifier]
pub fn forwarder_tc_new(ctx: TcContext) -> i32 {
    tc::run_new_flow(&ctx)
}

/// Counts the frames the kernel refused to transmit after our redirect.
#[raw_tracepoint(tracepoint = "xdp_redirect_err")]
pub fn forwarder_xdp_tx_err(ctx: RawTracePointContext) -> i32 {
    txwatch::on_redirect_err(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
