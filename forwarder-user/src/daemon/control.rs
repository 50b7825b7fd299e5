//! What the control socket's requests do: stats, rules (list, add, del),
//! save, conntrack (list, flush).

use anyhow::Context as _;

use super::{clients::Data, core::Daemon};
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
                        .enumerate()
                        .map(|(i, (r, c))| {
                            serde_json::json!({"id": i, "rule": r.to_string(), "origin": r.origin,
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
                self.swap(next)?;
                serde_json::json!({"id": self.settings.rules.len() - 1})
            }
            Request::Del { id } => {
                let mut next = self.settings.clone();
                anyhow::ensure!(id < next.rules.len(), "no rule {id} (see `forwarder rule list`)");
                let gone = next.rules.remove(id);
                self.swap(next)?;
                serde_json::json!({"removed": gone.to_string()})
            }
            Request::Save { path } => {
                let text = format!(
                    "# saved by `forwarder save` from the running daemon\n{}",
                    self.settings.to_toml()
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
}
