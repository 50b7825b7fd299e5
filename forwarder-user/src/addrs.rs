//! The IPv4 addresses of the public interfaces, for hairpin: the datapath
//! needs to know which destinations are "the gateway's public address".
//! Read with `getifaddrs` and re-synced every second, so an address that
//! changes (DHCP) is followed.

use std::{collections::BTreeSet, ffi::CStr, net::Ipv4Addr};

use crate::{
    error::{Error, Result},
    plan::IfaceSpec,
};

/// (address, ifindex) for every IPv4 address on a public interface.
pub fn public_addresses(ifaces: &[IfaceSpec]) -> Result<BTreeSet<([u8; 4], u32)>> {
    let mut out = BTreeSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(Error::Io(format!("getifaddrs: {}", std::io::Error::last_os_error())));
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a valid list node until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null sockaddr of the family it says.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: NUL-terminated name from the kernel.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        let Some(spec) =
            ifaces.iter().find(|i| i.name == name && i.role == forwarder_common::abi::ROLE_PUBLIC)
        else {
            continue;
        };
        // SAFETY: AF_INET, so a sockaddr_in (read unaligned: the pointer is
        // only guaranteed sockaddr's alignment).
        let sin = unsafe { ifa.ifa_addr.cast::<libc::sockaddr_in>().read_unaligned() };
        out.insert((Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).octets(), spec.ifindex));
    }
    // SAFETY: the list from getifaddrs above.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
