//! forwarder: an eBPF fast-path port forwarder for Linux gateways.
//!
//! The library behind the `forwarder` binary: configuration and validation
//! ([`config`]), loading and attaching the embedded eBPF programs
//! ([`loader`]), counters ([`stats`]) and the subcommands ([`cli`]).

pub mod addrs;
pub mod audit;
pub mod batch;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod egress;
pub mod error;
pub mod faults;
pub mod housekeeping;
pub mod iface;
pub mod import;
pub mod loader;
pub mod metrics;
pub mod netdev;
pub mod pin;
pub mod stats;
pub mod sysctl;
