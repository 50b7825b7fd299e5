//! Rules with several backends and health checks: the grammar, the file
//! both ways, the plan's Maglev tables.

use std::path::Path;

use super::{
    tests::{FakeHost, settings},
    *,
};
use forwarder_common::abi;

#[test]
fn parses_several_backends_with_weights_and_ranges() {
    let r = Rule::parse_spec("tcp:8080=192.168.1.50:80+192.168.1.51:80+192.168.1.52:80").unwrap();
    let got: Vec<_> =
        r.backends.iter().map(|b| (b.addr.octets()[3], b.ports.lo, b.weight)).collect();
    assert_eq!(got, [(50, 80, 1), (51, 80, 1), (52, 80, 1)]);
    assert_eq!(r.to_string(), "tcp:8080=192.168.1.50:80+192.168.1.51:80+192.168.1.52:80");
    let r =
        Rule::parse_spec("tcp:8000-8010=10.0.0.1:9000-9010*3+10.0.0.2:7000-7010,src=10.9.0.0/16")
            .unwrap();
    assert_eq!(r.backends[0].weight, 3);
    assert_eq!(r.backends[1].ports, Ports { lo: 7000, hi: 7010 });
    assert_eq!(
        r.to_string(),
        "tcp:8000-8010=10.0.0.1:9000-9010*3+10.0.0.2:7000-7010,src=10.9.0.0/16"
    );
    for (spec, needle) in [
        ("tcp:80=10.0.0.1:80+10.0.0.1:80", "backend 10.0.0.1:80 is given twice"),
        ("tcp:80=10.0.0.1:80*0+10.0.0.2:80*0", "every backend has weight 0"),
        ("tcp:80=10.0.0.1:80*x", "backend weight `x`"),
        ("tcp:80=10.0.0.1:80*10001", "backend weight `10001`"),
        ("tcp:80=10.0.0.1:80+", "backend address ``"),
        ("tcp:80-81=10.0.0.1:80-81+10.0.0.2:80", "same port mapping"),
        ("tcp:80=10.0.0.1:80+10.0.0.300:80", "`10.0.0.300` is not an IPv4"),
    ] {
        let e = Rule::parse_spec(spec).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains(spec), "{spec}: {e}");
    }
}

#[test]
fn toml_backends_with_weights_and_save_round_trip() {
    let text = "public = [\"pub0\"]\n[[rule]]\nproto = \"tcp\"\nport = 8080\nbackends = [{ to = \"192.168.1.50:80\", weight = 3 }, { to = \"192.168.1.51:80\" }]\n";
    let mut s = Settings::default();
    s.merge_toml(Path::new("b.toml"), text).unwrap();
    let got: Vec<_> =
        s.rules[0].backends.iter().map(|b| (b.addr.octets()[3], b.ports.lo, b.weight)).collect();
    assert_eq!(got, [(50, 80, 3), (51, 80, 1)]);
    let saved = s.to_toml().unwrap();
    assert!(saved.contains("backends = [{ to = \"192.168.1.50:80\", weight = 3 }, { to = \"192.168.1.51:80\", weight = 1 }]"), "{saved}");
    let mut again = Settings::default();
    again.merge_toml(Path::new("saved.toml"), &saved).unwrap();
    assert_eq!(again.rules[0].backends, s.rules[0].backends);
    for (rule, needle) in [
        ("to = \"10.0.0.1\"\nbackends = [{ to = \"10.0.0.2\" }]", "not both"),
        ("backends = []", "give `to`"),
        ("backends = [{ to = \"10.0.0.2\", weight = -1 }]", "backend weight `-1`"),
        ("backends = [{ to = \"10.0.0.2\", colour = 1 }]", "colour"),
    ] {
        let bad = format!("public = [\"pub0\"]\n[[rule]]\nproto = \"tcp\"\nport = 80\n{rule}\n");
        let e = Settings::default().merge_toml(Path::new("b.toml"), &bad).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains("line"), "{rule}: {e}");
    }
}

#[test]
fn several_backends_compile_into_maglev_tables() {
    let c = settings(&["tcp:8080=10.0.2.2:80", "tcp:9000=10.0.2.3:80+10.0.2.4:80*3+10.0.2.5:80*0"])
        .compile(&FakeHost)
        .unwrap();
    assert_eq!(c.rules[0].2.flags & abi::RULE_F_BACKENDS, 0);
    assert_ne!(c.rules[1].2.flags & abi::RULE_F_BACKENDS, 0);
    let s = &c.services;
    assert_eq!(s.entries.len(), 1);
    let (id, svc) = s.entries[0];
    assert_eq!(
        (id, svc.table_off, svc.table_len, svc.backends_off, svc.backends),
        (2, 0, 509, 0, 3)
    );
    assert_eq!(s.maglev.len(), 2 * 509, "the live table and the spare");
    let share =
        |i: u32| u32::try_from(s.maglev[..509].iter().filter(|b| **b == i).count()).unwrap();
    assert_eq!(share(2), 0, "weight 0 is not in the table");
    assert!(
        (f64::from(share(1)) / f64::from(share(0)) - 3.0).abs() < 0.1,
        "{} {}",
        share(0),
        share(1)
    );
    assert_eq!(s.backends[1].addr, [10, 0, 2, 4]);
    // Too many backends over all rules: refused, naming the rule.
    let big: Vec<String> = (0..17)
        .map(|r| {
            let set: Vec<String> =
                (1..=1000).map(|b| format!("10.{r}.{}.{}:80", b / 250, b % 250 + 1)).collect();
            format!("tcp:{}={}", 1000 + r, set.join("+"))
        })
        .collect();
    let refs: Vec<&str> = big.iter().map(String::as_str).collect();
    let e = settings(&refs).compile(&FakeHost).unwrap_err().to_string();
    assert!(e.contains("do not fit") || e.contains("does not fit"), "{e}");
}

#[test]
fn health_checks_in_specs_and_files_and_back() {
    let r = Rule::parse_spec("tcp:8080=10.0.0.1:80+10.0.0.2:80,health=http:/healthz").unwrap();
    assert_eq!(
        r.health,
        Some(Health::with_defaults(Check::Http { path: "/healthz".into(), status: 200 }))
    );
    assert_eq!(r.to_string(), "tcp:8080=10.0.0.1:80+10.0.0.2:80,health=http:/healthz");
    let h = Rule::parse_spec("tcp:80=10.0.0.1,health=tcp").unwrap().health.unwrap();
    assert_eq!((h.interval, h.timeout, h.rise, h.fall), (2, 1, 2, 3), "HAProxy's defaults");
    for (spec, needle) in [
        ("tcp:80=10.0.0.1,health=icmp", "health check `icmp`"),
        ("tcp:80=10.0.0.1,health=http:healthz", "must start with `/`"),
    ] {
        let e = Rule::parse_spec(spec).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains(spec), "{spec}: {e}");
    }
    let text = "public = [\"pub0\"]\n[[rule]]\nproto = \"tcp\"\nport = 8080\nbackends = [{ to = \"10.0.0.1:80\" }, { to = \"10.0.0.2:80\" }]\n[rule.health]\ncheck = \"exec\"\ncommand = \"/usr/local/bin/check %a %p\"\ninterval = 5\nrise = 1\nfall = 4\non_down = \"reset\"\n";
    let mut s = Settings::default();
    s.merge_toml(Path::new("h.toml"), text).unwrap();
    let h = s.rules[0].health.clone().unwrap();
    assert_eq!(h.check, Check::Exec { command: "/usr/local/bin/check %a %p".into() });
    assert_eq!((h.interval, h.timeout, h.rise, h.fall), (5, 1, 1, 4));
    assert_eq!(h.on_down, OnDown::Reset);
    // Not a spec option: the rule's text says nothing of it, the file all.
    assert_eq!(s.rules[0].to_string(), "tcp:8080=10.0.0.1:80+10.0.0.2:80");
    let mut again = Settings::default();
    again.merge_toml(Path::new("saved.toml"), &s.to_toml().unwrap()).unwrap();
    assert_eq!(again.rules[0].health, Some(h));
    for (health, needle) in [
        ("check = \"ping\"", "health check `ping`"),
        ("check = \"tcp\"\ninterval = 0", "health interval 0"),
        ("check = \"tcp\"\ninterval = 2\ntimeout = 3", "health timeout 3"),
        ("check = \"tcp\"\nfall = 0", "health fall 0"),
        ("check = \"exec\"", "needs `command`"),
        ("check = \"tcp\"\npath = \"/x\"", "go with http"),
        ("check = \"http\"\nstatus = 700", "health status 700"),
        ("check = \"tcp\"\ncolour = 1", "colour"),
        ("check = \"tcp\"\non_down = \"kill\"", "health on_down `kill`"),
    ] {
        let bad = format!(
            "public = [\"pub0\"]\n[[rule]]\nproto = \"tcp\"\nport = 80\nto = \"10.0.0.1\"\n[rule.health]\n{health}\n"
        );
        let e = Settings::default().merge_toml(Path::new("h.toml"), &bad).unwrap_err().to_string();
        assert!(e.contains(needle), "{health}: {e}");
    }
}

#[test]
fn a_checked_rule_with_one_backend_is_balanced_too() {
    let c = settings(&["tcp:80=10.0.2.2:80,health=tcp"]).compile(&FakeHost).unwrap();
    assert_ne!(c.rules[0].2.flags & abi::RULE_F_BACKENDS, 0, "its table can name none");
    assert_eq!(c.services.entries[0].1.backends, 1);
}
