//! The pure heart of the forwarder, shared by the eBPF programs and userspace.
//!
//! Everything here is `no_std`, allocation-free and free of helper calls, so it
//! runs unchanged inside the verifier's constraints (bounded loops, no
//! recursion, small stack) and can be unit- and property-tested on the host.
//!
//! - [`abi`]: map keys/values and names, exactly as they sit in the BPF maps.
//! - [`csum`]: RFC 1071/1624 one's-complement arithmetic.
//! - [`parse`]: validation of the IPv4 header fields that decide whether a
//!   packet is ours.
//! - [`nat`]: the rewrite plan for a translated packet (what changes, and the
//!   checksum deltas).
//! - [`rule`]: port ranges as trie prefixes, the backend port of a match.
//! - [`icmp`]: rewriting the packet an ICMP error quotes.
//! - [`reply`]: what the gateway sends itself: its IPv4 header, a TCP reset.
//! - [`conntrack`]: flow keys, the two-direction entry pair, SNAT port choice.
//! - [`decide`]: the datapath's pure decisions (FIB outcome, first-packet
//!   gate, full-sum need, GSO segment length, too-big encoding).
//! - [`stats`]: counter and drop-reason indices.
//! - [`audit`]: the rate limit of audit events.
//! - [`maglev`]: consistent hashing of new connections over a rule's
//!   backends (the flow hash and slot here; the table's build, which
//!   allocates, for userspace only).
#![cfg_attr(not(test), no_std)]

pub mod abi;
pub mod audit;
pub mod conntrack;
pub mod csum;
pub mod decide;
pub mod icmp;
pub mod maglev;
pub mod nat;
pub mod parse;
pub mod reply;
pub mod rule;
pub mod stats;
