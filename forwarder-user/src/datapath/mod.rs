//! The kernel-handle layer: the loaded eBPF object and everything done to
//! it — filling its maps from a plan, attaching its programs, reading and
//! sweeping its connection table, reading its counters. It takes
//! [`crate::plan`]'s types and returns its own: it knows neither the
//! settings nor the UI's (the counters' snapshot is [`crate::stats`]').

mod attach;
mod backend_stats;
mod configure;
mod conntrack;
mod counters;
mod object;
mod resets;
mod rules;

pub use attach::XdpAttach;
pub use configure::AddrSync;
pub use conntrack::{CtUsage, Sweep, SweepPass};
pub use object::{
    Attached, BENCH_OBJECT, Datapath, Hook, KernelLogger, VERIFIER_BUDGET, monotonic_ns,
    xdp_meta_supported,
};
pub use resets::{RESET_GRACE, Resets};
pub use rules::RuleChange;
