//! What becomes of the connections on a backend that goes down. UDP flows
//! are forgotten: a UDP client has no connection to lose, and its next
//! datagram meets the table, which no longer names the backend. TCP
//! connections stay, unless the rule says `on_down = "reset"`: then
//!
//! 1. both entries of each are marked (`VLAN_RESET`): from then on the
//!    datapath answers every packet of it with a TCP reset to its sender,
//!    whose sequence number is the one that packet acknowledged (what the
//!    sender takes as in its window);
//! 2. each end gets a bare ACK out of its window from the other's address
//!    (a raw socket), which it answers at once with an ACK of its own
//!    (RFC 9293 3.10.7.4; RFC 5961's challenge ACK when in the window):
//!    that answer meets the mark, and the reset, so idle ends learn too;
//! 3. after `datapath::RESET_GRACE` the entries are removed (an end that
//!    never answered, such as a dead host, needs them no longer).
//!
//! The marks, probes and removal are `datapath::Resets`'; this module
//! picks the connections.

use std::net::Ipv4Addr;

use forwarder_common::{
    abi::{FlowKey, PROTO_TCP, PROTO_UDP},
    reply::Endpoints,
};

use super::core::Daemon;
use crate::{control::Tracked, settings::OnDown};

impl Daemon {
    /// A backend of rule `rule_id` (its handle) went down: its UDP flows
    /// are forgotten, its TCP connections reset if the rule says so.
    pub(super) fn on_backend_down(&mut self, rule_id: u32, addr: Ipv4Addr, port: u16) {
        let Some(rule) = self.settings.rule(rule_id) else { return };
        let port = rule.backend_port_match(port);
        let reset = rule.health.as_ref().is_some_and(|h| h.on_down == OnDown::Reset);
        let shown = port.map_or_else(|| addr.to_string(), |p| format!("{addr}:{p}"));
        let conns: Vec<Tracked> = match self.dp.flows() {
            Ok(f) => crate::control::connections(&f)
                .into_iter()
                .filter(|c| c.serves(rule_id, addr, port))
                .collect(),
            Err(e) => {
                log::warn!(
                    "rule {rule_id}: reading the connection table failed ({e:#}): the flows to {shown} stay on it until they end or expire"
                );
                return;
            }
        };
        let udp: Vec<FlowKey> = conns
            .iter()
            .filter(|c| c.key.proto == PROTO_UDP)
            .flat_map(|c| [c.key, c.reply_key])
            .collect();
        match self.dp.remove_flows(&udp) {
            Ok(0) => {}
            Ok(n) => log::info!(
                "rule {rule_id}: {} UDP flow(s) to {shown} forgotten: their next datagram goes to a live backend",
                n / 2
            ),
            Err(e) => log::warn!(
                "rule {rule_id}: the UDP flows to {shown} could not be forgotten ({e:#}); they stay on it until they expire"
            ),
        }
        if reset {
            let tcp: Vec<&Tracked> = conns.iter().filter(|c| c.key.proto == PROTO_TCP).collect();
            match self.reset_connections(&tcp) {
                Ok(0) => {}
                Ok(n) => log::info!(
                    "rule {rule_id}: {n} TCP connection(s) to {shown} reset (on_down = \"reset\")"
                ),
                Err(e) => log::warn!(
                    "rule {rule_id}: resetting the TCP connections to {shown} failed ({e:#}); they stay on it"
                ),
            }
        }
    }

    /// Marks `conns`, probes both ends of each, and schedules the removal
    /// of their entries; returns how many were marked. A probe that
    /// cannot be sent is logged: that end learns of the reset at its next
    /// packet.
    fn reset_connections(&mut self, conns: &[&Tracked]) -> anyhow::Result<usize> {
        if conns.is_empty() {
            return Ok(0);
        }
        let keys: Vec<FlowKey> = conns.iter().flat_map(|c| [c.key, c.reply_key]).collect();
        // The client hears from the address it called; the backend from
        // the one it serves.
        let probes: Vec<Endpoints> = conns
            .iter()
            .flat_map(|c| {
                let (k, e) = (&c.key, &c.entry);
                [
                    Endpoints { src: k.daddr, dst: k.saddr, sport: k.dport, dport: k.sport },
                    Endpoints { src: e.saddr, dst: e.daddr, sport: e.sport, dport: e.dport },
                ]
            })
            .collect();
        let (marked, failed) = self.resets.start(&mut self.dp, keys, &probes)?;
        if let Some(err) = failed {
            log::warn!(
                "sending the reset probes failed ({err}): the ends of those connections are reset at their next packet"
            );
        }
        Ok(marked)
    }
}
