//! What every run must prove before its figures count: the path the
//! packets took, what was delivered against what the gateway sent, the
//! counters each workload owes, the fault counters at 0.

use anyhow::{Context as _, Result, ensure};
use forwarder_testkit::{GW_INTERNAL_IF, Host, Lab};
use serde_json::Value;

use crate::modes::{Active, Mode};
use crate::report::Figures;
use crate::util::{ip_counter, sh};

/// What the gateway's own path sent during a run: the datagrams the
/// kernel's IPv4 forwarding counted, and in the forwarder's modes the
/// packets its XDP and its TC program transmitted; what its internal
/// interface dropped because the server's receive ring was full (the
/// server's NAPI shares its core with the generator); and the generated
/// frames that never got in, the gateway's public veth's receive ring
/// being full.
#[derive(Clone, Copy, Default)]
pub(crate) struct Sent {
    pub(crate) kernel: u64,
    pub(crate) xdp: u64,
    pub(crate) tc: u64,
    pub(crate) egress_dropped: u64,
    pub(crate) ingress_dropped: u64,
}

/// Frames the gateway's internal veth could not hand to the server: skbs
/// and XDP frames.
pub(crate) fn egress_dropped(lab: &Lab) -> Result<u64> {
    veth_dropped(lab, Host::Gateway, GW_INTERNAL_IF)
}

/// Frames `host`'s veth `ifname` could not hand to its peer, its receive
/// ring or backlog full: skbs (`tx_dropped`) and XDP frames.
fn veth_dropped(lab: &Lab, host: Host, ifname: &str) -> Result<u64> {
    let skbs: u64 =
        sh(lab, host, "cat", &[&format!("/sys/class/net/{ifname}/statistics/tx_dropped")])?
            .trim()
            .parse()?;
    Ok(skbs + xdp_xmit_errors(lab, host, ifname)?)
}

/// XDP frames `host`'s veth `ifname` could not put on its peer's receive
/// ring, full (`tx_queue_0_xdp_xmit_errors`, which veth counts on the
/// peer's queue and reports on the sender).
fn xdp_xmit_errors(lab: &Lab, host: Host, ifname: &str) -> Result<u64> {
    let stats = sh(lab, host, "ethtool", &["-S", ifname])?;
    Ok(stats
        .lines()
        .filter_map(|l| {
            l.trim().strip_prefix("tx_queue_0_xdp_xmit_errors:")?.trim().parse::<u64>().ok()
        })
        .sum())
}

impl Sent {
    pub(crate) fn now(lab: &Lab, active: &Active) -> Result<Self> {
        let mut s = Self {
            kernel: ip_counter(lab, "ForwDatagrams")?,
            egress_dropped: egress_dropped(lab)?,
            // The generator's frames, from the client's veth.
            ingress_dropped: veth_dropped(lab, Host::Client, "eth0")?,
            ..Self::default()
        };
        if let Active::Forwarder(_) = active {
            (s.xdp, s.tc) = forwarder_testkit::sent_by_hook(&lab.live_stats()?["counters"])
                .context("no hook counters in the daemon's stats")?;
        }
        Ok(s)
    }

    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            kernel: self.kernel - before.kernel,
            xdp: self.xdp - before.xdp,
            tc: self.tc - before.tc,
            egress_dropped: self.egress_dropped - before.egress_dropped,
            ingress_dropped: self.ingress_dropped - before.ingress_dropped,
        }
    }
}

/// Checks the mode's own path did the work of a packet-rate run that
/// delivered `delivered` packets, and that what it sent arrived: the
/// kernel forwarded them (routing, netfilter, with conntrack entries for
/// the latter) or did not (the XDP modes); the forwarder's XDP carried at
/// least 90 % of them in its XDP mode and none in TC mode; and of what
/// the gateway sent, at least 99 % reached the server or was dropped at
/// its internal interface's queue (the server's receive ring full: the
/// receiver shares its core with the generator) — none went astray.
pub(crate) fn verify_path(lab: &Lab, mode: Mode, delivered: u64, sent: Sent) -> Result<()> {
    if matches!(mode.base(), Mode::Iptables | Mode::Nftables) {
        let n: u64 = sh(lab, Host::Gateway, "conntrack", &["-C"])?.trim().parse()?;
        ensure!(n > 0, "no netfilter conntrack entries: netfilter did not translate");
    }
    if mode.kernel_forwards() {
        ensure!(
            sent.kernel >= delivered * 9 / 10,
            "the kernel forwarded {} datagrams for {delivered} delivered packets",
            sent.kernel
        );
    } else {
        ensure!(
            sent.kernel <= delivered / 100,
            "the kernel forwarded {} datagrams: the mode's own path did not",
            sent.kernel
        );
    }
    let by_gateway = match mode.base() {
        Mode::ForwarderXdp => {
            ensure!(
                forwarder_testkit::xdp_carried_most(sent.xdp, sent.tc),
                "XDP sent {} packets, TC {}: XDP mode must be XDP's work",
                sent.xdp,
                sent.tc
            );
            Some(sent.xdp + sent.tc)
        }
        Mode::ForwarderTc => {
            ensure!(sent.xdp == 0, "XDP sent {} packets in TC mode", sent.xdp);
            Some(sent.tc)
        }
        m if m.kernel_forwards() => Some(sent.kernel),
        _ => None,
    };
    if let Some(n) = by_gateway {
        let queued_out = sent.egress_dropped;
        ensure!(
            (delivered + queued_out) * 100 >= n * 99,
            "the gateway sent {n} packets: {delivered} reached the server, {queued_out} were dropped at its queue, the rest went astray"
        );
    }
    Ok(())
}

/// What the forwarder's counters must show at least after the workloads
/// that ran: (rule index, in the order the mode's rules are given,
/// counter, minimum).
#[derive(Default)]
pub(crate) struct Owed(Vec<(usize, &'static str, u64)>);

impl Owed {
    pub(crate) fn add(&mut self, rule: usize, counter: &'static str, n: u64) {
        self.0.push((rule, counter, n));
    }
}

/// Stops the forwarder of `active` (if the mode runs one) and holds its
/// final counters to [`verify_counters`]: a failure fails every figure of
/// `out`, which the counters cover.
pub(crate) fn stop_and_verify(active: &mut Active, owed: &Owed, mode: Mode, out: &mut Figures) {
    if let Active::Forwarder(f) = active
        && let Err(e) = f.stop().and_then(|stats| verify_counters(&stats, owed, mode))
    {
        let e = format!("{e:#}");
        for f in out {
            f.1 = Err(e.clone());
        }
    }
}

/// Counters of the forwarder that no workload may grow.
pub(crate) const MUST_STAY_ZERO: [&str; 7] = [
    "drop_rewrite_failed",
    "drop_redirect_failed",
    "pass_malformed",
    "drop_ct_insert",
    "drop_no_route",
    "drop_no_src_addr",
    "drop_snat_exhausted",
];

/// The forwarder's final counters: every rule counted at least what the
/// workloads owe it (summed per rule and counter), the hook split of its
/// mode held over the whole run, and nothing grew that must stay 0.
pub(crate) fn verify_counters(stats: &str, owed: &Owed, mode: Mode) -> Result<()> {
    let stats: Value = serde_json::from_str(stats)?;
    let mut want: std::collections::BTreeMap<(usize, &str), u64> =
        std::collections::BTreeMap::new();
    for (rule, counter, n) in &owed.0 {
        *want.entry((*rule, *counter)).or_default() += n;
    }
    for ((rule, counter), n) in want {
        let got = stats["rules"][rule][counter].as_u64().unwrap_or(0);
        let name = stats["rules"][rule]["rule"].as_str().unwrap_or("?");
        ensure!(got >= n, "forwarder rule {name} counted {got} {counter}, the workloads made {n}");
    }
    let c = |k: &str| stats["counters"][k].as_u64().unwrap_or(0);
    let (xdp, tc) = forwarder_testkit::sent_by_hook(&stats["counters"]).unwrap_or_default();
    match mode.base() {
        Mode::ForwarderXdp => ensure!(
            forwarder_testkit::xdp_carried_most(xdp, tc),
            "over the whole run XDP sent {xdp} packets, TC {tc}"
        ),
        _ => ensure!(xdp == 0 && tc > 0, "over the whole run XDP sent {xdp} packets, TC {tc}"),
    }
    let grew: Vec<String> =
        MUST_STAY_ZERO.iter().filter(|k| c(k) > 0).map(|k| format!("{k} {}", c(k))).collect();
    ensure!(grew.is_empty(), "counters that must stay 0: {}", grew.join(", "));
    Ok(())
}
