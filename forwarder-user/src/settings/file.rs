//! The configuration file, both ways: TOML read (serde, every error with
//! its line) and written back (what `forwarder save` writes and `--config`
//! reads).

use std::path::Path;

use serde::Deserialize;

use super::{
    health::FileHealth,
    model::{Backend, Cidr, Mode, Ports, Proto, Rule, Settings},
    rule_spec::{check_backends, parse_backend, parse_ports, parse_weight, port_in_range},
};
use crate::error::{Error, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConntrack {
    max: Option<u64>,
    #[serde(default)]
    timeouts: std::collections::BTreeMap<String, u32>,
    new_conn_rate: Option<u64>,
    new_conn_burst: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    public: Vec<String>,
    #[serde(default)]
    internal: Vec<String>,
    snat_ports: Option<String>,
    conntrack: Option<toml::Spanned<FileConntrack>>,
    mode: Option<Mode>,
    /// Interface name → mode.
    #[serde(default)]
    modes: std::collections::BTreeMap<String, Mode>,
    #[serde(default)]
    rule: Vec<toml::Spanned<FileRule>>,
    audit: Option<toml::Spanned<FileAudit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAudit {
    rate: Option<i64>,
    burst: Option<i64>,
    syslog: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    proto: String,
    port: PortField,
    /// One backend (`ADDR[:PORTS]`), or `backends`.
    to: Option<String>,
    backends: Option<Vec<FileBackend>>,
    interface: Option<String>,
    masquerade: Option<bool>,
    #[serde(default)]
    sources: Vec<String>,
    health: Option<FileHealth>,
}

/// `{ to = "ADDR[:PORTS]", weight = W }` (weight 1 by default).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    to: String,
    weight: Option<i64>,
}

/// `port = 8080` or `port = "8000-9000"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum PortField {
    Number(i64),
    Text(String),
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

impl Settings {
    /// Merges a TOML file into these settings (interfaces and rules are
    /// appended). Errors name the file and line.
    pub fn load_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config { path: path.into(), why: e.to_string() })?;
        self.merge_toml(path, &text)
    }

    pub fn merge_toml(&mut self, path: &Path, text: &str) -> Result<()> {
        let cfg_err = |why: String| Error::Config { path: path.into(), why };
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let at =
                e.span().map(|s| format!("line {}: ", line_of(text, s.start))).unwrap_or_default();
            cfg_err(format!("{at}{}", e.message()))
        })?;
        self.public.extend(file.public);
        self.internal.extend(file.internal);
        if let Some(ct) = file.conntrack {
            let line = line_of(text, ct.span().start);
            let ct = ct.into_inner();
            let at = |why: String| cfg_err(format!("line {line}: conntrack: {why}"));
            if let Some(n) = ct.max {
                self.conntrack.set_max(n).map_err(at)?;
            }
            for (name, secs) in ct.timeouts {
                self.conntrack.set_timeout(&name, secs).map_err(at)?;
            }
            if let Some(n) = ct.new_conn_rate {
                self.conntrack.set_new_conn_rate(n).map_err(at)?;
            }
            if let Some(n) = ct.new_conn_burst {
                self.conntrack.set_new_conn_burst(n).map_err(at)?;
            }
        }
        if let Some(a) = file.audit {
            let line = line_of(text, a.span().start);
            let a = a.into_inner();
            let at = |why: String| cfg_err(format!("line {line}: audit: {why}"));
            if let Some(n) = a.rate {
                self.audit.set_rate(n).map_err(at)?;
            }
            if let Some(n) = a.burst {
                self.audit.set_burst(n).map_err(at)?;
            }
            if let Some(t) = a.syslog {
                self.audit.syslog = Some(t.parse().map_err(at)?);
            }
        }
        if let Some(m) = file.mode {
            self.mode = m;
        }
        self.iface_modes.extend(file.modes);
        if let Some(r) = file.snat_ports {
            self.snat_ports = r.parse().map_err(|e: Error| cfg_err(e.to_string()))?;
        }
        for spanned in file.rule {
            let line = line_of(text, spanned.span().start);
            let r = spanned.into_inner();
            let at = |why: String| cfg_err(format!("line {line}: rule: {why}"));
            let proto: Proto = r.proto.parse().map_err(at)?;
            let ports = match &r.port {
                PortField::Number(n) => port_in_range(*n, "port").map(Ports::one),
                PortField::Text(s) => parse_ports(s, "port"),
            }
            .map_err(at)?;
            let backends = match (&r.to, &r.backends) {
                (Some(to), None) => {
                    let (addr, ports) = parse_backend(to, ports).map_err(at)?;
                    vec![Backend { addr, ports, weight: 1 }]
                }
                (None, Some(list)) if !list.is_empty() => {
                    let set = list
                        .iter()
                        .map(|b| {
                            let (addr, ports) = parse_backend(&b.to, ports)?;
                            let weight =
                                b.weight.map_or(Ok(1), |w| parse_weight(&w.to_string()))?;
                            Ok(Backend { addr, ports, weight })
                        })
                        .collect::<Result<Vec<_>, String>>()
                        .map_err(at)?;
                    check_backends(&set).map_err(at)?;
                    set
                }
                _ => {
                    return Err(at(
                        "give `to` (one backend) or `backends` (a list), not both".into()
                    ));
                }
            };
            let sources = r
                .sources
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<Cidr>, String>>()
                .map_err(at)?;
            self.rules.push(Rule {
                sources,
                proto,
                ports,
                interface: r.interface,
                backends,
                health: r.health.map(FileHealth::resolve).transpose().map_err(at)?,
                masquerade: r.masquerade.unwrap_or(true),
                origin: format!("{}:{line}", path.display()),
            });
        }
        Ok(())
    }

    /// These settings as a config file (what `forwarder save` writes).
    pub fn to_toml(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let list = |v: &[String]| v.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(s, "public = [{}]", list(&self.public));
        let _ = writeln!(s, "internal = [{}]", list(&self.internal));
        let _ = writeln!(s, "snat_ports = \"{}-{}\"", self.snat_ports.0, self.snat_ports.1);
        let _ = writeln!(s, "mode = \"{}\"", self.mode);
        if !self.iface_modes.is_empty() {
            let _ = writeln!(s, "\n[modes]");
            for (i, m) in &self.iface_modes {
                let _ = writeln!(s, "{i:?} = \"{m}\"");
            }
        }
        let t = self.conntrack.timeouts;
        let _ = writeln!(
            s,
            "\n[conntrack]\nmax = {}\ntimeouts = {{ tcp_syn = {}, tcp_syn_recv = {}, tcp_established = {}, tcp_fin = {}, tcp_close = {}, udp = {}, udp_stream = {} }}",
            self.conntrack.max_connections,
            t.tcp_syn,
            t.tcp_syn_recv,
            t.tcp_established,
            t.tcp_fin,
            t.tcp_close,
            t.udp,
            t.udp_stream
        );
        if self.conntrack.new_conn_rate != 0 {
            let _ = writeln!(
                s,
                "new_conn_rate = {}\nnew_conn_burst = {}",
                self.conntrack.new_conn_rate, self.conntrack.new_conn_burst
            );
        }
        let _ = writeln!(s, "\n[audit]\nrate = {}\nburst = {}", self.audit.rate, self.audit.burst);
        if let Some(t) = &self.audit.syslog {
            let _ = writeln!(s, "syslog = \"{t}\"");
        }
        for r in &self.rules {
            let _ = writeln!(s, "\n[[rule]]  # {}", r.origin);
            let _ = writeln!(s, "proto = \"{}\"", r.proto);
            if r.ports.lo == r.ports.hi {
                let _ = writeln!(s, "port = {}", r.ports.lo);
            } else {
                let _ = writeln!(s, "port = \"{}\"", r.ports);
            }
            match r.backends.as_slice() {
                [b] if b.weight == 1 => {
                    let _ = writeln!(s, "to = \"{}:{}\"", b.addr, b.ports);
                }
                set => {
                    let list: Vec<String> = set
                        .iter()
                        .map(|b| {
                            format!("{{ to = \"{}:{}\", weight = {} }}", b.addr, b.ports, b.weight)
                        })
                        .collect();
                    let _ = writeln!(s, "backends = [{}]", list.join(", "));
                }
            }
            if let Some(i) = &r.interface {
                let _ = writeln!(s, "interface = {i:?}");
            }
            let _ = writeln!(s, "masquerade = {}", r.masquerade);
            if !r.sources.is_empty() {
                let _ = writeln!(
                    s,
                    "sources = [{}]",
                    r.sources.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ")
                );
            }
            if let Some(h) = &r.health {
                let _ = write!(s, "{}", h.to_toml());
            }
        }
        s
    }
}
