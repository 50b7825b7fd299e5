//! The maps (names are the `abi::MAP_*` constants, which userspace uses) and
//! small accessors for the counters.

use aya_ebpf::{
    Global,
    bindings::bpf_devmap_val,
    macros::map,
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray,
        RingBuf,
    },
};
use forwarder_common::abi::{
    BackendAddr, BackendKey, Config, EVENTS_RING_BYTES, FLOW_TABLE_SIZE, FRAG_TABLE_SIZE,
    FlowEntry, FlowKey, FragEntry, FragKey, IFACE_F_TC_ALL, IFACE_F_TC_ONLY, IfaceInfo,
    MAGLEV_POOL, MAX_BACKEND_SLOTS, MAX_BACKENDS, MAX_IFACES, MAX_PUBLIC_ADDRS, MAX_RULE_ENTRIES,
    MAX_RULES, MAX_SRC_ENTRIES, RingPos, RuleKey, RuleStats, RuleTarget, Service, SrcKey, Traffic,
    XdpTxErrors,
};
use forwarder_common::{audit::TokenBucket, conntrack::CT_CANDIDATES, stats};

use crate::types::{FullCsum, NewFlowPlan};

#[map]
pub static FWD_RULES: LpmTrie<RuleKey, RuleTarget> = LpmTrie::with_max_entries(MAX_RULE_ENTRIES, 0);

#[map]
pub static FWD_SERVICES: HashMap<u32, Service> = HashMap::with_max_entries(MAX_RULES, 0);

#[map]
pub static FWD_MAGLEV: Array<u32> = Array::with_max_entries(MAGLEV_POOL, 0);

#[map]
pub static FWD_BACKENDS: Array<BackendAddr> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Per-backend counters, by the slot each connection's entries carry.
#[map]
pub static FWD_BACKEND_STATS: PerCpuArray<Traffic> =
    PerCpuArray::with_max_entries(MAX_BACKEND_SLOTS, 0);

/// Which slot each backend counts in: the daemon's (no program reads it;
/// it lives in the object to be pinned and adopted with the counters).
#[map]
pub static FWD_BACKEND_SLOTS: HashMap<BackendKey, u32> =
    HashMap::with_max_entries(MAX_BACKEND_SLOTS, 0);

#[map]
pub static FWD_SRC_ALLOW: LpmTrie<SrcKey, u8> = LpmTrie::with_max_entries(MAX_SRC_ENTRIES, 0);

#[map]
/// Not LRU: a full table refuses new flows (counted) instead of silently
/// evicting live ones; userspace collects expired entries. Size set at load.
pub static FWD_FLOWS: HashMap<FlowKey, FlowEntry> = HashMap::with_max_entries(FLOW_TABLE_SIZE, 0);

/// Early-drop candidates (`abi::MAP_CT_CANDIDATES`): per CPU, a ring of
/// the keys of its recent new connections and of those that began
/// closing.
#[map]
pub static FWD_CT_CANDIDATES: PerCpuArray<FlowKey> =
    PerCpuArray::with_max_entries(CT_CANDIDATES, 0);

/// Each CPU's position on its ring.
#[map]
pub static FWD_CT_CAND_POS: PerCpuArray<RingPos> = PerCpuArray::with_max_entries(1, 0);

/// The per-CPU new-connection rate limit's buckets.
#[map]
pub static FWD_NEW_CONN_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static FWD_FRAGS: LruHashMap<FragKey, FragEntry> =
    LruHashMap::with_max_entries(FRAG_TABLE_SIZE, 0);

#[map]
pub static FWD_RULE_STATS: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(MAX_RULES, 0);

#[map]
pub static FWD_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

#[map]
pub static FWD_IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(MAX_IFACES, 0);

#[map]
pub static FWD_PUBLIC_ADDRS: HashMap<[u8; 4], u32> = HashMap::with_max_entries(MAX_PUBLIC_ADDRS, 0);

#[map]
pub static FWD_TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_IFACES, 0);

#[map]
pub static FWD_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The XDP program's tail calls (`abi::XDP_TAIL_FULL_CSUM`,
/// `abi::XDP_TAIL_NEW_FLOW`).
#[map]
pub static FWD_XDP_TAILS: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// The TC program's tail call: index `abi::TC_TAIL_NEW_FLOW` = the new-flow
/// program (`abi::PROG_TC_NEW`).
#[map]
pub static FWD_TC_TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Hand-over from a hook's main program to its new-flow program, one slot
/// per CPU.
#[map]
pub static FWD_NEW_SCRATCH: PerCpuArray<NewFlowPlan> = PerCpuArray::with_max_entries(1, 0);

/// Hand-over from the XDP programs to the full-checksum tail call, one
/// slot per CPU.
#[map]
pub static FWD_SCRATCH: PerCpuArray<FullCsum> = PerCpuArray::with_max_entries(1, 0);

/// Audit events to the daemon (`ops::audit`).
#[map]
pub static FWD_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// The per-CPU audit rate limit's buckets.
#[map]
pub static FWD_AUDIT_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

/// Frames the kernel refused to transmit after our redirect, per egress
/// (`hook::txwatch`).
#[map]
pub static FWD_XDP_TX_ERR: PerCpuHashMap<u32, XdpTxErrors> =
    PerCpuHashMap::with_max_entries(MAX_IFACES, 0);

/// Index 0: the id of the devmap whose errors count (0 until set).
#[map]
pub static FWD_TX_WATCH: Array<u32> = Array::with_max_entries(1, 0);

// Keeps the devmap value type referenced (the loader checks its size).
const _: usize = core::mem::size_of::<bpf_devmap_val>();

#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = FWD_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn rule_stats(rule_id: u32) -> Option<&'static mut RuleStats> {
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    FWD_RULE_STATS.get_ptr_mut(rule_id).map(|p| unsafe { &mut *p })
}

/// Counts one translated packet of `bytes` for rule `rule_id`, direction
/// `dir` (`abi::DIR_*`).
#[inline(always)]
pub fn count_rule(rule_id: u32, dir: u8, bytes: u32) {
    if let Some(s) = rule_stats(rule_id) {
        s.traffic.count(dir, bytes);
    }
}

/// Counts one translated packet of `bytes` for the backend whose stats
/// slot is `slot` (0: none), direction `dir` (`abi::DIR_*`).
#[inline(always)]
pub fn count_backend(slot: u16, dir: u8, bytes: u32) {
    if slot == 0 {
        return;
    }
    if let Some(s) = FWD_BACKEND_STATS.get_ptr_mut(u32::from(slot)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { (*s).count(dir, bytes) };
    }
}

/// Counts one translated packet of a tracked connection (`entry`): for
/// its rule and, when it has one apart, its backend.
#[inline(always)]
pub fn count_flow(entry: &FlowEntry, bytes: u32) {
    count_rule(entry.rule_id, entry.dir, bytes);
    count_backend(entry.backend_slot, entry.dir, bytes);
}

/// The `abi::IFACE_F_*` bits of interface `ifindex` (0: not ours).
#[inline(always)]
pub fn iface_flags(ifindex: u32) -> u32 {
    // SAFETY: map value pointer valid until program exit.
    FWD_IFACES.get_ptr(&ifindex).map_or(0, |i| unsafe { (*i).flags })
}

/// Whether interface `ifindex` runs in TC mode (no XDP in front).
#[inline(always)]
pub fn tc_only_iface(ifindex: u32) -> bool {
    iface_flags(ifindex) & IFACE_F_TC_ONLY != 0
}

/// Tells the TC program behind XDP on `ifindex` to look at every packet
/// XDP lets through ([`IFACE_F_TC_ALL`]): XDP cannot mark its hand-overs
/// there.
#[inline(always)]
pub fn tc_takes_all(ifindex: u32) {
    if let Some(i) = FWD_IFACES.get_ptr_mut(&ifindex) {
        // SAFETY: map value pointer valid until program exit. Every CPU
        // sets the same bit; a daemon that rewrites the entry meanwhile
        // clears it, and the next hand-over that cannot be marked sets it
        // again before TC sees that packet.
        unsafe { (*i).flags |= IFACE_F_TC_ALL };
    }
}

#[inline(always)]
pub fn config() -> Config {
    FWD_CONFIG.get(0).copied().unwrap_or_default()
}

/// `abi::GLOBAL_XDP_META`, set by the loader: whether XDP marks its
/// hand-overs to TC in the metadata area (1) or this kernel refuses
/// `bpf_xdp_adjust_meta` (0). Read-only and frozen, so the verifier knows
/// its value and never walks the calls a 0 leaves out.
#[unsafe(no_mangle)]
static FWD_XDP_META: Global<u8> = Global::new(1);

/// [`FWD_XDP_META`] as the loader set it.
#[inline(always)]
pub fn xdp_meta() -> bool {
    FWD_XDP_META.load() != 0
}
