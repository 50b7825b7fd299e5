//! The modes compared, and setting each up on a fresh lab in its own best
//! configuration.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Result, ensure};
use forwarder::iface;
use forwarder_common::abi::PROG_BENCH_FIB;
use forwarder_testkit::{ADDRS, Forwarder, GW_INTERNAL_IF, GW_PUBLIC_IF, Host, Lab, Macs};

use crate::harness::Bench;
pub(crate) use crate::recipes::{LB_BACKENDS, LB_SERVICES, SERVICES};
use crate::recipes::{balanced_backends, iptables, iptables_lb, nftables, nftables_lb};
use crate::util::{GW_CPU, HOST_CPU, in_ns, pin_process, sh, threaded_napi};

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

/// What a mode left running.
pub(crate) enum Active {
    None,
    Forwarder(Box<Forwarder>),
    /// Held: its programs stay attached until it is dropped.
    Bare(#[expect(dead_code, reason = "held for its attachments")] Box<Bench>),
}

/// The tasks that do the gateway's work, all on [`GW_CPU`]: the NAPI
/// threads of its interfaces (XDP, TC, netfilter and routing all run in
/// them) and, in the forwarder's modes, the daemon.
#[derive(Default)]
pub(crate) struct GwTasks {
    pub(crate) napi: Vec<i32>,
    pub(crate) daemon: Option<u32>,
}

impl GwTasks {
    /// CPU time they have used so far, in ns (the scheduler's own count,
    /// `/proc/TID/schedstat`: exact, unlike tick-sampled `/proc/stat`).
    pub(crate) fn cpu_ns(&self) -> u64 {
        let runtime = |path: String| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let daemon = self
            .daemon
            .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
            .into_iter()
            .flatten()
            .flatten();
        self.napi.iter().map(|t| runtime(format!("/proc/{t}/schedstat"))).sum::<u64>()
            + daemon
                .map(|t| runtime(t.path().join("schedstat").to_string_lossy().into_owned()))
                .sum::<u64>()
    }
}

/// Sets the gateway up for `mode`; returns what it left running, the
/// gateway's tasks and the lab's MACs (for the generated frames).
pub(crate) fn setup(lab: &Lab, mode: Mode) -> Result<(Active, GwTasks, Macs)> {
    // The same gateway in every mode: neighbours pinned, forwarding on.
    let macs = lab.prime_gateway()?;
    // Every veth end gets NAPI (GRO on: frames redirected into a veth need
    // it), in threads of its own: the gateway's on the gateway core, the
    // client's and server's on the other one, with everything else.
    let mut gw = GwTasks::default();
    for ifname in [GW_PUBLIC_IF, GW_INTERNAL_IF] {
        gw.napi.extend(threaded_napi(lab, Host::Gateway, ifname, GW_CPU)?);
    }
    for host in [Host::Client, Host::Server] {
        threaded_napi(lab, host, "eth0", HOST_CPU)?;
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
            forwarder(lab, mode, &rules, &mut gw)?
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
            forwarder(lab, mode.base(), &rules, &mut gw)?
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
    Ok((active, gw, macs))
}

/// The forwarder with `rules`; its daemon on the gateway's core.
fn forwarder(lab: &Lab, mode: Mode, rules: &[String], gw: &mut GwTasks) -> Result<Active> {
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
    gw.daemon = Some(fwd.proc.pid());
    Ok(Active::Forwarder(Box::new(fwd)))
}
