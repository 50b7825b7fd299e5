//! forwarder: an eBPF fast-path port forwarder for Linux gateways.
//!
//! The library behind the `forwarder` binary: the settings and their
//! validation ([`settings`]), the plan they compile to ([`plan`]), the
//! loaded eBPF object and everything done to it ([`datapath`]), counters
//! ([`stats`]), the daemon ([`daemon`]) and the subcommands ([`cli`]).

pub mod addrs;
pub mod audit;
pub mod batch;
pub mod check;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod egress;
pub mod error;
pub mod faults;
pub mod health;
pub mod housekeeping;
pub mod iface;
pub mod import;
pub mod metrics;
pub mod netdev;
pub mod pin;
pub mod plan;
pub mod settings;
pub mod stats;
pub mod sysctl;
