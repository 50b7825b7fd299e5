//! The few sysctls the forwarder needs.

use std::fs;

use crate::error::{Error, Result};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Enables IPv4 forwarding if it is off. `bpf_fib_lookup` answers
/// "forwarding disabled" without it. Returns the previous value.
pub fn ensure_ip_forward() -> Result<bool> {
    let cur =
        fs::read_to_string(IP_FORWARD).map_err(|e| Error::Io(format!("{IP_FORWARD}: {e}")))?;
    if cur.trim() == "1" {
        return Ok(true);
    }
    fs::write(IP_FORWARD, "1").map_err(|e| Error::Io(format!("enabling {IP_FORWARD}: {e}")))?;
    Ok(false)
}

pub fn set_ip_forward(on: bool) -> Result<()> {
    fs::write(IP_FORWARD, if on { "1" } else { "0" })
        .map_err(|e| Error::Io(format!("{IP_FORWARD}: {e}")))
}
