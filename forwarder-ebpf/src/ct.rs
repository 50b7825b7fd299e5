//! Connection table upkeep the datapath does itself: creating entries in
//! a full table (early drop), remembering early-drop candidates, and the
//! new-connection rate limit.
//!
//! The table is a plain hash, never LRU: a full table must not evict a
//! live connection. When an insert finds it full, one connection that is
//! not assured (no completed handshake, no UDP stream) or that is closing
//! gives way, both its entries, the oldest of the recent ones first (a
//! queue of candidates fed by every new connection and every transition
//! to a closing state), as netfilter's `early_drop` does. A SYN flood
//! therefore cycles through its own half-open entries instead of locking
//! legitimate clients out.

use aya_ebpf::bindings::{BPF_EXIST, BPF_NOEXIST};
use forwarder_common::{
    abi::{FlowEntry, FlowKey},
    conntrack::{EARLY_DROP_TRIES, evictable},
    stats,
};

use crate::maps::{FWD_CT_CANDIDATES, FWD_FLOWS, FWD_NEW_CONN_BUCKET, config, count};

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
/// entries) from the candidates, oldest first; whether one went.
/// Candidates that are gone or assured by now leave the queue on the way.
/// Called once per new connection at most, after its first insert found
/// the table full: the verifier walks this loop at every call site.
#[inline(always)]
pub fn make_room() -> bool {
    for _ in 0..EARLY_DROP_TRIES {
        let Ok(Some(key)) = FWD_CT_CANDIDATES.pop() else { return false };
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

/// Remembers the connection with entry `key` as an early-drop candidate
/// (a full queue forgets its oldest).
#[inline(always)]
pub fn candidate(key: &FlowKey) {
    let _ = FWD_CT_CANDIDATES.push(key, u64::from(BPF_EXIST));
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
