//! The audit ring's ABI: the ring and its rate limit, and the event the
//! datapath writes for each new connection attempt.

/// Audit events, kernel → daemon: a ring buffer of [`AuditEvent`]s, one
/// per new connection attempt to a forwarded port (accepted or denied by a
/// source list), rate-limited per CPU by [`MAP_AUDIT_BUCKET`]; what the
/// limit or a full ring refused is counted (`stats::AUDIT_*`).
pub const MAP_EVENTS: &str = "FWD_EVENTS";
/// Size of [`MAP_EVENTS`] in bytes (a power of two): 4096 events.
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;
/// Per-CPU token bucket of the audit rate limit
/// ([`crate::audit::TokenBucket`]).
pub const MAP_AUDIT_BUCKET: &str = "FWD_AUDIT_BUCKET";

/// [`AuditEvent::verdict`]: the connection was translated and forwarded.
pub const AUDIT_ACCEPTED: u8 = 1;
/// [`AuditEvent::verdict`]: refused by the rule's source allow-list.
pub const AUDIT_DENIED: u8 = 2;

/// One new connection attempt, as the datapath saw it. Addresses and ports
/// in network order; for a denied attempt the backend is the rule's target
/// and the masquerade source is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct AuditEvent {
    /// `bpf_ktime_get_ns` (`CLOCK_MONOTONIC`) when the packet was seen.
    pub ts_ns: u64,
    pub rule_id: u32,
    /// Interface the packet arrived on.
    pub ifindex: u32,
    pub client: [u8; 4],
    /// The gateway address the client called.
    pub public: [u8; 4],
    pub backend: [u8; 4],
    /// Masquerade source (zero without masquerade or when denied).
    pub snat: [u8; 4],
    pub client_port: [u8; 2],
    pub public_port: [u8; 2],
    pub backend_port: [u8; 2],
    pub snat_port: [u8; 2],
    pub proto: u8,
    /// `AUDIT_ACCEPTED` or `AUDIT_DENIED`.
    pub verdict: u8,
    /// TCP flags of the packet (0 for UDP).
    pub tcp_flags: u8,
    pub _pad: [u8; 5],
}

const _: () = assert!(core::mem::size_of::<AuditEvent>() == 48);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays only; bytemuck's derive has
// proven it has no padding.
unsafe impl aya::Pod for AuditEvent {}
