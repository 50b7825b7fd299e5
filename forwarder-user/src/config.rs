//! Rules and settings: from the command line (`--rule`) and a TOML file,
//! validated as a whole before anything touches the kernel.
//!
//! Rule syntax on the command line:
//!
//! ```text
//! PROTO:PORTS[@IFACE]=ADDR[:PORTS][,no-masquerade][,src=CIDR]...   PORTS = PORT or LOW-HIGH
//! tcp:8080=192.168.1.50:80          # like -p tcp --dport 8080 -j DNAT --to 192.168.1.50:80
//! udp:5353@eth0=10.0.0.2:53         # bound to one public interface
//! tcp:2222=10.0.0.3                 # backend port = public port
//! tcp:8000-9000=10.0.0.4:18000-19000  # each port to its counterpart (same length)
//! udp:6000-6100=10.0.0.5:6000       # a range onto one port
//! tcp:7000-7010=10.0.0.6            # a range onto the same ports
//! tcp:22=10.0.0.7,src=203.0.113.5,src=198.51.100.0/24   # only from these sources
//! ```
//!
//! The same in TOML:
//!
//! ```toml
//! public = ["eth0"]
//! internal = ["eth1"]
//! snat_ports = "10000-32767"
//!
//! [[rule]]
//! proto = "tcp"
//! port = 8080            # or "8000-9000"
//! to = "192.168.1.50:80"  # or "192.168.1.50:18000-19000"
//! interface = "eth0"     # optional
//! masquerade = true      # default
//! sources = ["203.0.113.0/24"]  # optional allow-list
//! ```

use std::{collections::HashMap, fmt, net::Ipv4Addr, path::Path, str::FromStr};

use forwarder_common::{
    abi::{
        self, PROTO_TCP, PROTO_UDP, RULE_F_MASQUERADE, RULE_F_PORT_RANGE, RULE_F_SRC_FILTER,
        RuleKey, RuleTarget, SrcKey,
    },
    conntrack::Timeouts,
    rule,
};
use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(format!("protocol `{s}` is not tcp or udp")),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// An inclusive port range; a single port is `lo == hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

impl Ports {
    pub const fn one(p: u16) -> Self {
        Self { lo: p, hi: p }
    }
    /// Number of ports (never 0).
    pub const fn count(self) -> u32 {
        self.hi as u32 - self.lo as u32 + 1
    }
    pub const fn overlaps(self, o: Self) -> bool {
        self.lo <= o.hi && o.lo <= self.hi
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Parses `PORT` or `LOW-HIGH` (also `LOW:HIGH`, as iptables writes it).
fn parse_ports(s: &str, what: &str) -> Result<Ports, String> {
    let Some((a, b)) = s.split_once(['-', ':']) else {
        return parse_port(s, what).map(Ports::one);
    };
    let (lo, hi) = (parse_port(a, what)?, parse_port(b, what)?);
    if lo > hi {
        return Err(format!("{what} range `{s}` runs backwards"));
    }
    Ok(Ports { lo, hi })
}

/// An IPv4 prefix (`ADDR/LEN`, or a bare address = /32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("source `{s}` is not an IPv4 address or prefix"))?;
        let len: u8 = l
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("source `{s}`: prefix length `{l}` is not 0-32"))?;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "source `{s}` has host bits set (did you mean {}/{len}?)",
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Self { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One port mapping.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rule {
    pub proto: Proto,
    /// Public port(s).
    pub ports: Ports,
    /// Bound to this public interface; `None` = every public interface.
    pub interface: Option<String>,
    pub backend: Ipv4Addr,
    /// Backend port(s): one port, or a range as long as `ports`.
    pub backend_ports: Ports,
    pub masquerade: bool,
    /// Allow-list of client prefixes; empty = everyone.
    pub sources: Vec<Cidr>,
    /// Where the rule came from (`--rule …` or `file:line`), for messages.
    #[serde(skip)]
    pub origin: String,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.proto, self.ports)?;
        if let Some(i) = &self.interface {
            write!(f, "@{i}")?;
        }
        write!(f, "={}:{}", self.backend, self.backend_ports)?;
        if !self.masquerade {
            f.write_str(",no-masquerade")?;
        }
        for s in &self.sources {
            write!(f, ",src={s}")?;
        }
        Ok(())
    }
}

fn parse_port(s: &str, what: &str) -> Result<u16, String> {
    let n: i64 = s.trim().parse().map_err(|_| format!("{what} `{s}` is not a number"))?;
    port_in_range(n, what)
}

fn port_in_range(n: i64, what: &str) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{what} {n} is out of range 1-65535"))
}

/// Parses `ADDR[:PORTS]`; without ports the backend uses the public ones.
/// A backend range must be as long as the public range.
fn parse_backend(s: &str, public: Ports) -> Result<(Ipv4Addr, Ports), String> {
    let (addr, port) = match s.rsplit_once(':') {
        Some((a, p)) => {
            let b = if p.contains('-') {
                parse_ports(p, "backend port")?
            } else {
                Ports::one(parse_port(p, "backend port")?)
            };
            if b.lo != b.hi && b.count() != public.count() {
                return Err(format!(
                    "backend range {b} has {} ports but public range {public} has {}: ranges must be the same length (or map onto one port)",
                    b.count(),
                    public.count()
                ));
            }
            (a, b)
        }
        None => (s, public),
    };
    let addr: Ipv4Addr = addr
        .trim()
        .parse()
        .map_err(|_| format!("backend address `{addr}` is not an IPv4 address"))?;
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
        return Err(format!("backend address `{addr}` cannot be a unicast destination"));
    }
    Ok((addr, port))
}

impl Rule {
    /// Parses `PROTO:PORT[@IFACE]=ADDR[:PORT][,no-masquerade]`.
    pub fn parse_spec(spec: &str) -> Result<Self> {
        let err = |why: String| Error::Rule { spec: spec.to_string(), why };
        let (lhs, rhs) =
            spec.split_once('=').ok_or_else(|| err("expected PROTO:PORT=ADDR[:PORT]".into()))?;
        let (proto, port) =
            lhs.split_once(':').ok_or_else(|| err("expected PROTO:PORT before `=`".into()))?;
        let proto: Proto = proto.parse().map_err(err)?;
        let (port, interface) = match port.split_once('@') {
            Some((p, i)) if !i.is_empty() => (p, Some(i.to_string())),
            Some(_) => return Err(err("empty interface after `@`".into())),
            None => (port, None),
        };
        let ports = parse_ports(port, "public port").map_err(err)?;
        let mut target = rhs.split(',');
        let (backend, backend_ports) =
            parse_backend(target.next().unwrap_or_default(), ports).map_err(err)?;
        let mut masquerade = true;
        let mut sources = Vec::new();
        for opt in target {
            match opt.trim() {
                "no-masquerade" => masquerade = false,
                "masquerade" => masquerade = true,
                o if o.starts_with("src=") => sources.push(o["src=".len()..].parse().map_err(err)?),
                o => {
                    return Err(err(format!(
                        "unknown option `{o}` (known: masquerade, no-masquerade, src=CIDR)"
                    )));
                }
            }
        }
        Ok(Self {
            proto,
            ports,
            interface,
            backend,
            backend_ports,
            masquerade,
            sources,
            origin: format!("--rule {spec}"),
        })
    }
}

/// The masquerade source-port range, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl Default for PortRange {
    fn default() -> Self {
        Self(abi::DEFAULT_SNAT_PORT_MIN, abi::DEFAULT_SNAT_PORT_MAX)
    }
}

impl FromStr for PortRange {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::PortRange(s.to_string(), why.to_string());
        let (a, b) = s.split_once('-').ok_or_else(|| bad("expected LOW-HIGH, e.g. 10000-32767"))?;
        let a = parse_port(a, "low port").map_err(|e| bad(&e))?;
        let b = parse_port(b, "high port").map_err(|e| bad(&e))?;
        if a > b {
            return Err(bad("low port is above high port"));
        }
        if b - a < 15 {
            return Err(bad("fewer than 16 ports"));
        }
        Ok(Self(a, b))
    }
}

/// Which hook carries the datapath on an interface.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// XDP (native, or generic with a warning), with the TC program behind
    /// it for what XDP cannot finish.
    Xdp,
    /// TC ingress only: the skb path (keeps GRO/TSO; handles partial
    /// checksums in the kernel's helpers).
    Tc,
    /// Native XDP where the driver has it, TC elsewhere (never generic
    /// XDP) and on veth (XDP there turns off the peer's TSO: TCP bulk is
    /// faster through TC). The default: it forwards on any interface,
    /// tuned or not.
    #[default]
    Auto,
}

impl Mode {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Tc => "tc",
            Self::Auto => "auto",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "xdp" => Ok(Self::Xdp),
            "tc" => Ok(Self::Tc),
            "auto" => Ok(Self::Auto),
            _ => Err(format!("mode `{s}` is not xdp, tc or auto")),
        }
    }
}

/// Everything `forwarder run` is told.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub public: Vec<String>,
    pub internal: Vec<String>,
    pub rules: Vec<Rule>,
    pub snat_ports: PortRange,
    pub conntrack: ConntrackSettings,
    /// Default hook for every interface.
    pub mode: Mode,
    /// Per-interface overrides (`--iface-mode IFACE=MODE`, `[modes]`).
    pub iface_modes: Vec<(String, Mode)>,
    pub audit: crate::audit::AuditSettings,
}

/// Conntrack table size, timeouts and the new-connection rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// Connections the table holds (two entries each).
    pub max_connections: u32,
    pub timeouts: Timeouts,
    /// New connections each CPU may set up per second (0: no limit, the
    /// default); a second line of defence behind early drop.
    pub new_conn_rate: u32,
    /// New connections a CPU may set up at once (0: as many as the rate).
    pub new_conn_burst: u32,
}

impl Default for ConntrackSettings {
    fn default() -> Self {
        Self {
            max_connections: abi::FLOW_TABLE_SIZE / 2,
            timeouts: Timeouts::default(),
            new_conn_rate: 0,
            new_conn_burst: 0,
        }
    }
}

/// Highest new-connection rate or burst per CPU.
pub const MAX_NEW_CONN_RATE: u64 = 10_000_000;

impl ConntrackSettings {
    /// Sets one timeout by its name (`tcp_established`, …).
    pub fn set_timeout(&mut self, name: &str, secs: u32) -> Result<(), String> {
        let t = &mut self.timeouts;
        let slot = match name {
            "tcp_syn" => &mut t.tcp_syn,
            "tcp_syn_recv" => &mut t.tcp_syn_recv,
            "tcp_established" => &mut t.tcp_established,
            "tcp_fin" => &mut t.tcp_fin,
            "tcp_close" => &mut t.tcp_close,
            "udp" => &mut t.udp,
            "udp_stream" => &mut t.udp_stream,
            _ => {
                return Err(format!(
                    "unknown timeout `{name}` (known: tcp_syn, tcp_syn_recv, tcp_established, tcp_fin, tcp_close, udp, udp_stream)"
                ));
            }
        };
        if secs == 0 {
            return Err(format!("timeout `{name}` must be at least 1 second"));
        }
        *slot = secs;
        Ok(())
    }

    /// The new-connection rate limit (per CPU per second, 0 = off).
    pub fn set_new_conn_rate(&mut self, n: u64) -> Result<(), String> {
        self.new_conn_rate = new_conn(n, "rate")?;
        Ok(())
    }

    pub fn set_new_conn_burst(&mut self, n: u64) -> Result<(), String> {
        self.new_conn_burst = new_conn(n, "burst")?;
        Ok(())
    }

    /// The limit in the datapath's terms: (rate, burst); the burst
    /// defaults to one second's worth.
    pub const fn new_conn_limit(&self) -> (u32, u32) {
        let burst = if self.new_conn_burst == 0 { self.new_conn_rate } else { self.new_conn_burst };
        (self.new_conn_rate, burst)
    }

    /// Validates the table size.
    pub fn set_max(&mut self, n: u64) -> Result<(), String> {
        if !(16..=(1 << 24)).contains(&n) {
            return Err(format!("conntrack max {n} is out of range 16-16777216 connections"));
        }
        self.max_connections = n as u32;
        Ok(())
    }
}

fn new_conn(n: u64, what: &str) -> Result<u32, String> {
    if n > MAX_NEW_CONN_RATE {
        return Err(format!(
            "new-connection {what} {n} is out of range 0-{MAX_NEW_CONN_RATE} per CPU"
        ));
    }
    Ok(n as u32)
}

/// The timeouts in words: `tcp_syn 120 s, tcp_syn_recv 60 s, …`.
pub fn timeouts_text(t: &Timeouts) -> String {
    [
        ("tcp_syn", t.tcp_syn),
        ("tcp_syn_recv", t.tcp_syn_recv),
        ("tcp_established", t.tcp_established),
        ("tcp_fin", t.tcp_fin),
        ("tcp_close", t.tcp_close),
        ("udp", t.udp),
        ("udp_stream", t.udp_stream),
    ]
    .iter()
    .map(|(n, v)| format!("{n} {v} s"))
    .collect::<Vec<_>>()
    .join(", ")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConntrack {
    max: Option<u64>,
    #[serde(default)]
    timeouts: std::collections::BTreeMap<String, u32>,
    new_conn_rate: Option<u64>,
    new_conn_burst: Option<u64>,
}

/// One managed interface, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceSpec {
    pub name: String,
    pub ifindex: u32,
    /// `abi::ROLE_*`.
    pub role: u32,
    pub mode: Mode,
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
    to: String,
    interface: Option<String>,
    masquerade: Option<bool>,
    #[serde(default)]
    sources: Vec<String>,
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
            let (backend, backend_ports) = parse_backend(&r.to, ports).map_err(at)?;
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
                backend,
                backend_ports,
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
            let _ = writeln!(s, "to = \"{}:{}\"", r.backend, r.backend_ports);
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
        }
        s
    }

    /// Checks the whole set: interfaces exist and have one role, rules are
    /// unique and bound only to public interfaces. `ifindex` resolves names
    /// (injected for tests).
    pub fn compile(&self, ifindex: impl Fn(&str) -> Result<u32>) -> Result<Compiled> {
        if self.public.is_empty() {
            return Err(Error::Io("no public interface given (--public IFACE)".into()));
        }
        let mut ifaces: Vec<IfaceSpec> = Vec::new();
        for (names, role) in
            [(&self.public, abi::ROLE_PUBLIC), (&self.internal, abi::ROLE_INTERNAL)]
        {
            for n in names {
                let idx = ifindex(n)?;
                if ifaces.iter().any(|i| &i.name == n) {
                    return Err(Error::InterfaceRole { name: n.clone() });
                }
                let mode = self
                    .iface_modes
                    .iter()
                    .rev()
                    .find(|(i, _)| i == n)
                    .map_or(self.mode, |(_, m)| *m);
                ifaces.push(IfaceSpec { name: n.clone(), ifindex: idx, role, mode });
            }
        }
        if let Some((n, _)) =
            self.iface_modes.iter().find(|(n, _)| !ifaces.iter().any(|i| &i.name == n))
        {
            return Err(Error::Io(format!(
                "mode given for `{n}`, which is neither --public nor --internal"
            )));
        }
        if self.rules.len() > abi::MAX_RULES as usize {
            return Err(Error::TooManyRules(self.rules.len()));
        }
        // Rules on the same (interface, protocol) must not share a port.
        let mut seen: HashMap<(u32, u8), Vec<&Rule>> = HashMap::new();
        let mut entries = Vec::new();
        let mut sources = Vec::new();
        for (id, r) in self.rules.iter().enumerate() {
            let if_idx = match &r.interface {
                None => 0,
                Some(n) => {
                    let idx = ifindex(n)?;
                    if !self.public.contains(n) {
                        return Err(Error::Rule {
                            spec: r.origin.clone(),
                            why: format!("interface `{n}` is not a public interface (--public)"),
                        });
                    }
                    idx
                }
            };
            let same = seen.entry((if_idx, r.proto.number())).or_default();
            if let Some(first) = same.iter().find(|o| o.ports.overlaps(r.ports)) {
                return Err(Error::DuplicateRule {
                    first: format!("{first} ({})", first.origin),
                    second: format!("{r} ({})", r.origin),
                });
            }
            same.push(r);
            let mut flags = if r.masquerade { RULE_F_MASQUERADE } else { 0 };
            if r.backend_ports.lo != r.backend_ports.hi {
                flags |= RULE_F_PORT_RANGE;
            }
            if !r.sources.is_empty() {
                flags |= RULE_F_SRC_FILTER;
                for c in &r.sources {
                    sources.push((
                        32 + u32::from(c.len),
                        SrcKey { rule_id: id as u32, addr: c.addr.octets() },
                    ));
                }
            }
            let target = RuleTarget {
                addr: r.backend.octets(),
                port: r.backend_ports.lo.to_be_bytes(),
                flags,
                rule_id: id as u32,
                public_lo: r.ports.lo,
                _pad: 0,
            };
            for (start, bits) in rule::port_prefixes(r.ports.lo, r.ports.hi) {
                let (prefix_len, key) = rule::key(if_idx, r.proto.number(), start, bits);
                entries.push((prefix_len, key, target));
            }
        }
        if sources.len() > abi::MAX_SRC_ENTRIES as usize {
            return Err(Error::Io(format!(
                "{} source prefixes over all rules; at most {}",
                sources.len(),
                abi::MAX_SRC_ENTRIES
            )));
        }
        Ok(Compiled {
            ifaces,
            rules: entries,
            sources,
            snat_ports: self.snat_ports,
            conntrack: self.conntrack,
            audit: (self.audit.rate, self.audit.burst),
            new_conn: self.conntrack.new_conn_limit(),
        })
    }
}

/// Validated settings, in the datapath's terms.
#[derive(Debug)]
pub struct Compiled {
    pub ifaces: Vec<IfaceSpec>,
    /// Trie entries `(prefix length, key, target)`; a range has several.
    /// `RuleTarget::rule_id` = index in `Settings::rules`.
    pub rules: Vec<(u32, RuleKey, RuleTarget)>,
    /// Allow-list trie entries `(prefix length, key)`.
    pub sources: Vec<(u32, SrcKey)>,
    pub snat_ports: PortRange,
    pub conntrack: ConntrackSettings,
    /// Audit events per second and burst, per CPU.
    pub audit: (u32, u32),
    /// New connections per second and burst, per CPU (rate 0: no limit).
    pub new_conn: (u32, u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_ifindex(n: &str) -> Result<u32> {
        match n {
            "pub0" => Ok(2),
            "pub1" => Ok(3),
            "int0" => Ok(4),
            _ => Err(Error::UnknownInterface(n.into())),
        }
    }

    fn settings(rules: &[&str]) -> Settings {
        Settings {
            public: vec!["pub0".into(), "pub1".into()],
            internal: vec!["int0".into()],
            rules: rules.iter().map(|r| Rule::parse_spec(r).unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn parses_specs() {
        let r = Rule::parse_spec("tcp:8080=192.168.1.50:80").unwrap();
        assert_eq!(
            (r.proto, r.ports, r.backend, r.backend_ports, r.masquerade),
            (Proto::Tcp, Ports::one(8080), Ipv4Addr::new(192, 168, 1, 50), Ports::one(80), true)
        );
        let r = Rule::parse_spec("udp:53@pub0=10.0.0.2,no-masquerade").unwrap();
        assert_eq!(
            (r.interface.as_deref(), r.backend_ports, r.masquerade),
            (Some("pub0"), Ports::one(53), false)
        );
        assert_eq!(r.to_string(), "udp:53@pub0=10.0.0.2:53,no-masquerade");
    }

    #[test]
    fn refuses_bad_specs_naming_the_value() {
        for (spec, needle) in [
            ("tcp:0=10.0.0.1:80", "public port 0 is out of range"),
            ("tcp:65536=10.0.0.1:80", "public port 65536 is out of range"),
            ("tcp:80=10.0.0.1:70000", "backend port 70000"),
            ("sctp:80=10.0.0.1", "protocol `sctp`"),
            ("tcp:80=10.0.0.300", "`10.0.0.300` is not an IPv4"),
            ("tcp:80", "expected PROTO:PORT=ADDR"),
            ("tcp:http=10.0.0.1", "public port `http` is not a number"),
            ("tcp:80=10.0.0.1,fast", "unknown option `fast`"),
            ("tcp:80=0.0.0.0", "cannot be a unicast"),
            ("tcp:9000-8000=10.0.0.1", "runs backwards"),
            ("tcp:22=10.0.0.1,src=203.0.113.5/24", "host bits set (did you mean 203.0.113.0/24?)"),
            ("tcp:22=10.0.0.1,src=203.0.113.0/33", "prefix length `33`"),
            ("tcp:22=10.0.0.1,src=bad", "source `bad`"),
            (
                "tcp:8000-9000=10.0.0.1:1-10",
                "backend range 1-10 has 10 ports but public range 8000-9000 has 1001",
            ),
            ("udp:1-70000=10.0.0.1", "public port 70000 is out of range"),
        ] {
            let e = Rule::parse_spec(spec).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(spec), "{spec}: {e}");
        }
    }

    #[test]
    fn compiles_and_numbers_rules() {
        let c = settings(&["tcp:8080=10.0.2.2:80", "udp:53@pub1=10.0.2.3"])
            .compile(fake_ifindex)
            .unwrap();
        assert_eq!(c.ifaces.len(), 3);
        assert!(c.ifaces.iter().all(|i| i.mode == Mode::Auto), "auto is the default");
        assert_eq!(c.rules[0].0, abi::RULE_KEY_FULL_BITS);
        assert_eq!(
            c.rules[0].1,
            RuleKey { ifindex: 0, port: 8080u16.to_be_bytes(), proto: 6, _pad: 0 }
        );
        assert_eq!(c.rules[1].1.ifindex, 3);
        assert_eq!(c.rules[1].2.rule_id, 1);
        assert_eq!(c.rules[0].2.flags, RULE_F_MASQUERADE);
    }

    #[test]
    fn source_lists() {
        let c =
            settings(&["tcp:22=10.0.2.2,src=203.0.113.5,src=198.51.100.0/24", "tcp:80=10.0.2.3"])
                .compile(fake_ifindex)
                .unwrap();
        assert_eq!(c.rules[0].2.flags & RULE_F_SRC_FILTER, RULE_F_SRC_FILTER);
        assert_eq!(c.rules[1].2.flags & RULE_F_SRC_FILTER, 0);
        assert_eq!(
            c.sources,
            [
                (64, SrcKey { rule_id: 0, addr: [203, 0, 113, 5] }),
                (56, SrcKey { rule_id: 0, addr: [198, 51, 100, 0] })
            ]
        );
        let r = Rule::parse_spec("tcp:22=10.0.2.2,src=0.0.0.0/0").unwrap();
        assert_eq!(r.to_string(), "tcp:22=10.0.2.2:22,src=0.0.0.0/0");
    }

    #[test]
    fn ranges_compile_to_prefixes() {
        let c = settings(&["tcp:8000-9000=10.0.2.2:18000-19000", "udp:6000-6100=10.0.2.3:53"])
            .compile(fake_ifindex)
            .unwrap();
        let r0: Vec<_> = c.rules.iter().filter(|e| e.2.rule_id == 0).collect();
        assert!(r0.len() > 1 && r0.len() <= 30);
        assert!(r0.iter().all(|e| e.2.flags & RULE_F_PORT_RANGE != 0 && e.2.public_lo == 8000));
        let covered: u32 = r0.iter().map(|e| 1u32 << (abi::RULE_KEY_FULL_BITS - e.0)).sum();
        assert_eq!(covered, 1001);
        assert!(
            c.rules.iter().filter(|e| e.2.rule_id == 1).all(|e| e.2.flags & RULE_F_PORT_RANGE == 0)
        );
        let e = settings(&["tcp:8000-9000=10.0.2.2", "tcp:8500=10.0.2.3"])
            .compile(fake_ifindex)
            .unwrap_err();
        assert!(
            e.to_string().contains("tcp:8000-9000") && e.to_string().contains("tcp:8500"),
            "{e}"
        );
    }

    #[test]
    fn refuses_duplicates_unknown_and_misplaced_interfaces() {
        let e = settings(&["tcp:8080=10.0.2.2:80", "tcp:8080=10.0.2.3:80"])
            .compile(fake_ifindex)
            .unwrap_err();
        assert!(e.to_string().contains("duplicate rule"), "{e}");
        // Same port on different protocols or interfaces is fine.
        settings(&["tcp:8080=10.0.2.2:80", "udp:8080=10.0.2.3:80", "tcp:8080@pub0=10.0.2.4"])
            .compile(fake_ifindex)
            .unwrap();
        let e = settings(&["tcp:1@eth9=10.0.2.2"]).compile(fake_ifindex).unwrap_err();
        assert!(e.to_string().contains("`eth9` does not exist"), "{e}");
        let e = settings(&["tcp:1@int0=10.0.2.2"]).compile(fake_ifindex).unwrap_err();
        assert!(e.to_string().contains("`int0` is not a public interface"), "{e}");
        let mut s = settings(&[]);
        s.internal.push("pub0".into());
        assert!(matches!(s.compile(fake_ifindex), Err(Error::InterfaceRole { .. })));
    }

    #[test]
    fn toml_file_with_line_numbers() {
        let mut s = Settings::default();
        let text = "public = [\"pub0\"]\ninternal = [\"int0\"]\nsnat_ports = \"20000-20100\"\n\n[[rule]]\nproto = \"tcp\"\nport = 8080\nto = \"10.0.2.2:80\"\n";
        s.merge_toml(Path::new("f.toml"), text).unwrap();
        assert_eq!(s.rules[0].origin, "f.toml:5");
        assert_eq!(s.snat_ports, PortRange(20000, 20100));

        let bad =
            "public = [\"pub0\"]\n[[rule]]\nproto = \"tcp\"\nport = 99999\nto = \"10.0.2.2\"\n";
        let e = Settings::default().merge_toml(Path::new("f.toml"), bad).unwrap_err().to_string();
        assert!(e.contains("f.toml") && e.contains("line 2") && e.contains("99999"), "{e}");

        let unknown = "public = [\"pub0\"]\n[[rule]]\nproto = \"tcp\"\nport = 80\nto = \"10.0.2.2\"\ncolour = \"red\"\n";
        let e =
            Settings::default().merge_toml(Path::new("f.toml"), unknown).unwrap_err().to_string();
        assert!(e.contains("line 6") && e.contains("colour"), "{e}");
    }

    #[test]
    fn modes_per_interface() {
        let mut set = settings(&[]);
        set.mode = Mode::Tc;
        set.iface_modes.push(("pub1".into(), Mode::Xdp));
        let c = set.compile(fake_ifindex).unwrap();
        let got: Vec<_> = c.ifaces.iter().map(|i| (i.name.as_str(), i.mode)).collect();
        assert_eq!(got, [("pub0", Mode::Tc), ("pub1", Mode::Xdp), ("int0", Mode::Tc)]);
        set.iface_modes.push(("eth7".into(), Mode::Xdp));
        assert!(set.compile(fake_ifindex).unwrap_err().to_string().contains("`eth7`"));
        let mut file = Settings::default();
        file.merge_toml(
            Path::new("m.toml"),
            "public = [\"pub0\"]\nmode = \"auto\"\n[modes]\npub0 = \"tc\"\n",
        )
        .unwrap();
        assert_eq!(
            (file.mode, file.iface_modes.clone()),
            (Mode::Auto, vec![("pub0".to_string(), Mode::Tc)])
        );
        let err = Settings::default()
            .merge_toml(Path::new("m.toml"), "mode = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("fast"), "{err}");
    }

    #[test]
    fn conntrack_settings() {
        let mut s = Settings::default();
        s.merge_toml(Path::new("c.toml"), "[conntrack]\nmax = 1000\ntimeouts = { tcp_established = 3600, udp = 10, tcp_syn_recv = 7 }\nnew_conn_rate = 500\n").unwrap();
        assert_eq!(s.conntrack.max_connections, 1000);
        assert_eq!(
            (s.conntrack.timeouts.tcp_syn_recv, s.conntrack.new_conn_limit()),
            (7, (500, 500)),
            "burst defaults to the rate"
        );
        s.merge_toml(Path::new("c.toml"), "[conntrack]\nnew_conn_burst = 50\n").unwrap();
        assert_eq!(s.conntrack.new_conn_limit(), (500, 50));
        let e = Settings::default()
            .merge_toml(Path::new("c.toml"), "\n\n[conntrack]\nnew_conn_rate = 99999999999\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("new-connection rate 99999999999 is out of range"),
            "{e}"
        );
        assert_eq!(
            (
                s.conntrack.timeouts.tcp_established,
                s.conntrack.timeouts.udp,
                s.conntrack.timeouts.tcp_fin
            ),
            (3600, 10, 120)
        );
        let e = Settings::default()
            .merge_toml(Path::new("c.toml"), "\n[conntrack]\ntimeouts = { tcp_forever = 1 }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("`tcp_forever`"), "{e}");
        let e = Settings::default()
            .merge_toml(Path::new("c.toml"), "[conntrack]\nmax = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("conntrack max 3"), "{e}");
    }

    #[test]
    fn audit_settings() {
        let mut s = Settings::default();
        assert_eq!(
            (s.audit.rate, s.audit.burst, s.audit.syslog),
            (crate::audit::DEFAULT_RATE, crate::audit::DEFAULT_BURST, None)
        );
        s.merge_toml(
            Path::new("c.toml"),
            "[audit]\nrate = 50\nburst = 5\nsyslog = \"tcp://10.0.0.5:601\"\n",
        )
        .unwrap();
        assert_eq!(
            (s.audit.rate, s.audit.burst, s.audit.syslog.unwrap().to_string()),
            (50, 5, "tcp://10.0.0.5:601".to_string())
        );
        for (text, says) in [
            (
                "\n\n[audit]\nsyslog = \"smtp://1.2.3.4:25\"\n",
                "c.toml: line 3: audit: syslog target `smtp://1.2.3.4:25`: unknown transport `smtp`",
            ),
            ("[audit]\nrate = -5\n", "c.toml: line 1: audit: audit rate -5 is out of range"),
            ("[audit]\nburst = 0\n", "audit burst 0 is out of range 1-"),
            ("[audit]\nverbose = true\n", "unknown field `verbose`"),
        ] {
            let e =
                Settings::default().merge_toml(Path::new("c.toml"), text).unwrap_err().to_string();
            assert!(e.contains(says), "{e}\nwanted {says}");
        }
    }

    #[test]
    fn saved_config_reads_back_the_same() {
        let mut s = settings(&[
            "tcp:8080@pub0=10.0.2.2:80",
            "udp:6000-6010=10.0.2.3:53,no-masquerade,src=203.0.113.0/24",
        ]);
        s.mode = Mode::Auto;
        s.iface_modes.push(("int0".into(), Mode::Tc));
        s.conntrack.set_timeout("udp", 7).unwrap();
        s.conntrack.set_timeout("tcp_syn_recv", 9).unwrap();
        s.conntrack.set_new_conn_rate(100).unwrap();
        s.conntrack.set_new_conn_burst(10).unwrap();
        s.audit.set_rate(0).unwrap();
        s.audit.syslog = Some("udp://10.0.0.5:514".parse().unwrap());
        let mut back = Settings::default();
        back.merge_toml(Path::new("saved.toml"), &s.to_toml()).unwrap();
        assert_eq!(back.public, s.public);
        assert_eq!(back.internal, s.internal);
        assert_eq!(
            (back.mode, back.iface_modes.clone(), back.conntrack, back.snat_ports),
            (s.mode, s.iface_modes.clone(), s.conntrack, s.snat_ports)
        );
        assert_eq!(back.audit, s.audit);
        let strip = |v: &[Rule]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(strip(&back.rules), strip(&s.rules));
    }

    #[test]
    fn port_ranges() {
        assert_eq!("1024-65535".parse::<PortRange>().unwrap(), PortRange(1024, 65535));
        assert!("2000-1000".parse::<PortRange>().unwrap_err().to_string().contains("`2000-1000`"));
        assert!("1000-1001".parse::<PortRange>().is_err());
        assert!("0-1000".parse::<PortRange>().is_err());
    }
}
