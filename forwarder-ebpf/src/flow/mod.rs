//! One kind of packet each: a tracked connection's ([`established`]), a
//! first packet's ([`new`]), an ICMP error about a connection ([`icmp`]),
//! a later fragment ([`frag`]). They use types, maps and ops, never each
//! other.

pub mod established;
pub mod frag;
pub mod icmp;
pub mod new;
