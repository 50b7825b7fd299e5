//! Reference programs for the micro-benchmark (`cargo xtask bench`): the
//! floor (an XDP program that does nothing) and the ceiling of the XDP
//! approach on this path (FIB lookup, MAC rewrite, TTL decrement, devmap
//! redirect — no NAT, no conntrack), attached to the gateway as a mode of
//! the netfilter comparison; and the comparison's traffic generator (run
//! with `BPF_PROG_TEST_RUN` on the client's interface: in live-frames mode,
//! or as a TC program that sends clones where live frames are refused)
//! and receiver (counts and drops the generated UDP packets at the server).
//! An object of its own, loaded only by the benchmarks (never by
//! `forwarder run`), with its own devmap.
#![no_std]
#![no_main]
#![allow(
    clippy::needless_pass_by_value,
    clippy::cast_possible_wrap,
    reason = "aya's entry points take their context by value; helper sizes are i32"
)]

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup,
        xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::generated::{
        bpf_clone_redirect, bpf_fib_lookup as fib_lookup_helper, bpf_ktime_get_ns, bpf_redirect,
    },
    macros::{classifier, map, xdp},
    maps::{Array, DevMapHash, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use forwarder_common::{
    abi::{
        BENCH_PACE_BURST, BENCH_PACE_CATCH_UP, BENCH_SINK_FROM_OTHERS, BENCH_SINK_FROM_SOURCE,
        BenchFrame, BenchSource, MAX_IFACES, bench_flow,
    },
    csum::{ttl_decrement, udp_fixup, update16},
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

/// A pointer to a `T` at `offset` into the frame, or `None` when it does
/// not fit. The object's own (the library's `ctx::ptr_at` is the same
/// check): using nothing of the datapath library keeps its maps out of
/// this object.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    if ctx.data() + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((ctx.data() + offset) as *mut T)
}

/// Where [`bench_xdp_fib`] may redirect (`abi::MAP_BENCH_TX_PORTS`): the
/// benchmark fills it with the gateway's interfaces.
#[map]
pub static BENCH_TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_IFACES, 0);

/// Benchmark floor: does nothing.
#[xdp]
pub fn bench_xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Benchmark ceiling of the XDP approach: FIB + redirect, no NAT.
#[xdp]
pub fn bench_xdp_fib(ctx: XdpContext) -> u32 {
    fib_redirect(&ctx)
}

/// Benchmark traffic generator (live-frames test run).
#[xdp]
pub fn bench_xdp_tx(ctx: XdpContext) -> u32 {
    tx(&ctx)
}

/// Benchmark traffic generator for a receiver without NAPI (a veth at the
/// kernel's defaults cannot take XDP frames): the same frames, passed to
/// the stack of the interface the test run names, where a TC rule sends
/// them out as packets (skbs).
#[xdp]
pub fn bench_xdp_gen_pass(ctx: XdpContext) -> u32 {
    match tx(&ctx) {
        XDP_TX => XDP_PASS,
        other => other,
    }
}

/// The skb generator's second half, at the client's TC ingress: a frame
/// addressed to another host (the generator's, to the gateway's MAC) goes
/// out of the interface it came in on; everything else (the client's own
/// traffic) passes.
#[classifier]
pub fn bench_tc_bounce(ctx: TcContext) -> i32 {
    // SAFETY: the context's skb is valid for the program's run.
    let (pkt_type, ifindex) = unsafe { ((*ctx.skb.skb).pkt_type, (*ctx.skb.skb).ifindex) };
    if pkt_type != PACKET_OTHERHOST {
        return TC_ACT_OK;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// `skb->pkt_type` of a frame to another host's MAC.
const PACKET_OTHERHOST: u32 = 3;

/// Benchmark receiver: counts and drops the generated packets.
#[xdp]
pub fn bench_xdp_sink(ctx: XdpContext) -> u32 {
    sink(&ctx)
}

/// The Ethernet and IPv4 headers of an IPv4 frame (`None` for anything
/// else, or too short).
#[inline(always)]
fn ipv4(ctx: &XdpContext) -> Option<(*mut EthHdr, *mut Ipv4Hdr)> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return None;
    }
    Some((eth, ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN)?))
}

fn fib_redirect(ctx: &XdpContext) -> u32 {
    let Some((eth, ip)) = ipv4(ctx) else { return XDP_PASS };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &mut *ip };
    if ip.ttl <= 1 {
        return XDP_PASS;
    }
    // SAFETY: plain old data.
    let mut f: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    f.family = 2;
    f.l4_protocol = ip.proto;
    f.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
    f.ifindex = ctx.ingress_ifindex() as u32;
    f.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src_addr);
    f.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst_addr);
    // SAFETY: valid context and stack struct.
    let rc = unsafe {
        fib_lookup_helper(
            ctx.ctx.cast(),
            &raw mut f,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return XDP_PASS;
    }
    ip.check = ttl_decrement(u16::from_be_bytes(ip.check), ip.ttl, ip.proto).to_be_bytes();
    ip.ttl -= 1;
    // SAFETY: bounds checked above (eth).
    unsafe {
        (*eth).dst_addr = f.dmac;
        (*eth).src_addr = f.smac;
    }
    BENCH_TX_PORTS.redirect(f.ifindex, 0).unwrap_or(XDP_DROP)
}

/// The frame [`tx`] sends and how many flows it spreads over (index 0).
#[map]
pub static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);

/// Generator: paced, sends only when a frame is due ([`BenchFrame`]);
/// writes the whole frame ([`next_frame`]), then sends it out of the
/// interface it "arrived" on (live-frames mode turns `XDP_TX` into a
/// transmission). Writing it every time matters: live-frames mode recycles
/// its pages without restoring their contents, and the gateway's rewrite
/// (MACs, TTL, NAT) would otherwise come back in the next frames.
#[inline(always)]
fn tx(ctx: &XdpContext) -> u32 {
    let Some(b) = BENCH_FRAME.get_ptr_mut(0) else { return XDP_ABORTED };
    let Some(p) = ptr_at::<[u8; 64]>(ctx, 0) else { return XDP_ABORTED };
    // SAFETY: map value valid until exit, the generator runs on one CPU
    // (the test run's); 64 bytes bounds-checked by ptr_at.
    if unsafe { next_frame(&mut *b, &mut *p) } { XDP_TX } else { XDP_DROP }
}

/// Benchmark traffic generator where live frames are refused: a TC program
/// run by `BPF_PROG_TEST_RUN` on a 64-byte skb, whose frame it writes
/// ([`next_frame`]) and sends out of the test run's interface as a clone
/// (`bpf_clone_redirect` to its egress): a packet the peer receives as any
/// sender's skb.
#[classifier]
pub fn bench_tc_gen(ctx: TcContext) -> i32 {
    let Some(b) = BENCH_FRAME.get_ptr_mut(0) else { return TC_ACT_SHOT };
    if ctx.data() + 64 > ctx.data_end() {
        return TC_ACT_SHOT;
    }
    // SAFETY: map value valid until exit, one CPU (the test run's); 64
    // bytes checked above, writable (the verifier's prologue unclones the
    // skb that the last run's clone shared).
    if unsafe { !next_frame(&mut *b, &mut *(ctx.data() as *mut [u8; 64])) } {
        return TC_ACT_SHOT;
    }
    // SAFETY: the context's skb is valid for the program's run; plain
    // helper call.
    unsafe {
        let ifindex = (*ctx.skb.skb).ifindex;
        bpf_clone_redirect(ctx.skb.skb, ifindex, 0);
    }
    TC_ACT_SHOT
}

/// Whether a frame is due ([`BenchFrame`]'s pacing: always when not
/// paced) and, if so, writes it into `f`: the frame with the source (port,
/// address) of its flow and the checksums to match.
#[inline(always)]
fn next_frame(b: &mut BenchFrame, f: &mut [u8; 64]) -> bool {
    if b.gap_ns != 0 {
        // Paced: not due yet (or all sent): this run sends nothing.
        if b.left == 0 {
            return false;
        }
        if b.credit == 0 {
            // SAFETY: plain helper call.
            let now = unsafe { bpf_ktime_get_ns() };
            if now < b.next_ns {
                return false;
            }
            let late = now.saturating_sub(BENCH_PACE_CATCH_UP * b.gap_ns);
            b.next_ns = b.next_ns.max(late) + u64::from(BENCH_PACE_BURST) * b.gap_ns;
            b.credit = BENCH_PACE_BURST;
        }
        b.credit -= 1;
        b.left -= 1;
    }
    *f = b.frame;
    let (port, addr) = bench_flow(b.seq, b.flows);
    b.seq = b.seq.wrapping_add(1);
    // The L4 checksum: UDP's at 40, TCP's at 50.
    let udp = f[23] == 17;
    let csum_at = if udp { 40 } else { 50 };
    let check = u16::from_be_bytes([f[csum_at], f[csum_at + 1]]);
    let mut l4 = check;
    if port != 0 {
        let old = u16::from_be_bytes([f[34], f[35]]);
        let new = old.wrapping_add(port);
        [f[34], f[35]] = new.to_be_bytes();
        l4 = update16(l4, old, new);
    }
    if addr != 0 {
        // The source address's second half: in the IPv4 header's sum
        // and in the L4 pseudo-header's.
        let old = u16::from_be_bytes([f[28], f[29]]);
        f[29] = f[29].wrapping_add(addr);
        let new = u16::from_be_bytes([f[28], f[29]]);
        [f[24], f[25]] = update16(u16::from_be_bytes([f[24], f[25]]), old, new).to_be_bytes();
        l4 = update16(l4, old, new);
    }
    // UDP: 0 stays "none", a computed 0 is sent as 0xffff.
    [f[csum_at], f[csum_at + 1]] = (if udp { udp_fixup(check, l4) } else { l4 }).to_be_bytes();
    true
}

/// Packets [`sink`] counted: from the expected source (index
/// `BENCH_SINK_FROM_SOURCE`) and from any other (`BENCH_SINK_FROM_OTHERS`).
#[map]
pub static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// The source [`sink`] expects (index 0).
#[map]
pub static BENCH_SINK_SOURCE: Array<BenchSource> = Array::with_max_entries(1, 0);

/// The UDP (and TCP) destination ports of the generated packets: 5300,
/// and 5301 for a run of new connections after a flood to 5300.
const SINK_PORTS: core::ops::RangeInclusive<u16> = 5300..=5301;

/// Receiver: counts and drops IPv4 UDP and TCP packets to a port of
/// [`SINK_PORTS`], apart by whether they come from the expected source;
/// passes everything else (ARP, the other workloads' traffic).
#[inline(always)]
fn sink(ctx: &XdpContext) -> u32 {
    let Some((_, ip)) = ipv4(ctx) else { return XDP_PASS };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if (ip.proto != 17 && ip.proto != 6) || ip.vihl != 0x45 {
        return XDP_PASS;
    }
    let Some(ports) = ptr_at::<[u8; 4]>(ctx, EthHdr::LEN + 20) else { return XDP_PASS };
    // SAFETY: bounds checked by ptr_at.
    if !SINK_PORTS.contains(&u16::from_be_bytes([unsafe { (*ports)[2] }, unsafe { (*ports)[3] }])) {
        return XDP_PASS;
    }
    let expected = BENCH_SINK_SOURCE.get(0).is_some_and(|s| s.matches(ip.src_addr));
    if let Some(c) = BENCH_SINK.get_ptr_mut(if expected {
        BENCH_SINK_FROM_SOURCE
    } else {
        BENCH_SINK_FROM_OTHERS
    }) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
    XDP_DROP
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
