//! Indices into the global per-CPU counter array ([`crate::abi::MAP_STATS`]).
//!
//! Every verdict the datapath takes that is not "translated and forwarded"
//! has a counter here, so nothing is silent. Names are for the CLI.

/// Frames handed to the kernel because they are not IPv4 (ARP, IPv6, …).
pub const PASS_NOT_IPV4: u32 = 0;
/// IPv4 but not TCP/UDP, or no rule and no flow: not ours.
pub const PASS_NOT_OURS: u32 = 1;
/// IPv4 fragments that are not ours, or later fragments whose first one was
/// not seen (yet): passed to the kernel.
pub const PASS_FRAGMENT: u32 = 2;
/// Headers that fail validation (passed untouched).
pub const PASS_MALFORMED: u32 = 3;
/// Translated and redirected by XDP.
pub const XDP_REDIRECTED: u32 = 4;
/// Handed from XDP to the TC program: neighbour unknown, egress not in the
/// devmap, frame above the route MTU (a GRO'd skb in generic XDP), or a
/// partial checksum over a segment too large to sum in XDP.
pub const XDP_TO_TC: u32 = 5;
/// Translated and redirected by TC (`bpf_redirect`).
pub const TC_REDIRECTED: u32 = 6;
/// Translated and redirected by TC with neighbour resolution.
pub const TC_REDIRECTED_NEIGH: u32 = 7;
/// FIB: no route, blackhole, unreachable or prohibited: dropped.
pub const DROP_NO_ROUTE: u32 = 8;
/// FIB: forwarding disabled (`net.ipv4.ip_forward=0)`: passed untouched.
pub const PASS_FWD_DISABLED: u32 = 9;
/// FIB: the destination is local / not forwardable: passed untouched.
pub const PASS_NOT_FORWARDED: u32 = 10;
/// Unused: "fragmentation needed" is answered ([`ICMP_FRAG_NEEDED_SENT`]);
/// the index stays so the counter array's layout does.
pub const PASS_FRAG_NEEDED: u32 = 11;
/// TTL would expire at the gateway: dropped.
pub const DROP_TTL: u32 = 12;
/// No free masquerade port after the bounded retries: dropped.
pub const DROP_SNAT_EXHAUSTED: u32 = 13;
/// Another CPU created the same flow at the same moment: dropped (the
/// retransmission uses the winner's entry).
pub const DROP_CT_INSERT: u32 = 14;
/// FIB lookup returned no source address for masquerade: dropped.
pub const DROP_NO_SRC_ADDR: u32 = 15;
/// A redirect helper failed.
pub const DROP_REDIRECT_FAILED: u32 = 16;
/// Partial-checksum packets recomputed in full.
pub const CSUM_FULL_RECOMPUTE: u32 = 17;
/// Any other FIB result (unsupported encapsulation …): passed untouched.
pub const PASS_FIB_OTHER: u32 = 18;
/// New connections from a source outside the rule's allow-list: dropped.
pub const DROP_SRC_DENIED: u32 = 19;
/// New connections refused because the conntrack table is full and no
/// unassured or closing connection could give way ([`EARLY_DROP`]);
/// established ones are never evicted.
pub const DROP_CT_FULL: u32 = 20;

/// ICMP errors about a translated connection, translated and forwarded.
pub const ICMP_TRANSLATED: u32 = 21;

/// Fragments of translated datagrams, translated (first ones included).
pub const FRAGMENT_TRANSLATED: u32 = 22;

/// Larger than the egress MTU with DF set: answered with ICMP
/// "fragmentation needed" (TC).
pub const ICMP_FRAG_NEEDED_SENT: u32 = 23;
/// Larger than the egress MTU without DF (we do not fragment), or an ICMP
/// error too large to forward: dropped.
pub const DROP_TOO_BIG: u32 = 24;

/// Audit events handed to the daemon (`abi::MAP_EVENTS`).
pub const AUDIT_EVENTS: u32 = 25;
/// Audit events not emitted: over the rate limit.
pub const AUDIT_RATE_LIMITED: u32 = 26;
/// Audit events not emitted: the ring was full (the daemon is behind).
pub const AUDIT_RING_FULL: u32 = 27;

/// Connections (both entries) removed from a full table to make room
/// for a new one: unassured (no completed handshake, no UDP stream) or
/// closing, oldest first, as netfilter's `early_drop`.
pub const EARLY_DROP: u32 = 28;
/// New connections over the per-CPU new-connection rate limit: dropped.
pub const DROP_NEW_CONN_RATE: u32 = 29;

/// A rewrite of a parsed, planned packet failed (a bounds re-check
/// refused; parse checked the same bounds, so never expected): dropped,
/// by XDP as `XDP_ABORTED` so the `xdp:xdp_exception` tracepoint shows it.
pub const DROP_REWRITE_FAILED: u32 = 30;

/// New connections to a rule none of whose backends can take them (all
/// down, drained or of weight 0): refused by TC (XDP hands them over),
/// TCP with a reset, UDP with ICMP "port unreachable"; dropped if that
/// answer cannot be built.
pub const DROP_NO_BACKEND: u32 = 31;

/// Packets of connections the daemon reset (their backend went down, the
/// rule says `on_down = "reset"`): answered with a TCP reset by TC (XDP
/// hands them over), dropped if it cannot be built.
pub const DROP_CONN_RESET: u32 = 32;

/// XDP could not mark a packet it hands to TC (the driver gives it no
/// metadata area): the interface is switched to "TC looks at every packet
/// XDP lets through" (`abi::IFACE_F_TC_ALL`), which takes this packet too.
pub const XDP_META_FAILED: u32 = 33;

/// Number of counters.
pub const COUNT: u32 = 34;

/// Counter names, indexed like the constants.
pub const NAMES: [&str; COUNT as usize] = [
    "pass_not_ipv4",
    "pass_not_ours",
    "pass_fragment",
    "pass_malformed",
    "xdp_redirected",
    "xdp_to_tc",
    "tc_redirected",
    "tc_redirected_neigh",
    "drop_no_route",
    "pass_fwd_disabled",
    "pass_not_forwarded",
    "pass_frag_needed",
    "drop_ttl",
    "drop_snat_exhausted",
    "drop_ct_insert",
    "drop_no_src_addr",
    "drop_redirect_failed",
    "csum_full_recompute",
    "pass_fib_other",
    "drop_src_denied",
    "table_full_refused",
    "icmp_translated",
    "fragment_translated",
    "icmp_frag_needed_sent",
    "drop_too_big",
    "audit_events",
    "audit_rate_limited",
    "audit_ring_full",
    "early_drop",
    "drop_new_conn_rate",
    "drop_rewrite_failed",
    "drop_no_backend",
    "drop_conn_reset",
    "xdp_meta_failed",
];
