//! What lab the suite runs in and what its hosts are: the modes and labs
//! `cargo xtask test` passes (`FORWARDER_TEST_MODE`, `FORWARDER_TEST_LAB`),
//! the addresses, interface names and MACs of the three hosts.

use std::net::Ipv4Addr;

/// The MAC addresses on the forwarding path of a lab.
#[derive(Clone, Copy, Debug)]
pub struct Macs {
    pub client: [u8; 6],
    pub gw_pub: [u8; 6],
    pub gw_int: [u8; 6],
    pub server: [u8; 6],
}

#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub client: Ipv4Addr,
    pub gw_public: Ipv4Addr,
    pub gw_internal: Ipv4Addr,
    pub server: Ipv4Addr,
}

pub const ADDRS: Addrs = Addrs {
    client: Ipv4Addr::new(203, 0, 113, 10),
    gw_public: Ipv4Addr::new(203, 0, 113, 1),
    gw_internal: Ipv4Addr::new(192, 168, 1, 1),
    server: Ipv4Addr::new(192, 168, 1, 50),
};

/// Gateway interface names (inside the gateway namespace).
pub const GW_PUBLIC_IF: &str = "pub0";
pub const GW_INTERNAL_IF: &str = "int0";

/// The datapath hook the end-to-end suite runs with: `$FORWARDER_TEST_MODE`
/// = `xdp`, `tc`, `auto` or `default` (no `--mode` at all: what a user
/// gets without flags); unset: `xdp`. Anything else stops the test, so a
/// typo cannot quietly test another mode. `cargo xtask test` runs the
/// suite once per combination of mode and lab.
pub fn test_mode() -> &'static str {
    match std::env::var("FORWARDER_TEST_MODE").as_deref() {
        Err(_) | Ok("xdp") => "xdp",
        Ok("tc") => "tc",
        Ok("auto") => "auto",
        Ok("default") => "default",
        Ok(other) => panic!("FORWARDER_TEST_MODE={other}: not xdp, tc, auto or default"),
    }
}

/// The lab the suite runs in: `$FORWARDER_TEST_LAB` = `tuned` (also
/// unset: GRO at the far ends, XDP's best case), `untuned` (every veth at
/// the kernel's defaults) or `csum` (untuned, and every checksum
/// verified: senders and the gateway compute checksums in software, tx
/// offload off, and the endpoints verify what they receive, rx offload
/// off; otherwise a veth hands a local sender's `CHECKSUM_PARTIAL` packet
/// on, and the receiver trusts it unverified).
pub fn lab_kind() -> &'static str {
    match std::env::var("FORWARDER_TEST_LAB").as_deref() {
        Err(_) | Ok("tuned") => "tuned",
        Ok("untuned") => "untuned",
        Ok("csum") => "csum",
        Ok(other) => panic!("FORWARDER_TEST_LAB={other}: not tuned, untuned or csum"),
    }
}

/// Whether the suite's lab has GRO at the far ends.
pub fn tuned_lab() -> bool {
    lab_kind() == "tuned"
}

/// How the suite's mode serves the lab's veths: `true` when XDP transmits
/// the translated packets (mode `xdp` on a tuned lab); else TC does
/// (modes `tc`, `auto` and the default pick TC on veth; `xdp` on an
/// untuned lab hands every packet towards an incapable veth to TC).
pub fn xdp_transmits() -> bool {
    test_mode() == "xdp" && tuned_lab()
}
