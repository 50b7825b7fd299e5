//! The daemon's control channel: a unix socket (mode 0600, root only; path
//! `--control`, default [`DEFAULT_SOCKET`], so several daemons can run side
//! by side). Protocol: the client writes one JSON request line, the daemon
//! answers one JSON line `{"ok":true,"data":…}` or `{"ok":false,"error":"…"}`
//! and closes.
//!
//! Requests: `{"cmd":"stats"}`; `{"cmd":"rules"}`;
//! `{"cmd":"save","path":"/etc/forwarder.toml"}` (atomic: temp file +
//! rename); `{"cmd":"conntrack","filter":F}` lists
//! connections; `{"cmd":"flush","filter":F}` removes them (both entries).
//! `F` = `{"rule":N?,"addr":"A"?,"port":P?}`, every field optional; a
//! connection matches when any of its addresses/ports (either direction)
//! equals the given one.

use std::net::Ipv4Addr;

use forwarder_common::{
    abi::{DIR_ORIGINAL, FlowEntry, FlowKey},
    conntrack::{CT_CLOSED, CT_ESTABLISHED, CT_FIN, CT_NEW, CT_REPLIED},
};
use serde::{Deserialize, Serialize};

pub const DEFAULT_SOCKET: &str = "/run/forwarder.sock";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Filter {
    pub rule: Option<u32>,
    pub addr: Option<Ipv4Addr>,
    pub port: Option<u16>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Stats,
    Conntrack {
        #[serde(default)]
        filter: Filter,
    },
    Flush {
        #[serde(default)]
        filter: Filter,
    },
    /// The running rules: id, rule, where it came from.
    Rules,
    /// Add a rule (`PROTO:PORTS…` syntax); applied like a reload.
    Add { spec: String },
    /// Remove rule `id`; its connections keep their translation until they end.
    Del { id: usize },
    /// Write the running configuration to `path` (atomically).
    Save { path: std::path::PathBuf },
}

/// Writes `text` to `path` so that readers see the old or the new file,
/// never a torn one: a temporary file beside it, synced, then renamed.
pub fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// One connection as `conntrack list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Conn {
    pub proto: String,
    pub rule: u32,
    pub state: String,
    /// Client → public address:port, as the client sent it.
    pub client: String,
    pub public: String,
    /// Masquerade address:port → backend, as the backend sees it.
    pub masquerade: String,
    pub backend: String,
    /// Seconds since the last packet (either direction, 1 s resolution).
    pub idle_s: u64,
}

fn ep(a: [u8; 4], p: [u8; 2]) -> String {
    format!("{}:{}", Ipv4Addr::from(a), u16::from_be_bytes(p))
}

const fn state_name(s: u8) -> &'static str {
    match s {
        CT_NEW => "new",
        CT_REPLIED => "replied",
        CT_ESTABLISHED => "established",
        CT_FIN => "closing",
        CT_CLOSED => "closed",
        _ => "?",
    }
}

/// The connections in a flow table dump: one per original-direction entry
/// (its peer found through an index: linear in the table's size).
pub fn connections(flows: &[(FlowKey, FlowEntry)], now_ns: u64) -> Vec<(Conn, FlowKey, FlowKey)> {
    let last_seen: std::collections::HashMap<FlowKey, u64> = flows.iter().filter(|(_, e)| e.dir != DIR_ORIGINAL).map(|(k, e)| (*k, e.last_seen_ns)).collect();
    flows
        .iter()
        .filter(|(_, e)| e.dir == DIR_ORIGINAL)
        .map(|(k, e)| {
            let reply_key = FlowKey::new(&e.tuple().reversed(), k.proto);
            let last = last_seen.get(&reply_key).map_or(e.last_seen_ns, |r| (*r).max(e.last_seen_ns));
            let conn = Conn {
                proto: if k.proto == 6 { "tcp" } else { "udp" }.into(),
                rule: e.rule_id,
                state: state_name(e.state).into(),
                client: ep(k.saddr, k.sport),
                public: ep(k.daddr, k.dport),
                masquerade: ep(e.saddr, e.sport),
                backend: ep(e.daddr, e.dport),
                idle_s: now_ns.saturating_sub(last) / 1_000_000_000,
            };
            (conn, *k, reply_key)
        })
        .collect()
}

impl Filter {
    pub fn matches(&self, c: &Conn) -> bool {
        let eps = [&c.client, &c.public, &c.masquerade, &c.backend];
        self.rule.is_none_or(|r| r == c.rule)
            && self.addr.is_none_or(|a| eps.iter().any(|e| e.split(':').next() == Some(a.to_string().as_str())))
            && self.port.is_none_or(|p| eps.iter().any(|e| e.rsplit(':').next() == Some(p.to_string().as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forwarder_common::{conntrack::entry_pair, nat::Tuple};

    #[test]
    fn lists_pairs_once_and_filters() {
        let client = Tuple { saddr: [203, 0, 113, 10], daddr: [203, 0, 113, 1], sport: 40000u16.to_be_bytes(), dport: 8080u16.to_be_bytes() };
        let out = Tuple { saddr: [192, 168, 1, 1], daddr: [192, 168, 1, 50], sport: 12345u16.to_be_bytes(), dport: 80u16.to_be_bytes() };
        let [(ok, oe), (rk, re)] = entry_pair(&client, &out, 6, 2, 1_000_000_000, 0);
        let conns = connections(&[(ok, oe), (rk, re)], 4_000_000_000);
        assert_eq!(conns.len(), 1);
        let c = &conns[0].0;
        assert_eq!((c.client.as_str(), c.public.as_str(), c.masquerade.as_str(), c.backend.as_str()), ("203.0.113.10:40000", "203.0.113.1:8080", "192.168.1.1:12345", "192.168.1.50:80"));
        assert_eq!((c.rule, c.state.as_str(), c.idle_s), (2, "new", 3));
        assert_eq!(conns[0].2, rk);
        assert!(Filter { rule: Some(2), ..Default::default() }.matches(c));
        assert!(!Filter { rule: Some(1), ..Default::default() }.matches(c));
        assert!(Filter { addr: Some(Ipv4Addr::new(192, 168, 1, 50)), port: Some(80), ..Default::default() }.matches(c));
        assert!(!Filter { port: Some(81), ..Default::default() }.matches(c));
        let r: Request = serde_json::from_str(r#"{"cmd":"flush","filter":{"rule":2}}"#).unwrap();
        assert!(matches!(r, Request::Flush { filter: Filter { rule: Some(2), .. } }));
    }
}
