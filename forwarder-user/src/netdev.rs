//! The kernel's own answer to "can XDP transmit into this device": its XDP
//! features, from the `netdev` generic-netlink family (Linux 6.3).
//!
//! A device takes frames that XDP redirects into it only when its
//! features include `NDO_XMIT`. Drivers that need an XDP program loaded
//! before they can transmit XDP frames (ixgbe, i40e, …) set it only while
//! one is; a veth sets it only while its *peer* has NAPI (an XDP program,
//! or GRO on), because the frames are queued to the peer's NAPI ring. The
//! kernel drops frames redirected into a device without it (the redirect
//! fails with `-EOPNOTSUPP`), counted nowhere an operator looks: this is
//! how the forwarder learns it beforehand.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

/// `NETDEV_XDP_ACT_NDO_XMIT`: the device takes redirected XDP frames.
pub const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const ENOENT: i32 = 2;
const ENODEV: i32 = 19;

/// A generic-netlink socket bound to the `netdev` family, in the network
/// namespace of the thread that opened it.
pub struct Netdev {
    fd: OwnedFd,
    /// `None`: the kernel has no `netdev` family (before 6.3).
    family: Option<u16>,
    seq: u32,
}

/// Appends a netlink attribute (padded to 4 bytes).
fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The attributes of a generic-netlink message body (after its 4-byte
/// header): (type, payload) pairs; malformed tails end the list.
pub fn attrs(mut body: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while body.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([body[0], body[1]]));
        let kind = u16::from_ne_bytes([body[2], body[3]]) & 0x3fff;
        if len < 4 || len > body.len() {
            break;
        }
        out.push((kind, &body[4..len]));
        body = &body[len.next_multiple_of(4).min(body.len())..];
    }
    out
}

/// Whether features `f` let XDP transmit into the device.
pub const fn takes_xdp_frames(f: u64) -> bool {
    f & XDP_ACT_NDO_XMIT != 0
}

impl Netdev {
    /// Opens the socket and resolves the family.
    pub fn open() -> Result<Self> {
        // SAFETY: plain socket call; the descriptor is owned below.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_GENERIC)
        };
        if fd < 0 {
            return Err(Error::Io(format!(
                "generic netlink socket: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Never block the daemon for long on the kernel's answer.
        let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
        // SAFETY: valid socket and option value.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            );
        }
        let mut nd = Self { fd, family: None, seq: 0 };
        let mut name = b"netdev".to_vec();
        name.push(0);
        let mut body = Vec::new();
        attr(&mut body, CTRL_ATTR_FAMILY_NAME, &name);
        nd.family = match nd.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &body) {
            Ok(reply) => attrs(&reply)
                .into_iter()
                .find(|(k, _)| *k == CTRL_ATTR_FAMILY_ID)
                .and_then(|(_, v)| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?))),
            Err(e) if e == -ENOENT => None,
            Err(e) => {
                return Err(Error::Io(format!(
                    "resolving the netdev netlink family: {}",
                    std::io::Error::from_raw_os_error(-e)
                )));
            }
        };
        Ok(nd)
    }

    /// The XDP features of `ifindex` (`NETDEV_XDP_ACT_*` bits); `None`
    /// when the kernel does not report them (before 6.3).
    pub fn xdp_features(&mut self, ifindex: u32) -> Result<Option<u64>> {
        let Some(family) = self.family else { return Ok(None) };
        let mut body = Vec::new();
        attr(&mut body, NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes());
        let reply = self.request(family, NETDEV_CMD_DEV_GET, &body).map_err(|e| {
            let why = if e == -ENODEV {
                "no such device".to_string()
            } else {
                std::io::Error::from_raw_os_error(-e).to_string()
            };
            Error::Io(format!("XDP features of ifindex {ifindex}: {why}"))
        })?;
        let f = attrs(&reply)
            .into_iter()
            .find(|(k, _)| *k == NETDEV_A_DEV_XDP_FEATURES)
            .and_then(|(_, v)| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)));
        Ok(Some(f.unwrap_or(0)))
    }

    /// Sends one request and returns the reply's body after the genl
    /// header, or the kernel's negative errno.
    fn request(&mut self, family: u16, cmd: u8, attrs: &[u8]) -> std::result::Result<Vec<u8>, i32> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + 4 + attrs.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&family.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[cmd, 1, 0, 0]);
        msg.extend_from_slice(attrs);
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: a buffer of `len` bytes and a valid address.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(-std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: a buffer of its own length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(-std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
            }
            let n = n.cast_unsigned();
            if n < 16 {
                return Err(-libc::EIO);
            }
            let mlen = (u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize).min(n);
            let kind = u16::from_ne_bytes([buf[4], buf[5]]);
            let seq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
            if seq != self.seq {
                continue; // an answer to an earlier, timed-out request
            }
            if kind == NLMSG_ERROR {
                let code = i32::from_ne_bytes(
                    buf.get(16..20).ok_or(-libc::EIO)?.try_into().expect("4 bytes"),
                );
                return if code == 0 { Ok(Vec::new()) } else { Err(code) };
            }
            return buf.get(20..mlen).map(<[u8]>::to_vec).ok_or(-libc::EIO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut b = Vec::new();
        attr(&mut b, 2, b"netdev\0");
        attr(&mut b, 3, &7u64.to_ne_bytes());
        assert_eq!(b.len(), 12 + 12);
        let got = attrs(&b);
        assert_eq!(got, vec![(2, &b"netdev\0"[..]), (3, &7u64.to_ne_bytes()[..])]);
        // A truncated tail is ignored, not read past.
        assert_eq!(attrs(&b[..20]).len(), 1);
        assert!(takes_xdp_frames(0b111) && !takes_xdp_frames(0b011));
    }

    #[test]
    fn loopback_reports_its_features_or_the_kernel_has_none() {
        // In the test's own namespace: `lo` exists everywhere and takes
        // no XDP frames.
        let mut nd = Netdev::open().unwrap();
        let idx = crate::iface::index("lo").unwrap();
        if let Some(f) = nd.xdp_features(idx).unwrap() {
            assert!(!takes_xdp_frames(f), "lo takes XDP frames? {f:#x}");
        }
        assert!(nd.xdp_features(999_999).is_err() || nd.family.is_none());
    }
}
