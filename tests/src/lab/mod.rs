//! The three-host lab:
//!
//! ```text
//!  client ns                 gateway ns                    server ns
//!  eth0 203.0.113.10 ── pub0 203.0.113.1 | int0 192.168.1.1 ── eth0 192.168.1.50
//!  default via .1                                             no route back
//! ```
//!
//! The server has no route to the client network: replies only find their
//! way because the forwarder masquerades. In the tuned lab (the default)
//! the far veth ends have GRO on, which gives them NAPI, so that the
//! gateway's XDP can transmit into its veths; the untuned lab
//! (`FORWARDER_TEST_LAB=untuned`) leaves every veth at the kernel's
//! defaults, as containers and first tries do, where only the TC path can
//! transmit.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    sync::{
        PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::{Context, Result};

mod wire;

use crate::{
    env::{ADDRS, Addrs, GW_INTERNAL_IF, GW_PUBLIC_IF, Macs, lab_kind, test_mode, tuned_lab},
    netns::{Netns, fmt_mac, run},
    proc::{Forwarder, Spawned, forwarder_bin},
};

const PREFIX: &str = "fwdlab";

/// Labs of one test process share the machine (tests run in parallel);
/// a lab made with [`Lab::alone`] has it to itself.
static MACHINE: RwLock<()> = RwLock::new(());

/// A lab's share of the machine: with others, or alone.
enum Turn {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

impl Turn {
    fn shared() -> Self {
        Self::Shared(MACHINE.read().unwrap_or_else(PoisonError::into_inner))
    }
}
static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    /// Started processes: stopped before the namespaces go.
    procs: Vec<Spawned>,
    pub id: String,
    pub addrs: Addrs,
    pub client: Netns,
    pub gateway: Netns,
    pub server: Netns,
    /// A router between gateway and server ([`Lab::with_router`]).
    pub router: Option<Netns>,
    /// Scratch directory, removed on drop.
    pub dir: PathBuf,
    /// Far ends with GRO on (see the module's notes).
    pub tuned: bool,
    /// Checksums computed in software and verified by the endpoints
    /// ([`lab_kind`] `csum`).
    pub verify_csums: bool,
    /// Held until everything else of the lab is gone.
    _turn: Turn,
}

/// Deletes namespaces and scratch directories of labs whose process is
/// gone (a killed run).
fn sweep_stale() {
    let dead = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !PathBuf::from(format!("/proc/{pid}")).exists())
    };
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            if dead(&e.file_name().to_string_lossy()) {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(e.path().join("bpf"))
                    .stderr(std::process::Stdio::null())
                    .status();
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let Ok(out) = run(Command::new("ip").args(["netns", "list"])) else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if dead(name) {
            let _ = run(Command::new("ip").args(["netns", "del", name]));
        }
    }
}

impl Lab {
    /// Three empty namespaces (four with a router) and a scratch dir.
    fn empty(router: bool, addrs: Addrs, turn: Turn) -> Result<Self> {
        sweep_stale();
        let id = format!("{PREFIX}{}x{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        let client = Netns::create(&format!("{id}-c"))?;
        let gateway = Netns::create(&format!("{id}-g"))?;
        let server = Netns::create(&format!("{id}-s"))?;
        let router = if router { Some(Netns::create(&format!("{id}-r"))?) } else { None };
        Ok(Self {
            procs: Vec::new(),
            id,
            addrs,
            client,
            gateway,
            server,
            router,
            dir,
            tuned: tuned_lab(),
            verify_csums: lab_kind() == "csum",
            _turn: turn,
        })
    }

    /// Readies the gateway for `BPF_PROG_TEST_RUN` frames: client and server
    /// become permanent neighbours (so the FIB lookup says SUCCESS) and
    /// forwarding is on. Returns the MACs the frames carry.
    pub fn prime_gateway(&self) -> Result<Macs> {
        let m = Macs {
            client: self.client.mac("eth0")?,
            gw_pub: self.gateway.mac(GW_PUBLIC_IF)?,
            gw_int: self.gateway.mac(GW_INTERNAL_IF)?,
            server: self.server.mac("eth0")?,
        };
        self.gateway.ip(&[
            "neigh",
            "replace",
            &self.addrs.client.to_string(),
            "lladdr",
            &fmt_mac(m.client),
            "dev",
            GW_PUBLIC_IF,
            "nud",
            "permanent",
        ])?;
        self.gateway.ip(&[
            "neigh",
            "replace",
            &self.addrs.server.to_string(),
            "lladdr",
            &fmt_mac(m.server),
            "dev",
            GW_INTERNAL_IF,
            "nud",
            "permanent",
        ])?;
        self.gateway.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(m)
    }

    /// The suite's lab, built once no other lab of this test process
    /// exists, and none is built while it does: for a test that counts
    /// what the machine's load alone can cost (TCP retransmissions).
    pub fn alone() -> Result<Self> {
        let lab = Self::empty(
            false,
            ADDRS,
            Turn::Alone(MACHINE.write().unwrap_or_else(PoisonError::into_inner)),
        )?;
        lab.wire().with_context(|| format!("building lab {}", lab.id))?;
        Ok(lab)
    }

    /// The lab the suite runs in (tuned unless `FORWARDER_TEST_LAB=untuned`).
    pub fn new() -> Result<Self> {
        Self::with_tuning(tuned_lab())
    }

    /// The lab with its far ends tuned for XDP or not, whatever the suite's.
    pub fn with_tuning(tuned: bool) -> Result<Self> {
        let mut lab = Self::empty(false, ADDRS, Turn::shared())?;
        lab.tuned = tuned;
        lab.verify_csums &= !tuned;
        lab.wire().with_context(|| format!("building lab {}", lab.id))?;
        Ok(lab)
    }

    /// The lab with a plain Linux router between gateway and server, whose
    /// link towards the server has `mtu` (the server's own side keeps 1500,
    /// so its MSS does not hide the bottleneck): packets too big for it make
    /// the router send "fragmentation needed" to the gateway.
    ///
    /// ```text
    /// gateway int0 192.168.1.1 ── r0 192.168.1.254 | r1 192.168.2.1 (mtu) ── eth0 192.168.2.50 server
    /// ```
    pub fn with_router(mtu: u32) -> Result<Self> {
        let lab = Self::empty(
            true,
            Addrs { server: Ipv4Addr::new(192, 168, 2, 50), ..ADDRS },
            Turn::shared(),
        )?;
        lab.wire_routed(mtu).with_context(|| format!("building lab {}", lab.id))?;
        Ok(lab)
    }

    /// Starts `forwarder run` on the gateway (public pub0, internal int0)
    /// with `extra` arguments; waits until it runs. The hook is
    /// [`test_mode`] unless `extra` says otherwise.
    pub fn start_forwarder(&self, extra: &[&str]) -> Result<Forwarder> {
        self.start_forwarder_on(GW_PUBLIC_IF, GW_INTERNAL_IF, extra)
    }

    /// [`Lab::start_forwarder`] with other gateway interfaces.
    pub fn start_forwarder_on(
        &self,
        public: &str,
        internal: &str,
        extra: &[&str],
    ) -> Result<Forwarder> {
        let mut args = vec!["--public", public, "--internal", internal];
        args.extend_from_slice(extra);
        self.start_forwarder_with(&args)
    }

    /// `forwarder run --stats-file … ARGS` on the gateway, nothing else
    /// added but the suite's mode.
    pub fn start_forwarder_with(&self, extra: &[&str]) -> Result<Forwarder> {
        self.start_forwarder_env(&[], extra)
    }

    /// [`Lab::start_forwarder`] with fault points armed
    /// (`FORWARDER_FAILPOINTS=points`).
    pub fn start_forwarder_faulty(&self, points: &str, extra: &[&str]) -> Result<Forwarder> {
        let mut args = vec!["--public", GW_PUBLIC_IF, "--internal", GW_INTERNAL_IF];
        args.extend_from_slice(extra);
        self.start_forwarder_env(&[("FORWARDER_FAILPOINTS", points)], &args)
    }

    /// [`Lab::start_forwarder_with`] with `env` in the daemon's
    /// environment (e.g. `FORWARDER_FAILPOINTS`).
    pub fn start_forwarder_env(&self, env: &[(&str, &str)], extra: &[&str]) -> Result<Forwarder> {
        let bin = forwarder_bin()?;
        let stats = self.dir.join("stats.json");
        let mut cmd = self.gateway.command(bin.to_str().context("binary path")?);
        cmd.args(["run", "--stats-file"])
            .arg(&stats)
            .arg("--control")
            .arg(self.dir.join("control.sock"));
        if !extra.contains(&"--mode") && test_mode() != "default" {
            cmd.args(["--mode", test_mode()]);
        }
        cmd.args(extra);
        cmd.envs(env.iter().copied());
        Forwarder::start(cmd, stats)
    }

    /// The answer of the lab's forwarder daemon on its control socket to
    /// one raw request line.
    pub fn control(&self, line: &str) -> Result<String> {
        use std::io::{BufRead, Write};
        let path = self.dir.join("control.sock");
        let mut s = std::os::unix::net::UnixStream::connect(&path)
            .with_context(|| format!("connecting to {}", path.display()))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        s.write_all(line.as_bytes())?;
        let mut r = String::new();
        std::io::BufReader::new(s).read_line(&mut r)?;
        Ok(r)
    }

    /// The daemon's counters as of now (its `stats` answer's data; the
    /// stats file lags up to its period).
    pub fn live_stats(&self) -> Result<serde_json::Value> {
        let r = self.control("{\"cmd\":\"stats\"}\n")?;
        let mut v: serde_json::Value =
            serde_json::from_str(&r).with_context(|| format!("stats answer {r:?}"))?;
        if v["ok"] != serde_json::Value::Bool(true) {
            anyhow::bail!("stats refused: {r}");
        }
        Ok(v["data"].take())
    }

    /// Starts a process in `ns`, stopped when the lab goes.
    pub fn spawn(&mut self, which: Host, program: &str, args: &[&str]) -> Result<u32> {
        let mut cmd = self.ns(which).command(program);
        cmd.args(args).stdin(std::process::Stdio::null());
        let p = Spawned::spawn(cmd, program)?;
        let pid = p.pid();
        self.procs.push(p);
        Ok(pid)
    }

    /// Starts a prepared command (built with [`Netns::command`]), stopped
    /// when the lab goes.
    pub fn spawn_command(&mut self, cmd: Command, what: &str) -> Result<u32> {
        let p = Spawned::spawn(cmd, what)?;
        let pid = p.pid();
        self.procs.push(p);
        Ok(pid)
    }

    /// Stops (SIGTERM, then SIGKILL after 5 s) a process this lab started,
    /// before the lab goes; `false` if `pid` is not one of them.
    pub fn stop_spawned(&mut self, pid: u32) -> bool {
        let Some(k) = self.procs.iter().position(|p| p.pid() == pid) else { return false };
        let mut p = self.procs.remove(k);
        p.stop(std::time::Duration::from_secs(5));
        true
    }

    pub fn ns(&self, which: Host) -> &Netns {
        match which {
            Host::Client => &self.client,
            Host::Gateway => &self.gateway,
            Host::Server => &self.server,
        }
    }

    /// Checksum-error counters that are not zero, on any host.
    pub fn csum_errors(&self) -> Result<Vec<String>> {
        let mut bad = Vec::new();
        for (host, ns) in
            [("client", &self.client), ("gateway", &self.gateway), ("server", &self.server)]
        {
            for (name, v) in ns.csum_errors()? {
                if v != 0 {
                    bad.push(format!("{host}: {name}={v}"));
                }
            }
        }
        Ok(bad)
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Host {
    Client,
    Gateway,
    Server,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
        // Namespaces (and their veths) are deleted by Netns::drop.
    }
}
