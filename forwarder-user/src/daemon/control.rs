//! What the control socket's requests do: stats, rules (list, add, del),
//! save, conntrack (list, flush), backends (list, drain, weight).

use anyhow::Context as _;

use std::net::Ipv4Addr;

use super::{clients::Data, core::Daemon};
use forwarder_common::conntrack::CT_CLOSED;

use crate::settings::Rule;

impl Daemon {
    pub(super) fn control(&mut self, req: crate::control::Request) -> anyhow::Result<Data> {
        use crate::control::{Request, connections, connections_json, write_atomically};
        Ok(Data::Value(match req {
            Request::Stats => serde_json::to_value(self.snapshot(true)?)?,
            Request::Rules => {
                let snap = self.dp.snapshot(&self.settings.rules)?;
                serde_json::Value::Array(
                    self.settings
                        .rules
                        .iter()
                        .zip(&snap.rules)
                        .map(|(r, c)| {
                            serde_json::json!({"handle": r.handle, "rule": r.to_string(), "origin": r.origin,
                                "packets_in": c.packets_in, "bytes_in": c.bytes_in, "packets_out": c.packets_out, "bytes_out": c.bytes_out,
                                "new_connections": c.new_connections, "denied": c.denied})
                        })
                        .collect(),
                )
            }
            Request::Add { spec } => {
                let r = Rule::parse_spec(&spec)?;
                let mut next = self.settings.clone();
                next.rules.push(r);
                self.change(next)?;
                let handle = self.settings.rules.last().map_or(0, |r| r.handle);
                serde_json::json!({ "handle": handle })
            }
            Request::Del { handle } => {
                let mut next = self.settings.clone();
                let at = next.rules.iter().position(|r| r.handle == handle).ok_or_else(|| {
                    anyhow::anyhow!("no rule with handle {handle} (see `forwarder rule list`)")
                })?;
                let gone = next.rules.remove(at);
                self.change(next)?;
                serde_json::json!({"handle": handle, "removed": gone.to_string()})
            }
            Request::Save { path } => {
                let text = format!(
                    "# saved by `forwarder save` from the running daemon\n{}",
                    self.settings.to_toml()?
                );
                write_atomically(&path, &text)
                    .with_context(|| format!("writing {}", path.display()))?;
                log::info!("saved the running configuration to {}", path.display());
                serde_json::json!({ "path": path })
            }
            Request::Conntrack { filter } => {
                let conns: Vec<_> = connections(&self.dp.flows()?)
                    .into_iter()
                    .filter(|c| filter.matches(c))
                    .collect();
                return Ok(Data::Text(connections_json(&conns, crate::datapath::monotonic_ns())));
            }
            Request::Backends => self.backend_list()?,
            Request::Drain { addr, port, rule, on } => {
                let at = self.backend_at(addr, port, rule)?;
                for a in &at {
                    self.backends.set_drained(*a, on);
                }
                self.backends.apply(&mut self.dp, &self.compiled, &self.settings)?;
                let what = if on { "draining" } else { "undrained" };
                for (ri, _) in &at {
                    let id = self.backends.rules[*ri].handle;
                    self.audit.notice(
                        log::Level::Info,
                        &format!("rule {id}: backend {addr}:{port} {what}"),
                    );
                }
                serde_json::json!({ "changed": at.len() })
            }
            Request::Weight { addr, port, rule, weight } => {
                anyhow::ensure!(
                    weight <= crate::settings::MAX_WEIGHT,
                    "weight {weight} is not 0-{}",
                    crate::settings::MAX_WEIGHT
                );
                let at = self.backend_at(addr, port, rule)?;
                for a in &at {
                    self.backends.set_weight(*a, weight);
                    let handle = self.backends.rules[a.0].handle;
                    if let Some(b) =
                        self.settings.rule_mut(handle).and_then(|r| r.backends.get_mut(a.1))
                    {
                        b.weight = weight;
                    }
                }
                self.backends.apply(&mut self.dp, &self.compiled, &self.settings)?;
                log::info!("backend {addr}:{port}: weight {weight} ({} rule(s))", at.len());
                serde_json::json!({ "changed": at.len() })
            }
            Request::Flush { filter } => {
                let keys: Vec<_> = connections(&self.dp.flows()?)
                    .into_iter()
                    .filter(|c| filter.matches(c))
                    .flat_map(|c| [c.key, c.reply_key])
                    .collect();
                let removed = self.dp.remove_flows(&keys)?;
                log::info!("conntrack flush: {} connection(s) removed", removed / 2);
                serde_json::json!({ "removed_connections": removed / 2 })
            }
        }))
    }

    /// The members `addr:port` names (of rule `rule` only, if given);
    /// none is an error naming what was asked.
    fn backend_at(
        &self,
        addr: Ipv4Addr,
        port: u16,
        rule: Option<u32>,
    ) -> anyhow::Result<Vec<(usize, usize)>> {
        let at = self.backends.find(addr, port, rule);
        anyhow::ensure!(
            !at.is_empty(),
            "no backend {addr}:{port}{} in a rule with several backends or a health check (see `forwarder backend list`)",
            rule.map(|r| format!(" in rule {r}")).unwrap_or_default()
        );
        Ok(at)
    }

    /// Every member of every balanced rule with its state, last check,
    /// live connections (tracked ones, not yet closed, that it serves) and
    /// packets and bytes both ways.
    fn backend_list(&self) -> anyhow::Result<serde_json::Value> {
        let conns = crate::control::connections(&self.dp.flows()?);
        let members: Vec<_> = self.backends.members().collect();
        let keys: Vec<_> = members.iter().map(|(b, m)| b.stats_key(m)).collect();
        let counts = self.dp.backend_stats(&keys)?;
        let mut out = Vec::new();
        for ((b, m), n) in members.into_iter().zip(counts) {
            let Some(rule) = self.settings.rule(b.handle) else { continue };
            let port = rule.backend_port_match(m.port);
            let live = conns
                .iter()
                .filter(|c| c.entry.state != CT_CLOSED && c.serves(b.handle, m.addr, port))
                .count();
            let last = m.tracker.as_ref().and_then(|t| t.last.as_ref());
            out.push(serde_json::json!({
                "rule": b.handle,
                "backend": format!("{}:{}", m.addr, m.port),
                "weight": m.weight,
                "state": m.state(),
                "check": last.map(|l| l.what.clone()),
                "check_ok": last.map(|l| l.ok),
                "latency_us": last.map(|l| u64::try_from(l.latency.as_micros()).unwrap_or(u64::MAX)),
                "connections": live,
                "packets_in": n.orig_packets,
                "bytes_in": n.orig_bytes,
                "packets_out": n.reply_packets,
                "bytes_out": n.reply_bytes,
            }));
        }
        Ok(serde_json::Value::Array(out))
    }
}
