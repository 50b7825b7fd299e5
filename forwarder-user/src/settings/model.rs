//! What `forwarder run` is told, as values: rules (protocol, public
//! ports, backend, masquerade, sources), interfaces and their modes, the
//! masquerade ports, conntrack and audit settings.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use forwarder_common::{
    abi::{self, PROTO_TCP, PROTO_UDP},
    conntrack::{self, Timeouts},
};

use crate::error::Result;

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

/// Most backends one rule may have.
pub const MAX_RULE_BACKENDS: usize = 1024;
/// Highest backend weight.
pub const MAX_WEIGHT: u32 = 10_000;

/// One backend of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Backend {
    pub addr: Ipv4Addr,
    /// One port, or a range as long as the rule's public one.
    pub ports: Ports,
    /// Share of new connections against the rule's other backends; 0 =
    /// none (in the rule, out of the table).
    pub weight: u32,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.ports)?;
        if self.weight != 1 {
            write!(f, "*{}", self.weight)?;
        }
        Ok(())
    }
}

impl Rule {
    /// The first backend (every rule has one).
    pub fn first_backend(&self) -> &Backend {
        &self.backends[0]
    }

    /// The backend port a connection of this rule to a backend whose
    /// first port is `first` has: `first`, or `None` (any) when the rule
    /// maps a port range.
    pub const fn backend_port_match(&self, first: u16) -> Option<u16> {
        if self.ports.lo == self.ports.hi { Some(first) } else { None }
    }
}

/// One port mapping.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rule {
    /// Its handle: given when the rule is added and never changed while
    /// it exists (`rule del`, `conntrack --rule`, counters, audit events
    /// and metrics name the rule by it); 0 until
    /// [`Settings::assign_handles`] gives one.
    pub handle: u32,
    pub proto: Proto,
    /// Public port(s).
    pub ports: Ports,
    /// Bound to this public interface; `None` = every public interface.
    pub interface: Option<String>,
    /// One or several (balanced by Maglev over their weights); all with the
    /// same port mapping.
    pub backends: Vec<Backend>,
    pub masquerade: bool,
    /// Allow-list of client prefixes; empty = everyone.
    pub sources: Vec<Cidr>,
    /// How the daemon checks the backends; `None`: never (every backend
    /// counts as up).
    pub health: Option<super::health::Health>,
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
        f.write_str("=")?;
        for (i, b) in self.backends.iter().enumerate() {
            write!(f, "{}{b}", if i == 0 { "" } else { "+" })?;
        }
        if !self.masquerade {
            f.write_str(",no-masquerade")?;
        }
        for s in &self.sources {
            write!(f, ",src={s}")?;
        }
        if let Some(o) = self.health.as_ref().and_then(super::health::Health::spec_option) {
            write!(f, ",{o}")?;
        }
        Ok(())
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
    /// The highest handle given so far (new rules get the next ones).
    pub last_handle: u32,
}

impl Settings {
    /// The rule with handle `handle`.
    pub fn rule(&self, handle: u32) -> Option<&Rule> {
        self.rules.iter().find(|r| r.handle == handle)
    }

    /// [`Settings::rule`], to change.
    pub fn rule_mut(&mut self, handle: u32) -> Option<&mut Rule> {
        self.rules.iter_mut().find(|r| r.handle == handle)
    }
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
        if secs > conntrack::MAX_TIMEOUT_S {
            return Err(format!(
                "timeout `{name}` = {secs} s is longer than the connection table can time ({} s, 24 days)",
                conntrack::MAX_TIMEOUT_S
            ));
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

/// The timeouts by the names the settings give them, in seconds.
pub const fn timeouts_named(t: &Timeouts) -> [(&'static str, u32); 7] {
    [
        ("tcp_syn", t.tcp_syn),
        ("tcp_syn_recv", t.tcp_syn_recv),
        ("tcp_established", t.tcp_established),
        ("tcp_fin", t.tcp_fin),
        ("tcp_close", t.tcp_close),
        ("udp", t.udp),
        ("udp_stream", t.udp_stream),
    ]
}

/// The timeouts in words: `tcp_syn 120 s, tcp_syn_recv 60 s, …`.
pub fn timeouts_text(t: &Timeouts) -> String {
    timeouts_named(t).iter().map(|(n, v)| format!("{n} {v} s")).collect::<Vec<_>>().join(", ")
}
