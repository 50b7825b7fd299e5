//! Wiring the lab's hosts: veth pairs created inside their namespaces
//! (the root namespace never sees them), addresses, routes, and the
//! tuning of the lab kind (GRO for NAPI, software checksums).

use anyhow::{Context, Result};

use super::Lab;
use crate::{
    env::{GW_INTERNAL_IF, GW_PUBLIC_IF},
    netns::Netns,
};

impl Lab {
    /// The client's, the gateway's two and the server's addresses, on
    /// their `eth0`, `pub0` and `int0`.
    fn address_hosts(&self) -> Result<()> {
        let a = self.addrs;
        for (ns, addr, ifname) in [
            (&self.client, a.client, "eth0"),
            (&self.gateway, a.gw_public, GW_PUBLIC_IF),
            (&self.gateway, a.gw_internal, GW_INTERNAL_IF),
            (&self.server, a.server, "eth0"),
        ] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname])?;
        }
        Ok(())
    }

    /// In the `csum` lab: the endpoints compute their checksums in software
    /// and verify every one they receive (tx and rx offload off); the
    /// gateway's interfaces compute in software what it sends (tx off).
    fn checksums(&self, endpoints: &[(&Netns, &str)], gateway: &[(&Netns, &str)]) -> Result<()> {
        if !self.verify_csums {
            return Ok(());
        }
        for (ns, ifname) in endpoints {
            ns.exec("ethtool", &["-K", ifname, "tx", "off", "rx", "off"])?;
        }
        for (ns, ifname) in gateway {
            ns.exec("ethtool", &["-K", ifname, "tx", "off"])?;
        }
        Ok(())
    }

    /// GRO on `ifname` of `ns` in the tuned lab: NAPI for frames XDP
    /// redirects into its peer. Nothing in the untuned one.
    fn tune(&self, ns: &Netns, ifname: &str) -> Result<()> {
        if self.tuned {
            ns.exec("ethtool", &["-K", ifname, "gro", "on"])?;
        }
        Ok(())
    }

    pub(super) fn wire_routed(&self, mtu: u32) -> Result<()> {
        let a = self.addrs;
        let r = self.router.as_ref().context("router")?;
        for (ns, ifname, peer, peer_if) in [
            (&self.gateway, GW_PUBLIC_IF, &self.client, "eth0"),
            (&self.gateway, GW_INTERNAL_IF, r, "r0"),
            (r, "r1", &self.server, "eth0"),
        ] {
            veth(ns, ifname, peer, peer_if)?;
        }
        r.ip(&["link", "set", "r1", "mtu", &mtu.to_string()])?;
        self.address_hosts()?;
        r.ip(&["addr", "add", "192.168.1.254/24", "dev", "r0"])?;
        r.ip(&["addr", "add", "192.168.2.1/24", "dev", "r1"])?;
        for (ns, ifname) in [
            (&self.client, "eth0"),
            (&self.gateway, GW_PUBLIC_IF),
            (&self.gateway, GW_INTERNAL_IF),
            (r, "r0"),
            (r, "r1"),
            (&self.server, "eth0"),
        ] {
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        self.client.ip(&["route", "add", "default", "via", &a.gw_public.to_string()])?;
        self.gateway.ip(&["route", "add", "192.168.2.0/24", "via", "192.168.1.254"])?;
        // The server answers the masqueraded address through the router.
        self.server.ip(&["route", "add", "192.168.1.0/24", "via", "192.168.2.1"])?;
        r.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        for (ns, ifname) in [(&self.client, "eth0"), (r, "r0")] {
            self.tune(ns, ifname)?;
        }
        self.checksums(
            &[(&self.client, "eth0"), (&self.server, "eth0")],
            &[(&self.gateway, GW_PUBLIC_IF), (&self.gateway, GW_INTERNAL_IF)],
        )
    }

    pub(super) fn wire(&self) -> Result<()> {
        let a = self.addrs;
        // Both ends created inside their namespaces: the root namespace
        // never sees these interfaces.
        for (gw_if, peer) in [(GW_PUBLIC_IF, &self.client), (GW_INTERNAL_IF, &self.server)] {
            veth(&self.gateway, gw_if, peer, "eth0")?;
        }
        self.address_hosts()?;
        for (ns, ifname) in [
            (&self.client, "eth0"),
            (&self.gateway, GW_PUBLIC_IF),
            (&self.gateway, GW_INTERNAL_IF),
            (&self.server, "eth0"),
        ] {
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        self.client.ip(&["route", "add", "default", "via", &a.gw_public.to_string()])?;
        // NAPI on the receiving ends, for frames redirected by XDP.
        for ns in [&self.client, &self.server] {
            self.tune(ns, "eth0")?;
        }
        self.checksums(
            &[(&self.client, "eth0"), (&self.server, "eth0")],
            &[(&self.gateway, GW_PUBLIC_IF), (&self.gateway, GW_INTERNAL_IF)],
        )
    }
}

/// A veth pair created inside the namespaces of its ends: `ifname` in
/// `ns`, `peer_if` in `peer` (the root namespace never sees it).
fn veth(ns: &Netns, ifname: &str, peer: &Netns, peer_if: &str) -> Result<()> {
    ns.ip(&["link", "add", ifname, "type", "veth", "peer", "name", peer_if, "netns", &peer.name])?;
    Ok(())
}
