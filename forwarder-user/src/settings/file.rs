//! The configuration file, both ways: TOML read (serde, every error with
//! its line) and written back (what `forwarder save` writes and `--config`
//! reads).

use std::path::Path;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    handles::MAX_HANDLE,
    health::FileHealth,
    model::{Backend, Cidr, Mode, Ports, Proto, Rule, Settings, timeouts_named},
    rule_spec::{check_backends, parse_backend, parse_ports, parse_weight, port_in_range},
};
use crate::error::{Error, Result};

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileConntrack {
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    timeouts: BTreeMap<String, u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_conn_rate: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_conn_burst: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    public: Vec<String>,
    #[serde(default)]
    internal: Vec<String>,
    snat_ports: Option<String>,
    conntrack: Option<toml::Spanned<FileConntrack>>,
    mode: Option<Mode>,
    /// Interface name → mode.
    #[serde(default)]
    modes: BTreeMap<String, Mode>,
    #[serde(default)]
    rule: Vec<toml::Spanned<FileRule>>,
    audit: Option<toml::Spanned<FileAudit>>,
}

/// What a file written by [`Settings::to_toml`] holds: [`FileConfig`]
/// without the spans, its plain values before its tables (as TOML wants
/// them).
#[derive(Serialize)]
struct SavedFile {
    public: Vec<String>,
    internal: Vec<String>,
    snat_ports: String,
    mode: Mode,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    modes: BTreeMap<String, Mode>,
    conntrack: FileConntrack,
    audit: FileAudit,
    rule: Vec<FileRule>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileAudit {
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    syslog: Option<String>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    proto: String,
    port: PortField,
    /// The rule's handle (`forwarder save` writes it; without one the
    /// daemon gives one).
    #[serde(skip_serializing_if = "Option::is_none")]
    handle: Option<i64>,
    /// One backend (`ADDR[:PORTS]`), or `backends`.
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backends: Option<Vec<FileBackend>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    masquerade: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sources: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<FileHealth>,
}

/// `{ to = "ADDR[:PORTS]", weight = W }` (weight 1 by default).
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    weight: Option<i64>,
}

/// `port = 8080` or `port = "8000-9000"`.
#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum PortField {
    Number(i64),
    Text(String),
}

/// The line numbers of a text's byte offsets: its line ends found once,
/// each offset's line by a binary search (a file of 10 000 rules asks
/// 10 000 times).
struct Lines(Vec<usize>);

impl Lines {
    fn of(text: &str) -> Self {
        Self(text.bytes().enumerate().filter(|&(_, b)| b == b'\n').map(|(i, _)| i).collect())
    }

    /// The 1-based line of `offset`.
    fn at(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

impl Settings {
    /// Merges a TOML file into these settings (interfaces and rules are
    /// appended). Errors name the file and line.
    pub fn load_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config { path: path.into(), why: e.to_string() })?;
        self.merge_toml(path, &text)
    }

    pub fn merge_toml(&mut self, path: &Path, text: &str) -> Result<()> {
        let cfg_err = |why: String| Error::Config { path: path.into(), why };
        let lines = Lines::of(text);
        let line_of = |offset: usize| lines.at(offset);
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| format!("line {}: ", line_of(s.start))).unwrap_or_default();
            cfg_err(format!("{at}{}", e.message()))
        })?;
        self.public.extend(file.public);
        self.internal.extend(file.internal);
        if let Some(ct) = file.conntrack {
            let line = line_of(ct.span().start);
            let ct = ct.into_inner();
            let at = |why: String| cfg_err(format!("line {line}: conntrack: {why}"));
            if let Some(n) = ct.max {
                self.conntrack.set_max(n).map_err(at)?;
            }
            for (name, secs) in ct.timeouts {
                self.conntrack.set_timeout(&name, secs).map_err(at)?;
            }
            if let Some(n) = ct.new_conn_rate {
                self.conntrack.set_new_conn_rate(n).map_err(at)?;
            }
            if let Some(n) = ct.new_conn_burst {
                self.conntrack.set_new_conn_burst(n).map_err(at)?;
            }
        }
        if let Some(a) = file.audit {
            let line = line_of(a.span().start);
            let a = a.into_inner();
            let at = |why: String| cfg_err(format!("line {line}: audit: {why}"));
            if let Some(n) = a.rate {
                self.audit.set_rate(n).map_err(at)?;
            }
            if let Some(n) = a.burst {
                self.audit.set_burst(n).map_err(at)?;
            }
            if let Some(t) = a.syslog {
                self.audit.syslog = Some(t.parse().map_err(at)?);
            }
        }
        if let Some(m) = file.mode {
            self.mode = m;
        }
        self.iface_modes.extend(file.modes);
        if let Some(r) = file.snat_ports {
            self.snat_ports = r.parse().map_err(|e: Error| cfg_err(e.to_string()))?;
        }
        for spanned in file.rule {
            let line = line_of(spanned.span().start);
            let rule = spanned
                .into_inner()
                .resolve(format!("{}:{line}", path.display()))
                .map_err(|why| cfg_err(format!("line {line}: rule: {why}")))?;
            self.rules.push(rule);
        }
        Ok(())
    }

    /// These settings as a config file (what `forwarder save` writes and
    /// `--config` reads back): serialized by serde through `toml_edit`,
    /// which lays it out (tables for the sections and rules, inline
    /// backends) and keeps a comment above each rule saying where it came
    /// from.
    pub fn to_toml(&self) -> Result<String> {
        use toml_edit::Item;
        let fail = |e: &dyn std::fmt::Display| {
            Error::Settings(format!("writing the settings as TOML: {e}"))
        };
        let mut doc = toml_edit::ser::to_document(&self.saved()).map_err(|e| fail(&e))?;
        let table = |item: &mut Item| -> Result<()> {
            let t = std::mem::take(item).into_table().map_err(|_| fail(&"not a table"))?;
            *item = Item::Table(t);
            Ok(())
        };
        for key in ["modes", "conntrack", "audit"] {
            if let Some(item) = doc.get_mut(key) {
                table(item)?;
            }
        }
        if let Some(item) = doc.get_mut("rule") {
            let mut rules =
                std::mem::take(item).into_array_of_tables().map_err(|_| fail(&"rules"))?;
            for (t, r) in rules.iter_mut().zip(&self.rules) {
                t.decor_mut().set_prefix(format!("\n# {}\n", r.origin.replace('\n', " ")));
                if let Some(h) = t.get_mut("health") {
                    table(h)?;
                }
            }
            *item = Item::ArrayOfTables(rules);
        }
        Ok(doc.to_string())
    }

    /// These settings in the file's terms.
    fn saved(&self) -> SavedFile {
        let c = &self.conntrack;
        SavedFile {
            public: self.public.clone(),
            internal: self.internal.clone(),
            snat_ports: format!("{}-{}", self.snat_ports.0, self.snat_ports.1),
            mode: self.mode,
            modes: self.iface_modes.iter().cloned().collect(),
            conntrack: FileConntrack {
                max: Some(u64::from(c.max_connections)),
                timeouts: timeouts_named(&c.timeouts)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                new_conn_rate: (c.new_conn_rate != 0).then_some(u64::from(c.new_conn_rate)),
                new_conn_burst: (c.new_conn_rate != 0).then_some(u64::from(c.new_conn_burst)),
            },
            audit: FileAudit {
                rate: Some(i64::from(self.audit.rate)),
                burst: Some(i64::from(self.audit.burst)),
                syslog: self.audit.syslog.as_ref().map(ToString::to_string),
            },
            rule: self.rules.iter().map(FileRule::of).collect(),
        }
    }
}

impl FileRule {
    /// The rule it describes, validated; `origin` says where it is.
    fn resolve(self, origin: String) -> Result<Rule, String> {
        let proto: Proto = self.proto.parse()?;
        let ports = match &self.port {
            PortField::Number(n) => port_in_range(*n, "port").map(Ports::one),
            PortField::Text(s) => parse_ports(s, "port"),
        }?;
        let backends = match (&self.to, &self.backends) {
            (Some(to), None) => {
                let (addr, ports) = parse_backend(to, ports)?;
                vec![Backend { addr, ports, weight: 1 }]
            }
            (None, Some(list)) if !list.is_empty() => {
                let set = list
                    .iter()
                    .map(|b| {
                        let (addr, ports) = parse_backend(&b.to, ports)?;
                        let weight = b.weight.map_or(Ok(1), |w| parse_weight(&w.to_string()))?;
                        Ok(Backend { addr, ports, weight })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                check_backends(&set)?;
                set
            }
            _ => return Err("give `to` (one backend) or `backends` (a list), not both".into()),
        };
        let handle = match self.handle {
            None => 0,
            Some(h) => u32::try_from(h)
                .ok()
                .filter(|h| (1..=MAX_HANDLE).contains(h))
                .ok_or_else(|| format!("handle {h} is out of range 1-{MAX_HANDLE}"))?,
        };
        let sources =
            self.sources.iter().map(|s| s.parse()).collect::<Result<Vec<Cidr>, String>>()?;
        Ok(Rule {
            handle,
            sources,
            proto,
            ports,
            interface: self.interface,
            backends,
            health: self.health.map(FileHealth::resolve).transpose()?,
            masquerade: self.masquerade.unwrap_or(true),
            origin,
        })
    }

    /// `r` as a file writes it.
    fn of(r: &Rule) -> Self {
        let (to, backends) = match r.backends.as_slice() {
            [b] if b.weight == 1 => (Some(format!("{}:{}", b.addr, b.ports)), None),
            set => (
                None,
                Some(
                    set.iter()
                        .map(|b| FileBackend {
                            to: format!("{}:{}", b.addr, b.ports),
                            weight: Some(i64::from(b.weight)),
                        })
                        .collect(),
                ),
            ),
        };
        Self {
            proto: r.proto.to_string(),
            port: if r.ports.lo == r.ports.hi {
                PortField::Number(i64::from(r.ports.lo))
            } else {
                PortField::Text(r.ports.to_string())
            },
            handle: (r.handle != 0).then_some(i64::from(r.handle)),
            to,
            backends,
            interface: r.interface.clone(),
            masquerade: Some(r.masquerade),
            sources: r.sources.iter().map(ToString::to_string).collect(),
            health: r.health.as_ref().map(FileHealth::of),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;

    #[test]
    fn lines_number_offsets_from_one_and_count_a_newline_on_its_own_line() {
        let l = Lines::of("a\nbc\n\nd");
        let got: Vec<usize> = (0..8).map(|o| l.at(o)).collect();
        // a \n b c \n \n d (past the end)
        assert_eq!(got, [1, 1, 2, 2, 2, 3, 4, 4]);
    }
}
