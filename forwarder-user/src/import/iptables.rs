//! `iptables-save` → forwarder config: the nat table's DNAT rules (`-p`,
//! `-i`, `-s`, `--dport` single or range, `--to-destination
//! ip[:port[-port]]`, `-m statistic` spreading one port over several) and
//! `MASQUERADE` become rules and interfaces; every rule that cannot be
//! converted is reported with the reason, never dropped silently.

use std::net::Ipv4Addr;

use super::outcome::Import;
use crate::settings::{Cidr, Ports, Proto, Rule};

/// Splits an iptables-save line into words, keeping "quoted strings" whole.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

struct Dnat {
    proto: Option<Proto>,
    iface: Option<String>,
    source: Option<Cidr>,
    dports: Option<Ports>,
    to: Option<String>,
    /// `-m statistic`: the share of the packets reaching this rule that it
    /// takes (`--every N`: 1/N; `--probability P`: P).
    share: Option<f64>,
}

/// A port number in an iptables option (`whole`, for the message).
fn port_in(s: &str, whole: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port `{s}` in `{whole}` is not 1-65535"))
}

/// Parses one `-A PREROUTING … -j DNAT …` rule.
fn dnat(w: &[String], notes: &mut Vec<String>) -> Result<Dnat, String> {
    let mut spec =
        Dnat { proto: None, iface: None, source: None, dports: None, to: None, share: None };
    let mut at = 2; // after "-A PREROUTING"
    while at < w.len() {
        let arg =
            |k: usize| w.get(k).cloned().ok_or_else(|| format!("`{}` without a value", w[k - 1]));
        match w[at].as_str() {
            "!" => return Err(format!("negated match `! {}` has no forwarder equivalent", w.get(at + 1).map_or("", String::as_str))),
            "-p" => spec.proto = Some(arg(at + 1)?.parse()?),
            "-i" => spec.iface = Some(arg(at + 1)?),
            "-s" => spec.source = Some(arg(at + 1)?.parse()?),
            "-d" => notes.push(format!("`-d {}` dropped: rules apply to packets arriving on public interfaces (hairpin needs no extra rule)", arg(at + 1)?)),
            "--dport" | "--destination-port" => {
                let v = arg(at + 1)?;
                let (lo, hi) = v.split_once(':').map_or((v.as_str(), v.as_str()), |(a, b)| (a, b));
                let whole = format!("--dport {v}");
                let (lo, hi) = (port_in(lo, &whole)?, port_in(hi, &whole)?);
                if lo > hi {
                    return Err(format!("`--dport {v}` runs backwards"));
                }
                spec.dports = Some(Ports { lo, hi });
            }
            "--to-destination" => spec.to = Some(arg(at + 1)?),
            "--mode" => match arg(at + 1)?.as_str() {
                "nth" | "random" => {}
                m => return Err(format!("`--mode {m}` is not nth or random")),
            },
            "--every" => {
                let v = arg(at + 1)?;
                let n: u32 = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| format!("`--every {v}` is not a count"))?;
                spec.share = Some(1.0 / f64::from(n));
            }
            "--probability" => {
                let v = arg(at + 1)?;
                let p: f64 = v.parse().ok().filter(|p| (0.0..=1.0).contains(p)).ok_or_else(|| format!("`--probability {v}` is not 0-1"))?;
                spec.share = Some(p);
            }
            "-m" => match arg(at + 1)?.as_str() {
                "tcp" | "udp" | "comment" | "statistic" => {}
                m => return Err(format!("match `-m {m}` has no forwarder equivalent")),
            },
            "--comment" | "--packet" => {}
            "-j" => {
                if arg(at + 1)? != "DNAT" {
                    return Err(format!("target `{}` is not DNAT", w[at + 1]));
                }
            }
            o => return Err(format!("option `{o}` has no forwarder equivalent")),
        }
        at += if matches!(w[at].as_str(), "!") { 1 } else { 2 };
    }
    Ok(spec)
}

/// Converts `iptables-save` text.
pub fn from_iptables_save(text: &str) -> Import {
    let mut out = Import { tool: "import-iptables", ..Import::default() };
    let mut table = String::new();
    let mut masquerade = false;
    let mut group: Option<Spread> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let n = n + 1;
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
            continue;
        }
        if !line.starts_with("-A ") || table != "nat" {
            continue;
        }
        let w = words(line);
        let chain = w.get(1).map_or("", String::as_str);
        let target =
            w.iter().position(|x| x == "-j").and_then(|i| w.get(i + 1)).map_or("", String::as_str);
        match (chain, target) {
            ("POSTROUTING", "MASQUERADE") => {
                masquerade = true;
                match w.iter().position(|x| x == "-o").and_then(|i| w.get(i + 1)) {
                    Some(o) => {
                        out.internal.insert(o.clone());
                    }
                    None => out.notes.push((n, "MASQUERADE without `-o`: every rule masquerades; add the internal interface yourself".into())),
                }
            }
            ("PREROUTING", "DNAT") => {
                let mut notes = Vec::new();
                match dnat(&w, &mut notes).and_then(|spec| Ok((rule(&spec, n)?, spec.share))) {
                    Ok((r, share)) => {
                        if let Some(i) = &r.interface {
                            out.public.insert(i.clone());
                        }
                        out.notes.extend(notes.into_iter().map(|m| (n, m)));
                        if let Some(g) =
                            group.as_mut().filter(|g| same_packets(&out.rules[g.rule], &r))
                        {
                            g.add(&mut out.rules[g.rule], &r, share.unwrap_or(1.0));
                            if share.is_none() {
                                close(&mut out, group.take());
                            }
                        } else {
                            close(&mut out, group.take());
                            if let Some(p) = share {
                                group = Some(Spread::open(out.rules.len(), p, n));
                                out.rules.push(r);
                            } else {
                                merge(&mut out, r, n, line);
                            }
                        }
                    }
                    Err(why) => out.skipped.push((n, line.to_string(), why)),
                }
            }
            (c, t) => out.skipped.push((
                n,
                line.to_string(),
                format!(
                    "`-A {c} … -j {t}` is not a DNAT in PREROUTING or a MASQUERADE in POSTROUTING"
                ),
            )),
        }
    }
    close(&mut out, group.take());
    for r in &mut out.rules {
        r.masquerade = masquerade;
    }
    out
}

/// DNAT rules for one port that `-m statistic` spreads over several
/// backends, in the order iptables tries them; they become one rule with
/// backends weighted by the share each took.
struct Spread {
    /// Index of the rule in the import.
    rule: usize,
    /// The share of all packets each backend takes.
    shares: Vec<f64>,
    /// The share no rule of the spread took yet.
    left: f64,
    first_line: usize,
}

impl Spread {
    fn open(rule: usize, p: f64, line: usize) -> Self {
        Self { rule, shares: vec![p], left: 1.0 - p, first_line: line }
    }

    /// `r`'s backend takes `p` of what is left.
    fn add(&mut self, into: &mut Rule, r: &Rule, p: f64) {
        let share = self.left * p;
        self.left -= share;
        let b = r.first_backend();
        if let Some(i) = into.backends.iter().position(|o| o.addr == b.addr && o.ports == b.ports) {
            self.shares[i] += share;
        } else {
            into.backends.push(*b);
            self.shares.push(share);
        }
    }
}

/// Whether `r` matches the packets `first` does (so continues its spread).
fn same_packets(first: &Rule, r: &Rule) -> bool {
    first.proto == r.proto
        && first.ports == r.ports
        && first.interface == r.interface
        && first.sources == r.sources
}

/// Weights for the spread's backends from their shares (in thousandths,
/// divided by their greatest common divisor: thirds are 1:1:1).
// Shares are within 0-1: thousandths fit a u32 and are never negative.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn close(out: &mut Import, spread: Option<Spread>) {
    let Some(g) = spread else { return };
    let milli: Vec<u32> = g.shares.iter().map(|s| (s * 1000.0).round() as u32).collect();
    let gcd = milli.iter().copied().filter(|m| *m > 0).fold(0, gcd);
    let rule = &mut out.rules[g.rule];
    for (b, m) in rule.backends.iter_mut().zip(&milli) {
        b.weight = m.checked_div(gcd).unwrap_or(1);
    }
    out.notes.push((
        g.first_line,
        format!(
            "`-m statistic` spread: one rule with backends {} (Maglev keeps each connection's backend by its client, where iptables counted packets)",
            rule.backends.iter().map(ToString::to_string).collect::<Vec<_>>().join(" + ")
        ),
    ));
    if g.left > 0.0005 {
        out.notes.push((
            g.first_line,
            format!(
                "the spread leaves {:.1} % of the connections to no DNAT rule; the forwarder gives them to its backends too",
                g.left * 100.0
            ),
        ));
    }
}

const fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn rule(spec: &Dnat, n: usize) -> Result<Rule, String> {
    let proto = spec.proto.ok_or("no `-p tcp|udp`: the forwarder maps ports of one protocol")?;
    let ports = spec.dports.ok_or("no `--dport`: the forwarder maps ports, not whole addresses")?;
    let to = spec.to.as_deref().ok_or("DNAT without `--to-destination`")?;
    let (addr, bports) = match to.split_once(':') {
        None => (to, ports),
        Some((addr_part, port_part)) => {
            let (lo, hi) =
                port_part.split_once('-').map_or((port_part, port_part), |(x, y)| (x, y));
            let whole = format!("--to-destination {to}");
            (addr_part, Ports { lo: port_in(lo, &whole)?, hi: port_in(hi, &whole)? })
        }
    };
    if addr.contains('-') {
        return Err(format!(
            "address range `{addr}` in `--to-destination` (load balancing) is not supported yet"
        ));
    }
    let backend: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("`{addr}` in `--to-destination` is not an IPv4 address"))?;
    if bports.lo != bports.hi && bports.count() != ports.count() {
        return Err(format!(
            "`--to-destination {to}` maps {} ports onto {}: ranges must be the same length or one port",
            ports.count(),
            bports.count()
        ));
    }
    Ok(Rule {
        handle: 0,
        proto,
        ports,
        interface: spec.iface.clone(),
        backends: vec![crate::settings::Backend { addr: backend, ports: bports, weight: 1 }],
        health: None,
        masquerade: true,
        sources: spec.source.into_iter().collect(),
        origin: format!("iptables-save line {n}"),
    })
}

/// iptables writes one DNAT rule per source; the forwarder one rule with a
/// source list. Rules that differ only by source merge.
fn merge(out: &mut Import, r: Rule, n: usize, line: &str) {
    let same = |o: &Rule| o.proto == r.proto && o.ports == r.ports && o.interface == r.interface;
    match out.rules.iter_mut().find(|o| same(o)) {
        None => out.rules.push(r),
        Some(o) if o.backends == r.backends && !o.sources.is_empty() && !r.sources.is_empty() => {
            o.sources.extend(r.sources);
        }
        Some(o) => out.skipped.push((
            n,
            line.to_string(),
            format!(
                "the same packets already go to {} ({}); per-source targets are not supported",
                o.first_backend(),
                o.origin
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    const SAMPLE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A FORWARD -m state --state NEW,ESTABLISHED,RELATED -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -i eth0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.168.1.50:80
-A PREROUTING -i eth0 -p tcp -m tcp --dport 8000:9000 -j DNAT --to-destination 192.168.1.51:8000-9000
-A PREROUTING -s 203.0.113.5/32 -i eth0 -p tcp -m tcp --dport 22 -m comment --comment "ssh from office" -j DNAT --to-destination 192.168.1.52
-A PREROUTING -s 198.51.100.0/24 -i eth0 -p tcp -m tcp --dport 22 -j DNAT --to-destination 192.168.1.52
-A PREROUTING -d 203.0.113.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 192.168.1.53:5353
-A PREROUTING -i eth0 -p tcp -m multiport --dports 80,443 -j DNAT --to-destination 192.168.1.54
-A PREROUTING -i eth0 -p tcp --dport 9999 -j DNAT --to-destination 192.168.1.60-192.168.1.61
-A PREROUTING -i eth0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.168.1.99:80
-A POSTROUTING -o eth1 -j MASQUERADE
-A POSTROUTING -o eth1 -j SNAT --to-source 192.168.1.1
COMMIT
"#;

    #[test]
    fn converts_what_it_can_and_says_why_not() {
        let imp = from_iptables_save(SAMPLE);
        let got: Vec<String> = imp.rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "tcp:8080@eth0=192.168.1.50:80",
                "tcp:8000-9000@eth0=192.168.1.51:8000-9000",
                "tcp:22@eth0=192.168.1.52:22,src=203.0.113.5/32,src=198.51.100.0/24",
                "udp:53=192.168.1.53:5353",
            ]
        );
        assert_eq!(imp.internal.iter().collect::<Vec<_>>(), ["eth1"]);
        assert_eq!(imp.public.iter().collect::<Vec<_>>(), ["eth0"]);
        let why: Vec<&str> = imp.skipped.iter().map(|(_, _, w)| w.as_str()).collect();
        assert!(why.iter().any(|w| w.contains("-m multiport")), "{why:?}");
        assert!(why.iter().any(|w| w.contains("address range")), "{why:?}");
        assert!(why.iter().any(|w| w.contains("already go to 192.168.1.50:80")), "{why:?}");
        assert!(why.iter().any(|w| w.contains("-j SNAT")), "{why:?}");
        assert!(imp.notes.iter().any(|(_, n)| n.contains("-d 203.0.113.1/32")), "{:?}", imp.notes);
        // Filter-table rules are not nat rules: not reported.
        assert!(!imp.skipped.iter().any(|(_, l, _)| l.contains("FORWARD")));
    }

    #[test]
    fn output_is_a_valid_config() {
        let toml = from_iptables_save(SAMPLE).to_toml().unwrap();
        let mut s = Settings::default();
        s.merge_toml(std::path::Path::new("imported.toml"), &toml).unwrap();
        assert_eq!(s.rules.len(), 4);
        assert!(s.rules.iter().all(|r| r.masquerade));
        assert_eq!(s.rules[2].sources.len(), 2);
    }

    #[test]
    fn statistic_spreads_become_one_rule_with_weighted_backends() {
        let imp = from_iptables_save(
            "*nat
-A PREROUTING -i eth0 -p tcp --dport 8080 -m statistic --mode nth --every 3 --packet 0 -j DNAT --to-destination 192.168.1.50:80
-A PREROUTING -i eth0 -p tcp --dport 8080 -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination 192.168.1.51:80
-A PREROUTING -i eth0 -p tcp --dport 8080 -j DNAT --to-destination 192.168.1.52:80
-A PREROUTING -i eth0 -p udp --dport 53 -m statistic --mode random --probability 0.75 -j DNAT --to-destination 192.168.1.53:53
-A PREROUTING -i eth0 -p udp --dport 53 -j DNAT --to-destination 192.168.1.54:53
-A PREROUTING -i eth0 -p tcp --dport 9000 -m statistic --mode random --probability 0.5 -j DNAT --to-destination 192.168.1.55:9000
-A PREROUTING -i eth0 -p tcp --dport 9000 -m statistic --mode random --probability 2 -j DNAT --to-destination 192.168.1.56:9000
-A POSTROUTING -o eth1 -j MASQUERADE
",
        );
        let got: Vec<String> = imp.rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "tcp:8080@eth0=192.168.1.50:80+192.168.1.51:80+192.168.1.52:80",
                "udp:53@eth0=192.168.1.53:53*3+192.168.1.54:53",
                "tcp:9000@eth0=192.168.1.55:9000",
            ]
        );
        assert!(imp.skipped.iter().any(|s| s.2.contains("`--probability 2`")), "{:?}", imp.skipped);
        let notes: Vec<&str> = imp.notes.iter().map(|(_, n)| n.as_str()).collect();
        assert!(notes.iter().any(|n| n.contains("leaves 50.0 %")), "{notes:?}");
        let mut s = Settings::default();
        s.merge_toml(std::path::Path::new("i.toml"), &imp.to_toml().unwrap()).unwrap();
        assert_eq!(s.rules[1].backends[0].weight, 3);
    }

    #[test]
    fn bad_values_are_named() {
        let imp = from_iptables_save(
            "*nat\n-A PREROUTING -p tcp --dport 0 -j DNAT --to-destination 10.0.0.1\n-A PREROUTING -p sctp --dport 1 -j DNAT --to-destination 10.0.0.1\n",
        );
        assert!(imp.skipped[0].2.contains("port `0`"), "{:?}", imp.skipped);
        assert!(imp.skipped[1].2.contains("`sctp`"), "{:?}", imp.skipped);
        assert_eq!(imp.skipped[0].0, 2);
    }
}
