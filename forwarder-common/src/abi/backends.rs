//! Rules with several backends: per rule a Maglev table (a region of
//! [`MAP_MAGLEV`]) whose slots name backends of a region of
//! [`MAP_BACKENDS`], both found through the rule's [`Service`].
//!
//! A datapath's tables are written before its programs go live and never
//! change while they run: a new backend set is a new datapath swapped in
//! whole (the connection table carries over), so a reader never sees a
//! table half-written.

/// Rules with several backends: `rule_id` (`u32`, host order) →
/// [`Service`]. Hash.
pub const MAP_SERVICES: &str = "FWD_SERVICES";
/// The Maglev tables of every rule, one after another: `u32` (host order)
/// indices into the rule's region of [`MAP_BACKENDS`]. Array.
pub const MAP_MAGLEV: &str = "FWD_MAGLEV";
/// Capacity of [`MAP_MAGLEV`] in slots (4 MiB): sixteen tables of the
/// default size, or hundreds of the small ones a few backends need.
pub const MAGLEV_POOL: u32 = 1 << 20;
/// The backends of every rule, one region after another: [`BackendAddr`].
/// Array.
pub const MAP_BACKENDS: &str = "FWD_BACKENDS";
/// Capacity of [`MAP_BACKENDS`].
pub const MAX_BACKENDS: u32 = 16_384;

/// Value of [`MAP_SERVICES`]: where a rule's table and backends are.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Service {
    /// First slot of the table in [`MAP_MAGLEV`].
    pub table_off: u32,
    /// Slots of the table (a prime, [`crate::maglev::TABLE_SIZES`]).
    pub table_len: u32,
    /// First backend of the rule in [`MAP_BACKENDS`].
    pub backends_off: u32,
    /// Backends of the rule in [`MAP_BACKENDS`].
    pub backends: u32,
}

/// Packets and bytes of each backend of a rule in [`MAP_SERVICES`], by its
/// stats slot: [`super::Traffic`] (slot 0 unused). Per-CPU array. The slot
/// rides in [`BackendAddr::stats_slot`] to the connection's entries
/// (`FlowEntry::backend_slot`), so an established packet counts with one
/// array lookup, whichever datapath set the connection up.
pub const MAP_BACKEND_STATS: &str = "FWD_BACKEND_STATS";
/// What the daemon keeps of each backend: [`BackendKey`] → its slot in
/// [`MAP_BACKEND_STATS`] ([`BACKEND_SLOT_MASK`]) and what it last knew of
/// it (`BACKEND_WAS_*` bits), `u32`, host order. Hash, read and written by
/// the daemon only; pinned with the counters, so a backend keeps its slot
/// (and its counts) across reloads and restarts, and a daemon that adopts
/// the datapath starts with the health and drain its predecessor left.
pub const MAP_BACKEND_SLOTS: &str = "FWD_BACKEND_SLOTS";
/// The slot in a [`MAP_BACKEND_SLOTS`] value.
pub const BACKEND_SLOT_MASK: u32 = 0xffff;
/// The backend's checks had it up.
pub const BACKEND_WAS_UP: u32 = 1 << 16;
/// The backend's checks had it down.
pub const BACKEND_WAS_DOWN: u32 = 1 << 17;
/// The backend was drained.
pub const BACKEND_WAS_DRAINED: u32 = 1 << 18;
/// Slots of [`MAP_BACKEND_STATS`] (the first unused): backends beyond
/// them are counted with their rule only.
pub const MAX_BACKEND_SLOTS: u32 = 4096;

/// Key of [`MAP_BACKEND_SLOTS`]: a backend of a rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BackendKey {
    /// The rule's handle, host order.
    pub rule: u32,
    /// Network order.
    pub addr: [u8; 4],
    /// The first port, network order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// Value of [`MAP_BACKENDS`]: one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BackendAddr {
    /// IPv4 address, network order.
    pub addr: [u8; 4],
    /// Port (the first of the range with `RULE_F_PORT_RANGE`), network
    /// order.
    pub port: [u8; 2],
    /// Its slot in [`MAP_BACKEND_STATS`] (host order; 0 = not counted
    /// apart).
    pub stats_slot: u16,
}

const _: () = assert!(core::mem::size_of::<Service>() == 16);
const _: () = assert!(core::mem::size_of::<BackendKey>() == 12);
const _: () = assert!(core::mem::size_of::<BackendAddr>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers and byte arrays only; bytemuck's derive
    // has proven they have no padding.
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::BackendAddr {}
    unsafe impl aya::Pod for super::BackendKey {}
}
