//! TC ingress entry. In TC mode (no XDP on the interface) it is the whole
//! datapath. Behind XDP it only takes the packets XDP marked (neighbour
//! unknown, egress not in the devmap, …) and finishes them: the
//! checksum helpers handle `CHECKSUM_PARTIAL` skbs, and `bpf_redirect_neigh`
//! lets the kernel resolve the next hop without the packet ever meeting the
//! routing stack (where a translated source would be a martian).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT, bpf_redir_neigh},
    helpers::generated::{bpf_redirect, bpf_redirect_neigh, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    programs::TcContext,
};
use forwarder_common::{
    abi::{FlowKey, IFACE_F_TC_ONLY, PROTO_UDP},
    nat::delta,
    stats,
};

use crate::{
    maps::{FWD_FLOWS, FWD_IFACES, count},
    pipeline::{Forward, Parsed, Verdict, decide},
    rewrite,
    xdp::TC_HANDOFF_MAGIC,
};

const AF_INET: u32 = 2;
/// Enough linear bytes for Ethernet + the largest IPv4 header + TCP, or an
/// ICMP error quoting the largest IPv4 header and 20 bytes of TCP.
const PULL_LEN: u32 = 14 + 60 + 8 + 60 + 20;

#[inline(always)]
fn handed_off(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid; data_meta/data are readable in
    // cls_bpf programs.
    let (meta, data) = unsafe { ((*ctx.skb.skb).data_meta as usize, (*ctx.skb.skb).data as usize) };
    if meta + 4 > data {
        return false;
    }
    // SAFETY: 4 bytes of metadata, checked above.
    unsafe { *(meta as *const u32) == TC_HANDOFF_MAGIC }
}

/// Whether this interface runs in TC mode (no XDP in front).
#[inline(always)]
fn tc_only(ctx: &TcContext) -> bool {
    let ifindex = crate::ctx::Packet::ingress_ifindex(ctx);
    // SAFETY: map value pointer valid until program exit.
    FWD_IFACES.get_ptr(&ifindex).is_some_and(|i| unsafe { (*i).flags } & IFACE_F_TC_ONLY != 0)
}

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    // Tagged frames are always ours to look at: XDP hands them over, and
    // the kernel's untagging may move the metadata word.
    if !handed_off(ctx) && !tc_only(ctx) && crate::ctx::Packet::vlan(ctx) == 0 {
        return TC_ACT_OK;
    }
    let _ = ctx.pull_data(if ctx.len() < PULL_LEN { ctx.len() } else { PULL_LEN });
    match decide(ctx) {
        Verdict::Pass(s) | Verdict::ToTc(s) => {
            count(s);
            TC_ACT_OK
        }
        Verdict::Drop(s) if s & 0xffff == stats::DROP_TOO_BIG && s >> 16 != 0 => crate::toobig::answer(ctx, s >> 16),
        Verdict::Drop(s) => {
            count(s & 0xffff);
            TC_ACT_SHOT
        }
        Verdict::Forward(parsed, fwd) => {
            // A GRO'd skb passes the FIB's MTU check, but its segments must
            // fit the egress link too (as in the kernel's ip_forward).
            if let Some(seg) = gso_segment_len(ctx, &parsed) {
                if fwd.mtu != 0 && seg > u32::from(fwd.mtu) {
                    return crate::toobig::answer(ctx, u32::from(fwd.mtu));
                }
            }
            if parsed.audit_rule != 0 {
                // SAFETY: helper without side effects.
                let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
                crate::audit::emit(&crate::audit::accepted(&parsed, &fwd, crate::ctx::Packet::ingress_ifindex(ctx), now));
            }
            let vlan = flow_vlan(&FlowKey::new(&parsed.tuple, parsed.proto));
            if rewrite(ctx, &parsed, &fwd).is_none() {
                count(stats::DROP_REDIRECT_FAILED);
                return TC_ACT_SHOT;
            }
            if parsed.fragment != crate::pipeline::FRAG_NONE {
                count(stats::FRAGMENT_TRANSLATED);
            }
            retag_and_redirect(ctx, &fwd, vlan)
        }
        Verdict::ForwardL3(parsed, fwd) => {
            let d = forwarder_common::nat::delta(&parsed.tuple, &fwd.new);
            let macs = if fwd.resolve_nexthop.is_none() { rewrite::macs(ctx, &fwd) } else { Some(()) };
            if rewrite::ip_header(ctx, &fwd.new, &d).and(macs).is_none() {
                count(stats::DROP_REDIRECT_FAILED);
                return TC_ACT_SHOT;
            }
            count(stats::FRAGMENT_TRANSLATED);
            retag_and_redirect(ctx, &fwd, crate::frag::vlan(&parsed))
        }
        Verdict::ForwardIcmp(parsed, fwd, quote) => {
            let vlan = quote.vlan();
            let macs = if fwd.resolve_nexthop.is_none() { rewrite::macs(ctx, &fwd) } else { Some(()) };
            if crate::icmp::rewrite(ctx, &parsed, &fwd.new, &quote).and(macs).is_none() {
                count(stats::DROP_REDIRECT_FAILED);
                return TC_ACT_SHOT;
            }
            count(stats::ICMP_TRANSLATED);
            retag_and_redirect(ctx, &fwd, vlan)
        }
    }
}

/// For a GSO skb, the IPv4 length of the segments it will be cut into.
#[inline(always)]
fn gso_segment_len(ctx: &TcContext, parsed: &Parsed) -> Option<u32> {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return None;
    }
    let l4_hdr = if parsed.proto == PROTO_UDP {
        8
    } else {
        let doff: *const u8 = crate::ctx::ptr_at(ctx, parsed.l4_off + 12)?;
        // SAFETY: bounds checked by ptr_at.
        u32::from(unsafe { *doff } >> 4) * 4
    };
    Some((parsed.l4_off as u32 - 14) + l4_hdr + gso_size)
}

/// The 802.1Q TCI packets of the flow with this key leave with.
#[inline(always)]
fn flow_vlan(key: &FlowKey) -> u16 {
    // SAFETY: map value pointer valid until program exit.
    FWD_FLOWS.get_ptr(key).map_or(0, |e| unsafe { (*e).vlan })
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
        match fwd.resolve_nexthop {
            Some(nh) => {
                let mut p: bpf_redir_neigh = core::mem::zeroed();
                p.nh_family = AF_INET;
                p.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(nh);
                count(stats::TC_REDIRECTED_NEIGH);
                bpf_redirect_neigh(fwd.ifindex, &raw mut p, core::mem::size_of::<bpf_redir_neigh>() as i32, 0)
            }
            None => {
                count(stats::TC_REDIRECTED);
                bpf_redirect(fwd.ifindex, 0)
            }
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
    rewrite::ip_and_ports(ctx, &new, &d, parsed.l4_off)?;
    if fwd.resolve_nexthop.is_none() {
        rewrite::macs(ctx, fwd)?;
    }
    let udp = parsed.proto == PROTO_UDP;
    let off = rewrite::l4_csum_off(parsed.l4_off, parsed.proto);
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
