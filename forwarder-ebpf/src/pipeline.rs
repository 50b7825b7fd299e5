//! The datapath decision for one packet, shared by XDP and TC: parse, look
//! the flow (or a rule) up, route the translated packet, and say what to do.
//! Applying the decision (rewrite, checksums, redirect) is the entry
//! point's job, because XDP and TC do that differently.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NO_SRC_ADDR, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE, BPF_FIB_LOOKUP_SRC,
        bpf_fib_lookup,
    },
    helpers::{bpf_ktime_get_ns, generated::bpf_fib_lookup as fib_lookup_helper},
    maps::lpm_trie::Key,
};
use aya_log_ebpf::warn;
use forwarder_common::{
    abi::{
        DIR_ORIGINAL, FlowKey, MAX_SNAT_ATTEMPTS, PROTO_TCP, PROTO_UDP, ROLE_PUBLIC, RULE_F_MASQUERADE, RULE_F_SRC_FILTER,
        RULE_KEY_FULL_BITS, RuleKey, RuleTarget, SrcKey,
    },
    rule::backend_port,
    conntrack::{CT_FIN, CT_NEW, NextHop, TCP_RST, entry_pair, needs_refresh, next_state, snat_candidate, tuple_hash},
    csum::looks_partial,
    icmp::PROTO_ICMP,
    nat::Tuple,
    parse, stats,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    ct::{self, InsertError},
    ctx::{Packet, ptr_at},
    maps::{FWD_FLOWS, FWD_IFACES, FWD_PUBLIC_ADDRS, FWD_RULES, FWD_SRC_ALLOW, FWD_TX_PORTS, config, count_rule, rule_stats},
};

const AF_INET: u8 = 2;

/// What the parser learned about a packet we may translate.
#[derive(Clone, Copy)]
pub struct Parsed {
    /// Offset of the L4 header (14 + IHL × 4).
    pub l4_off: usize,
    /// L4 header + payload length (IP total length − header length).
    pub l4_len: u16,
    /// The IPv4 total length (header with its options + payload): what
    /// must fit the egress MTU.
    pub l3_len: u16,
    pub proto: u8,
    pub ttl: u8,
    pub tuple: Tuple,
    /// The L4 checksum field as received (numeric).
    pub l4_check: u16,
    /// TCP flags byte (0 for UDP; the type for ICMP).
    pub tcp_flags: u8,
    /// Frame length (a GRO'd skb in TC counts whole), for the byte counters.
    pub frame_len: u32,
    /// IP identification (network order), for fragments.
    pub ip_id: [u8; 2],
    /// [`FRAG_NONE`], [`FRAG_FIRST`] (carries the L4 header) or
    /// [`FRAG_LATER`] (no L4 header; `tuple` ports are zero).
    pub fragment: u8,
    /// The first packet of a connection `new_flow` just created: its
    /// rule id + 1, for the audit event; 0 for every other packet.
    pub audit_rule: u32,
}

impl Parsed {
    /// The L4 offset, bounded for the verifier where it is used (at most
    /// 14 + 60, so a 7-bit mask changes nothing): an `asm` mask LLVM
    /// cannot drop. After a hand-over through a map or a spill in 32-bit
    /// halves the verifier no longer knows the offset's bounds, and
    /// refuses packet pointer arithmetic with it: the TC programs use this.
    /// (The XDP programs verify without it, and with it LLVM makes their
    /// checksum loop and connection setup slower: they read `l4_off`.)
    #[inline(always)]
    pub fn l4(&self) -> usize {
        let mut off = self.l4_off;
        // SAFETY: one ALU instruction on a register.
        unsafe { core::arch::asm!("{0} &= 127", inout(reg) off) };
        off
    }
}

pub const FRAG_NONE: u8 = 0;
pub const FRAG_FIRST: u8 = 1;
pub const FRAG_LATER: u8 = 2;

/// A translated packet ready to leave.
#[derive(Clone, Copy)]
pub struct Forward {
    pub new: Tuple,
    /// Egress interface.
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// TC only: the neighbour is not resolved yet; `nexthop` is its
    /// address, for `bpf_redirect_neigh` (MACs unknown). (Plain fields,
    /// not an `Option`: LLVM fills the payload of a `None` with whatever
    /// register is at hand, a pointer included, and the verifier refuses
    /// the byte shifts that store it.)
    pub resolve: bool,
    /// Next hop address, network order (meaningful with `resolve`).
    pub nexthop: [u8; 4],
    /// The egress MTU (0 when the FIB did not say).
    pub mtu: u16,
    /// The 802.1Q TCI the packet leaves with (its flow direction's; 0 =
    /// untagged): TC tags it, XDP leaves tagged flows to TC.
    pub vlan: u16,
}

pub enum Verdict {
    /// Leave the packet to the kernel untouched; the counter says why.
    Pass(u32),
    /// Drop it; the counter says why.
    Drop(u32),
    /// XDP only: leave it untouched for the TC program to finish.
    ToTc(u32),
    /// Rewrite and send.
    Forward(Parsed, Forward),
    /// An ICMP error about one of our connections: rewrite it (outer
    /// header and the quoted packet) and send.
    ForwardIcmp(Parsed, Forward, crate::icmp::Quote),
    /// A later fragment of a translated datagram: rewrite the IPv4 header
    /// only, and send.
    ForwardL3(Parsed, Forward),
    /// The first packet of a connection matching this rule (hairpin or
    /// not); [`create`] decides it in the hook's new-flow program (a tail
    /// call), so that the verifier walks the connection setup apart from
    /// the established path, each with a stack of its own.
    NewFlow(Parsed, RuleTarget, bool),

}

/// Parses Ethernet / IPv4 (any IHL) / TCP or UDP. `Err` carries the verdict
/// for packets that are not ours or not valid.
#[inline(always)]
pub fn parse<P: Packet>(p: &P) -> Result<Parsed, Verdict> {
    let eth: *const EthHdr = ptr_at(p, 0).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    let ether_type = unsafe { (*eth).ether_type };
    // 802.1Q: XDP leaves tagged frames to TC, which sees them untagged (the
    // kernel moves the tag into the skb) and tags replies again.
    if P::IS_XDP && (ether_type == EtherType::Ieee8021q as u16 || ether_type == EtherType::Ieee8021ad as u16) {
        return Err(Verdict::ToTc(stats::XDP_TO_TC));
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return Err(Verdict::Pass(stats::PASS_NOT_IPV4));
    }
    let ip: *const Ipv4Hdr = ptr_at(p, EthHdr::LEN).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    // The whole packet, not just its linear part: in TC the payload of a
    // large skb sits in fragments; only the headers must be linear.
    let avail = (p.len() as usize).saturating_sub(EthHdr::LEN);
    let meta = parse::ipv4(ip.vihl, u16::from_be_bytes(ip.tot_len), u16::from_be_bytes(ip.frags), avail)
        .map_err(|_| Verdict::Pass(stats::PASS_MALFORMED))?;
    let proto = ip.proto as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
        return Err(Verdict::Pass(stats::PASS_NOT_OURS));
    }
    // A corrupt header is the kernel's to drop (and count), never ours to
    // forward: the incremental update would carry the corruption along.
    let header_sum = if meta.header_len == 20 {
        // SAFETY: the 20 bytes were bounds-checked as the Ipv4Hdr.
        forwarder_common::csum::sum20(unsafe { &*(core::ptr::from_ref(ip).cast::<[u8; 20]>()) })
    } else {
        crate::csum::sum(p, EthHdr::LEN, meta.header_len & 0x3c).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?
    };
    if forwarder_common::csum::fold(header_sum) != 0xffff {
        return Err(Verdict::Pass(stats::PASS_MALFORMED));
    }
    // IHL is 4 bits: masking keeps the offset provably bounded.
    let l4_off = EthHdr::LEN + (meta.header_len & 0x3c);
    let l4_len = (meta.total_len - meta.header_len) as u16;
    // ICMP fragments are never ours; TCP/UDP fragments after the first
    // carry no L4 header: they follow their first fragment (crate::frag).
    if proto == PROTO_ICMP && meta.is_fragment {
        return Err(Verdict::Pass(stats::PASS_FRAGMENT));
    }
    // ICMP and fragments are rare: XDP hands them to TC, which keeps the
    // XDP program (the hot path) small enough for the verifier to explore
    // every path of it.
    if P::IS_XDP && (proto == PROTO_ICMP || meta.is_fragment) {
        return Err(Verdict::ToTc(stats::XDP_TO_TC));
    }
    let fragment = if !meta.is_fragment {
        FRAG_NONE
    } else if meta.first_fragment {
        FRAG_FIRST
    } else {
        FRAG_LATER
    };
    // What every packet shares; the ports, L4 checksum and TCP flags
    // (or ICMP type) come from the L4 header, if the packet has one.
    let parsed = |ports: [u8; 4], l4_check: u16, tcp_flags: u8| Parsed {
        l4_off,
        l4_len,
        l3_len: meta.total_len as u16,
        proto,
        ttl: ip.ttl,
        tuple: Tuple { saddr: ip.src_addr, daddr: ip.dst_addr, sport: [ports[0], ports[1]], dport: [ports[2], ports[3]] },
        l4_check,
        tcp_flags,
        frame_len: p.len(),
        ip_id: ip.id,
        fragment,
        audit_rule: 0,
    };
    // Packets without ports (later fragments, ICMP): the tuple carries
    // zeros, `l4_check`/`tcp_flags` what the caller says.
    let portless = |l4_check: u16, tcp_flags: u8| parsed([0; 4], l4_check, tcp_flags);
    if fragment == FRAG_LATER {
        return Ok(portless(0, 0));
    }
    if proto == PROTO_ICMP {
        // Errors about our flows are translated (crate::icmp); the 8-byte
        // ICMP header must be there. `tcp_flags` carries the ICMP type.
        let h: *const [u8; 8] = ptr_at(p, l4_off).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?;
        // SAFETY: bounds checked by ptr_at.
        let h = unsafe { *h };
        return Ok(portless(u16::from_be_bytes([h[2], h[3]]), h[0]));
    }
    // Ports are the first 4 bytes of both TCP and UDP.
    let ports: *const [u8; 4] = ptr_at(p, l4_off).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { *ports };
    let mut udp_len = 0;
    let l4_check;
    let mut tcp_flags = 0;
    if proto == PROTO_UDP {
        let u: *const [u8; 8] = ptr_at(p, l4_off).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?;
        // SAFETY: bounds checked by ptr_at.
        let u = unsafe { *u };
        udp_len = u16::from_be_bytes([u[4], u[5]]);
        l4_check = u16::from_be_bytes([u[6], u[7]]);
    } else {
        let t: *const [u8; 20] = ptr_at(p, l4_off).ok_or(Verdict::Pass(stats::PASS_MALFORMED))?;
        // SAFETY: bounds checked by ptr_at.
        let t = unsafe { &*t };
        l4_check = u16::from_be_bytes([t[16], t[17]]);
        tcp_flags = t[13];
    }
    parse::l4(proto, l4_len as usize, udp_len, fragment == FRAG_FIRST).map_err(|_| Verdict::Pass(stats::PASS_MALFORMED))?;
    Ok(parsed(ports, l4_check, tcp_flags))
}

/// Whether the L4 checksum holds only the pseudo-header sum (a
/// `CHECKSUM_PARTIAL` packet from a local sender): XDP must then sum the
/// whole segment.
#[inline(always)]
pub fn needs_full_sum(parsed: &Parsed) -> bool {
    let udp_none = parsed.proto == PROTO_UDP && parsed.l4_check == 0;
    // A fragment's checksum covers the whole datagram: never partial (the
    // sender resolves offloads before fragmenting), never summable here.
    parsed.fragment == FRAG_NONE && !udp_none && looks_partial(parsed.l4_check, parsed.tuple.saddr, parsed.tuple.daddr, parsed.proto, parsed.l4_len)
}

/// XDP cannot sum segments larger than `csum::MAX_SUM_LEN` (a GRO'd skb
/// in generic XDP): such packets go to TC, whose helpers handle them.
#[inline(always)]
fn xdp_can_finish<P: Packet>(parsed: &Parsed) -> bool {
    !P::IS_XDP || usize::from(parsed.l4_len) <= crate::csum::MAX_SUM_LEN || !needs_full_sum(parsed)
}

/// Result of a FIB lookup, with the fields we use copied out.
pub struct Route {
    ret: u32,
    ifindex: u32,
    src: [u8; 4],
    nexthop: [u8; 4],
    smac: [u8; 6],
    dmac: [u8; 6],
    /// The egress MTU, when the result is "fragmentation needed".
    mtu: u16,
}

impl Route {
    /// The FIB said the packet does not fit the egress link.
    #[inline(always)]
    pub const fn too_big(&self) -> bool {
        self.ret == BPF_FIB_LKUP_RET_FRAG_NEEDED
    }
}

#[inline(always)]
pub fn route<P: Packet>(p: &P, parsed: &Parsed, t: &Tuple, flags: u32) -> Route {
    // SAFETY: bpf_fib_lookup is plain old data; zero is a valid value.
    let mut f: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    f.family = AF_INET;
    f.l4_protocol = parsed.proto;
    f.sport = u16::from_ne_bytes(t.sport);
    f.dport = u16::from_ne_bytes(t.dport);
    // XDP: let the kernel check the egress MTU against the frame. TC:
    // tot_len 0 makes the kernel check the skb itself (a GRO'd skb passes,
    // it is segmented on egress; a plain oversize one does not).
    f.__bindgen_anon_1.tot_len = if P::IS_XDP { parsed.l3_len } else { 0 };
    f.ifindex = p.ingress_ifindex();
    f.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(t.saddr);
    f.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(t.daddr);
    // SAFETY: valid context and a stack struct of the size passed.
    let ret = unsafe { fib_lookup_helper(p.raw(), &raw mut f, core::mem::size_of::<bpf_fib_lookup>() as i32, flags) };
    // SAFETY: union fields written by the kernel for IPv4.
    unsafe {
        Route {
            ret: ret as u32,
            ifindex: f.ifindex,
            src: f.__bindgen_anon_3.ipv4_src.to_ne_bytes(),
            nexthop: f.__bindgen_anon_4.ipv4_dst.to_ne_bytes(),
            smac: f.smac,
            dmac: f.dmac,
            mtu: f.__bindgen_anon_1.mtu_result,
        }
    }
}

/// A "too big for the egress link" drop that TC answers with ICMP
/// "fragmentation needed": the MTU rides in the upper 16 bits of the drop
/// reason. (A variant of its own in `Verdict` made LLVM emit a read of an
/// undefined register on another path, which the verifier refuses.)
#[inline(always)]
pub const fn too_big(mtu: u16) -> u32 {
    stats::DROP_TOO_BIG | (mtu as u32) << 16
}

/// Maps a FIB result to a verdict; `Ok` means "send it".
#[inline(always)]
pub fn fib_verdict<P: Packet>(r: &Route, new: Tuple) -> Result<Forward, Verdict> {
    match r.ret {
        BPF_FIB_LKUP_RET_SUCCESS => {
            if P::IS_XDP && FWD_TX_PORTS.get(r.ifindex).is_none() {
                // Egress is not one of ours: TC can redirect anywhere.
                return Err(Verdict::ToTc(stats::XDP_TO_TC));
            }
            Ok(Forward { new, ifindex: r.ifindex, smac: r.smac, dmac: r.dmac, resolve: false, nexthop: [0; 4], mtu: r.mtu, vlan: 0 })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            if P::IS_XDP {
                // XDP cannot resolve neighbours: TC will, with redirect_neigh.
                Err(Verdict::ToTc(stats::XDP_TO_TC))
            } else {
                Ok(Forward { new, ifindex: r.ifindex, smac: [0; 6], dmac: [0; 6], resolve: true, nexthop: r.nexthop, mtu: 0, vlan: 0 })
            }
        }
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Err(Verdict::Drop(stats::DROP_NO_ROUTE))
        }
        BPF_FIB_LKUP_RET_FWD_DISABLED => Err(Verdict::Pass(stats::PASS_FWD_DISABLED)),
        BPF_FIB_LKUP_RET_NOT_FWDED => Err(Verdict::Pass(stats::PASS_NOT_FORWARDED)),
        // XDP checks the MTU against the frame; a GRO'd skb (generic XDP)
        // exceeds it without being too big for the wire: TC decides.
        BPF_FIB_LKUP_RET_FRAG_NEEDED if P::IS_XDP => Err(Verdict::ToTc(stats::XDP_TO_TC)),
        // TC: truly too big for the egress link: answer "fragmentation
        // needed" (DF) or drop (no DF: we cannot fragment).
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(Verdict::Drop(too_big(r.mtu))),
        BPF_FIB_LKUP_RET_NO_SRC_ADDR => Err(Verdict::Drop(stats::DROP_NO_SRC_ADDR)),
        _ => Err(Verdict::Pass(stats::PASS_FIB_OTHER)),
    }
}

/// The whole decision for one packet.
#[inline(always)]
pub fn decide<P: Packet>(p: &P) -> Verdict {
    let parsed = match parse(p) {
        Ok(v) => v,
        Err(v) => return v,
    };
    // ICMP errors and fragments never reach here in XDP (`parse` hands
    // them to TC): spelled out, so that the XDP programs carry neither.
    if !P::IS_XDP && parsed.proto == PROTO_ICMP {
        return crate::icmp::decide(p, parsed);
    }
    if !P::IS_XDP && parsed.fragment == FRAG_LATER {
        return crate::frag::later(p, parsed);
    }
    let key = FlowKey::new(&parsed.tuple, parsed.proto);
    if let Some(entry) = FWD_FLOWS.get_ptr_mut(&key) {
        // SAFETY: map value pointer valid until program exit.
        let entry = unsafe { &mut *entry };
        return established(p, parsed, entry);
    }
    let Some((target, hairpin)) = match_rule(p, &parsed) else {
        return Verdict::Pass(stats::PASS_NOT_OURS);
    };
    Verdict::NewFlow(parsed, target, hairpin)
}

/// A first packet and the rule it matched, handed from a hook's main
/// program to its new-flow program (per-CPU scratch: the tail call runs at
/// once, on the same CPU).
#[derive(Clone, Copy)]
pub struct NewFlowPlan {
    pub parsed: Parsed,
    pub target: RuleTarget,
    pub hairpin: bool,
}

impl NewFlowPlan {
    /// The plan, with its L4 offset taken from the packet again (see
    /// [`l4_off_again`]).
    #[inline(always)]
    pub fn rebased<P: Packet>(mut self, p: &P) -> Option<Self> {
        self.parsed.l4_off = l4_off_again(p)?;
        Some(self)
    }
}

/// The L4 offset of a packet whose IPv4 header `parse` validated, read
/// from the header again, for a program reached by tail call: a value
/// handed over in a map is unknown to the verifier, and bounding it there
/// does not last (LLVM drops a mask it can prove changes nothing, and
/// reloads the unbounded copy).
#[inline(always)]
pub fn l4_off_again<P: Packet>(p: &P) -> Option<usize> {
    let vihl: *const u8 = ptr_at(p, EthHdr::LEN)?;
    // SAFETY: bounds checked by ptr_at.
    Some(EthHdr::LEN + (usize::from(unsafe { *vihl }) & 0x0f) * 4)
}

/// The verdict for a translated packet; a first fragment also leaves its
/// translation for the later ones.
#[inline(always)]
fn forward<P: Packet>(parsed: Parsed, fwd: Forward, rule_id: u32, dir: u8) -> Verdict {
    if !P::IS_XDP && parsed.fragment == FRAG_FIRST {
        crate::frag::remember(&parsed, &fwd, rule_id, dir);
    }
    Verdict::Forward(parsed, fwd)
}

#[inline(always)]
fn established<P: Packet>(p: &P, parsed: Parsed, entry: &mut forwarder_common::abi::FlowEntry) -> Verdict {
    if parsed.ttl <= 1 {
        return Verdict::Drop(stats::DROP_TTL);
    }
    // Packets that must leave tagged are TC's (XDP does not push tags).
    if P::IS_XDP && entry.vlan != 0 {
        return Verdict::ToTc(stats::XDP_TO_TC);
    }
    let new = entry.tuple();
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    // The next hop cached in the entry (fresh, and the packet fits its
    // MTU), or a FIB lookup whose answer is cached for the next packets.
    let fwd = if let Some(nh) = entry.next_hop(now, parsed.l3_len) {
        Forward { new, ifindex: nh.ifindex, smac: nh.smac, dmac: nh.dmac, resolve: false, nexthop: [0; 4], mtu: nh.mtu, vlan: entry.vlan }
    } else {
        let r = route(p, &parsed, &new, 0);
        let mut fwd = match fib_verdict::<P>(&r, new) {
            Ok(f) => f,
            Err(v) => return v,
        };
        fwd.vlan = entry.vlan;
        if !fwd.resolve && fwd.mtu != 0 {
            entry.cache_next_hop(&NextHop { ifindex: fwd.ifindex, smac: fwd.smac, dmac: fwd.dmac, mtu: fwd.mtu }, now);
        }
        fwd
    };
    if !xdp_can_finish::<P>(&parsed) {
        return Verdict::ToTc(stats::XDP_TO_TC);
    }
    if needs_refresh(entry.last_seen_ns, now) {
        entry.last_seen_ns = now;
    }
    // Connection state: written only on a transition (SYN-ACK, FIN, RST,
    // first UDP answer), to both entries, so the established path stays
    // one lookup and no extra writes.
    let state = next_state(entry.state, entry.dir, parsed.proto, parsed.tcp_flags);
    if state != entry.state {
        // A connection that begins closing may give way to new ones
        // when the table is full.
        if state >= CT_FIN && entry.state < CT_FIN {
            ct::candidate(&FlowKey::new(&parsed.tuple, parsed.proto));
        }
        // A closed tuple the client opens again (port reuse) is a new
        // connection: counted as one.
        if state == CT_NEW {
            if let Some(s) = rule_stats(entry.rule_id) {
                s.new_conns += 1;
            }
        }
        entry.state = state;
        let peer = FlowKey::new(&new.reversed(), parsed.proto);
        if let Some(pe) = FWD_FLOWS.get_ptr_mut(&peer) {
            // SAFETY: map value pointer valid until program exit.
            unsafe { (*pe).state = state };
        }
    }
    count_rule(entry.rule_id, entry.dir, parsed.frame_len);
    forward::<P>(parsed, fwd, entry.rule_id, entry.dir)
}

/// The rule a new flow matches, and whether it is a hairpin (an internal
/// host reaching a public address of the gateway). Rules apply to packets
/// arriving on public interfaces (bound to that interface first, then
/// wildcard), and, for hairpin, to packets from any other interface whose
/// destination is the address of a public interface: then that interface's
/// rules apply.
#[inline(always)]
fn match_rule<P: Packet>(p: &P, parsed: &Parsed) -> Option<(RuleTarget, bool)> {
    let ingress = p.ingress_ifindex();
    // SAFETY: map value pointer valid until program exit.
    let public = FWD_IFACES.get_ptr(&ingress).is_some_and(|i| unsafe { (*i).role } == ROLE_PUBLIC);
    let rules_if = if public {
        ingress
    } else {
        // SAFETY: as above.
        unsafe { *FWD_PUBLIC_ADDRS.get_ptr(&parsed.tuple.daddr)? }
    };
    let mut key = Key::new(RULE_KEY_FULL_BITS, RuleKey { ifindex: rules_if, proto: parsed.proto, port: parsed.tuple.dport, _pad: 0 });
    if let Some(t) = FWD_RULES.get(&key) {
        return Some((*t, !public));
    }
    key.data.ifindex = 0;
    FWD_RULES.get(&key).map(|t| (*t, !public))
}

/// The first packet of a connection that matches `target`: source
/// allow-list, rate limit, route, masquerade port, both entries.
#[inline(always)]
pub fn create<P: Packet>(p: &P, mut parsed: Parsed, target: &RuleTarget, hairpin: bool) -> Verdict {
    // Source allow-list: refused here, never passed on (the kernel would
    // deliver it to the gateway itself).
    if target.flags & RULE_F_SRC_FILTER != 0
        && FWD_SRC_ALLOW.get(Key::new(64, SrcKey { rule_id: target.rule_id, addr: parsed.tuple.saddr })).is_none()
    {
        if let Some(s) = rule_stats(target.rule_id) {
            s.denied += 1;
        }
        // SAFETY: helper without side effects.
        let now = unsafe { bpf_ktime_get_ns() };
        let port = backend_port(target, u16::from_be_bytes(parsed.tuple.dport));
        crate::audit::emit(&crate::audit::denied(&parsed, target, port, p.ingress_ifindex(), now));
        return Verdict::Drop(stats::DROP_SRC_DENIED);
    }
    // A stray RST must not create state.
    if parsed.tcp_flags & TCP_RST != 0 {
        return Verdict::Pass(stats::PASS_NOT_OURS);
    }
    if parsed.ttl <= 1 {
        return Verdict::Drop(stats::DROP_TTL);
    }
    // Hairpin always masquerades: without it the backend would answer the
    // internal client directly, from an address the client never called.
    let masquerade = hairpin || target.flags & RULE_F_MASQUERADE != 0;
    let dport = backend_port(target, u16::from_be_bytes(parsed.tuple.dport));
    let mut out = Tuple { saddr: parsed.tuple.saddr, daddr: target.addr, sport: parsed.tuple.sport, dport };
    let r = route(p, &parsed, &out, if masquerade { BPF_FIB_LOOKUP_SRC } else { 0 });
    // Route first: nothing is inserted for a packet we cannot send (XDP
    // hands NO_NEIGH to TC before any state exists).
    if let Err(v) = fib_verdict::<P>(&r, out) {
        return v;
    }
    if !xdp_can_finish::<P>(&parsed) {
        return Verdict::ToTc(stats::XDP_TO_TC);
    }
    // The rate limit counts connections about to be set up (not those XDP
    // hands to TC, which would count them twice).
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    if !ct::new_conn_allowed(now) {
        return Verdict::Drop(stats::DROP_NEW_CONN_RATE);
    }
    // The reply entry first: NOEXIST claims its tuple (with masquerade:
    // the source port) atomically across CPUs. Without masquerade there
    // is one candidate, the client's own port.
    let cfg = config();
    let attempts = if masquerade { cfg.snat_attempts } else { 1 };
    if masquerade {
        out.saddr = r.src;
    }
    let seed = tuple_hash(&parsed.tuple);
    let mut claim = Err(InsertError::Exists);
    for attempt in 0..MAX_SNAT_ATTEMPTS {
        if attempt >= attempts {
            break;
        }
        if masquerade {
            out.sport = snat_candidate(seed, attempt, cfg.snat_port_min, cfg.snat_port_max).to_be_bytes();
        }
        let [_, (rk, re)] = entry_pair(&parsed.tuple, &out, parsed.proto, target.rule_id, now, p.vlan());
        claim = ct::insert(&rk, &re);
        // Taken: the next candidate; claimed, or the table is full: done.
        if !matches!(claim, Err(InsertError::Exists)) {
            break;
        }
    }
    if matches!(claim, Err(InsertError::Full)) {
        // A full table: an unassured or closing connection gives way, and
        // the same candidate is tried again.
        if !ct::make_room() {
            return Verdict::Drop(stats::DROP_CT_FULL);
        }
        let [_, (rk, re)] = entry_pair(&parsed.tuple, &out, parsed.proto, target.rule_id, now, p.vlan());
        claim = ct::insert(&rk, &re);
    }
    match claim {
        Ok(()) => {}
        Err(InsertError::Full) => return Verdict::Drop(stats::DROP_CT_FULL),
        Err(InsertError::Exists) if !masquerade => return Verdict::Drop(stats::DROP_CT_INSERT),
        Err(InsertError::Exists) => {
            // Rare by construction (bounded retries over a large range);
            // logged so the operator sees which backend ran out.
            warn!(
                p,
                "masquerade: no free source port towards {:i}:{} after {} attempts (rule {}); new flow dropped",
                target.addr,
                u16::from_be_bytes(target.port),
                cfg.snat_attempts,
                target.rule_id
            );
            return Verdict::Drop(stats::DROP_SNAT_EXHAUSTED);
        }
    }
    let [(ok, oe), (rk, _)] = entry_pair(&parsed.tuple, &out, parsed.proto, target.rule_id, now, p.vlan());
    if let Err(e) = ct::insert(&ok, &oe) {
        // Another CPU created this flow first (exists), or the table filled
        // up in between: give our reply entry back. A retransmission finds
        // the winner's entry.
        let _ = FWD_FLOWS.remove(&rk);
        return Verdict::Drop(match e {
            InsertError::Exists => stats::DROP_CT_INSERT,
            InsertError::Full => stats::DROP_CT_FULL,
        });
    }
    // Until it is assured, it may give way to a newer one in a full table.
    ct::candidate(&ok);
    if let Some(s) = rule_stats(target.rule_id) {
        s.new_conns += 1;
        s.orig_packets += 1;
        s.orig_bytes += u64::from(parsed.frame_len);
    }
    parsed.audit_rule = target.rule_id + 1;
    match fib_verdict::<P>(&r, out) {
        Ok(fwd) => forward::<P>(parsed, fwd, target.rule_id, DIR_ORIGINAL),
        Err(v) => v,
    }
}
