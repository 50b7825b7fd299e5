use std::{net::Ipv4Addr, path::Path};

use super::*;
use crate::{
    error::{Error, Result},
    plan::{Host, IfaceMode},
};
use forwarder_common::abi::{
    self, RULE_F_MASQUERADE, RULE_F_PORT_RANGE, RULE_F_SRC_FILTER, RuleKey, SrcKey,
};

/// Three interfaces: `pub1` is a veth, the others say no driver.
pub(super) struct FakeHost;

impl Host for FakeHost {
    fn index(&self, n: &str) -> Result<u32> {
        match n {
            "pub0" => Ok(2),
            "pub1" => Ok(3),
            "int0" => Ok(4),
            _ => Err(Error::UnknownInterface(n.into())),
        }
    }
    fn driver(&self, n: &str) -> Option<String> {
        (n == "pub1").then(|| "veth".into())
    }
}

pub(super) fn settings(rules: &[&str]) -> Settings {
    let mut s = Settings {
        public: vec!["pub0".into(), "pub1".into()],
        internal: vec!["int0".into()],
        rules: rules.iter().map(|r| Rule::parse_spec(r).unwrap()).collect(),
        ..Default::default()
    };
    s.assign_handles(None).unwrap();
    s
}

#[test]
fn parses_specs() {
    let r = Rule::parse_spec("tcp:8080=192.168.1.50:80").unwrap();
    assert_eq!(
        (r.proto, r.ports, r.backends.as_slice(), r.masquerade),
        (
            Proto::Tcp,
            Ports::one(8080),
            [Backend { addr: Ipv4Addr::new(192, 168, 1, 50), ports: Ports::one(80), weight: 1 }]
                .as_slice(),
            true
        )
    );
    let r = Rule::parse_spec("udp:53@pub0=10.0.0.2,no-masquerade").unwrap();
    assert_eq!(
        (r.interface.as_deref(), r.first_backend().ports, r.masquerade),
        (Some("pub0"), Ports::one(53), false)
    );
    assert_eq!(r.to_string(), "udp:53@pub0=10.0.0.2:53,no-masquerade");
}

#[test]
fn refuses_bad_specs_naming_the_value() {
    for (spec, needle) in [
        ("tcp:0=10.0.0.1:80", "public port 0 is out of range"),
        ("tcp:65536=10.0.0.1:80", "public port 65536 is out of range"),
        ("tcp:80=10.0.0.1:70000", "backend port 70000"),
        ("sctp:80=10.0.0.1", "protocol `sctp`"),
        ("tcp:80=10.0.0.300", "`10.0.0.300` is not an IPv4"),
        ("tcp:80", "expected PROTO:PORT=ADDR"),
        ("tcp:http=10.0.0.1", "public port `http` is not a number"),
        ("tcp:80=10.0.0.1,fast", "unknown option `fast`"),
        ("tcp:80=0.0.0.0", "cannot be a unicast"),
        ("tcp:9000-8000=10.0.0.1", "runs backwards"),
        ("tcp:22=10.0.0.1,src=203.0.113.5/24", "host bits set (did you mean 203.0.113.0/24?)"),
        ("tcp:22=10.0.0.1,src=203.0.113.0/33", "prefix length `33`"),
        ("tcp:22=10.0.0.1,src=bad", "source `bad`"),
        (
            "tcp:8000-9000=10.0.0.1:1-10",
            "backend range 1-10 has 10 ports but public range 8000-9000 has 1001",
        ),
        ("udp:1-70000=10.0.0.1", "public port 70000 is out of range"),
    ] {
        let e = Rule::parse_spec(spec).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains(spec), "{spec}: {e}");
    }
}

#[test]
fn compiles_and_numbers_rules() {
    let c = settings(&["tcp:8080=10.0.2.2:80", "udp:53@pub1=10.0.2.3"]).compile(&FakeHost).unwrap();
    assert_eq!(c.ifaces.len(), 3);
    // Auto is the default: native XDP else TC, and TC up front on a veth,
    // with the reason for the log.
    let got: Vec<_> = c.ifaces.iter().map(|i| (i.name.as_str(), i.mode)).collect();
    assert_eq!(
        got,
        [
            ("pub0", IfaceMode::NativeXdpElseTc),
            ("pub1", IfaceMode::Tc),
            ("int0", IfaceMode::NativeXdpElseTc)
        ]
    );
    assert!(c.ifaces[1].note.as_ref().is_some_and(|n| n.contains("pub1: veth: using TC")));
    assert!(c.ifaces[0].note.is_none());
    assert_eq!(c.rules[0].0, abi::RULE_KEY_FULL_BITS);
    assert_eq!(
        c.rules[0].1,
        RuleKey { ifindex: 0, port: 8080u16.to_be_bytes(), proto: 6, _pad: 0 }
    );
    assert_eq!(c.rules[1].1.ifindex, 3);
    // A rule's id in the datapath is its handle.
    assert_eq!((c.rules[0].2.rule_id, c.rules[1].2.rule_id), (1, 2));
    assert_eq!(c.rules[0].2.flags, RULE_F_MASQUERADE);
}

#[test]
fn source_lists() {
    let c = settings(&["tcp:22=10.0.2.2,src=203.0.113.5,src=198.51.100.0/24", "tcp:80=10.0.2.3"])
        .compile(&FakeHost)
        .unwrap();
    assert_eq!(c.rules[0].2.flags & RULE_F_SRC_FILTER, RULE_F_SRC_FILTER);
    assert_eq!(c.rules[1].2.flags & RULE_F_SRC_FILTER, 0);
    assert_eq!(
        c.sources,
        [
            (64, SrcKey { rule_id: 1, addr: [203, 0, 113, 5] }),
            (56, SrcKey { rule_id: 1, addr: [198, 51, 100, 0] })
        ]
    );
    let r = Rule::parse_spec("tcp:22=10.0.2.2,src=0.0.0.0/0").unwrap();
    assert_eq!(r.to_string(), "tcp:22=10.0.2.2:22,src=0.0.0.0/0");
}

#[test]
fn ranges_compile_to_prefixes() {
    let c = settings(&["tcp:8000-9000=10.0.2.2:18000-19000", "udp:6000-6100=10.0.2.3:53"])
        .compile(&FakeHost)
        .unwrap();
    let r0: Vec<_> = c.rules.iter().filter(|e| e.2.rule_id == 1).collect();
    assert!(r0.len() > 1 && r0.len() <= 30);
    assert!(r0.iter().all(|e| e.2.flags & RULE_F_PORT_RANGE != 0 && e.2.public_lo == 8000));
    let covered: u32 = r0.iter().map(|e| 1u32 << (abi::RULE_KEY_FULL_BITS - e.0)).sum();
    assert_eq!(covered, 1001);
    assert!(
        c.rules.iter().filter(|e| e.2.rule_id == 2).all(|e| e.2.flags & RULE_F_PORT_RANGE == 0)
    );
    let e =
        settings(&["tcp:8000-9000=10.0.2.2", "tcp:8500=10.0.2.3"]).compile(&FakeHost).unwrap_err();
    assert!(e.to_string().contains("tcp:8000-9000") && e.to_string().contains("tcp:8500"), "{e}");
}

#[test]
fn refuses_duplicates_unknown_and_misplaced_interfaces() {
    let e =
        settings(&["tcp:8080=10.0.2.2:80", "tcp:8080=10.0.2.3:80"]).compile(&FakeHost).unwrap_err();
    assert!(e.to_string().contains("duplicate rule"), "{e}");
    // Ranges: any shared port, whichever order they come in; touching
    // ones are fine.
    for (a, b) in [
        ("tcp:8000-8099=10.0.2.2", "tcp:8050=10.0.2.3:80"),
        ("tcp:8050=10.0.2.3:80", "tcp:8000-8099=10.0.2.2"),
        ("tcp:8100-8199=10.0.2.2", "tcp:7000-8100=10.0.2.3"),
        ("tcp:7000-7010=10.0.2.2", "tcp:7011-8000=10.0.2.3"),
    ] {
        let e = settings(&[a, "tcp:7500=10.0.2.4:80", b]).compile(&FakeHost).unwrap_err();
        assert!(
            e.to_string().contains("duplicate rule") && e.to_string().contains(b),
            "{a} {b}: {e}"
        );
    }
    settings(&["tcp:7000-7010=10.0.2.2", "tcp:7011-7020=10.0.2.3", "tcp:6990-6999=10.0.2.4"])
        .compile(&FakeHost)
        .unwrap();
    // Same port on different protocols or interfaces is fine.
    settings(&["tcp:8080=10.0.2.2:80", "udp:8080=10.0.2.3:80", "tcp:8080@pub0=10.0.2.4"])
        .compile(&FakeHost)
        .unwrap();
    let e = settings(&["tcp:1@eth9=10.0.2.2"]).compile(&FakeHost).unwrap_err();
    assert!(e.to_string().contains("`eth9` does not exist"), "{e}");
    let e = settings(&["tcp:1@int0=10.0.2.2"]).compile(&FakeHost).unwrap_err();
    assert!(e.to_string().contains("`int0` is not a public interface"), "{e}");
    let mut s = settings(&[]);
    s.internal.push("pub0".into());
    assert!(matches!(s.compile(&FakeHost), Err(Error::InterfaceRole { .. })));
    // Named twice in the same role (in the file and by a flag): once.
    let mut s = settings(&[]);
    s.public.push("pub0".into());
    assert_eq!(s.compile(&FakeHost).unwrap().ifaces.len(), 3);
}

#[test]
fn toml_file_with_line_numbers() {
    let mut s = Settings::default();
    let text = "public = [\"pub0\"]\ninternal = [\"int0\"]\nsnat_ports = \"20000-20100\"\n\n[[rule]]\nproto = \"tcp\"\nport = 8080\nto = \"10.0.2.2:80\"\n";
    s.merge_toml(Path::new("f.toml"), text).unwrap();
    assert_eq!(s.rules[0].origin, "f.toml:5");
    assert_eq!(s.snat_ports, PortRange(20000, 20100));

    let bad = "public = [\"pub0\"]\n[[rule]]\nproto = \"tcp\"\nport = 99999\nto = \"10.0.2.2\"\n";
    let e = Settings::default().merge_toml(Path::new("f.toml"), bad).unwrap_err().to_string();
    assert!(e.contains("f.toml") && e.contains("line 2") && e.contains("99999"), "{e}");

    let unknown = "public = [\"pub0\"]\n[[rule]]\nproto = \"tcp\"\nport = 80\nto = \"10.0.2.2\"\ncolour = \"red\"\n";
    let e = Settings::default().merge_toml(Path::new("f.toml"), unknown).unwrap_err().to_string();
    assert!(e.contains("line 6") && e.contains("colour"), "{e}");
}

#[test]
fn modes_per_interface() {
    let mut set = settings(&[]);
    set.mode = Mode::Tc;
    set.iface_modes.push(("pub1".into(), Mode::Xdp));
    let c = set.compile(&FakeHost).unwrap();
    let got: Vec<_> = c.ifaces.iter().map(|i| (i.name.as_str(), i.mode)).collect();
    assert_eq!(got, [("pub0", IfaceMode::Tc), ("pub1", IfaceMode::Xdp), ("int0", IfaceMode::Tc)]);
    set.iface_modes.push(("eth7".into(), Mode::Xdp));
    assert!(set.compile(&FakeHost).unwrap_err().to_string().contains("`eth7`"));
    let mut file = Settings::default();
    file.merge_toml(
        Path::new("m.toml"),
        "public = [\"pub0\"]\nmode = \"auto\"\n[modes]\npub0 = \"tc\"\n",
    )
    .unwrap();
    assert_eq!(
        (file.mode, file.iface_modes.clone()),
        (Mode::Auto, vec![("pub0".to_string(), Mode::Tc)])
    );
    let err = Settings::default()
        .merge_toml(Path::new("m.toml"), "mode = \"fast\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 1") && err.contains("fast"), "{err}");
}

#[test]
fn conntrack_settings() {
    let mut s = Settings::default();
    s.merge_toml(Path::new("c.toml"), "[conntrack]\nmax = 1000\ntimeouts = { tcp_established = 3600, udp = 10, tcp_syn_recv = 7 }\nnew_conn_rate = 500\n").unwrap();
    assert_eq!(s.conntrack.max_connections, 1000);
    assert_eq!(
        (s.conntrack.timeouts.tcp_syn_recv, s.conntrack.new_conn_limit()),
        (7, (500, 500)),
        "burst defaults to the rate"
    );
    s.merge_toml(Path::new("c.toml"), "[conntrack]\nnew_conn_burst = 50\n").unwrap();
    assert_eq!(s.conntrack.new_conn_limit(), (500, 50));
    let e = Settings::default()
        .merge_toml(Path::new("c.toml"), "\n\n[conntrack]\nnew_conn_rate = 99999999999\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 3") && e.contains("new-connection rate 99999999999 is out of range"),
        "{e}"
    );
    assert_eq!(
        (
            s.conntrack.timeouts.tcp_established,
            s.conntrack.timeouts.udp,
            s.conntrack.timeouts.tcp_fin
        ),
        (3600, 10, 120)
    );
    let e = Settings::default()
        .merge_toml(Path::new("c.toml"), "\n[conntrack]\ntimeouts = { tcp_forever = 1 }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2") && e.contains("`tcp_forever`"), "{e}");
    let e = Settings::default()
        .merge_toml(Path::new("c.toml"), "[conntrack]\nmax = 3\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("conntrack max 3"), "{e}");
}

#[test]
fn audit_settings() {
    let mut s = Settings::default();
    assert_eq!(
        (s.audit.rate, s.audit.burst, s.audit.syslog),
        (crate::audit::DEFAULT_RATE, crate::audit::DEFAULT_BURST, None)
    );
    s.merge_toml(
        Path::new("c.toml"),
        "[audit]\nrate = 50\nburst = 5\nsyslog = \"tcp://10.0.0.5:601\"\n",
    )
    .unwrap();
    assert_eq!(
        (s.audit.rate, s.audit.burst, s.audit.syslog.unwrap().to_string()),
        (50, 5, "tcp://10.0.0.5:601".to_string())
    );
    for (text, says) in [
        (
            "\n\n[audit]\nsyslog = \"smtp://1.2.3.4:25\"\n",
            "c.toml: line 3: audit: syslog target `smtp://1.2.3.4:25`: unknown transport `smtp`",
        ),
        ("[audit]\nrate = -5\n", "c.toml: line 1: audit: audit rate -5 is out of range"),
        ("[audit]\nburst = 0\n", "audit burst 0 is out of range 1-"),
        ("[audit]\nverbose = true\n", "unknown field `verbose`"),
    ] {
        let e = Settings::default().merge_toml(Path::new("c.toml"), text).unwrap_err().to_string();
        assert!(e.contains(says), "{e}\nwanted {says}");
    }
}

#[test]
fn a_timeout_longer_than_the_table_can_time_is_refused_with_its_value() {
    let mut c = crate::settings::ConntrackSettings::default();
    c.set_timeout("tcp_established", 24 * 86_400).unwrap();
    let e = c.set_timeout("tcp_established", 24 * 86_400 + 1).unwrap_err();
    assert!(e.contains("tcp_established") && e.contains("2073601"), "{e}");
    // The file names the line.
    let mut s = Settings::default();
    let e = s
        .merge_toml(Path::new("c.toml"), "[conntrack]\ntimeouts = { udp = 9999999 }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("c.toml") && e.contains("9999999"), "{e}");
    assert_eq!(
        s.conntrack.timeouts.udp,
        forwarder_common::conntrack::Timeouts::default().udp,
        "nothing taken"
    );
}

#[test]
fn saved_config_reads_back_the_same() {
    let mut s = settings(&[
        "tcp:8080@pub0=10.0.2.2:80",
        "udp:6000-6010=10.0.2.3:53,no-masquerade,src=203.0.113.0/24",
    ]);
    s.mode = Mode::Auto;
    s.iface_modes.push(("int0".into(), Mode::Tc));
    s.conntrack.set_timeout("udp", 7).unwrap();
    s.conntrack.set_timeout("tcp_syn_recv", 9).unwrap();
    s.conntrack.set_new_conn_rate(100).unwrap();
    s.conntrack.set_new_conn_burst(10).unwrap();
    s.audit.set_rate(0).unwrap();
    s.audit.syslog = Some("udp://10.0.0.5:514".parse().unwrap());
    let mut back = Settings::default();
    back.merge_toml(Path::new("saved.toml"), &s.to_toml().unwrap()).unwrap();
    assert_eq!(back.public, s.public);
    assert_eq!(back.internal, s.internal);
    assert_eq!(
        (back.mode, back.iface_modes.clone(), back.conntrack, back.snat_ports),
        (s.mode, s.iface_modes.clone(), s.conntrack, s.snat_ports)
    );
    assert_eq!(back.audit, s.audit);
    let strip = |v: &[Rule]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(strip(&back.rules), strip(&s.rules));
}

#[test]
fn port_ranges() {
    assert_eq!("1024-65535".parse::<PortRange>().unwrap(), PortRange(1024, 65535));
    assert!("2000-1000".parse::<PortRange>().unwrap_err().to_string().contains("`2000-1000`"));
    assert!("1000-1001".parse::<PortRange>().is_err());
    assert!("0-1000".parse::<PortRange>().is_err());
}
