//! The soak run's traffic and its tally: an echo backend, checked TCP
//! transfers, long-lived connections and UDP clients, each counting what
//! came back right and what did not.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use forwarder_testkit::{ADDRS, Lab, flood::Rng};
use sha2::{Digest, Sha256};

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) tcp_ok: AtomicU64,
    pub(crate) tcp_failed: AtomicU64,
    pub(crate) tcp_bytes: AtomicU64,
    pub(crate) hash_mismatch: AtomicU64,
    pub(crate) udp_ok: AtomicU64,
    pub(crate) udp_lost: AtomicU64,
    pub(crate) long_chunks: AtomicU64,
    pub(crate) rule_changes: AtomicU64,
    pub(crate) rule_checks_failed: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) floods: AtomicU64,
    /// The first few failures, in words, with when they happened.
    pub(crate) errors: Mutex<Vec<String>>,
    /// What the soak did and when (rule changes, floods, restarts), for
    /// reading a failure against.
    pub(crate) events: Mutex<Vec<String>>,
    pub(crate) t0: Mutex<Option<Instant>>,
}

impl Tally {
    pub(crate) fn at(&self) -> f64 {
        self.t0.lock().expect("t0").map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    pub(crate) fn error(&self, what: impl std::fmt::Display) {
        let at = self.at();
        let mut e = self.errors.lock().expect("errors");
        if e.len() < 20 {
            e.push(format!("{at:7.2} s: {what}"));
        }
    }

    pub(crate) fn event(&self, what: &str) {
        let at = self.at();
        self.events.lock().expect("events").push(format!("{at:.2} s {what}"));
    }
}

pub(crate) fn public(port: u16) -> SocketAddr {
    SocketAddr::from((ADDRS.gw_public, port))
}

/// The backend: on :80, a connection brings `len` (u32) then that many
/// bytes, and gets their SHA-256 back; `ECHO` starts a long-lived echo.
pub(crate) fn backend(lab: &Lab, stop: Arc<AtomicBool>) -> Result<()> {
    let l = lab
        .server
        .enter(|| TcpListener::bind("0.0.0.0:80"))?
        .join()
        .map_err(|_| anyhow::anyhow!("bind"))??;
    l.set_nonblocking(true)?;
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            std::thread::spawn(move || {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut head = [0u8; 4];
                if s.read_exact(&mut head).is_err() {
                    return;
                }
                if &head == b"ECHO" {
                    let mut buf = [0u8; 4096];
                    while let Ok(k) = s.read(&mut buf) {
                        if k == 0 || s.write_all(&buf[..k]).is_err() {
                            break;
                        }
                    }
                    return;
                }
                let len = u32::from_be_bytes(head) as usize;
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 1 << 16];
                let mut got = 0;
                while got < len {
                    match s.read(&mut buf[..(len - got).min(1 << 16)]) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => {
                            h.update(&buf[..k]);
                            got += k;
                        }
                    }
                }
                let _ = s.write_all(&h.finalize());
            });
        }
    });
    let u = lab
        .server
        .enter(|| UdpSocket::bind("0.0.0.0:53"))?
        .join()
        .map_err(|_| anyhow::anyhow!("bind"))??;
    u.set_read_timeout(Some(Duration::from_millis(200)))?;
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        loop {
            if let Ok((k, peer)) = u.recv_from(&mut b) {
                let _ = u.send_to(&b[..k], peer);
            }
        }
    });
    Ok(())
}

/// One transfer: a random size (1 KB to 512 KB), its hash compared.
pub(crate) fn transfer(rng: &mut Rng, t: &Tally) {
    let len = 1024 + (rng.next_u64() % (511 * 1024)) as usize;
    let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
    let r = (|| -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&public(8080), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&(len as u32).to_be_bytes())?;
        s.write_all(&data)?;
        let mut back = [0u8; 32];
        s.read_exact(&mut back)?;
        Ok(back[..] == Sha256::digest(&data)[..])
    })();
    match r {
        Ok(true) => {
            t.tcp_ok.fetch_add(1, Ordering::Relaxed);
            t.tcp_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        Ok(false) => {
            t.hash_mismatch.fetch_add(1, Ordering::Relaxed);
            t.error(format!("transfer of {len} bytes: hash mismatch"));
        }
        Err(e) => {
            t.tcp_failed.fetch_add(1, Ordering::Relaxed);
            t.error(format!("transfer of {len} bytes: {e}"));
        }
    }
}

/// A long-lived connection: a checked 64-byte chunk every 100 ms.
pub(crate) fn long_lived(seed: u64, t: &Tally, stop: &AtomicBool) {
    let mut rng = Rng(seed);
    let r = (|| -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&public(8080), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"ECHO")?;
        while !stop.load(Ordering::Relaxed) {
            let chunk: Vec<u8> = (0..64).map(|_| rng.next_u64() as u8).collect();
            s.write_all(&chunk)?;
            let mut back = [0u8; 64];
            s.read_exact(&mut back)?;
            if back[..] != chunk[..] {
                return Err(std::io::Error::other("echo differs"));
            }
            t.long_chunks.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })();
    if let Err(e) = r {
        t.tcp_failed.fetch_add(1, Ordering::Relaxed);
        t.error(format!("long-lived connection: {e}"));
    }
}

/// UDP: a new socket for every 20 datagrams, each echoed and compared.
pub(crate) fn udp_client(rng: &mut Rng, t: &Tally) {
    let Ok(s) = UdpSocket::bind("0.0.0.0:0") else { return };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    for _ in 0..20 {
        let len = 1 + (rng.next_u64() % 1400) as usize;
        let msg: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let mut b = [0u8; 2048];
        let ok = s.send_to(&msg, public(5353)).is_ok()
            && s.recv_from(&mut b).is_ok_and(|(k, _)| b[..k] == msg[..]);
        if ok {
            t.udp_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            t.udp_lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}
