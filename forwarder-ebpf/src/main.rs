//! The forwarder's kernel side: an XDP program (the fast path) and a TC
//! clsact-ingress program (the assist path), both thin wrappers around one
//! pipeline in [`pipeline`].
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
// The verifier-bounding mask in `pipeline::Parsed::l4`.
#![feature(asm_experimental_arch)]

mod audit;
mod bench;
mod csum;
mod ct;
mod ctx;
mod frag;
mod icmp;
mod maps;
mod pipeline;
mod rewrite;
mod tc;
mod toobig;
mod txwatch;
mod xdp;

use aya_ebpf::{
    macros::{classifier, raw_tracepoint, xdp},
    programs::{RawTracePointContext, TcContext, XdpContext},
};

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

/// Benchmark floor: does nothing.
#[xdp]
pub fn bench_xdp_pass(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// Benchmark ceiling of the XDP approach: FIB + redirect, no NAT.
#[xdp]
pub fn bench_xdp_fib(ctx: XdpContext) -> u32 {
    bench::fib_redirect(&ctx)
}

/// Benchmark traffic generator (live-frames test run).
#[xdp]
pub fn bench_xdp_tx(ctx: XdpContext) -> u32 {
    bench::tx(&ctx)
}

/// Benchmark receiver: counts and drops the generated packets.
#[xdp]
pub fn bench_xdp_sink(ctx: XdpContext) -> u32 {
    bench::sink(&ctx)
}

#[classifier]
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
