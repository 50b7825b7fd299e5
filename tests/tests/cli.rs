//! The command line refuses bad input with a message naming the value, and
//! leaves nothing behind (no program attached). Needs root.

mod common;

use std::process::{Command, Stdio};

use common::{Expect, finish};

use forwarder_testkit::{Lab, proc::forwarder_bin};

/// The exit status and stderr of `forwarder ARGS` on the gateway.
fn run_in_gateway(lab: &Lab, args: &[&str]) -> (Option<i32>, String) {
    let bin = forwarder_bin().unwrap();
    let mut cmd = lab.gateway.command(bin.to_str().unwrap());
    cmd.args(args).stdin(Stdio::null());
    let out = cmd.output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn invalid_input_is_refused_and_nothing_is_attached() {
    let lab = Lab::new().unwrap();
    let base = ["run", "--public", "pub0", "--internal", "int0"];
    let cfg = lab.dir.join("bad.toml");
    std::fs::write(&cfg, "public = [\"pub0\"]\n\n[[rule]]\nproto = \"tcp\"\nport = 8080\nto = \"192.168.1.50:80\"\nweight = 3\n").unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "--public", "nosuch0", "--rule", "tcp:80=192.168.1.50"],
            "`nosuch0` does not exist",
        ),
        (vec!["--rule", "tcp:0=192.168.1.50:80"], "public port 0 is out of range"),
        (vec!["--rule", "tcp:8080=192.168.1.50:65536"], "backend port 65536 is out of range"),
        (vec!["--rule", "tcp:8080=192.168.1.500:80"], "`192.168.1.500` is not an IPv4 address"),
        (
            vec!["--rule", "tcp:8080=192.168.1.50:80", "--rule", "tcp:8080=192.168.1.51:80"],
            "duplicate rule",
        ),
        (vec!["--rule", "tcp:8080@int0=192.168.1.50:80"], "`int0` is not a public interface"),
        (vec!["--config", &cfg_arg], "line 7"),
        (vec!["--snat-ports", "40000-30000"], "`40000-30000`"),
        (vec!["--syslog", "udp://logs.example:514"], "syslog target `udp://logs.example:514`"),
        (vec!["--audit-rate", "5000000"], "audit rate 5000000 is out of range"),
        (
            vec!["--rule", "tcp:8080=192.168.1.50:80", "--metrics", "127.0.0.1:9109"],
            "binding the metrics endpoint 127.0.0.1:9109",
        ),
    ];
    // Another process holds the metrics address of the last case.
    let taken = lab
        .gateway
        .enter(|| std::net::TcpListener::bind("127.0.0.1:9109").unwrap())
        .unwrap()
        .join()
        .unwrap();
    // Halfway through attaching: pub0 takes native XDP and TC, then lo
    // (no native XDP) fails; what was attached must go again.
    let halfway = [
        "run",
        "--public",
        "pub0",
        "--internal",
        "lo",
        "--mode",
        "xdp",
        "--xdp-attach",
        "native",
        "--rule",
        "tcp:8080=192.168.1.50:80",
    ];
    // A backend that would answer, were anything left translating.
    let backend = lab
        .server
        .enter(|| std::net::TcpListener::bind("0.0.0.0:80").unwrap())
        .unwrap()
        .join()
        .unwrap();
    let cases = cases.into_iter().chain([(halfway.to_vec(), "attaching XDP (native) to lo")]);
    for (extra, needle) in cases {
        let args: Vec<&str> = if extra.first() == Some(&"run") {
            extra.clone()
        } else {
            base.iter().copied().chain(extra.iter().copied()).collect()
        };
        let (status, stderr) = run_in_gateway(&lab, &args);
        assert!(stderr.contains(needle), "{args:?}: expected `{needle}` in: {stderr}");
        // Refused settings exit 2 (the service unit does not restart on
        // it); a failure on the way up, 1.
        let settings = !needle.starts_with("binding") && !needle.starts_with("attaching");
        assert_eq!(status, Some(if settings { 2 } else { 1 }), "{args:?}: {stderr}");
        // Refused before attaching (the log, on stderr, says so: "control
        // socket …" is logged before the refusals that follow it).
        assert!(!stderr.contains("attached to"), "{args:?} attached before refusing: {stderr}");
        if needle.starts_with("binding the metrics") {
            assert!(stderr.contains("control socket"), "no log on stderr: {stderr}");
        }
        for dev in ["pub0", "int0"] {
            let link = lab.gateway.ip(&["link", "show", dev]).unwrap();
            assert!(!link.contains("xdp"), "{args:?} left XDP attached to {dev}: {link}");
        }
        // Nothing translates (TC included, which `ip link` does not show):
        // the gateway's own stack refuses the public port.
        let to = std::net::SocketAddr::from((forwarder_testkit::ADDRS.gw_public, 8080));
        let r = common::connect_outcome(&lab, to);
        assert_eq!(
            r,
            Err(std::io::ErrorKind::ConnectionRefused),
            "{args:?} left a datapath translating"
        );
    }
    drop((backend, taken));
}

#[test]
fn lab_is_removed_even_when_a_test_panics() {
    let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let n2 = names.clone();
    let r = std::panic::catch_unwind(move || {
        let lab = Lab::new().unwrap();
        n2.lock().unwrap().extend([
            lab.client.name.clone(),
            lab.gateway.name.clone(),
            lab.server.name.clone(),
        ]);
        panic!("deliberate");
    });
    assert!(r.is_err());
    let list =
        String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
            .unwrap();
    for n in names.lock().unwrap().iter() {
        assert!(!list.contains(n.as_str()), "{n} left behind");
    }
}

#[test]
fn check_reports_each_problem_with_what_to_do() {
    let lab = Lab::new().unwrap();
    lab.gateway.ip(&["link", "set", "int0", "mtu", "1400"]).unwrap();
    // A forwarder already running: its XDP program is "another program".
    let mut fwd = lab.start_forwarder_on("pub0", "int0", &["--mode", "xdp"]).unwrap();
    let bin = forwarder_bin().unwrap();
    let out = lab
        .gateway
        .command(bin.to_str().unwrap())
        .args(["check", "--public", "pub0", "--internal", "int0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "warnings only must not fail: {text}");
    assert!(text.contains("OK   datapath loads"), "{text}");
    // bpffs for the pins: inside `ip netns exec` a fresh /sys has none.
    assert!(text.contains("WARN no bpffs on /sys/fs/bpf"), "{text}");
    assert!(text.contains("WARN pub0: another XDP program is attached"), "{text}");
    assert!(text.contains("WARN MTU mismatch: pub0 has 1500, int0 has 1400"), "{text}");
    // `--mode xdp` whatever the suite's mode: on an untuned lab it says
    // which egresses XDP cannot transmit into.
    let untuned: &[&str] =
        if forwarder_testkit::tuned_lab() { &[] } else { &["XDP cannot transmit into it"] };
    finish(&lab, &mut fwd, Expect::log(&[&["no rules given"][..], untuned].concat()));
    // Now free: native XDP is tried for real; an unknown interface fails.
    let out = lab
        .gateway
        .command(bin.to_str().unwrap())
        .args(["check", "--public", "pub0", "--internal", "nosuch0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("OK   pub0 (ifindex"), "{text}");
    assert!(text.contains("native XDP works"), "{text}");
    assert!(text.contains("FAIL internal interface `nosuch0` does not exist"), "{text}");
    // Whether XDP can transmit into pub0 depends on its peer's NAPI.
    if forwarder_testkit::tuned_lab() {
        assert!(
            text.contains("OK   pub0: takes redirected XDP frames (XDP transmits into it)"),
            "{text}"
        );
    } else {
        assert!(text.contains("pub0: takes no redirected XDP frames (its veth peer has no XDP program and GRO off)"), "{text}");
        assert!(text.contains("ethtool -K PEER gro on"), "{text}");
    }
    assert!(text.contains("WARN net.ipv4.ip_forward=0"), "{text}");
    // The dry attach left nothing behind.
    assert!(!lab.gateway.ip(&["link", "show", "pub0"]).unwrap().contains("xdp"));
    // The same, for scripts: one JSON object, the same verdicts.
    let out = lab
        .gateway
        .command(bin.to_str().unwrap())
        .args(["check", "--json", "--public", "pub0", "--internal", "nosuch0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["failed"], 1, "{v}");
    let items = v["items"].as_array().unwrap();
    let fail = items.iter().find(|i| i["level"] == "fail").unwrap();
    assert_eq!(fail["what"], "internal interface `nosuch0` does not exist", "{v}");
    assert_eq!(fail["fix"], "see `ip link`", "{v}");
    // The verifier's work per program, each below its budget.
    let verifier: Vec<&serde_json::Value> = items
        .iter()
        .filter(|i| i["what"].as_str().unwrap().contains("verifier processed"))
        .collect();
    // forwarder_xdp, _xdp_csum, _xdp_new, _tc, _tc_new, _xdp_tx_err.
    assert_eq!(verifier.len(), 6, "{v}");
    assert!(verifier.iter().all(|i| i["level"] == "ok"), "{v}");
}
