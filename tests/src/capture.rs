//! What really arrives: IPv4 frames as a host's interface receives them
//! (an `AF_PACKET` socket), to compare byte for byte with what was meant
//! to leave the gateway.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::Netns;

/// An `AF_PACKET` socket taking the IPv4 frames one interface of one
/// namespace receives (or, opened with [`Capture::open_sent`], sends).
pub struct Capture {
    fd: OwnedFd,
    /// Keep the frames the host sends, not those it receives.
    sent: bool,
}

/// `PACKET_OUTGOING`: a frame the host sent itself.
const PACKET_OUTGOING: u8 = 4;

impl Capture {
    /// Opens the socket on `ifname` in `ns`; frames arriving from then on
    /// are kept for [`Capture::next`]. It sees what the host's stack
    /// receives: a frame a TC program redirects or drops is not there.
    pub fn open(ns: &Netns, ifname: &str) -> Result<Self> {
        Self::open_proto(ns, ifname, 0x0800)
    }

    /// The IPv4 frames the host in `ns` sends out of `ifname` (an
    /// `ETH_P_ALL` socket, which sees them).
    pub fn open_sent(ns: &Netns, ifname: &str) -> Result<Self> {
        let mut c = Self::open_proto(ns, ifname, 0x0003)?;
        c.sent = true;
        Ok(c)
    }

    fn open_proto(ns: &Netns, ifname: &str, proto: u16) -> Result<Self> {
        let ifname = ifname.to_string();
        let fd = ns.enter(move || -> Result<OwnedFd> {
            let name = std::ffi::CString::new(ifname.as_str())?;
            // SAFETY: plain socket calls on a descriptor owned at once.
            unsafe {
                let ifindex = libc::if_nametoindex(name.as_ptr());
                if ifindex == 0 {
                    bail!("no interface {ifname}: {}", std::io::Error::last_os_error());
                }
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto.to_be()));
                if fd < 0 {
                    bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
                }
                let fd = OwnedFd::from_raw_fd(fd);
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto.to_be();
                sll.sll_ifindex = ifindex.cast_signed();
                if libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                ) != 0
                {
                    bail!("binding AF_PACKET to {ifname}: {}", std::io::Error::last_os_error());
                }
                Ok(fd)
            }
        })?;
        let fd = fd.join().map_err(|_| anyhow::anyhow!("capture thread panicked"))??;
        Ok(Self { fd, sent: false })
    }

    /// The next received frame `want` accepts, within `timeout`.
    pub fn next(&self, timeout: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let t0 = Instant::now();
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = timeout.checked_sub(t0.elapsed())?;
            let tv = libc::timeval {
                tv_sec: left.as_secs().cast_signed(),
                tv_usec: libc::suseconds_t::from(left.subsec_micros().max(1)),
            };
            // SAFETY: plain data.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut sll_len = size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: valid descriptor, option value, buffer and address of
            // their own lengths.
            let k = unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const tv).cast(),
                    size_of::<libc::timeval>() as u32,
                );
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut sll).cast(),
                    &raw mut sll_len,
                )
            };
            if k < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return None;
            }
            let f = &buf[..k.cast_unsigned()];
            if (sll.sll_pkttype == PACKET_OUTGOING) == self.sent
                && f.get(12..14) == Some(&[8, 0])
                && want(f)
            {
                return Some(f.to_vec());
            }
        }
    }

    /// The next `n` frames `want` accepts, collected on a thread (each
    /// within `timeout` of the one before); fewer if they do not come.
    pub fn collect(
        self,
        n: usize,
        timeout: Duration,
        want: impl Fn(&[u8]) -> bool + Send + 'static,
    ) -> JoinHandle<Vec<Vec<u8>>> {
        std::thread::spawn(move || {
            let mut frames = Vec::new();
            while frames.len() < n {
                let Some(f) = self.next(timeout, &want) else { break };
                frames.push(f);
            }
            frames
        })
    }
}

/// Whether `f` is an IPv4 frame of protocol `proto` (6 TCP, 17 UDP) with
/// L4 destination port `dport`.
pub fn is_l4_to(f: &[u8], proto: u8, dport: u16) -> bool {
    let ihl = usize::from(f.get(14).copied().unwrap_or(0) & 0x0f) * 4;
    f.len() >= 14 + ihl + 4
        && f[23] == proto
        && f[14 + ihl + 2..14 + ihl + 4] == dport.to_be_bytes()
}
