//! Floods from spoofed sources, sent from a lab host through a raw socket:
//! what an attacker throws at a forwarded port.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, bail};

use crate::netns::Netns;

/// xorshift64*: deterministic, so a failure reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Where spoofed packets claim to come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sources {
    /// 198.18.0.0/15 only: no route back from the lab's gateway.
    Unroutable,
    /// Half of them from 198.18.0.0/15, half from the client's subnet
    /// (203.0.113.64-253: routable, but nobody answers ARP), as a flood's
    /// sources are.
    Mixed,
}

impl Sources {
    fn pick(self, rng: &mut Rng) -> [u8; 4] {
        let r = rng.next_u64().to_be_bytes();
        if self == Self::Unroutable || r[0] & 1 == 0 {
            [198, 0x12 | (r[1] & 1), r[2], r[3].max(1)]
        } else {
            [203, 0, 113, 64 + r[2] % 190]
        }
    }
}

/// Sends raw IPv4 packets (headers ours) from `ns`, 64 at a time with a
/// millisecond between: a veth's receive ring (256 frames) would drop
/// most of one burst before the gateway saw it.
pub fn send_raw(ns: &Netns, packets: Vec<Vec<u8>>) -> Result<()> {
    let sent = ns
        .enter(move || {
            // SAFETY: a raw socket we own; plain syscalls on it.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
                if fd < 0 {
                    return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
                }
                for (i, p) in packets.iter().enumerate() {
                    if i % 64 == 63 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let mut sa: libc::sockaddr_in = std::mem::zeroed();
                    sa.sin_family = libc::AF_INET as u16;
                    sa.sin_addr.s_addr = u32::from_ne_bytes([p[16], p[17], p[18], p[19]]);
                    let n = libc::sendto(
                        fd,
                        p.as_ptr().cast(),
                        p.len(),
                        0,
                        (&raw const sa).cast(),
                        size_of::<libc::sockaddr_in>() as u32,
                    );
                    if n.cast_unsigned() != p.len() {
                        let e = std::io::Error::last_os_error();
                        libc::close(fd);
                        return Err(format!("sendto: {e}"));
                    }
                }
                libc::close(fd);
                Ok(())
            }
        })?
        .join();
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("{e}"),
        Err(_) => bail!("the sending thread panicked"),
    }
}

fn v4(to: SocketAddr) -> std::net::SocketAddrV4 {
    match to {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 only"),
    }
}

/// `n` packets to `to` from spoofed `sources` and random ports, each
/// built by `build(source, source port, destination, rng)`.
fn flood(
    ns: &Netns,
    n: usize,
    to: SocketAddr,
    sources: Sources,
    seed: u64,
    build: impl Fn([u8; 4], u16, std::net::SocketAddrV4, &mut Rng) -> Vec<u8>,
) -> Result<()> {
    let mut rng = Rng(seed | 1);
    let to = v4(to);
    let packets = (0..n)
        .map(|_| {
            let sport = 1024 + (rng.next_u64() % 60_000) as u16;
            let src = sources.pick(&mut rng);
            build(src, sport, to, &mut rng)
        })
        .collect();
    send_raw(ns, packets)
}

/// `n` TCP SYNs to `to` from spoofed `sources` and random ports.
pub fn syn_flood(ns: &Netns, n: usize, to: SocketAddr, sources: Sources, seed: u64) -> Result<()> {
    flood(ns, n, to, sources, seed, |src, sport, to, rng| {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4(src, to.ip().octets(), 64)
            .tcp(sport, to.port(), rng.next_u64() as u32, 64240)
            .syn()
            .write(&mut v, &[])
            .expect("a SYN fits");
        v
    })
}

/// `n` UDP datagrams to `to` from spoofed `sources` and random ports.
pub fn udp_flood(ns: &Netns, n: usize, to: SocketAddr, sources: Sources, seed: u64) -> Result<()> {
    flood(ns, n, to, sources, seed, |src, sport, to, _| {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4(src, to.ip().octets(), 64)
            .udp(sport, to.port())
            .write(&mut v, b"flood")
            .expect("a datagram fits");
        v
    })
}
