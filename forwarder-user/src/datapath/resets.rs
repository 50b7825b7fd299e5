//! Connections reset because their backend went down (`on_down =
//! "reset"`; the daemon picks them): their entries marked
//! (`VLAN_RESET`, the datapath then answers each of their packets with a
//! TCP reset), a probe to each end that makes it send one, and the
//! entries removed after [`RESET_GRACE`].

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use forwarder_common::{
    abi::{FlowKey, TCP_ACK},
    reply::{Endpoints, segment_headers},
};

use super::object::Datapath;
use crate::error::Result;

/// How long reset connections keep their marked entries: time for both
/// ends to answer their probe.
pub const RESET_GRACE: Duration = Duration::from_secs(2);

/// Reset connections whose entries are still there, and the socket the
/// probes leave by.
#[derive(Default)]
pub struct Resets {
    pending: Vec<(Instant, Vec<FlowKey>)>,
    sock: Option<OwnedFd>,
}

impl Resets {
    /// Marks the connections of `keys` (both entries of each), sends the
    /// `probes`, and schedules the entries' removal; returns how many
    /// connections were marked, and the last probe that could not be
    /// sent (its end learns of the reset at its next packet).
    pub fn start(
        &mut self,
        dp: &mut Datapath,
        keys: Vec<FlowKey>,
        probes: &[Endpoints],
    ) -> Result<(usize, Option<std::io::Error>)> {
        let marked = dp.mark_reset(&keys)? / 2;
        let mut failed = None;
        for (i, ends) in probes.iter().enumerate() {
            if let Err(e) = self.probe(ends, u32::try_from(i).unwrap_or(0)) {
                failed = Some(e);
            }
        }
        self.pending.push((Instant::now() + RESET_GRACE, keys));
        Ok((marked, failed))
    }

    /// Removes the entries of resets whose grace is over; returns how
    /// many connections.
    pub fn expire(&mut self, dp: &mut Datapath) -> Result<usize> {
        let now = Instant::now();
        let mut removed = 0;
        while let Some((due, keys)) = self.pending.first() {
            if *due > now {
                break;
            }
            // A failure keeps them pending: the next tick retries.
            removed += dp.remove_flows(keys)? / 2;
            self.pending.remove(0);
        }
        Ok(removed)
    }

    /// Sends the probe of one end: a bare ACK from `ends.src` to
    /// `ends.dst`. Its sequence and acknowledgment numbers, which differ
    /// from probe to probe (`nonce`), lie outside the end's window but for
    /// a chance of about window / 2^32; in it, the bogus acknowledgment
    /// is answered all the same (RFC 5961's challenge ACK).
    fn probe(&mut self, ends: &Endpoints, nonce: u32) -> std::io::Result<()> {
        if self.sock.is_none() {
            // SAFETY: plain socket call; the descriptor is owned at once.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor of ours.
            self.sock = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let sock = self.sock.as_ref().ok_or_else(|| std::io::Error::other("no raw socket"))?;
        let seq = nonce.wrapping_mul(0x9e37_79b9) ^ 0x8000_0000;
        let (ip, tcp) = segment_headers(ends, TCP_ACK, seq, seq.rotate_left(13));
        let mut frame = [0u8; 40];
        frame[..20].copy_from_slice(&ip);
        frame[20..].copy_from_slice(&tcp);
        // SAFETY: plain data.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from_ne_bytes(ends.dst);
        // SAFETY: valid descriptor, buffer and address of their lengths.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }
}
