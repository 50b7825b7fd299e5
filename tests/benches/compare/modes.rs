//! The modes compared, and setting each up on a fresh lab in its own best
//! configuration.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use anyhow::{Result, ensure};
use forwarder::iface;
use forwarder_common::abi::PROG_BENCH_FIB;
use forwarder_testkit::{ADDRS, Forwarder, GW_INTERNAL_IF, GW_PUBLIC_IF, Host, Lab, Macs};

use crate::harness::Bench;
pub(crate) use crate::recipes::{LB_BACKENDS, LB_SERVICES, SERVICES};
use crate::recipes::{balanced_backends, iptables, iptables_lb, nftables, nftables_lb};
use crate::util::{GW_CPU, HOST_CPU, in_ns, pin_process, rps, sh, threaded_napi};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    Routing,
    Iptables,
    Nftables,
    ForwarderXdp,
    ForwarderTc,
    BareXdp,
    /// A port spread over three backends: iptables' `statistic` match
    /// (the recipe's way to balance), nftables' `numgen`, the forwarder's
    /// Maglev in each hook.
    IptablesLb,
    NftablesLb,
    ForwarderXdpLb,
    ForwarderTcLb,
}

pub(crate) const MODES: [Mode; 6] = [
    Mode::Routing,
    Mode::Iptables,
    Mode::Nftables,
    Mode::ForwarderXdp,
    Mode::ForwarderTc,
    Mode::BareXdp,
];

/// The balanced service's modes; the first is the one the others are
/// compared with.
pub(crate) const LB_MODES: [Mode; 4] =
    [Mode::IptablesLb, Mode::NftablesLb, Mode::ForwarderXdpLb, Mode::ForwarderTcLb];

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Routing => "routing (no NAT)",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::ForwarderXdp => "forwarder XDP",
            Self::ForwarderTc => "forwarder TC (mode auto)",
            Self::BareXdp => "bare XDP redirect (no NAT)",
            Self::IptablesLb => "iptables statistic",
            Self::NftablesLb => "nftables numgen",
            Self::ForwarderXdpLb => "forwarder XDP, Maglev",
            Self::ForwarderTcLb => "forwarder TC, Maglev",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Routing => "routing",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::ForwarderXdp => "forwarder_xdp",
            Self::ForwarderTc => "forwarder_tc",
            Self::BareXdp => "bare_xdp",
            Self::IptablesLb => "iptables_lb",
            Self::NftablesLb => "nftables_lb",
            Self::ForwarderXdpLb => "forwarder_xdp_lb",
            Self::ForwarderTcLb => "forwarder_tc_lb",
        }
    }

    /// The single-backend mode whose path a balanced one takes (what the
    /// path checks hold it to).
    pub(crate) fn base(self) -> Self {
        match self {
            Self::IptablesLb => Self::Iptables,
            Self::NftablesLb => Self::Nftables,
            Self::ForwarderXdpLb => Self::ForwarderXdp,
            Self::ForwarderTcLb => Self::ForwarderTc,
            m => m,
        }
    }

    /// Whether it spreads its ports over [`LB_BACKENDS`].
    pub(crate) fn balanced(self) -> bool {
        self.base() != self
    }

    /// Whether it is netfilter's (the figures' reference).
    pub(crate) fn netfilter(self) -> bool {
        matches!(self.base(), Self::Iptables | Self::Nftables)
    }

    /// Whether the gateway's work is XDP's (no skb on its path).
    pub(crate) fn xdp(self) -> bool {
        matches!(self.base(), Self::ForwarderXdp | Self::BareXdp)
    }

    pub(crate) fn nat(self) -> bool {
        !matches!(self, Self::Routing | Self::BareXdp)
    }

    /// Whether packets should cross the kernel's IPv4 forwarding code.
    pub(crate) fn kernel_forwards(self) -> bool {
        matches!(self.base(), Self::Routing | Self::Iptables | Self::Nftables)
    }

    /// Where the client sends to: (address, port) for a service port.
    pub(crate) fn target(self, service: u16) -> SocketAddr {
        if self.nat() {
            let public = match service {
                80 => 8080,
                p => p,
            };
            SocketAddr::from((ADDRS.gw_public, public))
        } else {
            SocketAddr::from((ADDRS.server, service))
        }
    }

    /// The source address the server must see.
    pub(crate) fn seen_source(self) -> Ipv4Addr {
        if self.nat() { ADDRS.gw_internal } else { ADDRS.client }
    }
}

/// How the lab's veths are set up: where each path's packet work runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Env {
    /// Each mode at its best. Routing, netfilter and the forwarder's TC
    /// mode on the kernel's default veth path: the gateway's veths as
    /// created (no NAPI: a frame they receive goes to the backlog), the
    /// receive work steered to the gateway's core by RPS, as a NIC's
    /// interrupts would be. The XDP modes with what XDP on a veth needs:
    /// NAPI on the gateway's veths, in threads on the gateway's core. The
    /// endpoints' veths have NAPI (GRO on) without threads in every mode:
    /// what the gateway sends them is received on the gateway's core,
    /// alike for every path (no cross-core wakeup per packet).
    Best,
    /// XDP's environment: every veth end with NAPI in threads (GRO on),
    /// the gateway's on its core, the endpoints' on the other. An skb path
    /// wakes the receiver's thread across cores for every packet there, an
    /// XDP redirect once per batch.
    Napi,
}

impl Env {
    pub(crate) const ALL: [Self; 2] = [Self::Best, Self::Napi];

    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Best => "best",
            Self::Napi => "napi",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Best => {
                "each mode at its best: skb paths on the default veth path with RPS to the gateway core, XDP with NAPI threads there"
            }
            Self::Napi => "every veth end with threaded NAPI and GRO (XDP's environment)",
        }
    }

    /// Whether `mode`'s packets reach the gateway through the backlog (no
    /// NAPI on its veths): the generator must send skbs then.
    pub(crate) fn backlog(self, mode: Mode) -> bool {
        self == Self::Best && !mode.xdp()
    }
}

/// What a mode left running.
pub(crate) enum Active {
    None,
    Forwarder(Box<Forwarder>),
    /// Held: its programs stay attached until it is dropped.
    Bare(#[expect(dead_code, reason = "held for its attachments")] Box<Bench>),
}

/// The gateway's core ([`GW_CPU`]): everything that runs on it — the
/// gateway's packet work in every environment (NAPI threads, softirqs,
/// the backlog), the forwarder's daemon, and in [`Env::Best`] what the
/// endpoints receive from the gateway — and nothing else (the rest is
/// pinned to the other core).
pub(crate) struct GwCore {
    cpu: usize,
}

impl GwCore {
    /// The core's busy time since an arbitrary origin, in ns: the
    /// monotonic clock less the core's idle and iowait time from
    /// `/proc/stat`. The kernel measures idle time exactly (from the
    /// clock at idle entry and exit, interrupts and softirqs taken out),
    /// where its user/system/softirq split is sampled at the tick (a
    /// burst of packet work between two ticks goes uncounted there). The
    /// file rounds idle time down to 10 ms: this reads it until it steps
    /// (the core idles between runs), when the exact time is the value
    /// shown, within a read's time (tens of µs). A core that does not
    /// idle for 25 ms gets the rounded value.
    pub(crate) fn cpu_ns(&self) -> u64 {
        let read = || -> (u64, u64) {
            // SAFETY: plain data; clock_gettime writes it.
            let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
            let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
            // SAFETY: valid pointer to a timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
            let now = u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
                + u64::try_from(ts.tv_nsec).unwrap_or(0);
            let name = format!("cpu{} ", self.cpu);
            let v: Vec<u64> = stat
                .lines()
                .find(|l| l.starts_with(&name))
                .map(|l| l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect())
                .unwrap_or_default();
            // user nice system idle iowait irq softirq steal …, in 1/100 s.
            let away: u64 = [3, 4].iter().filter_map(|&i| v.get(i)).sum();
            (now, away * 10_000_000)
        };
        let (t0, away0) = read();
        loop {
            let (now, away) = read();
            if away != away0 || now - t0 > 25_000_000 {
                return now.saturating_sub(away);
            }
        }
    }
}

/// Sets the gateway up for `mode` in `env`; returns what it left
/// running, the gateway's core and the lab's MACs (for the generated
/// frames).
pub(crate) fn setup(
    lab: &Lab,
    mode: Mode,
    env: Env,
    traffic: &Arc<Mutex<Bench>>,
) -> Result<(Active, GwCore, Macs)> {
    // The same gateway in every mode: neighbours pinned, forwarding on.
    let macs = lab.prime_gateway()?;
    // The generator: XDP frames into a gateway veth with NAPI, skbs into
    // one without (bounced out of the client's interface by TC).
    let skbs = env.backlog(mode);
    traffic.lock().expect("datapath").set_generator_skbs(skbs);
    if skbs {
        let t = traffic.clone();
        in_ns(&lab.client, move || t.lock().expect("datapath").attach_bounce("eth0"))??;
    }
    match env {
        // NAPI (GRO on: frames redirected into a veth need it) in threads
        // of their own: the gateway's on the gateway core, the client's
        // and server's on the other one, with everything else.
        Env::Napi => {
            for ifname in [GW_PUBLIC_IF, GW_INTERNAL_IF] {
                threaded_napi(lab, Host::Gateway, ifname, GW_CPU)?;
            }
            for host in [Host::Client, Host::Server] {
                threaded_napi(lab, host, "eth0", HOST_CPU)?;
            }
        }
        Env::Best => {
            for ifname in [GW_PUBLIC_IF, GW_INTERNAL_IF] {
                if mode.xdp() {
                    threaded_napi(lab, Host::Gateway, ifname, GW_CPU)?;
                } else {
                    rps(lab, ifname, GW_CPU)?;
                }
            }
            for host in [Host::Client, Host::Server] {
                sh(lab, host, "ethtool", &["-K", "eth0", "gro", "on"])?;
            }
        }
    }
    // Client and server put complete checksums and MTU-sized segments on
    // the "wire", as packets from a real network arrive at a gateway (a
    // veth otherwise passes CHECKSUM_PARTIAL super-packets from local
    // senders, which no NIC delivers).
    for host in [Host::Client, Host::Server] {
        sh(lab, host, "ethtool", &["-K", "eth0", "tx", "off"])?;
    }
    if !mode.nat() {
        lab.server.ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &ADDRS.gw_internal.to_string(),
        ])?;
    }
    let s = ADDRS.server.to_string();
    if mode.balanced() {
        balanced_backends(lab, macs.server)?;
    }
    let active = match mode {
        Mode::Routing => Active::None,
        Mode::Iptables => {
            iptables(lab, &s)?;
            Active::None
        }
        Mode::Nftables => {
            nftables(lab, &s)?;
            Active::None
        }
        Mode::ForwarderXdp | Mode::ForwarderTc => {
            let rules: Vec<String> = SERVICES
                .iter()
                .map(|(proto, public, port)| format!("{proto}:{public}={s}:{port}"))
                .collect();
            forwarder(lab, mode, &rules)?
        }
        Mode::IptablesLb => {
            iptables_lb(lab)?;
            Active::None
        }
        Mode::NftablesLb => {
            nftables_lb(lab)?;
            Active::None
        }
        Mode::ForwarderXdpLb | Mode::ForwarderTcLb => {
            let rules: Vec<String> = LB_SERVICES
                .iter()
                .map(|(proto, public, port)| {
                    let set: Vec<String> =
                        LB_BACKENDS.iter().map(|b| format!("{b}:{port}")).collect();
                    format!("{proto}:{public}={}", set.join("+"))
                })
                .collect();
            forwarder(lab, mode.base(), &rules)?
        }
        Mode::BareXdp => {
            let dp = in_ns(&lab.gateway, || -> Result<Bench> {
                let mut b = Bench::load()?;
                b.set_tx_ports(&[iface::index(GW_PUBLIC_IF)?, iface::index(GW_INTERNAL_IF)?])?;
                b.attach(PROG_BENCH_FIB, GW_PUBLIC_IF)?;
                b.attach(PROG_BENCH_FIB, GW_INTERNAL_IF)?;
                Ok(b)
            })??;
            Active::Bare(Box::new(dp))
        }
    };
    Ok((active, GwCore { cpu: GW_CPU }, macs))
}

/// The forwarder with `rules`; its daemon on the gateway's core.
fn forwarder(lab: &Lab, mode: Mode, rules: &[String]) -> Result<Active> {
    let mut args: Vec<&str> = Vec::new();
    for r in rules {
        args.extend(["--rule", r.as_str()]);
    }
    // Audit off: the recipe it is compared with has no LOG rule.
    // TC mode is what `--mode auto` picks on veth: run as such.
    // Masquerade ports: the whole range, as MASQUERADE takes it
    // (the default leaves 32768-60999 to the gateway's own sockets).
    args.extend([
        "--mode",
        if mode == Mode::ForwarderXdp { "xdp" } else { "auto" },
        "--xdp-attach",
        "native",
        "--audit-rate",
        "0",
        "--snat-ports",
        "1024-65535",
    ]);
    let fwd = lab.start_forwarder(&args)?;
    if mode == Mode::ForwarderTc {
        let log = fwd.log_text();
        ensure!(
            log.matches("using TC (mode auto").count() == 2,
            "mode auto did not pick TC on both veths:\n{log}"
        );
    }
    // Its control plane is gateway work too: counted with it, and
    // on the gateway's core (on a real gateway it shares the
    // machine with the packet work, never with the endpoints).
    pin_process(fwd.proc.pid(), GW_CPU)?;
    Ok(Active::Forwarder(Box::new(fwd)))
}
