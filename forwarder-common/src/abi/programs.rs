//! The production object's programs, their tail-call tables and indices,
//! and the marks XDP leaves in the metadata for TC.

/// XDP program (the fast path).
pub const PROG_XDP: &str = "forwarder_xdp";
/// XDP program reached by tail call from [`PROG_XDP`] for packets whose
/// L4 checksum must be summed in full.
pub const PROG_XDP_CSUM: &str = "forwarder_xdp_csum";
/// XDP program reached by tail call from [`PROG_XDP`] for the first
/// packet of a connection: emits its audit event, then finishes it.
pub const PROG_XDP_NEW: &str = "forwarder_xdp_new";
/// Program array of [`PROG_XDP`]'s tail calls; index 0 = [`PROG_XDP_CSUM`],
/// 1 = [`PROG_XDP_NEW`].
pub const MAP_XDP_TAILS: &str = "FWD_XDP_TAILS";
/// Index of [`PROG_XDP_CSUM`] in [`MAP_XDP_TAILS`].
pub const XDP_TAIL_FULL_CSUM: u32 = 0;
/// Index of [`PROG_XDP_NEW`] in [`MAP_XDP_TAILS`].
pub const XDP_TAIL_NEW_FLOW: u32 = 1;
/// TC clsact ingress program: takes what XDP cannot finish (unresolved
/// neighbour, egress not in the devmap) with `bpf_redirect_neigh`.
pub const PROG_TC: &str = "forwarder_tc";
/// TC program reached by tail call from [`PROG_TC`] for the first packet
/// of a connection (its setup: rule checks, route, masquerade port, the
/// entries), so that the verifier walks it apart from the rest.
pub const PROG_TC_NEW: &str = "forwarder_tc_new";
/// Program array of [`PROG_TC`]'s tail call; index 0 = [`PROG_TC_NEW`].
pub const MAP_TC_TAILS: &str = "FWD_TC_TAILS";
/// Index of [`PROG_TC_NEW`] in [`MAP_TC_TAILS`].
pub const TC_TAIL_NEW_FLOW: u32 = 0;
/// Raw tracepoint program on `xdp_redirect_err`: counts, per egress, the
/// frames the kernel refused to transmit after [`PROG_XDP`] redirected
/// them through [`MAP_TX_PORTS`] (in [`MAP_XDP_TX_ERRORS`]).
pub const PROG_XDP_TX_ERR: &str = "forwarder_xdp_tx_err";
/// The tracepoint [`PROG_XDP_TX_ERR`] attaches to.
pub const TRACEPOINT_XDP_REDIRECT_ERR: &str = "xdp_redirect_err";

/// Load-time constant of the object (`.rodata`, a `u8`): 1 when the kernel
/// lets XDP programs call `bpf_xdp_adjust_meta`, so XDP marks what it hands
/// to TC in the metadata area; 0 when it refuses the helper (the verifier
/// never sees the calls then), so the TC program behind XDP looks at every
/// packet XDP lets through.
pub const GLOBAL_XDP_META: &str = "FWD_XDP_META";

/// The first 4 bytes of XDP metadata on a packet XDP leaves untouched for
/// the TC program to do all the work (host byte order).
pub const XDP_HANDOFF_MAGIC: u32 = 0xf04d_7c01;
