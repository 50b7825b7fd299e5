//! The library's error type: every message names the offending value and,
//! where it helps, what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rule `{spec}`: {why}")]
    Rule { spec: String, why: String },
    #[error("{path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error("interface `{0}` does not exist (see `ip link`)")]
    UnknownInterface(String),
    #[error("interface `{name}` is given as both public and internal")]
    InterfaceRole { name: String },
    #[error(
        "duplicate rule: `{first}` and `{second}` share ports on the same protocol and interface"
    )]
    DuplicateRule { first: String, second: String },
    #[error("too many rules: {0} (the datapath holds at most {max})", max = forwarder_common::abi::MAX_RULES - 1)]
    TooManyRules(usize),
    /// Settings that do not hold together (what and why, named).
    #[error("{0}")]
    Settings(String),
    #[error("masquerade port range `{0}`: {1}")]
    PortRange(String, String),
    #[error(
        "this forwarder binary was built without its eBPF object (FORWARDER_EBPF_STUB=1); rebuild without it"
    )]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("{what}: {source}")]
    Program { what: String, source: aya::programs::ProgramError },
    #[error("{what}: {source}")]
    Map { what: String, source: aya::maps::MapError },
    #[error("{0}")]
    Io(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
