//! Other tools' configurations → forwarder config: `iptables-save`'s nat
//! table ([`from_iptables_save`]) and `ipvsadm-save -n`
//! ([`from_ipvsadm_save`]). Every rule that cannot be converted is
//! reported with the reason, never dropped silently.

mod iptables;
mod ipvsadm;
mod outcome;

pub use iptables::from_iptables_save;
pub use ipvsadm::from_ipvsadm_save;
pub use outcome::Import;
