//! The rule grammar: `PROTO:PORTS=BACKEND[+BACKEND…][,OPTION…]` with
//! `BACKEND` = `ADDR[:PORTS][*WEIGHT]`, each refusal naming the offending
//! value.

use std::{net::Ipv4Addr, str::FromStr};

use super::health::Health;
use super::model::{Backend, MAX_RULE_BACKENDS, MAX_WEIGHT, PortRange, Ports, Proto, Rule};
use crate::error::{Error, Result};

/// Parses `PORT` or `LOW-HIGH` (also `LOW:HIGH`, as iptables writes it).
pub(super) fn parse_ports(s: &str, what: &str) -> Result<Ports, String> {
    let Some((a, b)) = s.split_once(['-', ':']) else {
        return parse_port(s, what).map(Ports::one);
    };
    let (lo, hi) = (parse_port(a, what)?, parse_port(b, what)?);
    if lo > hi {
        return Err(format!("{what} range `{s}` runs backwards"));
    }
    Ok(Ports { lo, hi })
}

pub(super) fn parse_port(s: &str, what: &str) -> Result<u16, String> {
    let n: i64 = s.trim().parse().map_err(|_| format!("{what} `{s}` is not a number"))?;
    port_in_range(n, what)
}

pub(super) fn port_in_range(n: i64, what: &str) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{what} {n} is out of range 1-65535"))
}

/// Parses `ADDR[:PORTS]`; without ports the backend uses the public ones.
/// A backend range must be as long as the public range.
pub(super) fn parse_backend(s: &str, public: Ports) -> Result<(Ipv4Addr, Ports), String> {
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

/// Parses `BACKEND[+BACKEND…]`, each `ADDR[:PORTS][*WEIGHT]` (weight 1
/// unless given), and checks the set ([`check_backends`]).
pub(super) fn parse_backends(s: &str, public: Ports) -> Result<Vec<Backend>, String> {
    let set = s
        .split('+')
        .map(|b| {
            let (b, weight) = match b.split_once('*') {
                Some((b, w)) => (b, parse_weight(w)?),
                None => (b, 1),
            };
            let (addr, ports) = parse_backend(b, public)?;
            Ok(Backend { addr, ports, weight })
        })
        .collect::<Result<Vec<_>, String>>()?;
    check_backends(&set)?;
    Ok(set)
}

/// A backend weight: 0 to [`MAX_WEIGHT`].
pub(super) fn parse_weight(w: &str) -> Result<u32, String> {
    w.trim()
        .parse::<u32>()
        .ok()
        .filter(|w| *w <= MAX_WEIGHT)
        .ok_or_else(|| format!("backend weight `{w}` is not a number 0-{MAX_WEIGHT}"))
}

/// A rule's backends hold together: at most [`MAX_RULE_BACKENDS`], none
/// twice, one port mapping for all (every one a single port, or every one
/// a range), and one at least with a weight above 0.
pub(super) fn check_backends(set: &[Backend]) -> Result<(), String> {
    if set.len() > MAX_RULE_BACKENDS {
        return Err(format!("{} backends; a rule has at most {MAX_RULE_BACKENDS}", set.len()));
    }
    for (i, b) in set.iter().enumerate() {
        if let Some(d) = set[..i].iter().find(|o| o.addr == b.addr && o.ports.lo == b.ports.lo) {
            return Err(format!("backend {}:{} is given twice", d.addr, d.ports.lo));
        }
        if (b.ports.lo == b.ports.hi) != (set[0].ports.lo == set[0].ports.hi) {
            return Err(format!(
                "backend {b} maps ports otherwise than {}: every backend of a rule has the same port mapping",
                set[0]
            ));
        }
    }
    if !set.iter().any(|b| b.weight > 0) {
        return Err("every backend has weight 0: none could take a connection".into());
    }
    Ok(())
}

impl Rule {
    /// Parses `PROTO:PORT[@IFACE]=BACKEND[+BACKEND…][,OPTION…]`.
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
        let backends = parse_backends(target.next().unwrap_or_default(), ports).map_err(err)?;
        let mut masquerade = true;
        let mut sources = Vec::new();
        let mut health = None;
        for opt in target {
            match opt.trim() {
                "no-masquerade" => masquerade = false,
                "masquerade" => masquerade = true,
                o if o.starts_with("src=") => sources.push(o["src=".len()..].parse().map_err(err)?),
                o if o.starts_with("health=") => {
                    health = Some(Health::parse_option(&o["health=".len()..]).map_err(err)?);
                }
                o => {
                    return Err(err(format!(
                        "unknown option `{o}` (known: masquerade, no-masquerade, src=CIDR, health=tcp|http:/PATH)"
                    )));
                }
            }
        }
        Ok(Self {
            handle: 0,
            proto,
            ports,
            interface,
            backends,
            masquerade,
            sources,
            health,
            origin: format!("--rule {spec}"),
        })
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
