//! The datapath's vocabulary, shared by every layer above it: what the
//! parser learned about a packet ([`Parsed`]), where a translated packet
//! goes ([`Forward`]), what to do with it ([`Verdict`]), and the plans the
//! hooks hand to their tail calls through per-CPU maps.

use forwarder_common::{abi::RuleTarget, nat::Tuple};

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
    /// TCP: the flags byte; ICMP: the type; UDP and later fragments: 0.
    pub flags_or_type: u8,
    /// Frame length (a GRO'd skb in TC counts whole), for the byte counters.
    pub frame_len: u32,
    /// IP identification (network order), for fragments.
    pub ip_id: [u8; 2],
    /// [`FRAG_NONE`], [`FRAG_FIRST`] (carries the L4 header) or
    /// [`FRAG_LATER`] (no L4 header; `tuple` ports are zero).
    pub fragment: u8,
    /// The first packet of a connection `flow::new::create` just set up:
    /// the rule that created it, for the audit event.
    pub created_by: CreatedBy,
}

/// The rule that created a connection on its first packet, or none (every
/// other packet): the rule id + 1, 0 = none, in one word.
#[derive(Clone, Copy)]
pub struct CreatedBy(u32);

impl CreatedBy {
    pub const NONE: Self = Self(0);

    #[inline(always)]
    pub const fn rule(rule_id: u32) -> Self {
        Self(rule_id + 1)
    }

    /// The rule, if this packet created its connection.
    #[inline(always)]
    pub const fn is_some(self) -> bool {
        self.0 != 0
    }

    /// The rule id (meaningful with [`CreatedBy::is_some`]).
    #[inline(always)]
    pub const fn rule_id(self) -> u32 {
        self.0.wrapping_sub(1)
    }
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
    /// XDP only: leave it untouched for the TC program to finish (counted
    /// as `XDP_TO_TC`).
    ToTc,
    /// Rewrite and send.
    Forward(Parsed, Forward),
    /// An ICMP error about one of our connections: rewrite it (outer
    /// header and the quoted packet) and send.
    ForwardIcmp(Parsed, Forward, Quote),
    /// A later fragment of a translated datagram: rewrite the IPv4 header
    /// only, and send.
    ForwardL3(Parsed, Forward),
    /// The first packet of a connection matching this rule (hairpin or
    /// not); `flow::new::create` decides it in the hook's new-flow program (a tail
    /// call), so that the verifier walks the connection setup apart from
    /// the established path, each with a stack of its own.
    NewFlow(Parsed, RuleTarget, bool),
}

/// Where the quoted packet sits and how it must read afterwards.
#[derive(Clone, Copy)]
pub struct Quote {
    /// Offset of the quoted IPv4 header.
    pub ip_off: usize,
    /// Offset of the quoted TCP/UDP header.
    pub l4_off: usize,
    pub proto: u8,
    pub old: Tuple,
    pub new: Tuple,
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

/// A packet whose checksum must be summed in full, handed by the main
/// program to `hook::xdp::run_full_csum` through a tail call (per-CPU scratch: the
/// tail call runs at once, on the same CPU). Summing a whole segment is a
/// long loop; in the main program it multiplied the paths the verifier
/// must walk past its limit, in a program of its own it is walked once.
#[derive(Clone, Copy)]
pub struct FullCsum {
    pub parsed: Parsed,
    pub fwd: Forward,
}
