//! The binary interface between the eBPF programs and userspace: map names,
//! program names, and the `repr(C)` keys and values stored in the maps.
//!
//! Rules: fixed-width fields only, explicit padding fields (always zero), no
//! `bool`/`Option`/enums, and the byte order of every field stated. Multi-byte
//! fields that are in network byte order are byte arrays, so the type itself
//! says so. Sizes are asserted at compile time; with the `user` feature
//! bytemuck additionally proves there is no hidden padding.

mod audit;
mod backends;
mod bench;
mod programs;

pub use audit::*;
pub use backends::*;
pub use bench::*;
pub use programs::*;

/// Port mappings: LPM trie keyed by `(prefix_len, RuleKey)` → [`RuleTarget`].
/// A port range is stored as the few prefixes that cover it exactly
/// ([`crate::rule::port_prefixes`]), so ranges of any size cost at most 30
/// entries and one lookup.
pub const MAP_RULES: &str = "FWD_RULES";
/// Per-rule source allow-lists: LPM trie keyed by `(32 + cidr bits,
/// SrcKey)` → `u8` (1). Only consulted for rules with [`RULE_F_SRC_FILTER`].
pub const MAP_SRC_ALLOW: &str = "FWD_SRC_ALLOW";
/// Capacity of [`MAP_SRC_ALLOW`] (CIDRs over all rules).
pub const MAX_SRC_ENTRIES: u32 = 65_536;
/// Connection tracking, both directions: [`FlowKey`] → [`FlowEntry`]. Hash
/// (not LRU: full means new flows are refused, live ones are never evicted);
/// expired entries are collected by userspace.
pub const MAP_FLOWS: &str = "FWD_FLOWS";
/// Fragments of translated datagrams: [`FragKey`] → [`FragEntry`]. LRU
/// hash (short-lived state: a datagram's fragments arrive within
/// milliseconds). Written when the first fragment is translated, read for
/// the later ones, which carry no ports.
pub const MAP_FRAGS: &str = "FWD_FRAGS";
pub const FRAG_TABLE_SIZE: u32 = 16_384;
/// Per-rule counters, indexed by `rule_id`: [`RuleStats`]. Per-CPU array.
pub const MAP_RULE_STATS: &str = "FWD_RULE_STATS";
/// Global counters, indexed by [`crate::stats`] constants: `u64`. Per-CPU array.
pub const MAP_STATS: &str = "FWD_STATS";
/// Managed interfaces: ifindex (`u32`, host order) → [`IfaceInfo`]. Hash.
pub const MAP_IFACES: &str = "FWD_IFACES";
/// The gateway's public addresses: IPv4 (network order) → ifindex (host
/// order) of the public interface that holds it. Kept in sync by the daemon;
/// lets an internal host reach a public address:port (hairpin).
pub const MAP_PUBLIC_ADDRS: &str = "FWD_PUBLIC_ADDRS";
pub const MAX_PUBLIC_ADDRS: u32 = 256;
/// Redirect targets for `XDP_REDIRECT`: ifindex → ifindex. Devmap hash.
pub const MAP_TX_PORTS: &str = "FWD_TX_PORTS";
/// Global settings, one entry at index 0: [`Config`]. Array.
pub const MAP_CONFIG: &str = "FWD_CONFIG";
/// Early-drop candidates, one ring per CPU: the [`FlowKey`]s of its most
/// recent new connections and of connections that began closing (per-CPU
/// array of [`crate::conntrack::CT_CANDIDATES`] slots, written round and
/// round, without locks).
pub const MAP_CT_CANDIDATES: &str = "FWD_CT_CANDIDATES";
/// Where each CPU's ring of [`MAP_CT_CANDIDATES`] stands: a [`RingPos`]
/// per CPU (per-CPU array of one).
pub const MAP_CT_CANDIDATE_POS: &str = "FWD_CT_CAND_POS";
/// Per-CPU token bucket of the new-connection rate limit
/// ([`crate::audit::TokenBucket`]).
pub const MAP_NEW_CONN_BUCKET: &str = "FWD_NEW_CONN_BUCKET";
/// What the kernel refused to transmit, per egress ifindex (host order):
/// [`XdpTxErrors`]. Per-CPU hash, written by [`PROG_XDP_TX_ERR`].
pub const MAP_XDP_TX_ERRORS: &str = "FWD_XDP_TX_ERR";
/// The id of this datapath's [`MAP_TX_PORTS`] (`u32`, index 0), so that
/// [`PROG_XDP_TX_ERR`] counts only its own datapath's redirects (the
/// tracepoint fires for every XDP program of the machine).
pub const MAP_TX_WATCH: &str = "FWD_TX_WATCH";

/// Capacity of the per-rule counter array (rules, not trie entries):
/// handles 1 to 10 239.
pub const MAX_RULES: u32 = 10_240;
/// Capacity of the rule trie (a range takes up to 30 entries).
pub const MAX_RULE_ENTRIES: u32 = 65_536;
/// Bits of a [`RuleKey`] before the port: ifindex (32) + proto (8).
pub const RULE_KEY_FIXED_BITS: u32 = 40;
/// Prefix length of a full (single-port) [`RuleKey`].
pub const RULE_KEY_FULL_BITS: u32 = RULE_KEY_FIXED_BITS + 16;
/// Default capacity of the conntrack table, in entries (a connection takes
/// two): 262 144 connections, netfilter's default on large machines.
/// `--conntrack-max` changes it at load time.
pub const FLOW_TABLE_SIZE: u32 = 524_288;
/// Capacity of the interface table and the devmap.
pub const MAX_IFACES: u32 = 256;

/// `RuleKey::proto` / `FlowKey::proto` values (IANA protocol numbers).
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// TCP header flags (byte 13).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// `IfaceInfo::role` values.
pub const ROLE_PUBLIC: u32 = 1;
pub const ROLE_INTERNAL: u32 = 2;

/// `RuleTarget::flags`: replace the source with the egress interface's
/// address and a port chosen by the forwarder (MASQUERADE).
pub const RULE_F_MASQUERADE: u16 = 1;
/// `RuleTarget::flags`: a range mapped onto a range: the backend port is
/// `port + (dport - public_lo)`. Without it every port maps to `port`.
pub const RULE_F_PORT_RANGE: u16 = 2;
/// `RuleTarget::flags`: new connections only from the rule's allow-list
/// ([`MAP_SRC_ALLOW`]); others are dropped and counted.
pub const RULE_F_SRC_FILTER: u16 = 4;
/// `RuleTarget::flags`: several backends ([`MAP_SERVICES`]): a new
/// connection's backend is the one its Maglev slot names; the target's
/// own address and port are the first backend's, unused.
pub const RULE_F_BACKENDS: u16 = 8;

/// `FlowEntry::dir` values.
pub const DIR_ORIGINAL: u8 = 0;
pub const DIR_REPLY: u8 = 1;

/// Data of a [`MAP_RULES`] trie key, matched bit by bit in memory order:
/// the interface and protocol always whole, the port by its leading bits.
/// A rule bound to no interface has `ifindex == 0` and applies to every
/// public interface; the datapath looks the exact interface up first, then
/// the wildcard.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct RuleKey {
    /// Ingress interface index, host byte order; 0 = any public interface.
    pub ifindex: u32,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Public (destination) port, network byte order (so that a prefix of
    /// its bits is a port range).
    pub port: [u8; 2],
    /// Never covered by a prefix.
    pub _pad: u8,
}

/// Data of a [`MAP_SRC_ALLOW`] trie key: the rule (always matched whole),
/// then the client address by its leading bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SrcKey {
    /// Host byte order.
    pub rule_id: u32,
    /// Network byte order.
    pub addr: [u8; 4],
}

/// Value of [`MAP_RULES`]: where matching connections go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct RuleTarget {
    /// Backend IPv4 address, network byte order.
    pub addr: [u8; 4],
    /// Backend port (the first of the range with [`RULE_F_PORT_RANGE`]),
    /// network byte order.
    pub port: [u8; 2],
    /// `RULE_F_*` bits.
    pub flags: u16,
    /// Index into [`MAP_RULE_STATS`] (< [`MAX_RULES`]), host byte order.
    pub rule_id: u32,
    /// First public port of the rule's range, host byte order.
    pub public_lo: u16,
    /// The stats slot of a rule's only backend: always 0 (its counters
    /// are the rule's); a rule with `RULE_F_BACKENDS` takes its backend's
    /// from [`BackendAddr::stats_slot`]. (Read from the map, as the
    /// backend's is, so both kinds of rule verify as one path.)
    pub stats_slot: u16,
}

/// Key of [`MAP_FLOWS`]: a packet's 5-tuple as it arrives at the gateway.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowKey {
    /// Network byte order.
    pub saddr: [u8; 4],
    /// Network byte order.
    pub daddr: [u8; 4],
    /// Network byte order.
    pub sport: [u8; 2],
    /// Network byte order.
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of [`MAP_FLOWS`]: the tuple a matching packet leaves with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowEntry {
    /// When the last packet was seen, in ticks of the flow clock
    /// (`conntrack::tick`; refreshed at most once a second).
    pub last_seen: u32,
    /// New source address, network byte order.
    pub saddr: [u8; 4],
    /// New destination address, network byte order.
    pub daddr: [u8; 4],
    /// New source port, network byte order.
    pub sport: [u8; 2],
    /// New destination port, network byte order.
    pub dport: [u8; 2],
    /// The rule that created the flow, host byte order.
    pub rule_id: u32,
    /// [`DIR_ORIGINAL`] (client → backend) or [`DIR_REPLY`].
    pub dir: u8,
    /// `conntrack::CT_*`, the same in both entries of a connection.
    pub state: u8,
    /// 802.1Q TCI (host order) to tag packets of this direction with when
    /// they leave (the client came tagged); 0 = untagged; [`VLAN_RESET`]:
    /// a connection the daemon resets.
    pub vlan: u16,
    /// The cached next hop of this direction (a `bpf_fib_lookup` result,
    /// see `conntrack::NextHop`): egress ifindex (host order; 0 = none).
    pub nh_ifindex: u32,
    /// Source and destination MAC of the next hop.
    pub nh_smac: [u8; 6],
    pub nh_dmac: [u8; 6],
    /// The egress MTU (host order): larger packets take the full lookup.
    pub nh_mtu: u16,
    /// Where the connection's backend counts its packets: a slot of
    /// [`MAP_BACKEND_STATS`] (host order; 0 = none: a rule with one
    /// unchecked backend, whose counters are the rule's), the same in both
    /// entries.
    pub backend_slot: u16,
    /// When the next hop was looked up, in ticks of the flow clock; it
    /// is used for `conntrack::NEXT_HOP_TTL_NS`, then looked up again.
    pub nh_checked: u32,
}

/// [`FlowEntry::vlan`] of a connection whose backend went down and whose
/// rule resets connections then (`on_down = "reset"`; the daemon writes it
/// into both entries): each packet of it is answered with a TCP reset to
/// its sender (TC; XDP hands it over, as it does tagged ones) until the
/// daemon removes the entries. Not a tag: VLAN ID 4095 is reserved
/// (802.1Q), never on the wire.
pub const VLAN_RESET: u16 = 0xffff;

/// Key of [`MAP_FRAGS`]: what all fragments of one datagram share.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragKey {
    /// Network byte order.
    pub saddr: [u8; 4],
    /// Network byte order.
    pub daddr: [u8; 4],
    /// IP identification, network byte order.
    pub id: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`MAP_FRAGS`]: the addresses the datagram leaves with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragEntry {
    /// Network byte order.
    pub saddr: [u8; 4],
    /// Network byte order.
    pub daddr: [u8; 4],
    /// Host byte order.
    pub rule_id: u32,
    pub dir: u8,
    pub _pad: u8,
    /// 802.1Q TCI (host order) to tag the fragments with; 0 = untagged.
    pub vlan: u16,
}

/// Packets and bytes translated, both ways (one CPU's share): a rule's,
/// and a backend's (the value of [`MAP_BACKEND_STATS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Traffic {
    /// Client → backend packets.
    pub orig_packets: u64,
    /// Their bytes (L2 frame length as received).
    pub orig_bytes: u64,
    /// Backend → client packets.
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

impl Traffic {
    /// One translated packet of `bytes`, direction `dir` ([`DIR_ORIGINAL`]
    /// or [`DIR_REPLY`]).
    #[inline(always)]
    pub fn count(&mut self, dir: u8, bytes: u32) {
        if dir == DIR_ORIGINAL {
            self.orig_packets += 1;
            self.orig_bytes += u64::from(bytes);
        } else {
            self.reply_packets += 1;
            self.reply_bytes += u64::from(bytes);
        }
    }

    /// Adds `other` (another CPU's share).
    pub const fn add(&mut self, other: &Self) {
        self.orig_packets += other.orig_packets;
        self.orig_bytes += other.orig_bytes;
        self.reply_packets += other.reply_packets;
        self.reply_bytes += other.reply_bytes;
    }
}

/// Per-rule counters (one per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct RuleStats {
    /// Packets translated and forwarded, both ways.
    pub traffic: Traffic,
    /// Connections (conntrack entry pairs) created.
    pub new_conns: u64,
    /// New connections refused by the rule's source allow-list.
    pub denied: u64,
}

/// Value of [`MAP_IFACES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct IfaceInfo {
    /// [`ROLE_PUBLIC`] or [`ROLE_INTERNAL`].
    pub role: u32,
    /// `IFACE_F_*` bits.
    pub flags: u32,
}

/// `IfaceInfo::flags`: no XDP on this interface; the TC program handles
/// every packet (TC mode), not only those XDP hands over.
pub const IFACE_F_TC_ONLY: u32 = 1;
/// `IfaceInfo::flags`: some rule is bound to this (public) interface
/// (`@IFACE`); without it a new flow's rule lookup goes straight to the
/// rules of every public interface (one trie lookup, not two).
pub const IFACE_F_BOUND_RULES: u32 = 2;
/// `IfaceInfo::flags`, set by XDP itself: it could not mark a hand-over
/// to TC on this interface (its driver gives XDP no metadata area), so
/// the TC program behind it looks at every packet XDP lets through, as
/// on a kernel that refuses XDP the metadata helper.
pub const IFACE_F_TC_ALL: u32 = 4;

/// Value of [`MAP_CONFIG`] (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Config {
    /// Lowest source port masquerade may pick, host byte order.
    pub snat_port_min: u16,
    /// Highest source port masquerade may pick, host byte order (inclusive).
    pub snat_port_max: u16,
    /// How many candidate ports to try before giving up on a new flow.
    pub snat_attempts: u32,
    /// Audit events each CPU may emit per second (0: no events).
    pub audit_rate: u32,
    /// Events a CPU may emit at once after a quiet spell (bucket depth).
    pub audit_burst: u32,
    /// New connections each CPU may set up per second (0: no limit).
    pub new_conn_rate: u32,
    /// New connections a CPU may set up at once after a quiet spell.
    pub new_conn_burst: u32,
    /// The machine's possible CPUs (the early-drop rings to look in).
    pub cpus: u32,
    pub _pad: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            snat_port_min: DEFAULT_SNAT_PORT_MIN,
            snat_port_max: DEFAULT_SNAT_PORT_MAX,
            snat_attempts: DEFAULT_SNAT_ATTEMPTS,
            audit_rate: 0,
            audit_burst: 0,
            new_conn_rate: 0,
            new_conn_burst: 0,
            cpus: 1,
            _pad: 0,
        }
    }
}

/// Value of [`MAP_CT_CANDIDATE_POS`]: how many candidates were pushed
/// (`head`) and taken (`tail`) on a CPU's ring; slot = count % slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct RingPos {
    pub head: u64,
    pub tail: u64,
}

/// Value of [`MAP_XDP_TX_ERRORS`] (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct XdpTxErrors {
    /// Frames refused.
    pub frames: u64,
    /// The last refusal's errno, negative (`-EOPNOTSUPP`: the device takes
    /// no XDP frames, e.g. a veth whose peer has no NAPI).
    pub last_err: i32,
    pub _pad: u32,
}

/// Default masquerade port range: below Linux's default ephemeral range
/// (32768–60999), so the gateway's own sockets never pick a port that a
/// translated flow already owns.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 10_000;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 32_767;
/// Bounded retry for a free masquerade port (the verifier needs a bound too).
pub const DEFAULT_SNAT_ATTEMPTS: u32 = 32;
/// Hard upper bound on `Config::snat_attempts` compiled into the datapath.
pub const MAX_SNAT_ATTEMPTS: u32 = 32;

const _: () = assert!(core::mem::size_of::<RuleKey>() == 8);
const _: () = assert!(core::mem::size_of::<RuleTarget>() == 16);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);
// 48 bytes: with the key and the kernel's element header, 112 bytes an
// entry, 128 with its bucket: 256 a connection, nf_conntrack's object.
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 48);
const _: () = assert!(core::mem::size_of::<RuleStats>() == 48);
const _: () = assert!(core::mem::size_of::<SrcKey>() == 8);
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);
const _: () = assert!(core::mem::size_of::<FragEntry>() == 16);
const _: () = assert!(core::mem::size_of::<IfaceInfo>() == 8);
const _: () = assert!(core::mem::size_of::<Config>() == 32);
const _: () = assert!(core::mem::size_of::<RingPos>() == 16);
const _: () = assert!(core::mem::size_of::<XdpTxErrors>() == 16);
const _: () = assert!(core::mem::size_of::<crate::audit::TokenBucket>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is repr(C), made of integers and byte arrays, and
    // bytemuck's derive has proven that none has padding.
    unsafe impl aya::Pod for super::RuleKey {}
    unsafe impl aya::Pod for super::RuleTarget {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::RuleStats {}
    unsafe impl aya::Pod for super::SrcKey {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragEntry {}
    unsafe impl aya::Pod for super::IfaceInfo {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::bench::BenchFrame {}
    unsafe impl aya::Pod for super::bench::BenchSource {}
    unsafe impl aya::Pod for super::XdpTxErrors {}
    unsafe impl aya::Pod for super::RingPos {}
    unsafe impl aya::Pod for crate::audit::TokenBucket {}
}
