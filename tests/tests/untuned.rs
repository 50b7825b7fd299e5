//! End to end: links as they come — an untuned far end XDP cannot
//! transmit into, refused XDP transmits moving an egress to TC, a small
//! egress MTU with IP options. Needs root.

mod common;

use std::time::Duration;

use common::*;
use forwarder_testkit::{ADDRS, Lab};

#[test]
fn ip_options_and_a_small_egress_mtu_get_fragmentation_needed_never_an_oversized_frame() {
    // 40 bytes of IP options: a size check that takes the IPv4 length as
    // the L4 length + 20 lets these through 40 bytes too large.
    let lab = Lab::new().unwrap();
    let mut fwd = lab.start_forwarder(&["--rule", "udp:5353=192.168.1.50:53"]).unwrap();
    lab.gateway.ip(&["link", "set", "int0", "mtu", "1280"]).unwrap();
    let srv = udp_backend(&lab, 53, 1);
    let echo = std::thread::spawn(move || {
        let mut sizes = Vec::new();
        let mut b = vec![0u8; 2048];
        while let Ok((k, peer)) = srv.recv_from(&mut b) {
            let _ = srv.send_to(&b[..k.min(16)], peer);
            sizes.push(k);
        }
        sizes
    });
    let sent = lab
        .client
        .enter(|| {
            let s = udp_client(1);
            let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
            // 39 NOPs and an end of list: IHL 15.
            let mut opts = [1u8; 40];
            opts[39] = 0;
            let pmtu = libc::IP_PMTUDISC_DO;
            // SAFETY: valid socket and option buffers.
            unsafe {
                assert_eq!(
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_IP,
                        libc::IP_OPTIONS,
                        opts.as_ptr().cast(),
                        40
                    ),
                    0
                );
                assert_eq!(
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_IP,
                        libc::IP_MTU_DISCOVER,
                        (&raw const pmtu).cast(),
                        4
                    ),
                    0
                );
            }
            // A small one first: the flow exists and caches its next hop
            // (MTU 1280) before the big one comes.
            s.send_to(b"small", public(5353)).unwrap();
            s.recv_from(&mut [0u8; 64]).expect("the small datagram's answer");
            // 1240 bytes of payload: UDP 1248, IPv4 60 + 1248 = 1308 > 1280
            // (but 1248 + 20 = 1268 would fit).
            let mut sent = 0;
            for _ in 0..3 {
                if s.send_to(&[7u8; 1240], public(5353)).is_ok() {
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            sent
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(sent >= 1);
    let route = lab.client.ip(&["route", "get", &ADDRS.gw_public.to_string()]).unwrap();
    assert!(route.contains("mtu 1280"), "no fragmentation needed reached the client: {route}");
    let sizes = echo.join().unwrap();
    assert_eq!(sizes, [5], "the backend got an oversized datagram: {sizes:?}");
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert!(counter(&stats, "icmp_frag_needed_sent") >= 1, "{stats}");
}

#[test]
fn xdp_mode_on_an_untuned_lab_sends_through_tc_then_follows_the_peers_gro() {
    // Every veth at the kernel's defaults: XDP cannot transmit into the
    // gateway's veths. The explicit XDP mode says so and forwards anyway
    // (through TC); when the server's end gets GRO, int0 goes to XDP.
    let lab = Lab::with_tuning(false).unwrap();
    let mut fwd = lab.start_forwarder(&["--rule", HTTP_RULE, "--mode", "xdp"]).unwrap();
    let log = fwd.log_text();
    for i in ["pub0", "int0"] {
        assert!(
            log.contains(&format!(
                "{i}: XDP cannot transmit into it: its veth peer has no XDP program and GRO off"
            )),
            "{log}"
        );
    }
    let server = http_server(&lab, 4);
    for _ in 0..2 {
        assert_eq!(get(&lab), format!("hello {}", ADDRS.gw_internal));
    }
    let (_, stats) = cli(&lab, &["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(counter(&stats, "xdp_redirected"), 0, "{stats}");
    assert!(counter(&stats, "xdp_to_tc") > 0 && counter(&stats, "tc_redirected") > 0, "{stats}");
    assert!(v["egress"].as_array().unwrap().iter().all(|e| e["xdp"] == false), "{v}");
    // GRO at the server's end: int0 takes XDP frames now.
    lab.server.exec("ethtool", &["-K", "eth0", "gro", "on"]).unwrap();
    wait_log(&fwd, "int0: XDP transmits into it (the device takes redirected XDP frames)", 5);
    for _ in 0..2 {
        assert_eq!(get(&lab), format!("hello {}", ADDRS.gw_internal));
    }
    server.join().unwrap();
    let stats = finish(&lab, &mut fwd, Expect::log(&["XDP cannot transmit into it"]));
    // Client → server packets went out by XDP; replies (into pub0) by TC.
    assert!(counter(&stats, "xdp_redirected") >= 2 * 3, "{stats}");
    assert!(fwd.log_text().lines().all(|l| !l.contains(" ERROR ")), "{}", fwd.log_text());
}

#[test]
fn refused_xdp_transmits_are_watched_and_move_the_egress_to_tc() {
    // As on a kernel that does not report XDP features: XDP tries the
    // untuned veths, the kernel refuses its frames (EOPNOTSUPP), the
    // tracepoint counts them, and the daemon moves them to TC.
    let lab = Lab::with_tuning(false).unwrap();
    let mut fwd = lab
        .start_forwarder_faulty("xdp_features_unknown", &["--rule", HTTP_RULE, "--mode", "xdp"])
        .unwrap();
    let server = http_server(&lab, 3);
    // The first SYN is refused at int0; its retransmission (after 1 s)
    // finds int0 on TC.
    let first = get_within(&lab, Duration::from_secs(5));
    assert!(first.ends_with(&format!("hello {}", ADDRS.gw_internal)), "{first:?}");
    wait_log(&fwd, "int0: XDP cannot transmit into it: the kernel refused", 5);
    let log = fwd.log_text();
    assert!(
        log.contains("EOPNOTSUPP (the device takes no XDP frames)")
            && log.contains("XDP is tried again in 30 s"),
        "{log}"
    );
    // From then on nothing is lost.
    for _ in 0..2 {
        // (Under a second: a SYN lost and retransmitted fails it.)
        let body = get_within(&lab, Duration::from_millis(900));
        assert!(body.ends_with(&format!("hello {}", ADDRS.gw_internal)), "{body:?}");
    }
    server.join().unwrap();
    let (_, stats) = cli(&lab, &["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let int0 =
        v["egress"].as_array().unwrap().iter().find(|e| e["iface"] == "int0").unwrap().clone();
    assert!(
        int0["xdp"] == false
            && int0["refused_frames"].as_u64().unwrap() >= 1
            && int0["fallbacks"] == 1,
        "{v}"
    );
    finish(
        &lab,
        &mut fwd,
        Expect::log(&["fault injection armed", "XDP cannot transmit into it: the kernel refused"]),
    );
}

#[test]
fn a_public_interface_without_native_xdp_runs_tc_in_auto_mode_and_keeps_its_bound_rules() {
    // A macvlan has no native XDP: the default mode (auto) runs TC on it.
    // Its rule (bound to it) must still be found there before the same
    // port's unbound rule, whose backend port nobody listens on.
    let lab = Lab::new().unwrap();
    let gw = |args: &[&str]| lab.gateway.ip(args).unwrap();
    gw(&["link", "add", "mpub0", "link", "pub0", "type", "macvlan", "mode", "bridge"]);
    gw(&["addr", "add", "10.77.0.1/24", "dev", "mpub0"]);
    gw(&["link", "set", "mpub0", "up"]);
    let mac = lab.gateway.mac("mpub0").unwrap();
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    lab.client.ip(&["addr", "add", "10.77.0.2/24", "dev", "eth0"]).unwrap();
    lab.client
        .ip(&["neigh", "replace", "10.77.0.1", "lladdr", &mac, "dev", "eth0", "nud", "permanent"])
        .unwrap();
    let mut fwd = lab
        .start_forwarder_on(
            "mpub0",
            "int0",
            &[
                "--mode",
                "auto",
                "--rule",
                "tcp:8090@mpub0=192.168.1.50:80",
                "--rule",
                "tcp:8090=192.168.1.50:81",
            ],
        )
        .unwrap();
    assert!(fwd.log_text().contains("mpub0: no native XDP"), "{}", fwd.log_text());
    let server = http_server(&lab, 2);
    for _ in 0..2 {
        let (body, _) = http_get(&lab, std::net::SocketAddr::from(([10, 77, 0, 1], 8090)));
        assert_eq!(body, format!("hello {}", ADDRS.gw_internal));
    }
    server.join().unwrap();
    let stats = finish(&lab, &mut fwd, Expect::default());
    assert!(
        counter(&stats, "tc_redirected") + counter(&stats, "tc_redirected_neigh") >= 2,
        "{stats}"
    );
}
