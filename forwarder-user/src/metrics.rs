//! Prometheus text exposition of a counter snapshot (`--metrics ADDR`).

use std::fmt::Write as _;

use crate::stats::{RuleCounters, Snapshot};

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One sample per rule and direction (`dir` empty: per rule only).
fn rule_samples(
    s: &Snapshot,
    f: &dyn Fn(&RuleCounters) -> Vec<(&'static str, u64)>,
) -> Vec<(String, u64)> {
    let labels = |r: &RuleCounters, dir: &str| {
        let dir = if dir.is_empty() { String::new() } else { format!(",direction=\"{dir}\"") };
        format!("{{id=\"{}\",rule=\"{}\"{dir}}}", r.id, label(&r.rule))
    };
    s.rules.iter().flat_map(|r| f(r).into_iter().map(move |(dir, v)| (labels(r, dir), v))).collect()
}

/// The snapshot in the Prometheus text format (version 0.0.4).
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let per_rule = |f: &dyn Fn(&RuleCounters) -> Vec<(&'static str, u64)>| rule_samples(s, f);
    family(
        "forwarder_rule_packets_total",
        "counter",
        "Packets translated, by rule and direction (in: client to backend).",
        per_rule(&|r| vec![("in", r.packets_in), ("out", r.packets_out)]),
    );
    family(
        "forwarder_rule_bytes_total",
        "counter",
        "Bytes translated, by rule and direction.",
        per_rule(&|r| vec![("in", r.bytes_in), ("out", r.bytes_out)]),
    );
    family(
        "forwarder_rule_connections_total",
        "counter",
        "Connections created, by rule.",
        per_rule(&|r| vec![("", r.new_connections)]),
    );
    family(
        "forwarder_rule_denied_total",
        "counter",
        "New connections refused by the rule's source list.",
        per_rule(&|r| vec![("", r.denied)]),
    );
    family(
        "forwarder_datapath_events_total",
        "counter",
        "Datapath decisions and drops by reason.",
        s.counters.iter().map(|(k, v)| (format!("{{event=\"{}\"}}", label(k)), *v)).collect(),
    );
    family(
        "forwarder_conntrack_entries",
        "gauge",
        "Conntrack entries in use (two per connection).",
        vec![(String::new(), s.flow_entries)],
    );
    family(
        "forwarder_conntrack_capacity",
        "gauge",
        "Conntrack capacity in entries.",
        vec![(String::new(), s.flow_capacity)],
    );
    family(
        "forwarder_snat_ports_in_use",
        "gauge",
        "Masquerade source ports held by live connections.",
        vec![(String::new(), s.snat_ports_in_use)],
    );
    family(
        "forwarder_egress_xdp",
        "gauge",
        "1 when XDP transmits into the interface, 0 when its packets go through TC.",
        s.egress
            .iter()
            .map(|e| (format!("{{iface=\"{}\"}}", label(&e.iface)), u64::from(e.xdp)))
            .collect(),
    );
    family(
        "forwarder_egress_xdp_refused_frames_total",
        "counter",
        "Frames the kernel refused after XDP redirected them into the interface.",
        s.egress
            .iter()
            .map(|e| (format!("{{iface=\"{}\"}}", label(&e.iface)), e.refused_frames))
            .collect(),
    );
    for (name, kind, help, samples) in backend_families(s) {
        family(name, kind, help, samples);
    }
    family(
        "forwarder_daemon_errors_total",
        "counter",
        "Failed passes of the daemon's housekeeping tasks (retried; forwarding is not affected).",
        crate::housekeeping::TASKS
            .iter()
            .map(|t| (format!("{{task=\"{t}\"}}"), s.daemon_errors.get(*t).copied().unwrap_or(0)))
            .collect(),
    );
    out
}

type Family = (&'static str, &'static str, &'static str, Vec<(String, u64)>);

/// The backend families: up, weight, check latency.
fn backend_families(s: &Snapshot) -> [Family; 3] {
    let backend = |b: &crate::stats::BackendStatus| {
        format!("{{rule=\"{}\",backend=\"{}\"}}", b.rule, label(&b.backend))
    };
    [
        (
            "forwarder_backend_up",
            "gauge",
            "1 when the backend takes new connections (up, not drained), else 0.",
            s.backends.iter().map(|b| (backend(b), u64::from(b.state == "up"))).collect(),
        ),
        (
            "forwarder_backend_weight",
            "gauge",
            "The backend's configured weight.",
            s.backends.iter().map(|b| (backend(b), u64::from(b.weight))).collect(),
        ),
        (
            "forwarder_backend_check_latency_microseconds",
            "gauge",
            "How long the backend's last health check took.",
            s.backends
                .iter()
                .filter_map(|b| b.check_latency_us.map(|us| (backend(b), us)))
                .collect(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let mut s = Snapshot {
            flow_entries: 4,
            flow_capacity: 100,
            snat_ports_in_use: 2,
            ..Default::default()
        };
        s.rules.push(RuleCounters {
            id: 0,
            rule: "tcp:8080=10.0.0.2:80".into(),
            packets_in: 3,
            bytes_in: 300,
            packets_out: 2,
            bytes_out: 200,
            new_connections: 1,
            denied: 0,
        });
        s.counters.insert("xdp_redirected".into(), 5);
        s.backends.push(crate::stats::BackendStatus {
            rule: 0,
            backend: "10.0.0.2:80".into(),
            weight: 3,
            state: "down".into(),
            check_latency_us: Some(1200),
        });
        let t = render(&s);
        assert!(t.contains("forwarder_backend_up{rule=\"0\",backend=\"10.0.0.2:80\"} 0"), "{t}");
        assert!(
            t.contains("forwarder_backend_weight{rule=\"0\",backend=\"10.0.0.2:80\"} 3"),
            "{t}"
        );
        assert!(
            t.contains(
                "forwarder_backend_check_latency_microseconds{rule=\"0\",backend=\"10.0.0.2:80\"} 1200"
            ),
            "{t}"
        );
        assert!(t.contains("forwarder_rule_packets_total{id=\"0\",rule=\"tcp:8080=10.0.0.2:80\",direction=\"in\"} 3"), "{t}");
        assert!(
            t.contains(
                "forwarder_rule_connections_total{id=\"0\",rule=\"tcp:8080=10.0.0.2:80\"} 1"
            ),
            "{t}"
        );
        assert!(t.contains("forwarder_datapath_events_total{event=\"xdp_redirected\"} 5"), "{t}");
        assert!(
            t.contains("# TYPE forwarder_conntrack_entries gauge\nforwarder_conntrack_entries 4"),
            "{t}"
        );
        assert!(t.contains("forwarder_snat_ports_in_use 2"), "{t}");
        // Every housekeeping task has its error counter, failed or not.
        assert!(t.contains("forwarder_daemon_errors_total{task=\"conntrack_sweep\"} 0"), "{t}");
        s.daemon_errors.insert("stats_file".into(), 3);
        s.egress.push(crate::egress::EgressStatus {
            iface: "int0".into(),
            ifindex: 3,
            xdp: false,
            why: "x".into(),
            refused_frames: 7,
            fallbacks: 1,
        });
        let t = render(&s);
        assert!(t.contains("forwarder_daemon_errors_total{task=\"stats_file\"} 3"), "{t}");
        assert!(
            t.contains("forwarder_egress_xdp{iface=\"int0\"} 0")
                && t.contains("forwarder_egress_xdp_refused_frames_total{iface=\"int0\"} 7"),
            "{t}"
        );
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
