//! TC ingress entry. In TC mode (no XDP on the interface) it is the whole
//! datapath. Behind XDP it only takes the packets XDP marked (neighbour
//! unknown, egress not in the devmap, …), or, where XDP cannot mark them
//! (a kernel that refuses XDP the metadata helper, a driver that gives it
//! no metadata area), every packet XDP let through, and finishes them: the
//! checksum helpers handle `CHECKSUM_PARTIAL` skbs, and `bpf_redirect_neigh`
//! lets the kernel resolve the next hop without the packet ever meeting the
//! routing stack (where a translated source would be a martian).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT, bpf_redir_neigh},
    helpers::generated::{bpf_redirect, bpf_redirect_neigh, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    programs::TcContext,
};
use forwarder_common::{
    abi::{IFACE_F_TC_ALL, IFACE_F_TC_ONLY, PROTO_UDP, TC_TAIL_NEW_FLOW, XDP_HANDOFF_MAGIC},
    decide::{drop_counter, gso_segment_len, tcp_header_len, too_big_mtu},
    nat::delta,
    stats,
};

use super::toobig;
use crate::{
    ctx::{Packet, ptr_at},
    flow::{icmp, new::create},
    maps::{FWD_NEW_SCRATCH, FWD_TC_TAILS, count, iface_flags, xdp_meta},
    ops::{audit, frag, parse::rebased, rewrite},
    pipeline::decide,
    types::{FRAG_NONE, Forward, NewFlowPlan, Parsed, Verdict},
};

const AF_INET: u32 = 2;
/// Enough linear bytes for Ethernet + the largest IPv4 header + TCP, or an
/// ICMP error quoting the largest IPv4 header and 20 bytes of TCP.
const PULL_LEN: u32 = 14 + 60 + 8 + 60 + 20;

/// Whether XDP marked this packet for this program ([`XDP_HANDOFF_MAGIC`]
/// in the metadata area): the whole work is left to it.
#[inline(always)]
fn handed_over(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid; data_meta/data are readable in
    // cls_bpf programs.
    let (meta, data) = unsafe { ((*ctx.skb.skb).data_meta as usize, (*ctx.skb.skb).data as usize) };
    // SAFETY: 4 bytes of metadata, checked first.
    meta + 4 <= data && unsafe { *(meta as *const u32) } == XDP_HANDOFF_MAGIC
}

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let flags = iface_flags(Packet::ingress_ifindex(ctx));
    let tc_only = flags & IFACE_F_TC_ONLY != 0;
    // Behind XDP, TC looks at every packet XDP lets through where XDP
    // cannot mark its hand-overs: the kernel refuses it the metadata
    // helper, or the driver gives it no metadata area.
    let unmarked = !xdp_meta() || flags & IFACE_F_TC_ALL != 0;
    // Tagged frames are always ours to look at: XDP hands them over, and
    // the kernel's untagging may move the metadata word.
    if !tc_only && !unmarked && !handed_over(ctx) && Packet::vlan(ctx) == 0 {
        return TC_ACT_OK;
    }
    let _ = ctx.pull_data(if ctx.len() < PULL_LEN { ctx.len() } else { PULL_LEN });
    match decide(ctx) {
        // Behind XDP without marks, every packet XDP let through comes
        // here: one XDP passed it has counted already.
        Verdict::Pass(_) if unmarked && !tc_only => TC_ACT_OK,
        Verdict::NewFlow(parsed, target, hairpin) => {
            if let Some(slot) = FWD_NEW_SCRATCH.get_ptr_mut(0) {
                // SAFETY: per-CPU slot; the tail call below runs at once,
                // on this CPU.
                unsafe {
                    *slot = NewFlowPlan { parsed, target, hairpin };
                    FWD_TC_TAILS.tail_call(ctx, TC_TAIL_NEW_FLOW);
                }
            }
            // Only reached when the new-flow program is not installed.
            count(stats::PASS_NOT_OURS);
            TC_ACT_OK
        }
        // Only the established path resets (kept out of `apply`, which the
        // new-flow program inlines within its stack).
        Verdict::Drop(stats::DROP_CONN_RESET) => toobig::refuse(ctx, stats::DROP_CONN_RESET),
        v => apply(ctx, v),
    }
}

/// Entry of the new-flow program (the TC program's tail call): the
/// connection's setup, then its first packet sent like any other.
#[inline(always)]
pub fn run_new_flow(ctx: &TcContext) -> i32 {
    let Some(plan) = FWD_NEW_SCRATCH.get(0).and_then(|plan| rebased(*plan, ctx)) else {
        return TC_ACT_OK;
    };
    let v = create(ctx, plan.parsed, &plan.target, plan.hairpin);
    apply(ctx, v)
}

/// Carries out a verdict on the packet.
#[inline(always)]
fn apply(ctx: &TcContext, v: Verdict) -> i32 {
    match v {
        // Decided by the new-flow program (the verdict never gets here).
        Verdict::NewFlow(..) => {
            count(stats::PASS_NOT_OURS);
            TC_ACT_OK
        }
        Verdict::Pass(s) => {
            count(s);
            TC_ACT_OK
        }
        // XDP's verdict only (every producer tests `P::IS_XDP`).
        Verdict::ToTc => {
            count(stats::XDP_TO_TC);
            TC_ACT_OK
        }
        Verdict::Drop(s) => {
            if let Some(mtu) = too_big_mtu(s) {
                return toobig::answer(ctx, mtu);
            }
            if s == stats::DROP_NO_BACKEND {
                return toobig::refuse(ctx, stats::DROP_NO_BACKEND);
            }
            count(drop_counter(s));
            TC_ACT_SHOT
        }
        Verdict::Forward(parsed, fwd) => {
            // A GRO'd skb passes the FIB's MTU check, but its segments must
            // fit the egress link too (as in the kernel's ip_forward).
            if let Some(seg) = gso_segment(ctx, &parsed)
                && fwd.mtu != 0
                && seg > u32::from(fwd.mtu)
            {
                return toobig::answer(ctx, u32::from(fwd.mtu));
            }
            if parsed.created_by.is_some() {
                let ifindex = Packet::ingress_ifindex(ctx);
                audit::emit(|now| audit::accepted(&parsed, &fwd, ifindex, now));
            }
            let vlan = fwd.vlan;
            if rewrite(ctx, &parsed, &fwd).is_none() {
                count(stats::DROP_REWRITE_FAILED);
                return TC_ACT_SHOT;
            }
            if parsed.fragment != FRAG_NONE {
                count(stats::FRAGMENT_TRANSLATED);
            }
            retag_and_redirect(ctx, &fwd, vlan)
        }
        Verdict::ForwardL3(parsed, fwd) => {
            let d = forwarder_common::nat::delta(&parsed.tuple, &fwd.new);
            let macs = if fwd.resolve { Some(()) } else { rewrite::macs(ctx, &fwd) };
            if rewrite::ip_header(ctx, &fwd.new, &d).and(macs).is_none() {
                count(stats::DROP_REWRITE_FAILED);
                return TC_ACT_SHOT;
            }
            count(stats::FRAGMENT_TRANSLATED);
            retag_and_redirect(ctx, &fwd, frag::vlan(&parsed))
        }
        Verdict::ForwardIcmp(parsed, fwd, quote) => {
            let vlan = icmp::vlan(&quote);
            let macs = if fwd.resolve { Some(()) } else { rewrite::macs(ctx, &fwd) };
            if rewrite::icmp_error(ctx, &parsed, &fwd.new, &quote).and(macs).is_none() {
                count(stats::DROP_REWRITE_FAILED);
                return TC_ACT_SHOT;
            }
            count(stats::ICMP_TRANSLATED);
            retag_and_redirect(ctx, &fwd, vlan)
        }
    }
}

/// For a GSO skb, the IPv4 length of the segments it will be cut into.
#[inline(always)]
fn gso_segment(ctx: &TcContext, parsed: &Parsed) -> Option<u32> {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return None;
    }
    let l4_hdr = if parsed.proto == PROTO_UDP {
        8
    } else {
        let doff: *const u8 = ptr_at(ctx, parsed.l4() + 12)?;
        // SAFETY: bounds checked by ptr_at.
        tcp_header_len(unsafe { *doff })
    };
    Some(gso_segment_len(parsed.l4(), l4_hdr, gso_size))
}

/// 802.1Q ethertype, network order as the helper wants it.
const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();

/// The tag a packet came with belongs to where it came from; it leaves with
/// the tag of its own flow direction (`vlan`, 0 = none): replies to a
/// tagged client. Then redirect.
#[inline(always)]
fn retag_and_redirect(ctx: &TcContext, fwd: &Forward, vlan: u16) -> i32 {
    // SAFETY: plain helper calls on the program's own skb.
    let ok = unsafe {
        ((*ctx.skb.skb).vlan_present == 0 || bpf_skb_vlan_pop(ctx.skb.skb) == 0)
            && (vlan == 0 || bpf_skb_vlan_push(ctx.skb.skb, ETH_P_8021Q_BE, vlan) == 0)
    };
    if !ok {
        count(stats::DROP_REDIRECT_FAILED);
        return TC_ACT_SHOT;
    }
    redirect(fwd)
}

#[inline(always)]
fn redirect(fwd: &Forward) -> i32 {
    // SAFETY: plain helper calls with stack arguments.
    let ret = unsafe {
        if fwd.resolve {
            let mut p: bpf_redir_neigh = core::mem::zeroed();
            p.nh_family = AF_INET;
            p.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(fwd.nexthop);
            count(stats::TC_REDIRECTED_NEIGH);
            bpf_redirect_neigh(
                fwd.ifindex,
                &raw mut p,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        } else {
            count(stats::TC_REDIRECTED);
            bpf_redirect(fwd.ifindex, 0)
        }
    };
    ret as i32
}

#[inline(always)]
fn rewrite(ctx: &TcContext, parsed: &Parsed, fwd: &Forward) -> Option<()> {
    let old = parsed.tuple;
    let new = fwd.new;
    let d = delta(&old, &new);
    // Direct writes first: the checksum helpers below invalidate pointers.
    rewrite::ip_and_ports(ctx, &new, &d, parsed.l4())?;
    if !fwd.resolve {
        rewrite::macs(ctx, fwd)?;
    }
    let udp = parsed.proto == PROTO_UDP;
    let off = rewrite::l4_csum_off(parsed.l4(), parsed.proto);
    let mangled = if udp { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
    let addr_flags = u64::from(BPF_F_PSEUDO_HDR) | 4 | mangled;
    let a = |o: [u8; 4]| u64::from(u32::from_ne_bytes(o));
    let w = |o: [u8; 2]| u64::from(u16::from_ne_bytes(o));
    ctx.l4_csum_replace(off, a(old.saddr), a(new.saddr), addr_flags).ok()?;
    ctx.l4_csum_replace(off, a(old.daddr), a(new.daddr), addr_flags).ok()?;
    ctx.l4_csum_replace(off, w(old.sport), w(new.sport), 2 | mangled).ok()?;
    ctx.l4_csum_replace(off, w(old.dport), w(new.dport), 2 | mangled).ok()?;
    Some(())
}
