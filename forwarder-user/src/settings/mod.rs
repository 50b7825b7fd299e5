//! Rules and settings: from the command line (`--rule`) and a TOML file,
//! validated as a whole before anything touches the kernel.
//!
//! Rule syntax on the command line:
//!
//! ```text
//! PROTO:PORTS[@IFACE]=ADDR[:PORTS][,no-masquerade][,src=CIDR]...   PORTS = PORT or LOW-HIGH
//! tcp:8080=192.168.1.50:80          # like -p tcp --dport 8080 -j DNAT --to 192.168.1.50:80
//! udp:5353@eth0=10.0.0.2:53         # bound to one public interface
//! tcp:2222=10.0.0.3                 # backend port = public port
//! tcp:8000-9000=10.0.0.4:18000-19000  # each port to its counterpart (same length)
//! udp:6000-6100=10.0.0.5:6000       # a range onto one port
//! tcp:7000-7010=10.0.0.6            # a range onto the same ports
//! tcp:22=10.0.0.7,src=203.0.113.5,src=198.51.100.0/24   # only from these sources
//! ```
//!
//! The same in TOML:
//!
//! ```toml
//! public = ["eth0"]
//! internal = ["eth1"]
//! snat_ports = "10000-32767"
//!
//! [[rule]]
//! proto = "tcp"
//! port = 8080            # or "8000-9000"
//! to = "192.168.1.50:80"  # or "192.168.1.50:18000-19000"
//! interface = "eth0"     # optional
//! masquerade = true      # default
//! sources = ["203.0.113.0/24"]  # optional allow-list
//! ```

#[cfg(test)]
mod backend_tests;
mod file;
pub(crate) mod health;
mod model;
mod rule_spec;
#[cfg(test)]
mod tests;

pub use health::{Check, Health, OnDown};
pub use model::*;
