//! The plan: settings validated and compiled into the datapath's terms
//! (trie entries, source prefixes, interfaces with their hooks, the
//! limits), everything resolved before the kernel is touched. The
//! datapath takes a [`Compiled`] plan and nothing of the settings.
//!
//! One choice is left to the attach, because only the kernel knows it: on
//! an interface in [`IfaceMode::NativeXdpElseTc`], whether the driver
//! takes a native XDP program.

use std::collections::HashMap;

pub mod diff;

use forwarder_common::{
    abi::{
        self, BackendAddr, RULE_F_BACKENDS, RULE_F_MASQUERADE, RULE_F_PORT_RANGE,
        RULE_F_SRC_FILTER, RuleKey, RuleTarget, Service, SrcKey,
    },
    maglev, rule,
};

pub use crate::settings::{ConntrackSettings, PortRange};
use crate::{
    error::{Error, Result},
    iface,
    settings::{Backend, Mode, Rule, Settings},
};

/// What the plan asks of the host: interface indices and drivers
/// ([`System`] asks the kernel; tests inject their own).
pub trait Host {
    /// The kernel's index of interface `name`.
    fn index(&self, name: &str) -> Result<u32>;
    /// The driver behind interface `name`, if it says.
    fn driver(&self, name: &str) -> Option<String>;
}

/// The running kernel's interfaces.
pub struct System;

impl Host for System {
    fn index(&self, name: &str) -> Result<u32> {
        iface::index(name)
    }
    fn driver(&self, name: &str) -> Option<String> {
        iface::driver(name)
    }
}

/// The hook one interface gets, resolved from its [`Mode`] and driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfaceMode {
    /// XDP (per `--xdp-attach`) with the TC program behind it.
    Xdp,
    /// TC alone.
    Tc,
    /// `--mode auto` on a driver with no reason to avoid XDP: native XDP
    /// if the driver takes it, else TC (never generic XDP).
    NativeXdpElseTc,
}

impl IfaceMode {
    /// `mode` on an interface whose driver is `driver`, and why when
    /// `auto` chose TC up front.
    pub fn resolve(mode: Mode, name: &str, driver: Option<&str>) -> (Self, Option<String>) {
        match (mode, driver) {
            (Mode::Xdp, _) => (Self::Xdp, None),
            (Mode::Tc, _) => (Self::Tc, None),
            (Mode::Auto, Some(d)) if iface::prefers_tc(d) => (
                Self::Tc,
                Some(format!(
                    "{name}: {d}: using TC (mode auto: XDP on a {d} turns off TSO on its peer, which costs TCP bulk more than XDP saves per packet; --iface-mode {name}=xdp for packet rate)"
                )),
            ),
            (Mode::Auto, _) => (Self::NativeXdpElseTc, None),
        }
    }
}

/// One managed interface, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceSpec {
    pub name: String,
    pub ifindex: u32,
    /// `abi::ROLE_*`.
    pub role: u32,
    pub mode: IfaceMode,
    /// Why the mode is not the one asked for; the attach logs it.
    pub note: Option<String>,
}

/// Validated settings, in the datapath's terms.
#[derive(Debug)]
pub struct Compiled {
    pub ifaces: Vec<IfaceSpec>,
    /// Trie entries `(prefix length, key, target)`; a range has several.
    /// `RuleTarget::rule_id` = the rule's handle.
    pub rules: Vec<(u32, RuleKey, RuleTarget)>,
    /// Allow-list trie entries `(prefix length, key)`.
    pub sources: Vec<(u32, SrcKey)>,
    /// The rules with several backends: their Maglev tables.
    pub services: Services,
    pub snat_ports: PortRange,
    /// Timeouts, and the table's size (`max_connections`): the one the
    /// datapath is loaded with.
    pub conntrack: ConntrackSettings,
    /// Audit events per second and burst, per CPU.
    pub audit: (u32, u32),
    /// New connections per second and burst, per CPU (rate 0: no limit).
    pub new_conn: (u32, u32),
}

/// The Maglev tables and backends of every rule with several (or with a
/// health check), laid out as the datapath's maps hold them
/// ([`abi::MAP_SERVICES`], [`abi::MAP_MAGLEV`], [`abi::MAP_BACKENDS`]).
///
/// Each rule's region of the table pool holds two tables: the live one
/// and the one the daemon writes next when the backends' states change
/// (then it points the rule's service at it, in one map update).
#[derive(Debug, Default)]
pub struct Services {
    /// `(rule handle, where its first table and its backends are)`.
    pub entries: Vec<(u32, Service)>,
    /// Every rule's region (the first table filled with the configured
    /// weights, the second spare): indices into the rule's backends.
    pub maglev: Vec<u32>,
    /// Every rule's backends, one region after another, in the rule's order.
    pub backends: Vec<BackendAddr>,
}

/// The Maglev table of `m` slots over `set` with weight `weight(i)` for
/// backend `i`; `None` when no backend has a weight.
pub fn maglev_table(set: &[Backend], m: u32, weight: impl Fn(usize) -> u32) -> Option<Vec<u32>> {
    let input: Vec<maglev::Backend> = set
        .iter()
        .enumerate()
        .map(|(i, b)| maglev::Backend {
            addr: b.addr.octets(),
            port: b.ports.lo.to_be_bytes(),
            weight: weight(i),
        })
        .collect();
    let mut t = vec![0; m as usize];
    maglev::build(&input, &mut t).ok()?;
    Some(t)
}

impl Services {
    /// Adds rule `rule_id`'s region, sized for its backends (more than 100
    /// slots each, twice).
    fn add(&mut self, rule_id: u32, set: &[Backend]) -> std::result::Result<(), String> {
        let m = maglev::table_size(set.len());
        let table_off = self.maglev.len();
        let backends_off = self.backends.len();
        if table_off + 2 * m as usize > abi::MAGLEV_POOL as usize {
            return Err(format!(
                "its Maglev tables (2 x {m} slots) do not fit: the tables of all rules hold at most {} slots, {table_off} taken",
                abi::MAGLEV_POOL
            ));
        }
        if backends_off + set.len() > abi::MAX_BACKENDS as usize {
            return Err(format!(
                "its {} backends do not fit: all rules have at most {} backends, {backends_off} taken",
                set.len(),
                abi::MAX_BACKENDS
            ));
        }
        let table = maglev_table(set, m, |i| set[i].weight)
            .ok_or_else(|| "no backend with a weight above 0".to_string())?;
        self.maglev.extend(table);
        self.maglev.resize(table_off + 2 * m as usize, 0);
        self.backends.extend(set.iter().map(|b| BackendAddr {
            addr: b.addr.octets(),
            port: b.ports.lo.to_be_bytes(),
            // Given when the datapath is configured (`Datapath::configure`).
            stats_slot: 0,
        }));
        self.entries.push((
            rule_id,
            Service {
                table_off: table_off as u32,
                table_len: m,
                backends_off: backends_off as u32,
                backends: set.len() as u32,
            },
        ));
        Ok(())
    }

    /// Rule `rule_id`'s service as compiled (its first table).
    pub fn of(&self, rule_id: u32) -> Option<&Service> {
        self.entries.iter().find(|(r, _)| *r == rule_id).map(|(_, s)| s)
    }
}

impl Settings {
    /// The managed interfaces: each exists, has one role and its hook
    /// resolved; a mode given for another interface is refused.
    fn compile_ifaces(&self, host: &impl Host) -> Result<Vec<IfaceSpec>> {
        if self.public.is_empty() {
            return Err(Error::Settings("no public interface given (--public IFACE)".into()));
        }
        let mut ifaces: Vec<IfaceSpec> = Vec::new();
        for (names, role) in
            [(&self.public, abi::ROLE_PUBLIC), (&self.internal, abi::ROLE_INTERNAL)]
        {
            for n in names {
                let idx = host.index(n)?;
                match ifaces.iter().find(|i| &i.name == n) {
                    // Named twice in one role (a file and a flag): once.
                    Some(i) if i.role == role => continue,
                    Some(_) => return Err(Error::InterfaceRole { name: n.clone() }),
                    None => {}
                }
                let asked = self
                    .iface_modes
                    .iter()
                    .rev()
                    .find(|(i, _)| i == n)
                    .map_or(self.mode, |(_, m)| *m);
                let (mode, note) = IfaceMode::resolve(asked, n, host.driver(n).as_deref());
                ifaces.push(IfaceSpec { name: n.clone(), ifindex: idx, role, mode, note });
            }
        }
        if let Some((n, _)) =
            self.iface_modes.iter().find(|(n, _)| !ifaces.iter().any(|i| &i.name == n))
        {
            return Err(Error::Settings(format!(
                "mode given for `{n}`, which is neither --public nor --internal"
            )));
        }
        Ok(ifaces)
    }

    /// Checks the whole set: interfaces exist and have one role, rules are
    /// unique and bound only to public interfaces. `host` resolves names
    /// and drivers.
    pub fn compile(&self, host: &impl Host) -> Result<Compiled> {
        let ifaces = self.compile_ifaces(host)?;
        if self.rules.len() > abi::MAX_RULES as usize {
            return Err(Error::TooManyRules(self.rules.len()));
        }
        // Rules on the same (interface, protocol) must not share a port:
        // their ranges so far, disjoint, by first port (of those that
        // start at or below a range's last port, only the one that starts
        // last can reach into it).
        let mut seen: HashMap<(u32, u8), std::collections::BTreeMap<u16, &Rule>> = HashMap::new();
        let mut entries = Vec::new();
        let mut sources = Vec::new();
        let mut services = Services::default();
        for r in &self.rules {
            // The rule's handle indexes its counters, sources and service.
            let id = r.handle;
            if id == 0 || id >= abi::MAX_RULES {
                return Err(Error::Rule {
                    spec: r.origin.clone(),
                    why: format!("handle {id} is not 1-{}", abi::MAX_RULES - 1),
                });
            }
            let if_idx = match &r.interface {
                None => 0,
                Some(n) => {
                    let idx = host.index(n)?;
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
            if let Some((_, first)) = same.range(..=r.ports.hi).next_back()
                && first.ports.overlaps(r.ports)
            {
                return Err(Error::DuplicateRule {
                    first: format!("{first} ({})", first.origin),
                    second: format!("{r} ({})", r.origin),
                });
            }
            same.insert(r.ports.lo, r);
            let mut flags = if r.masquerade { RULE_F_MASQUERADE } else { 0 };
            let first = r.first_backend();
            if first.ports.lo != first.ports.hi {
                flags |= RULE_F_PORT_RANGE;
            }
            // Several backends, or one whose health is checked: the table
            // names the backend (and names none while it is down).
            if r.backends.len() > 1 || r.health.is_some() {
                flags |= RULE_F_BACKENDS;
                services
                    .add(id, &r.backends)
                    .map_err(|why| Error::Rule { spec: r.origin.clone(), why })?;
            }
            if !r.sources.is_empty() {
                flags |= RULE_F_SRC_FILTER;
                for c in &r.sources {
                    sources.push((
                        32 + u32::from(c.len),
                        SrcKey { rule_id: id, addr: c.addr.octets() },
                    ));
                }
            }
            let target = RuleTarget {
                addr: first.addr.octets(),
                port: first.ports.lo.to_be_bytes(),
                flags,
                rule_id: id,
                public_lo: r.ports.lo,
                stats_slot: 0,
            };
            for (start, bits) in rule::port_prefixes(r.ports.lo, r.ports.hi) {
                let (prefix_len, key) = rule::key(if_idx, r.proto.number(), start, bits);
                entries.push((prefix_len, key, target));
            }
        }
        if sources.len() > abi::MAX_SRC_ENTRIES as usize {
            return Err(Error::Settings(format!(
                "{} source prefixes over all rules; at most {}",
                sources.len(),
                abi::MAX_SRC_ENTRIES
            )));
        }
        Ok(Compiled {
            ifaces,
            rules: entries,
            sources,
            services,
            snat_ports: self.snat_ports,
            conntrack: self.conntrack,
            audit: (self.audit.rate, self.audit.burst),
            new_conn: self.conntrack.new_conn_limit(),
        })
    }
}
