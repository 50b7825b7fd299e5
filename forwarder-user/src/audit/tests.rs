use super::*;

fn ev(verdict: u8) -> AuditEvent {
    AuditEvent {
        ts_ns: 5_000_000_000,
        rule_id: 3,
        ifindex: 7,
        client: [203, 0, 113, 5],
        public: [203, 0, 113, 1],
        backend: [192, 168, 1, 50],
        snat: if verdict == AUDIT_ACCEPTED { [192, 168, 1, 1] } else { [0; 4] },
        client_port: 40000u16.to_be_bytes(),
        public_port: 8080u16.to_be_bytes(),
        backend_port: 80u16.to_be_bytes(),
        snat_port: if verdict == AUDIT_ACCEPTED { 10001u16.to_be_bytes() } else { [0; 2] },
        proto: PROTO_TCP,
        verdict,
        tcp_flags: 2,
        _pad: [0; 5],
    }
}

#[test]
fn event_lines() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
    let e = ev(AUDIT_ACCEPTED);
    let d = Described {
        ev: &e,
        time: t,
        rule: Some("tcp:8080=192.168.1.50:80".into()),
        iface: Some("pub0".into()),
    };
    assert_eq!(
        d.to_string(),
        "2026-11-18T11:06:40.123Z accepted tcp 203.0.113.5:40000 -> 203.0.113.1:8080 on pub0 rule 3 (tcp:8080=192.168.1.50:80) backend 192.168.1.50:80 via 192.168.1.1:10001"
    );
    let e = ev(AUDIT_DENIED);
    let d = Described { ev: &e, time: t, rule: None, iface: None };
    assert_eq!(
        d.to_string(),
        "2026-11-18T11:06:40.123Z denied tcp 203.0.113.5:40000 -> 203.0.113.1:8080 on ifindex 7 rule 3 backend 192.168.1.50:80 (source not allowed)"
    );
}

#[test]
fn syslog_message_is_rfc5424() {
    let e = ev(AUDIT_DENIED);
    let d = Described { ev: &e, time: SystemTime::UNIX_EPOCH, rule: None, iface: None };
    let f = Formatter5424 {
        facility: Facility::LOG_DAEMON,
        hostname: Some("gw".into()),
        process: "forwarder".into(),
        pid: 42,
    };
    let m = String::from_utf8(d.syslog_message(&f)).unwrap();
    // <PRI>1 TIMESTAMP HOST APP PID MSGID [SD] MSG; daemon(3)*8 + warning(4) = 28.
    assert!(m.starts_with("<28>1 "), "{m}");
    assert!(m.contains(" gw forwarder 42 2 [forwarder@32473 backend=\"192.168.1.50:80\" client=\"203.0.113.5:40000\" proto=\"tcp\" public=\"203.0.113.1:8080\" rule=\"3\" verdict=\"denied\"] "), "{m}");
    assert!(m.ends_with("(source not allowed)"), "{m}");
    assert_eq!(octet_counted(b"abc"), b"3 abc");
}

#[test]
fn targets() {
    assert_eq!(
        "udp://10.0.0.5:514".parse::<SyslogTarget>().unwrap(),
        SyslogTarget { transport: Transport::Udp, addr: "10.0.0.5:514".parse().unwrap() }
    );
    assert_eq!("10.0.0.5:514".parse::<SyslogTarget>().unwrap().transport, Transport::Udp);
    assert_eq!("tcp://[::1]:601".parse::<SyslogTarget>().unwrap().to_string(), "tcp://[::1]:601");
    for (bad, says) in [
        ("http://1.2.3.4:5", "unknown transport `http`"),
        ("udp://host:514", "expected"),
        ("10.0.0.5", "expected"),
        ("udp://1.2.3.4:0", "port 0"),
    ] {
        let e = bad.parse::<SyslogTarget>().unwrap_err();
        assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
    }
}

#[test]
fn limits_and_times() {
    let mut a = AuditSettings::default();
    assert!(a.set_rate(0).is_ok());
    assert!(a.set_rate(-1).unwrap_err().contains("-1"));
    assert!(a.set_burst(0).unwrap_err().contains("burst 0"));
    assert!(a.set_rate(2_000_000).unwrap_err().contains("2000000"));
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    assert_eq!(
        wall_time(7_000_000_000, 10_000_000_000, wall),
        SystemTime::UNIX_EPOCH + Duration::from_secs(997)
    );
    // A stamp "after now" (read order) is now.
    assert_eq!(wall_time(11_000_000_000, 10_000_000_000, wall), wall);
    assert!(parse_event(&[0; 47]).is_none());
    assert_eq!(
        rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_070)),
        "2026-11-18T11:06:40.070Z"
    );
    let e = ev(AUDIT_ACCEPTED);
    assert_eq!(parse_event(bytemuck::bytes_of(&e)), Some(e));
}
