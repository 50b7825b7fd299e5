//! The counters of a snapshot as Prometheus metrics (`--metrics ADDR`),
//! encoded by `prometheus-client`: a registry made afresh from each
//! snapshot (a scrape reads the datapath's counters at that moment; the
//! daemon keeps no second copy of them).

use prometheus_client::{
    encoding::text::{encode_eof, encode_registry},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::stats::{RuleCounters, Snapshot};

type Labels = Vec<(&'static str, String)>;

/// The exposition formats a scraper can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `OpenMetrics` 1.0 text (`application/openmetrics-text`): ends with
    /// `# EOF`.
    OpenMetrics,
    /// The Prometheus text format (`text/plain; version=0.0.4`): the same
    /// samples, a counter's family named as its samples are (with
    /// `_total`), no end marker.
    Text,
}

impl Format {
    /// What an `Accept` header asks for (`OpenMetrics` only when named).
    pub fn from_accept(accept: &str) -> Self {
        if accept.contains("application/openmetrics-text") { Self::OpenMetrics } else { Self::Text }
    }

    pub const fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// A family of counters, one per label set.
fn counters(samples: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    for (labels, v) in samples {
        f.get_or_create(&labels).inc_by(v);
    }
    f
}

/// A family of gauges, one per label set.
fn gauges(samples: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    for (labels, v) in samples {
        f.get_or_create(&labels).set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    f
}

/// A rule's labels: its handle, and its spec for people.
fn rule_labels(r: &RuleCounters) -> Labels {
    vec![("rule", r.handle.to_string()), ("spec", r.rule.clone())]
}

/// Per rule and direction.
fn per_direction(s: &Snapshot, pick: fn(&RuleCounters) -> (u64, u64)) -> Family<Labels, Counter> {
    counters(s.rules.iter().flat_map(|r| {
        let (inward, outward) = pick(r);
        let with = |dir: &str| {
            let mut l = rule_labels(r);
            l.push(("direction", dir.to_string()));
            l
        };
        [(with("in"), inward), (with("out"), outward)]
    }))
}

/// The snapshot's registry: every family, named `forwarder_…`.
fn registry(s: &Snapshot) -> Registry {
    let mut reg = Registry::with_prefix("forwarder");
    reg.register(
        "rule_packets",
        "Packets translated, by rule (handle) and direction (in: client to backend)",
        per_direction(s, |r| (r.packets_in, r.packets_out)),
    );
    reg.register(
        "rule_bytes",
        "Bytes translated, by rule (handle) and direction",
        per_direction(s, |r| (r.bytes_in, r.bytes_out)),
    );
    reg.register(
        "rule_connections",
        "Connections created, by rule (handle)",
        counters(s.rules.iter().map(|r| (rule_labels(r), r.new_connections))),
    );
    reg.register(
        "rule_denied",
        "New connections refused by the rule's source list",
        counters(s.rules.iter().map(|r| (rule_labels(r), r.denied))),
    );
    reg.register(
        "datapath_events",
        "Datapath decisions and drops by reason",
        counters(s.counters.iter().map(|(k, v)| (vec![("event", k.clone())], *v))),
    );
    reg.register(
        "conntrack_connections",
        "Connections tracked",
        gauges([(Labels::new(), s.connections)]),
    );
    reg.register(
        "conntrack_connections_max",
        "Connections the table holds",
        gauges([(Labels::new(), s.connections_max)]),
    );
    reg.register(
        "snat_ports_in_use",
        "Masquerade source ports held by live connections",
        gauges([(Labels::new(), s.snat_ports_in_use)]),
    );
    let iface = |name: &str| vec![("iface", name.to_string())];
    reg.register(
        "egress_xdp",
        "1 when XDP transmits into the interface, 0 when its packets go through TC",
        gauges(s.egress.iter().map(|e| (iface(&e.iface), u64::from(e.xdp)))),
    );
    reg.register(
        "egress_xdp_refused_frames",
        "Frames the kernel refused after XDP redirected them into the interface",
        counters(s.egress.iter().map(|e| (iface(&e.iface), e.refused_frames))),
    );
    let backend = |b: &crate::stats::BackendStatus| {
        vec![("rule", b.rule.to_string()), ("backend", b.backend.clone())]
    };
    reg.register(
        "backend_up",
        "1 when the backend takes new connections (up, not drained), else 0",
        gauges(s.backends.iter().map(|b| (backend(b), u64::from(b.state == "up")))),
    );
    reg.register(
        "backend_weight",
        "The backend's weight",
        gauges(s.backends.iter().map(|b| (backend(b), u64::from(b.weight)))),
    );
    let backend_dir = |b: &crate::stats::BackendStatus, dir: &str| {
        let mut l = backend(b);
        l.push(("direction", dir.to_string()));
        l
    };
    reg.register(
        "backend_packets",
        "Packets translated for the backend's connections, by direction (in: client to backend)",
        counters(s.backends.iter().flat_map(|b| {
            [(backend_dir(b, "in"), b.packets_in), (backend_dir(b, "out"), b.packets_out)]
        })),
    );
    reg.register(
        "backend_bytes",
        "Bytes translated for the backend's connections, by direction",
        counters(s.backends.iter().flat_map(|b| {
            [(backend_dir(b, "in"), b.bytes_in), (backend_dir(b, "out"), b.bytes_out)]
        })),
    );
    reg.register(
        "backend_check_latency_microseconds",
        "How long the backend's last health check took",
        gauges(s.backends.iter().filter_map(|b| b.check_latency_us.map(|us| (backend(b), us)))),
    );
    reg.register(
        "daemon_errors",
        "Failed passes of the daemon's housekeeping tasks (retried; forwarding is not affected)",
        counters(crate::housekeeping::TASKS.iter().map(|t| {
            (vec![("task", (*t).to_string())], s.daemon_errors.get(*t).copied().unwrap_or(0))
        })),
    );
    reg
}

/// The snapshot in `format`.
pub fn render(s: &Snapshot, format: Format) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    encode_registry(&mut out, &registry(s))?;
    Ok(match format {
        Format::OpenMetrics => {
            encode_eof(&mut out)?;
            out
        }
        Format::Text => classic_names(&out),
    })
}

/// `OpenMetrics` text (without its end marker) in the Prometheus text
/// format. The two differ, for what this exposition holds, only in how a
/// counter's family is named: `OpenMetrics` names it without the `_total`
/// its samples carry, the Prometheus format (whose parsers hold samples to
/// their family's name) with it.
fn classic_names(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 12);
    for line in openmetrics.lines() {
        let family = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let name = rest.split(' ').next()?;
            counters.contains(name).then_some((*p, name, &rest[name.len()..]))
        });
        match family {
            Some((p, name, rest)) => {
                out.push_str(p);
                out.push_str(name);
                out.push_str("_total");
                out.push_str(rest);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let mut s = Snapshot {
            connections: 2,
            connections_max: 50,
            snat_ports_in_use: 2,
            ..Default::default()
        };
        s.rules.push(RuleCounters {
            handle: 4,
            rule: "tcp:8080=10.0.0.2:80,src=\"x\"".into(),
            packets_in: 3,
            bytes_in: 300,
            packets_out: 2,
            bytes_out: 200,
            new_connections: 1,
            denied: 0,
        });
        s.counters.insert("xdp_redirected".into(), 5);
        s.backends.push(crate::stats::BackendStatus {
            rule: 4,
            backend: "10.0.0.2:80".into(),
            weight: 3,
            state: "down".into(),
            check_latency_us: Some(1200),
            packets_in: 9,
            bytes_in: 900,
            packets_out: 8,
            bytes_out: 800,
        });
        let t = render(&s, Format::Text).unwrap();
        for line in [
            "forwarder_backend_up{rule=\"4\",backend=\"10.0.0.2:80\"} 0",
            "forwarder_backend_weight{rule=\"4\",backend=\"10.0.0.2:80\"} 3",
            "forwarder_backend_check_latency_microseconds{rule=\"4\",backend=\"10.0.0.2:80\"} 1200",
            "forwarder_backend_packets_total{rule=\"4\",backend=\"10.0.0.2:80\",direction=\"in\"} 9",
            "forwarder_backend_bytes_total{rule=\"4\",backend=\"10.0.0.2:80\",direction=\"out\"} 800",
            // The spec's quotes escaped.
            "forwarder_rule_packets_total{rule=\"4\",spec=\"tcp:8080=10.0.0.2:80,src=\\\"x\\\"\",direction=\"in\"} 3",
            "forwarder_rule_connections_total{rule=\"4\",spec=\"tcp:8080=10.0.0.2:80,src=\\\"x\\\"\"} 1",
            "forwarder_datapath_events_total{event=\"xdp_redirected\"} 5",
            "# TYPE forwarder_conntrack_connections gauge\nforwarder_conntrack_connections 2",
            "forwarder_conntrack_connections_max 50",
            "forwarder_snat_ports_in_use 2",
            // Every housekeeping task has its error counter, failed or not.
            "forwarder_daemon_errors_total{task=\"conntrack_sweep\"} 0",
        ] {
            assert!(t.contains(line), "{line} in\n{t}");
        }
        assert!(!t.contains("# EOF"), "{t}");
        s.daemon_errors.insert("stats_file".into(), 3);
        s.egress.push(crate::egress::EgressStatus {
            iface: "int0".into(),
            ifindex: 3,
            xdp: false,
            why: "x".into(),
            refused_frames: 7,
            fallbacks: 1,
        });
        let t = render(&s, Format::OpenMetrics).unwrap();
        assert!(t.contains("forwarder_daemon_errors_total{task=\"stats_file\"} 3"), "{t}");
        assert!(
            t.contains("forwarder_egress_xdp{iface=\"int0\"} 0")
                && t.contains("forwarder_egress_xdp_refused_frames_total{iface=\"int0\"} 7"),
            "{t}"
        );
        assert!(t.ends_with("# EOF\n"), "{t}");
        // Both parse, each by the strict parser of its own format, to the
        // same samples.
        let om = openmetrics_parser::openmetrics::parse_openmetrics(&t).unwrap();
        let classic =
            openmetrics_parser::prometheus::parse_prometheus(&render(&s, Format::Text).unwrap())
                .unwrap_or_else(|e| panic!("{e:?}"));
        let spec = "tcp:8080=10.0.0.2:80,src=\"x\"";
        let packets = &classic.families["forwarder_rule_packets_total"];
        assert!(packets.iter_samples().any(|x| {
            let l = x.get_labelset().unwrap();
            l.get_label_value("spec") == Some(spec) && l.get_label_value("direction") == Some("in")
        }));
        assert_eq!(om.families.len(), classic.families.len());
        assert!(om.families.contains_key("forwarder_rule_packets"));
        assert_eq!(
            Format::from_accept("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept("*/*"), Format::Text);
    }
}
