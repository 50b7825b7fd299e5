//! `ipvsadm-save -n` → forwarder config: each virtual service (`-A -t|-u
//! VIP:PORT -s SCHED`) becomes a rule for its port, its real servers (`-a
//! … -r REAL:PORT -m -w W`) the rule's backends with their weights. What
//! the forwarder does otherwise (the scheduler, persistence, direct
//! routing or tunnels, fwmark services) is listed with the reason.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::outcome::Import;
use crate::settings::{Backend, Ports, Proto, Rule};

/// A virtual service as `-A` declared it.
struct Service {
    proto: Proto,
    vip: SocketAddrV4,
    line: usize,
    backends: Vec<Backend>,
}

/// The value after option `opt` in `w`.
fn value<'a>(w: &'a [&'a str], opt: &str) -> Option<&'a str> {
    w.iter().position(|x| *x == opt).and_then(|i| w.get(i + 1)).copied()
}

/// `-t|-u ADDR:PORT` of a line; `-f` (fwmark) and IPv6 are refused.
fn service_of(w: &[&str]) -> Result<(Proto, SocketAddrV4), String> {
    if let Some(m) = value(w, "-f") {
        return Err(format!(
            "fwmark service `-f {m}`: the forwarder matches protocol and port, not marks"
        ));
    }
    let (proto, at) = match (value(w, "-t"), value(w, "-u")) {
        (Some(a), None) => (Proto::Tcp, a),
        (None, Some(a)) => (Proto::Udp, a),
        _ => return Err("no `-t ADDR:PORT` or `-u ADDR:PORT`".into()),
    };
    let vip: SocketAddrV4 =
        at.parse().map_err(|_| format!("`{at}` is not an IPv4 ADDR:PORT (`ipvsadm-save -n`)"))?;
    if vip.port() == 0 {
        return Err(format!("`{at}`: port 0 (a persistent any-port service) has no equivalent"));
    }
    Ok((proto, vip))
}

/// Notes for what an `-A` line asks that Maglev does otherwise.
fn scheduler_notes(w: &[&str]) -> Vec<String> {
    let mut notes = Vec::new();
    match value(w, "-s").unwrap_or("wlc") {
        "mh" | "sh" => {}
        "rr" | "wrr" => notes.push(
            "scheduler rr/wrr: the forwarder spreads by Maglev hashing of the client (the same shares, per connection rather than in turn)".into(),
        ),
        s => notes.push(format!(
            "scheduler `{s}`: the forwarder spreads by Maglev hashing of the client over the weights, not by load"
        )),
    }
    if let Some(t) = value(w, "-p") {
        notes.push(format!(
            "persistence `-p {t}` dropped: a client keeps its backend per connection (by address and port), not per address for {t} s"
        ));
    }
    notes
}

/// Converts `ipvsadm-save -n` text.
pub fn from_ipvsadm_save(text: &str) -> Import {
    let mut out = Import { tool: "import-ipvsadm", ..Import::default() };
    let mut services: Vec<Service> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let n = n + 1;
        let line = raw.trim();
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.first().copied() {
            None => {}
            Some(c) if c.starts_with('#') => {}
            Some("-A") => match service_of(&w) {
                Ok((proto, vip))
                    if services.iter().any(|s| s.proto == proto && s.vip.port() == vip.port()) =>
                {
                    out.skipped.push((n, line.into(), format!("another service already has {proto} port {}: the forwarder maps a port once (per interface)", vip.port())));
                }
                Ok((proto, vip)) => {
                    out.notes.extend(scheduler_notes(&w).into_iter().map(|m| (n, m)));
                    services.push(Service { proto, vip, line: n, backends: Vec::new() });
                }
                Err(why) => out.skipped.push((n, line.into(), why)),
            },
            Some("-a") => {
                if let Err(why) = real_server(&w, &mut services) {
                    out.skipped.push((n, line.into(), why));
                }
            }
            Some(o) => out.skipped.push((n, line.into(), format!("`{o}` is not `-A` or `-a`"))),
        }
    }
    for s in services {
        if s.backends.is_empty() {
            out.skipped.push((
                s.line,
                format!("{} {}", s.proto, s.vip),
                "no real server could be converted".into(),
            ));
            continue;
        }
        if s.backends.iter().all(|b| b.weight == 0) {
            out.notes.push((s.line, format!("every real server of {} has weight 0: the rule takes no new connections until one has a weight", s.vip)));
        }
        out.notes.push((s.line, format!("virtual address {}: the rule applies on every --public interface; give the gateway that address there", s.vip.ip())));
        out.rules.push(Rule {
            handle: 0,
            proto: s.proto,
            ports: Ports::one(s.vip.port()),
            interface: None,
            backends: s.backends,
            masquerade: true,
            sources: Vec::new(),
            health: None,
            origin: format!("ipvsadm-save line {}", s.line),
        });
    }
    out
}

/// Adds one `-a` line's real server to its service.
fn real_server(w: &[&str], services: &mut [Service]) -> Result<(), String> {
    let (proto, vip) = service_of(w)?;
    let svc = services
        .iter_mut()
        .find(|s| s.proto == proto && s.vip == vip)
        .ok_or_else(|| format!("real server of {proto} {vip}, which no `-A` line declared"))?;
    let r = value(w, "-r").ok_or("no `-r REAL:PORT`")?;
    let real: SocketAddrV4 = match r.parse() {
        Ok(a) => a,
        Err(_) => SocketAddrV4::new(
            r.parse::<Ipv4Addr>().map_err(|_| format!("`-r {r}` is not an IPv4 ADDR[:PORT]"))?,
            vip.port(),
        ),
    };
    if w.contains(&"-g") || w.contains(&"--gatewaying") {
        return Err(format!("`-r {r} -g` (direct routing): the forwarder translates (masquerade)"));
    }
    if w.contains(&"-i") || w.contains(&"--ipip") {
        return Err(format!(
            "`-r {r} -i` (IP-in-IP tunnel): the forwarder translates (masquerade)"
        ));
    }
    let weight = match value(w, "-w") {
        None => 1,
        Some(v) => {
            v.parse::<u32>().ok().filter(|x| *x <= crate::settings::MAX_WEIGHT).ok_or_else(
                || format!("weight `-w {v}` is not 0-{}", crate::settings::MAX_WEIGHT),
            )?
        }
    };
    if svc.backends.iter().any(|b| b.addr == *real.ip() && b.ports.lo == real.port()) {
        return Err(format!("real server {real} is given twice"));
    }
    svc.backends.push(Backend { addr: *real.ip(), ports: Ports::one(real.port()), weight });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    /// As `ipvsadm-save -n` prints it.
    const SAMPLE: &str = "-A -t 203.0.113.1:8080 -s rr
-a -t 203.0.113.1:8080 -r 192.168.1.50:80 -m -w 1
-a -t 203.0.113.1:8080 -r 192.168.1.51:80 -m -w 3
-A -u 203.0.113.1:53 -s mh -p 300
-a -u 203.0.113.1:53 -r 192.168.1.53:53 -m -w 1
-a -u 203.0.113.1:53 -r 192.168.1.54:53 -g -w 1
-A -f 7 -s wlc
-a -t 203.0.113.9:9 -r 192.168.1.9:9 -m -w 1
";

    #[test]
    fn services_become_rules_with_weighted_backends() {
        let imp = from_ipvsadm_save(SAMPLE);
        let got: Vec<String> = imp.rules.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["tcp:8080=192.168.1.50:80+192.168.1.51:80*3", "udp:53=192.168.1.53:53"]);
        let why: Vec<&str> = imp.skipped.iter().map(|(_, _, w)| w.as_str()).collect();
        assert!(why.iter().any(|w| w.contains("direct routing")), "{why:?}");
        assert!(why.iter().any(|w| w.contains("fwmark service `-f 7`")), "{why:?}");
        assert!(why.iter().any(|w| w.contains("no `-A` line declared")), "{why:?}");
        let notes: Vec<&str> = imp.notes.iter().map(|(_, n)| n.as_str()).collect();
        assert!(notes.iter().any(|n| n.contains("persistence `-p 300`")), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("scheduler rr/wrr")), "{notes:?}");
        // The output reads back as a config.
        let mut s = Settings::default();
        s.merge_toml(std::path::Path::new("ipvs.toml"), &imp.to_toml().unwrap()).unwrap();
        assert_eq!(s.rules[0].backends[1].weight, 3);
        assert!(imp.to_toml().unwrap().starts_with("# converted by `forwarder import-ipvsadm`"));
    }

    #[test]
    fn bad_values_are_named() {
        let imp = from_ipvsadm_save(
            "-A -t 203.0.113.1:80 -s rr\n-a -t 203.0.113.1:80 -r 10.0.0.300:80 -m\n-a -t 203.0.113.1:80 -r 10.0.0.1:80 -m -w x\n-A -t nowhere\n",
        );
        assert!(
            imp.skipped.iter().any(|s| s.2.contains("`-r 10.0.0.300:80`")),
            "{:?}",
            imp.skipped
        );
        assert!(imp.skipped.iter().any(|s| s.2.contains("weight `-w x`")), "{:?}", imp.skipped);
        assert!(
            imp.skipped.iter().any(|s| s.0 == 4 && s.2.contains("`nowhere`")),
            "{:?}",
            imp.skipped
        );
        assert!(imp.rules.is_empty());
    }
}
