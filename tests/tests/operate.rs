//! End to end: how operators and their scripts address a running
//! forwarder — rule handles that never shift, and the `/metrics`
//! endpoint as an HTTP server and a Prometheus exposition. Needs root.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::*;
use forwarder_testkit::{BpfFs, Lab};
use serde_json::Value;

/// An echoed connection to the public `port`, left open.
fn open(lab: &Lab, port: u16) -> TcpStream {
    let mut s = lab
        .client
        .enter(move || TcpStream::connect_timeout(&public(port), CONNECT).unwrap())
        .unwrap()
        .join()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    s
}

/// `rule list --json`: (handle, rule, new connections, packets in) of each.
fn rules(lab: &Lab) -> Vec<(u64, String, u64, u64)> {
    let (ok, out) = cli(lab, &["rule", "list", "--json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["handle"].as_u64().unwrap(),
                r["rule"].as_str().unwrap().to_string(),
                r["new_connections"].as_u64().unwrap(),
                r["packets_in"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn spec(port: u16) -> String {
    format!("tcp:{port}=192.168.1.50:80")
}

#[test]
fn rule_handles_never_shift_and_name_the_rule_everywhere() {
    let lab = Lab::new().unwrap();
    let bpf = BpfFs::mount(lab.dir.join("bpf")).unwrap();
    echo_server(&lab, 80);
    let mut fwd =
        lab.start_forwarder(&["--rule", &spec(8080), "--pin-dir", bpf.arg(), "--persist"]).unwrap();
    // Three rules: the first from the command line, two added.
    for (port, handle) in [(8081, 2), (8082, 3)] {
        let (ok, out) = cli(&lab, &["rule", "add", &spec(port), "--json"]);
        assert!(ok && out.trim() == format!(r#"{{"handle":{handle}}}"#), "{out}");
    }
    // 1, 2 and 3 connections, kept open.
    let conns: Vec<TcpStream> =
        [8080, 8081, 8081, 8082, 8082, 8082].iter().map(|p| open(&lab, *p)).collect();
    let before = rules(&lab);
    assert_eq!(
        before.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(),
        [(1, 1), (2, 2), (3, 3)],
        "{before:?}"
    );
    // The middle one goes: the others keep their handles and counters.
    let (ok, out) = cli(&lab, &["rule", "del", "2"]);
    assert!(ok && out.contains("removed rule 2: tcp:8081"), "{out}");
    let after = rules(&lab);
    assert_eq!(after, [before[0].clone(), before[2].clone()], "handles or counters moved");
    // Deleting it again names the handle; a new rule gets a new handle
    // (not the deleted one's), and starts from 0.
    let (ok, out) = cli(&lab, &["rule", "del", "2"]);
    assert!(!ok && out.contains("no rule with handle 2"), "{out}");
    let (ok, out) = cli(&lab, &["rule", "add", &spec(8083)]);
    assert!(ok && out.contains("added rule 4: tcp:8083"), "{out}");
    let after = rules(&lab);
    assert_eq!(after.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(), [(1, 1), (3, 3), (4, 0)]);
    // The connections of rule 3 are found by its handle, and the audit
    // trail named the rule by it.
    let (ok, out) = cli(&lab, &["conntrack", "list", "--rule", "3", "--json"]);
    assert!(ok, "{out}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3, "{out}");
    assert!(listed.iter().all(|c| c["rule"] == 3 && c["public"] == "203.0.113.1:8082"), "{out}");
    let log = fwd.log_text();
    assert!(log.contains(" rule 3 (tcp:8082=192.168.1.50:80)"), "{log}");
    // The stats name rules by handle too.
    let (ok, out) = cli(&lab, &["stats", "--json"]);
    assert!(ok, "{out}");
    let stats: Value = serde_json::from_str(&out).unwrap();
    let handles: Vec<u64> =
        stats["rules"].as_array().unwrap().iter().map(|r| r["handle"].as_u64().unwrap()).collect();
    assert_eq!(handles, [1, 3, 4]);
    // Saved, the handles are in the file; a daemon started from it (a
    // hitless restart) has the same rules under the same handles, with
    // their counters.
    let saved = lab.dir.join("saved.toml");
    let (ok, out) = cli(&lab, &["save", saved.to_str().unwrap()]);
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&saved).unwrap();
    for h in [1, 3, 4] {
        assert!(text.contains(&format!("handle = {h}\n")), "{text}");
    }
    fwd.stop().unwrap();
    let mut fwd = lab
        .start_forwarder_with(&["--config", saved.to_str().unwrap(), "--pin-dir", bpf.arg()])
        .unwrap();
    let restarted = rules(&lab);
    assert_eq!(
        restarted.iter().map(|r| (r.0, r.1.as_str(), r.2)).collect::<Vec<_>>(),
        [
            (1, "tcp:8080=192.168.1.50:80", 1),
            (3, "tcp:8082=192.168.1.50:80", 3),
            (4, "tcp:8083=192.168.1.50:80", 0)
        ]
    );
    drop(conns);
    finish(&lab, &mut fwd, Expect::default());
}

/// One HTTP/1.1 request to the gateway's metrics endpoint: status line,
/// headers (lower-case names) and body.
fn http(lab: &Lab, request: &str) -> (String, Vec<(String, String)>, String) {
    let request = request.to_string();
    let raw = lab
        .gateway
        .enter(move || {
            let mut s = TcpStream::connect("127.0.0.1:9108").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            r
        })
        .unwrap()
        .join()
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{extra}Connection: close\r\n\r\n")
}

#[test]
fn metrics_endpoint_is_http_and_prometheus_and_a_silent_client_holds_up_nothing() {
    let lab = Lab::new().unwrap();
    let mut fwd =
        lab.start_forwarder(&["--rule", HTTP_RULE, "--metrics", "127.0.0.1:9108"]).unwrap();
    let server = http_server(&lab, 2);
    for _ in 0..2 {
        http_get(&lab, public(8080));
    }
    server.join().unwrap();
    // A client that connects and sends nothing.
    let silent = lab
        .gateway
        .enter(|| TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], 9108))).unwrap())
        .unwrap()
        .join()
        .unwrap();
    let t0 = Instant::now();
    // Meanwhile a control request and a scrape are answered at once.
    let (ok, out) = cli(&lab, &["stats", "--json"]);
    assert!(ok && t0.elapsed() < Duration::from_secs(2), "{out} after {:?}", t0.elapsed());
    let (status, headers, body) = http(&lab, &get("/metrics", ""));
    assert!(t0.elapsed() < Duration::from_secs(3), "the scrape waited {:?}", t0.elapsed());
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(header(&headers, "content-type"), "text/plain; version=0.0.4; charset=utf-8");
    // It parses as the Prometheus text format (by a strict parser), with
    // the rule's handle.
    let scrape = openmetrics_parser::prometheus::parse_prometheus(&body)
        .unwrap_or_else(|e| panic!("{e:?}: {body}"));
    let values = |family: &str, labels: &[(&str, &str)]| -> Vec<f64> {
        scrape.families.get(family).map_or_else(Vec::new, |f| {
            f.iter_samples()
                .filter(|x| {
                    let l = x.get_labelset().unwrap();
                    labels.iter().all(|(k, v)| l.get_label_value(k) == Some(*v))
                })
                .filter_map(|x| match &x.value {
                    openmetrics_parser::PrometheusValue::Counter(c) => Some(c.value.as_f64()),
                    openmetrics_parser::PrometheusValue::Gauge(g) => Some(g.as_f64()),
                    _ => None,
                })
                .collect()
        })
    };
    assert_eq!(
        values(
            "forwarder_rule_connections_total",
            &[("rule", "1"), ("spec", "tcp:8080=192.168.1.50:80")]
        ),
        [2.0],
        "{body}"
    );
    assert_eq!(values("forwarder_conntrack_connections_max", &[]), [262_144.0], "{body}");
    let redirected: f64 = values("forwarder_datapath_events_total", &[("event", "xdp_redirected")])
        .iter()
        .chain(&values("forwarder_datapath_events_total", &[("event", "tc_redirected")]))
        .chain(&values("forwarder_datapath_events_total", &[("event", "tc_redirected_neigh")]))
        .sum();
    assert!(redirected > 0.0, "{body}");
    assert!(!body.contains("# EOF"), "{body}");
    // OpenMetrics when asked for.
    let (status, headers, body) =
        http(&lab, &get("/metrics", "Accept: application/openmetrics-text; version=1.0.0\r\n"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(header(&headers, "content-type").starts_with("application/openmetrics-text"));
    assert!(body.ends_with("# EOF\n"), "{body}");
    openmetrics_parser::openmetrics::parse_openmetrics(&body)
        .unwrap_or_else(|e| panic!("{e:?}: {body}"));
    // HEAD: the headers of the GET, no body.
    let (status, headers, body) =
        http(&lab, "HEAD /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(header(&headers, "content-length").parse::<usize>().unwrap() > 1000, "{headers:?}");
    assert!(body.is_empty(), "{body}");
    // Elsewhere nothing; another method is refused.
    let (status, _, _) = http(&lab, &get("/other", ""));
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, headers, _) = http(
        &lab,
        "POST /metrics HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(header(&headers, "allow"), "GET, HEAD");
    // The silent client is cut off after the header timeout (5 s).
    let mut silent = silent;
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 64];
    let n = silent.read(&mut b).unwrap_or(0);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(9),
        "the silent client was closed after {waited:?} ({n} bytes)"
    );
    finish(&lab, &mut fwd, Expect::default());
}
