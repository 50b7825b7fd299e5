//! The netfilter recipes the forwarder is compared with, each as an
//! operator would write it: the services they publish, the classic DNAT +
//! stateful FORWARD + MASQUERADE in iptables and in nftables, and a port
//! balanced over three backends with iptables' `statistic` match and
//! nftables' `numgen`.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use forwarder_testkit::{GW_INTERNAL_IF, GW_PUBLIC_IF, Host, Lab};

use crate::util::sh;

/// The services: (protocol, public port, server port).
pub(crate) const SERVICES: [(&str, u16, u16); 6] = [
    ("tcp", 8080, 80),
    ("tcp", 5201, 5201),
    ("udp", 5300, 5300),
    ("udp", 5301, 5301),
    ("tcp", 5300, 5300),
    ("tcp", 5301, 5301),
];

/// The balanced service's backends (the server answers on each address).
pub(crate) const LB_BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 168, 1, 50),
    Ipv4Addr::new(192, 168, 1, 51),
    Ipv4Addr::new(192, 168, 1, 52),
];

/// The classic recipe: PREROUTING DNAT per service, a stateful FORWARD
/// accept, POSTROUTING MASQUERADE.
pub(crate) fn iptables(lab: &Lab, s: &str) -> Result<()> {
    for (proto, public, port) in SERVICES {
        dnat(lab, proto, public, &[], &format!("{s}:{port}"))?;
    }
    forward_and_masquerade(lab)
}

/// `iptables -t nat -A PREROUTING -p PROTO -i pub0 --dport PUBLIC
/// [MATCHING…] -j DNAT --to-destination TO`.
fn dnat(lab: &Lab, proto: &str, public: u16, matching: &[&str], to: &str) -> Result<()> {
    let public = public.to_string();
    let mut args =
        vec!["-t", "nat", "-A", "PREROUTING", "-p", proto, "-i", GW_PUBLIC_IF, "--dport", &public];
    args.extend_from_slice(matching);
    args.extend(["-j", "DNAT", "--to-destination", to]);
    sh(lab, Host::Gateway, "iptables", &args)?;
    Ok(())
}

/// The recipe's other two rules: a stateful FORWARD accept and
/// POSTROUTING MASQUERADE.
fn forward_and_masquerade(lab: &Lab) -> Result<()> {
    sh(
        lab,
        Host::Gateway,
        "iptables",
        &["-A", "FORWARD", "-m", "state", "--state", "NEW,ESTABLISHED,RELATED", "-j", "ACCEPT"],
    )?;
    sh(
        lab,
        Host::Gateway,
        "iptables",
        &["-t", "nat", "-A", "POSTROUTING", "-o", GW_INTERNAL_IF, "-j", "MASQUERADE"],
    )?;
    Ok(())
}

/// The same recipe in one nftables ruleset.
pub(crate) fn nftables(lab: &Lab, s: &str) -> Result<()> {
    let dnat = SERVICES.iter().fold(String::new(), |mut acc, (proto, public, port)| {
        use std::fmt::Write as _;
        let _ = writeln!(
            acc,
            "    iifname \"{GW_PUBLIC_IF}\" {proto} dport {public} dnat to {s}:{port}"
        );
        acc
    });
    nft_recipe(lab, &dnat)
}

/// The recipe in one nftables ruleset, with `dnat` as its prerouting
/// rules.
fn nft_recipe(lab: &Lab, dnat: &str) -> Result<()> {
    let ruleset = format!(
        "table ip fwdbench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat;\n{dnat}  }}\n  \
         chain forward {{\n    type filter hook forward priority filter;\n    ct state new,established,related accept\n  }}\n  \
         chain postrouting {{\n    type nat hook postrouting priority srcnat;\n    oifname \"{GW_INTERNAL_IF}\" masquerade\n  }}\n}}\n"
    );
    let path = lab.dir.join("bench.nft");
    std::fs::write(&path, ruleset)?;
    sh(lab, Host::Gateway, "nft", &["-f", path.to_str().context("path")?])?;
    Ok(())
}

/// The balanced service's ports: (protocol, public port, backend port).
pub(crate) const LB_SERVICES: [(&str, u16, u16); 3] =
    [("tcp", 5300, 5300), ("tcp", 8080, 80), ("tcp", 5301, 5301)];

/// The server answers on every address of [`LB_BACKENDS`], and the
/// gateway knows them all as neighbours (as it knows the server's).
pub(crate) fn balanced_backends(lab: &Lab, server_mac: [u8; 6]) -> Result<()> {
    for b in &LB_BACKENDS[1..] {
        lab.server.ip(&["addr", "add", &format!("{b}/24"), "dev", "eth0"])?;
        lab.gateway.ip(&[
            "neigh",
            "replace",
            &b.to_string(),
            "lladdr",
            &forwarder_testkit::netns::fmt_mac(server_mac),
            "dev",
            GW_INTERNAL_IF,
            "nud",
            "permanent",
        ])?;
    }
    Ok(())
}

/// The recipe's balancing: per port, DNAT rules that `-m statistic --mode
/// nth` gives every third, second, then every remaining new connection
/// (an exact third each, without a random draw per packet); the stateful
/// FORWARD accept and MASQUERADE as in the plain recipe.
pub(crate) fn iptables_lb(lab: &Lab) -> Result<()> {
    for (proto, public, port) in LB_SERVICES {
        for (i, b) in LB_BACKENDS.iter().enumerate() {
            let every = (LB_BACKENDS.len() - i).to_string();
            let nth = ["-m", "statistic", "--mode", "nth", "--every", &every, "--packet", "0"];
            let matching: &[&str] = if i + 1 < LB_BACKENDS.len() { &nth } else { &[] };
            dnat(lab, proto, public, matching, &format!("{b}:{port}"))?;
        }
    }
    forward_and_masquerade(lab)
}

/// nftables' balancing: `numgen inc` over a map of backend address and
/// port, one rule per port.
pub(crate) fn nftables_lb(lab: &Lab) -> Result<()> {
    let dnat = LB_SERVICES.iter().fold(String::new(), |mut acc, (proto, public, port)| {
        use std::fmt::Write as _;
        let map: Vec<String> =
            LB_BACKENDS.iter().enumerate().map(|(i, b)| format!("{i} : {b} . {port}")).collect();
        let _ = writeln!(
            acc,
            "    iifname \"{GW_PUBLIC_IF}\" {proto} dport {public} dnat ip to numgen inc mod {} map {{ {} }}",
            LB_BACKENDS.len(),
            map.join(", ")
        );
        acc
    });
    nft_recipe(lab, &dnat)
}
