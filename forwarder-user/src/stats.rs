//! Counter snapshots: what `run` prints and writes to `--stats-file`.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use forwarder_common::abi::RuleStats;
use serde::Serialize;

use crate::{
    datapath::{CtUsage, Datapath},
    error::Result,
    settings::Rule,
};

#[derive(Debug, Default, Serialize, serde::Deserialize, Clone)]
pub struct RuleCounters {
    /// The rule's handle.
    pub handle: u32,
    pub rule: String,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub new_connections: u64,
    /// New connections refused by the source allow-list.
    pub denied: u64,
}

impl RuleCounters {
    pub fn new(rule: &Rule, s: &RuleStats) -> Self {
        Self {
            handle: rule.handle,
            rule: rule.to_string(),
            packets_in: s.traffic.orig_packets,
            bytes_in: s.traffic.orig_bytes,
            packets_out: s.traffic.reply_packets,
            bytes_out: s.traffic.reply_bytes,
            new_connections: s.new_conns,
            denied: s.denied,
        }
    }
}

#[derive(Debug, Default, Serialize, serde::Deserialize, Clone)]
pub struct Snapshot {
    pub rules: Vec<RuleCounters>,
    /// Global datapath counters by name (see `forwarder_common::stats`).
    pub counters: BTreeMap<String, u64>,
    /// Connections tracked, and how many the table holds.
    pub connections: u64,
    pub connections_max: u64,
    /// Masquerade source ports held by live connections (one per
    /// masqueraded connection; each (source address, backend, protocol)
    /// has the whole `snat_ports` range).
    #[serde(default)]
    pub snat_ports_in_use: u64,
    /// How each managed interface is served as an egress: by XDP, or
    /// through TC (and why).
    #[serde(default)]
    pub egress: Vec<crate::egress::EgressStatus>,
    /// Failures of the daemon's housekeeping, per task (forwarding is not
    /// affected by them; each is retried).
    #[serde(default)]
    pub daemon_errors: BTreeMap<String, u64>,
    /// The backends of balanced rules, as the daemon sees them.
    #[serde(default)]
    pub backends: Vec<BackendStatus>,
}

/// One backend of a balanced rule.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BackendStatus {
    pub rule: u32,
    /// `ADDR:PORT`.
    pub backend: String,
    pub weight: u32,
    /// `up`, `down`, `pending` or `draining`.
    pub state: String,
    /// The last check's latency (none: not checked yet, or no check).
    pub check_latency_us: Option<u64>,
    /// Packets and bytes translated for its connections: client to
    /// backend (in) and back (out).
    #[serde(default)]
    pub packets_in: u64,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub packets_out: u64,
    #[serde(default)]
    pub bytes_out: u64,
}

impl Snapshot {
    /// A human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>6}  {:<34} {:>10} {:>12} {:>10} {:>12} {:>8} {:>8}",
            "handle", "rule", "pkts in", "bytes in", "pkts out", "bytes out", "conns", "denied"
        );
        for r in &self.rules {
            let _ = writeln!(
                s,
                "{:>6}  {:<34} {:>10} {:>12} {:>10} {:>12} {:>8} {:>8}",
                r.handle,
                r.rule,
                r.packets_in,
                r.bytes_in,
                r.packets_out,
                r.bytes_out,
                r.new_connections,
                r.denied
            );
        }
        let _ = writeln!(
            s,
            "conntrack: {} of {} connections; masquerade ports in use: {}",
            self.connections, self.connections_max, self.snat_ports_in_use
        );
        for e in &self.egress {
            let how = if e.xdp { "XDP" } else { "TC" };
            let _ = write!(s, "egress {}: {how} ({})", e.iface, e.why);
            if e.refused_frames > 0 || e.fallbacks > 0 {
                let _ = write!(
                    s,
                    "; {} frame(s) refused, moved to TC {} time(s)",
                    e.refused_frames, e.fallbacks
                );
            }
            let _ = writeln!(s);
        }
        if !self.daemon_errors.is_empty() {
            let list: Vec<String> =
                self.daemon_errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                s,
                "daemon housekeeping failures (retried; forwarding not affected): {}",
                list.join(" ")
            );
        }
        let nonzero: Vec<String> = self
            .counters
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = write!(
            s,
            "datapath: {}",
            if nonzero.is_empty() { "(no events)".to_string() } else { nonzero.join(" ") }
        );
        s
    }

    /// Writes JSON atomically (temp file + rename): readers never see a torn file.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }
}

/// A datapath's counters as the daemon and its clients show them.
impl Datapath {
    /// Sums the per-CPU counters and counts the conntrack table.
    pub fn snapshot(&self, rules: &[Rule]) -> Result<Snapshot> {
        self.snapshot_with(rules, CtUsage::of(&self.flows()?))
    }

    /// [`Datapath::snapshot`] with the conntrack table's use counted
    /// elsewhere (by the last sweep: reading the whole table costs time).
    pub fn snapshot_with(&self, rules: &[Rule], ct: CtUsage) -> Result<Snapshot> {
        let mut out = Snapshot::default();
        let handles: Vec<u32> = rules.iter().map(|r| r.handle).collect();
        for (rule, sum) in rules.iter().zip(&self.rule_stats(&handles)?) {
            out.rules.push(RuleCounters::new(rule, sum));
        }
        for (name, v) in forwarder_common::stats::NAMES.iter().zip(self.counters()?) {
            out.counters.insert((*name).to_string(), v);
        }
        // Two entries per connection (rounded up: a pair being set up or
        // removed counts whole).
        (out.connections, out.snat_ports_in_use) = (ct.entries.div_ceil(2), ct.snat_ports);
        out.connections_max = u64::from(self.connection_capacity());
        Ok(out)
    }
}
