//! A named network namespace, removed on drop.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output, Stdio},
};

use anyhow::{Context, Result, bail};

#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

/// Runs a command, failing with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// `aa:bb:cc:dd:ee:ff`, as `ip neigh` takes it.
pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args…` in the namespace; stdout as a string.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = run(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The MAC address of `ifname` in the namespace.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let s = self.exec("cat", &[&format!("/sys/class/net/{ifname}/address")])?;
        let bytes = s
            .trim()
            .split(':')
            .map(|h| u8::from_str_radix(h, 16))
            .collect::<Result<Vec<u8>, _>>()
            .with_context(|| format!("MAC address of {ifname} in {}: {s:?}", self.name))?;
        bytes.try_into().map_err(|b: Vec<u8>| {
            anyhow::anyhow!("MAC address of {ifname} in {}: {} bytes", self.name, b.len())
        })
    }

    /// `ip ARGS` in the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ip").arg("-n").arg(&self.name).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// creates live in the namespace for good.
    pub fn enter<F, R>(&self, f: F) -> Result<std::thread::JoinHandle<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = File::open(format!("/var/run/netns/{}", self.name))
            .with_context(|| format!("opening netns {}", self.name))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            // SAFETY: valid fd; setns only affects this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            let ok = rc == 0;
            let _ = tx.send(ok);
            assert!(ok, "setns failed: {}", std::io::Error::last_os_error());
            f()
        });
        if !rx.recv().unwrap_or(false) {
            bail!("cannot enter netns {}", self.name);
        }
        Ok(handle)
    }

    /// Sends one Ethernet frame, as it is, out of `ifname` (an `AF_PACKET`
    /// socket): it arrives at the peer like any frame off the wire.
    pub fn send_frame(&self, ifname: &str, frame: &[u8]) -> Result<()> {
        let (ifname, frame) = (std::ffi::CString::new(ifname)?, frame.to_vec());
        self.enter(move || {
            // SAFETY: a raw packet socket we own; plain syscalls on it.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                if fd < 0 {
                    bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
                }
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_ifindex = libc::if_nametoindex(ifname.as_ptr()).cast_signed();
                sll.sll_halen = 6;
                let sent = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                if sent.cast_unsigned() != frame.len() {
                    bail!("sending a frame of {} bytes out of {ifname:?}: {e}", frame.len());
                }
                Ok(())
            }
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))?
    }

    /// `/proc/net/snmp` and `netstat` counters whose name ends in `InCsumErrors`.
    pub fn csum_errors(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for file in ["/proc/net/snmp", "/proc/net/netstat"] {
            let text = self.exec("cat", &[file])?;
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks(2) {
                let [names, values] = pair else { continue };
                for (n, v) in names.split_whitespace().zip(values.split_whitespace()).skip(1) {
                    if n.contains("CsumErr") {
                        let proto = names.split(':').next().unwrap_or_default();
                        out.push((format!("{proto}{n}"), v.parse().unwrap_or(0)));
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ =
            Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

/// A bpffs mounted on a directory (of a lab, say), unmounted on drop: a
/// pin directory that outlives the daemons started on it, as the host's
/// `/sys/fs/bpf` does (one a daemon mounts inside `ip netns exec` dies
/// with it).
pub struct BpfFs(pub std::path::PathBuf);

impl BpfFs {
    pub fn mount(dir: std::path::PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir))?;
        Ok(Self(dir))
    }

    /// The directory, as the `--pin-dir` argument.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("a lab's paths are UTF-8")
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).stderr(Stdio::null()).status();
    }
}
