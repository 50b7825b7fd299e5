//! Connection table upkeep the datapath does itself: creating entries in
//! a full table (early drop), remembering early-drop candidates, and the
//! new-connection rate limit.
//!
//! The table is a plain hash, never LRU: a full table must not evict a
//! live connection. When an insert finds it full, one connection that is
//! not assured (no completed handshake, no UDP stream) or that is closing
//! gives way, both its entries, the oldest of the recent ones first
//! (candidates fed by every new connection and every transition to a
//! closing state, in a ring per CPU written without locks: an array store
//! per new connection), as netfilter's `early_drop` does. A SYN flood
//! therefore cycles through its own half-open entries instead of locking
//! legitimate clients out.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{
        bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns, bpf_map_lookup_percpu_elem,
    },
    maps::PerCpuArray,
};
use forwarder_common::{
    abi::{FlowEntry, FlowKey},
    conntrack::{CT_CANDIDATES, EARLY_DROP_TRIES, early_drop_cpu, evictable, ring_next},
    stats,
};

use crate::maps::{
    FWD_CT_CAND_POS, FWD_CT_CANDIDATES, FWD_FLOWS, FWD_NEW_CONN_BUCKET, config, count,
};

/// Now on the clock of the flow entries (`last_seen`, the next-hop
/// cache, the new-connection buckets): `CLOCK_MONOTONIC` as of the
/// kernel's last tick (`bpf_ktime_get_coarse_ns`). Idle timeouts in
/// seconds and a one-second next-hop cache need no finer grain, and the
/// precise clock costs an established packet about a fifth of its time
/// (23 of 106 ns in the micro-benchmark on a KVM guest). The daemon reads
/// the same clock precisely, at most a tick ahead.
#[inline(always)]
pub fn flow_clock() -> u64 {
    // SAFETY: helper without side effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// `bpf_map_update_elem` errno for an existing key (NOEXIST).
const EEXIST: i32 = 17;

/// Why an entry could not be created.
pub enum InsertError {
    /// The key is taken (another connection, or another CPU's copy of
    /// this one).
    Exists,
    /// The table is full and nothing could give way.
    Full,
}

/// Inserts a new entry (no early drop: see [`make_room`]).
#[inline(always)]
pub fn insert(key: &FlowKey, entry: &FlowEntry) -> Result<(), InsertError> {
    match FWD_FLOWS.insert(key, entry, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        Err(e) if e == -EEXIST => Err(InsertError::Exists),
        // Full (E2BIG) or out of memory.
        Err(_) => Err(InsertError::Full),
    }
}

/// Makes room in a full table: removes one evictable connection (both
/// entries) from the candidate rings, oldest first: this CPU's, then the
/// next CPUs' in turn (a flood may come in on one CPU and a real client
/// on another); whether one went. Candidates gone or assured by now are
/// passed over. Called once per new connection at most, after its first
/// insert found the table full: the verifier walks this loop at every
/// call site.
#[inline(always)]
pub fn make_room() -> bool {
    // SAFETY: helper without side effects.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let cpus = config().cpus;
    for attempt in 0..EARLY_DROP_TRIES {
        let Some(key) = take_candidate(early_drop_cpu(attempt, cpu, cpus)) else { continue };
        let Some(e) = FWD_FLOWS.get_ptr(&key) else { continue };
        // SAFETY: map value pointer valid until program exit.
        let (state, out) = unsafe { ((*e).state, (*e).tuple()) };
        if !evictable(state) {
            continue;
        }
        let _ = FWD_FLOWS.remove(&key);
        let _ = FWD_FLOWS.remove(&FlowKey::new(&out.reversed(), key.proto));
        count(stats::EARLY_DROP);
        return true;
    }
    false
}

/// A per-CPU map's value on CPU `cpu` (`bpf_map_lookup_percpu_elem`).
#[inline(always)]
fn on_cpu<T>(map: &PerCpuArray<T>, index: u32, cpu: u32) -> Option<*mut T> {
    // The map's definition is the static itself (`repr(transparent)`), as
    // the map accessors of aya-ebpf pass it.
    let def = core::ptr::from_ref(map).cast_mut().cast::<c_void>();
    // SAFETY: a map of ours, a key on the stack; the helper returns a
    // pointer into the map or null.
    let p = unsafe { bpf_map_lookup_percpu_elem(def, core::ptr::from_ref(&index).cast(), cpu) };
    (!p.is_null()).then_some(p.cast())
}

/// The oldest untaken candidate of CPU `cpu`'s ring. Another CPU's ring is
/// read without a lock: two CPUs may take the same candidate (the second
/// finds it gone) or one may be skipped; neither matters.
#[inline(always)]
fn take_candidate(cpu: u32) -> Option<FlowKey> {
    let pos = on_cpu(&FWD_CT_CAND_POS, 0, cpu)?;
    // SAFETY: a value pointer of the map, valid until program exit.
    let (seq, tail) = unsafe { ring_next((*pos).head, (*pos).tail, u64::from(CT_CANDIDATES))? };
    // SAFETY: as above.
    unsafe { (*pos).tail = tail };
    let slot = on_cpu(&FWD_CT_CANDIDATES, (seq % u64::from(CT_CANDIDATES)) as u32, cpu)?;
    // SAFETY: as above.
    Some(unsafe { *slot })
}

/// Remembers the connection with entry `key` as an early-drop candidate
/// on this CPU's ring (its oldest is overwritten when full).
#[inline(always)]
pub fn candidate(key: &FlowKey) {
    let Some(pos) = FWD_CT_CAND_POS.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot; no other writer runs on this CPU meanwhile.
    unsafe {
        let head = (*pos).head;
        if let Some(slot) = FWD_CT_CANDIDATES.get_ptr_mut((head % u64::from(CT_CANDIDATES)) as u32)
        {
            *slot = *key;
            (*pos).head = head + 1;
        }
    }
}

/// The per-CPU new-connection rate limit: whether one more may be set up
/// now (always, when the limit is off).
#[inline(always)]
pub fn new_conn_allowed(now_ns: u64) -> bool {
    let cfg = config();
    if cfg.new_conn_rate == 0 {
        return true;
    }
    let Some(b) = FWD_NEW_CONN_BUCKET.get_ptr_mut(0) else { return true };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    unsafe { &mut *b }.take(now_ns, cfg.new_conn_rate, cfg.new_conn_burst)
}
