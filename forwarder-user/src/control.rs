//! The daemon's control channel: a unix socket (mode 0600, root only; path
//! `--control`, default [`DEFAULT_SOCKET`], so several daemons can run side
//! by side). Protocol: the client writes one JSON request line, the daemon
//! answers one JSON line `{"ok":true,"data":…}` or `{"ok":false,"error":"…"}`
//! and closes.
//!
//! Requests: `{"cmd":"stats"}`; `{"cmd":"rules"}`;
//! `{"cmd":"add","spec":S}`; `{"cmd":"del","handle":H}`; `{"cmd":"backends"}`;
//! `{"cmd":"drain","addr":A,"port":P,"rule":H?,"on":true|false}`;
//! `{"cmd":"weight","addr":A,"port":P,"rule":H?,"weight":W}`; rules are
//! named by their handles (`H`);
//! `{"cmd":"save","path":"/etc/forwarder/forwarder.toml"}` (atomic: temp file +
//! rename); `{"cmd":"conntrack","filter":F}` lists
//! connections; `{"cmd":"flush","filter":F}` removes them (both entries).
//! `F` = `{"rule":H?,"addr":"A"?,"port":P?}`, every field optional; a
//! connection matches when any of its addresses/ports (either direction)
//! equals the given one.

use std::net::Ipv4Addr;

use forwarder_common::{
    abi::{DIR_ORIGINAL, FlowEntry, FlowKey},
    conntrack::{self, CT_CLOSED, CT_ESTABLISHED, CT_FIN, CT_NEW, CT_REPLIED},
};
use serde::{Deserialize, Serialize};

pub const DEFAULT_SOCKET: &str = "/run/forwarder.sock";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Filter {
    /// The rule's handle.
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
    /// The running rules: handle, rule, counters, where it came from.
    Rules,
    /// Add a rule (`PROTO:PORTS…` syntax); applied like a reload.
    Add {
        spec: String,
    },
    /// Remove the rule with handle `handle`; its connections keep their
    /// translation until they end.
    Del {
        handle: u32,
    },
    /// Write the running configuration to `path` (atomically).
    Save {
        path: std::path::PathBuf,
    },
    /// The backends of balanced rules: weight, state, last check, live
    /// connections.
    Backends,
    /// Drain (`on`) or undrain backend `addr:port` (of rule `rule` only,
    /// if given): no new connections, established ones continue.
    Drain {
        addr: Ipv4Addr,
        port: u16,
        rule: Option<u32>,
        on: bool,
    },
    /// Give backend `addr:port` (of rule `rule` only, if given) a weight.
    Weight {
        addr: Ipv4Addr,
        port: u16,
        rule: Option<u32>,
        weight: u32,
    },
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

/// One connection of a flow table dump, as the table holds it: its
/// original-direction entry, the key of its reply entry, and when either
/// last saw a packet (the later of the two, in ticks of the flow clock).
#[derive(Clone, Copy, Debug)]
pub struct Tracked {
    pub key: FlowKey,
    pub entry: FlowEntry,
    pub reply_key: FlowKey,
    pub last_seen: u32,
}

impl Tracked {
    /// Whether it is a connection of rule `rule_id` to backend `addr`,
    /// on `port` (`None`: any, for a rule that maps a port range).
    pub fn serves(&self, rule_id: u32, addr: Ipv4Addr, port: Option<u16>) -> bool {
        self.entry.rule_id == rule_id
            && self.entry.daddr == addr.octets()
            && port.is_none_or(|p| u16::from_be_bytes(self.entry.dport) == p)
    }

    /// Its four endpoints: client, public, masquerade, backend.
    fn endpoints(&self) -> [([u8; 4], [u8; 2]); 4] {
        let (k, e) = (&self.key, &self.entry);
        [(k.saddr, k.sport), (k.daddr, k.dport), (e.saddr, e.sport), (e.daddr, e.dport)]
    }

    pub fn conn(&self, now_ns: u64) -> Conn {
        let [client, public, masquerade, backend] = self.endpoints().map(|(a, p)| ep(a, p));
        Conn {
            proto: if self.key.proto == 6 { "tcp" } else { "udp" }.into(),
            rule: self.entry.rule_id,
            state: state_name(self.entry.state).into(),
            client,
            public,
            masquerade,
            backend,
            idle_s: conntrack::age_ns(self.last_seen, now_ns) / 1_000_000_000,
        }
    }

    /// [`Tracked::conn`] as a JSON object, written straight into `out`
    /// (a listing of a quarter of a million connections is made in one
    /// pass, without a string per field or the formatting machinery).
    pub fn write_json(&self, now_ns: u64, out: &mut String) {
        let [c, p, m, b] = self.endpoints();
        out.push_str(r#"{"proto":""#);
        out.push_str(if self.key.proto == 6 { "tcp" } else { "udp" });
        out.push_str(r#"","rule":"#);
        push_dec(out, u64::from(self.entry.rule_id));
        out.push_str(r#","state":""#);
        out.push_str(state_name(self.entry.state));
        for (name, (a, port)) in [
            (r#"","client":""#, c),
            (r#"","public":""#, p),
            (r#"","masquerade":""#, m),
            (r#"","backend":""#, b),
        ] {
            out.push_str(name);
            for (i, octet) in a.iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_dec(out, u64::from(*octet));
            }
            out.push(':');
            push_dec(out, u64::from(u16::from_be_bytes(port)));
        }
        out.push_str(r#"","idle_s":"#);
        push_dec(out, conntrack::age_ns(self.last_seen, now_ns) / 1_000_000_000);
        out.push('}');
    }
}

/// Appends `n` in decimal.
fn push_dec(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits only.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// The connections in a flow table dump: one per original-direction entry
/// (its peer found through an index: linear in the table's size).
pub fn connections(flows: &[(FlowKey, FlowEntry)]) -> Vec<Tracked> {
    let last_seen: std::collections::HashMap<FlowKey, u32, FastHash> = flows
        .iter()
        .filter(|(_, e)| e.dir != DIR_ORIGINAL)
        .map(|(k, e)| (*k, e.last_seen))
        .collect();
    flows
        .iter()
        .filter(|(_, e)| e.dir == DIR_ORIGINAL)
        .map(|(k, e)| {
            let reply_key = FlowKey::new(&e.tuple().reversed(), k.proto);
            let last = last_seen
                .get(&reply_key)
                .map_or(e.last_seen, |&r| conntrack::later(e.last_seen, r));
            Tracked { key: *k, entry: *e, reply_key, last_seen: last }
        })
        .collect()
}

/// The listing as a JSON array.
pub fn connections_json(conns: &[Tracked], now_ns: u64) -> String {
    let mut out = String::with_capacity(conns.len() * 220 + 2);
    out.push('[');
    for (i, c) in conns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        c.write_json(now_ns, &mut out);
    }
    out.push(']');
    out
}

/// A hasher for flow keys of our own table (no adversary picks them
/// here: the datapath has admitted them already): FNV-1a, several times
/// faster than `SipHash` on 16-byte keys.
#[derive(Clone, Copy, Default)]
pub struct FastHash;

impl std::hash::BuildHasher for FastHash {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

impl Filter {
    pub fn matches(&self, c: &Tracked) -> bool {
        let eps = c.endpoints();
        self.rule.is_none_or(|r| r == c.entry.rule_id)
            && self.addr.is_none_or(|a| eps.iter().any(|(e, _)| *e == a.octets()))
            && self.port.is_none_or(|p| eps.iter().any(|(_, e)| u16::from_be_bytes(*e) == p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forwarder_common::{conntrack::entry_pair, nat::Tuple};

    #[test]
    fn lists_pairs_once_and_filters() {
        let client = Tuple {
            saddr: [203, 0, 113, 10],
            daddr: [203, 0, 113, 1],
            sport: 40000u16.to_be_bytes(),
            dport: 8080u16.to_be_bytes(),
        };
        let out = Tuple {
            saddr: [192, 168, 1, 1],
            daddr: [192, 168, 1, 50],
            sport: 12345u16.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
        };
        let [(ok, oe), (rk, re)] = entry_pair(&client, &out, 6, 2, 0, 1_000_000_000, 0);
        let mut re = re;
        // The reply side was active later: idle counts from there.
        re.last_seen = forwarder_common::conntrack::tick(2_000_000_000);
        let tracked = connections(&[(ok, oe), (rk, re)]);
        assert_eq!(tracked.len(), 1);
        // 2.5 s later (idle shows whole seconds, to a tick's precision).
        let c = &tracked[0].conn(4_500_000_000);
        // The fast JSON is the same as serde's (and decimals are decimals).
        let mut d = String::new();
        for n in [0, 7, 10, 65_535, u64::MAX] {
            push_dec(&mut d, n);
            d.push(' ');
        }
        assert_eq!(d, format!("0 7 10 65535 {} ", u64::MAX));
        let json: Vec<Conn> =
            serde_json::from_str(&connections_json(&tracked, 4_500_000_000)).unwrap();
        assert_eq!(&json[0], c);
        assert_eq!(
            (c.client.as_str(), c.public.as_str(), c.masquerade.as_str(), c.backend.as_str()),
            ("203.0.113.10:40000", "203.0.113.1:8080", "192.168.1.1:12345", "192.168.1.50:80")
        );
        assert_eq!((c.rule, c.state.as_str(), c.idle_s), (2, "new", 2));
        assert_eq!(tracked[0].reply_key, rk);
        let t = &tracked[0];
        assert!(Filter { rule: Some(2), ..Default::default() }.matches(t));
        assert!(!Filter { rule: Some(1), ..Default::default() }.matches(t));
        assert!(
            Filter {
                addr: Some(Ipv4Addr::new(192, 168, 1, 50)),
                port: Some(80),
                ..Default::default()
            }
            .matches(t)
        );
        assert!(
            Filter { port: Some(12345), ..Default::default() }.matches(t),
            "the masquerade port"
        );
        assert!(!Filter { port: Some(81), ..Default::default() }.matches(t));
        assert!(
            !Filter { addr: Some(Ipv4Addr::new(192, 168, 1, 5)), ..Default::default() }.matches(t)
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"flush","filter":{"rule":2}}"#).unwrap();
        assert!(matches!(r, Request::Flush { filter: Filter { rule: Some(2), .. } }));
    }
}
