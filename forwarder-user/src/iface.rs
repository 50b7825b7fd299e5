//! Interface names → indices.

use std::ffi::CString;

use crate::error::{Error, Result};

/// The kernel's index of interface `name`.
pub fn index(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| Error::UnknownInterface(name.to_string()))?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 { Err(Error::UnknownInterface(name.to_string())) } else { Ok(idx) }
}

/// The name of the driver behind interface `name` (`ETHTOOL_GDRVINFO`,
/// what `ethtool -i` prints), `None` when the interface does not say.
pub fn driver(name: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    /// `struct ethtool_drvinfo` (uapi/linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 4 * 5],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info =
        DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 32 * 4 + 12 + 4 * 5] };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &raw mut info, _pad: [0; 16] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `req` and the buffer it points to live across the call; the
    // kernel writes at most sizeof(struct ethtool_drvinfo) into it.
    let r = unsafe { libc::ioctl(fd, SIOCETHTOOL, &raw mut req) };
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    if r < 0 {
        return None;
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(info.driver.len());
    (end > 0).then(|| String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Drivers on which `--mode auto` picks TC although native XDP works: on
/// a veth, an XDP program turns off TSO/GSO on the peer, so TCP bulk
/// crosses the gateway as MTU-sized segments, one program run each,
/// instead of as 64 KB super-packets (measured: about 0.6x the throughput
/// of TC or netfilter; `cargo xtask bench`).
pub fn prefers_tc(driver: &str) -> bool {
    driver == "veth"
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_no_driver_and_unknown_names_none() {
        // `lo` answers GDRVINFO with no driver name on some kernels and
        // EOPNOTSUPP on others: either way no driver.
        assert_eq!(super::driver("lo").filter(|d| !d.is_empty()), None);
        assert_eq!(super::driver("no-such-if0"), None);
        assert_eq!(super::driver("a-name-longer-than-ifnamsiz"), None);
        assert!(super::prefers_tc("veth") && !super::prefers_tc("ixgbe"));
    }
}
