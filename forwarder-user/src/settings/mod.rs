//! Rules and settings: from the command line (`--rule`) and a TOML file,
//! validated as a whole before anything touches the kernel. The grammar
//! of a rule and the file's keys, as people read them, are in [`help`]
//! (which `--help` and the man pages show).

#[cfg(test)]
mod backend_tests;
mod file;
mod handles;
pub(crate) mod health;
pub mod help;
mod model;
mod rule_spec;
#[cfg(test)]
mod tests;

pub use handles::MAX_HANDLE;
pub use health::{Check, Health, OnDown};
pub use model::*;
