//! Test hosts for the forwarder: a three-namespace lab (client — gateway —
//! server) built from veth pairs created directly inside the namespaces, so
//! nothing ever touches the root namespace. Everything is RAII: dropping a
//! [`Lab`] kills the processes it started (by PID) and deletes its
//! namespaces, which deletes their interfaces. Names carry the PID, so
//! concurrent labs do not collide and leftovers of a killed run are swept by
//! the next one.
//!
//! Used by the integration tests (`tests/tests/*.rs`), `cargo xtask lab`
//! and, later, the benchmark.

pub mod capture;
pub mod env;
pub mod flood;
pub mod lab;
pub mod netns;
pub mod proc;
pub mod profile;

pub use capture::Capture;
pub use env::{
    ADDRS, Addrs, GW_INTERNAL_IF, GW_PUBLIC_IF, Macs, lab_kind, test_mode, tuned_lab, xdp_transmits,
};
pub use lab::{Host, Lab};
pub use netns::{BpfFs, Netns};
pub use proc::{Forwarder, Spawned};

/// What the forwarder's two hooks transmitted, from the `counters` of its
/// stats: (XDP, TC). `None` when a counter is missing.
pub fn sent_by_hook(counters: &serde_json::Value) -> Option<(u64, u64)> {
    let c = |k: &str| counters[k].as_u64();
    Some((c("xdp_redirected")?, c("tc_redirected")? + c("tc_redirected_neigh")?))
}

/// Whether XDP carried at least 90 % of what the hooks sent: the share
/// XDP mode must show where XDP can transmit.
pub const fn xdp_carried_most(xdp: u64, tc: u64) -> bool {
    xdp * 10 >= (xdp + tc) * 9
}
