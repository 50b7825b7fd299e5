//! Subcommands, one file each.

pub mod backend;
pub mod check;
pub mod client;
pub mod docs;
pub mod import;
pub mod run;
pub mod teardown;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "forwarder",
    version,
    propagate_version = true,
    about = "eBPF fast-path port forwarder (XDP DNAT + masquerade)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load the datapath onto interfaces and forward until SIGINT/SIGTERM.
    Run(Box<run::RunArgs>),
    /// Counters of a running daemon: per rule, drops by reason, conntrack use.
    Stats(client::StatsArgs),
    /// The running daemon's rules: list, add, del (changes apply at once,
    /// atomically, like a reload).
    Rule(client::RuleArgs),
    /// The backends of the running daemon's balanced rules: list, drain,
    /// undrain, weight.
    Backend(backend::BackendArgs),
    /// Write the running daemon's configuration to a file, atomically
    /// (what `forwarder run --config` reads back, e.g. after a reboot).
    Save(client::SaveArgs),
    /// Tracked connections of a running daemon: list or flush.
    Conntrack(client::ConntrackArgs),
    /// Remove a datapath left pinned by `forwarder run --persist` (or a
    /// killed daemon): links (detaching the interfaces) and state maps.
    Teardown(teardown::TeardownArgs),
    /// Preflight: kernel, BPF, sysctls, firewall managers, interfaces (native
    /// XDP, other programs, MTUs); OK/WARN/FAIL with what to do.
    Check(check::CheckArgs),
    /// Convert `iptables-save` output (nat DNAT + MASQUERADE) into a forwarder
    /// config on stdout; every rule it cannot convert is listed with the reason.
    ImportIptables(import::ImportArgs),
    /// Convert `ipvsadm-save -n` output (virtual services with masquerading
    /// real servers) into a forwarder config on stdout: one rule with
    /// weighted backends per service; what it cannot convert is listed.
    ImportIpvsadm(import::ImportArgs),
    /// Print the completion script for a shell (bash, zsh, fish), e.g.
    /// `forwarder completions bash > /etc/bash_completion.d/forwarder`.
    Completions(docs::CompletionsArgs),
    /// Write the man pages into a directory (the package build does).
    #[command(hide = true)]
    Manpages(docs::ManpagesArgs),
}
