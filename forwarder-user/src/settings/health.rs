//! A rule's health check: how the daemon finds out whether each backend
//! answers (`health=tcp`, `health=http:/path` in a rule spec; `[rule.health]`
//! in a file). Defaults as `HAProxy`'s: every 2 s, 1 s timeout, up after 2
//! successes, down after 3 failures. TCP connections on a backend that goes
//! down stay there unless `on_down = "reset"`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a check does.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Check {
    /// A TCP connect to the backend's (first) port.
    Tcp,
    /// `GET path` over HTTP/1.0: up when the status is `status`.
    Http { path: String, status: u16 },
    /// A command, `%a` and `%p` replaced by the backend's address and port:
    /// up when it exits 0.
    Exec { command: String },
}

/// What becomes of the TCP connections on a backend that goes down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum OnDown {
    /// They stay on it (a failed check does not prove a live connection
    /// dead).
    #[default]
    Keep,
    /// Both ends get a TCP reset and the entries are freed.
    Reset,
}

impl OnDown {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::Reset => "reset",
        }
    }
}

/// A rule's health check and its thresholds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    pub check: Check,
    /// Seconds between checks of one backend.
    pub interval: u32,
    /// Seconds a check may take (at most `interval`).
    pub timeout: u32,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// TCP connections on a backend that goes down (UDP flows always move).
    pub on_down: OnDown,
}

impl Health {
    pub const DEFAULT_INTERVAL: u32 = 2;
    pub const DEFAULT_TIMEOUT: u32 = 1;
    pub const DEFAULT_RISE: u32 = 2;
    pub const DEFAULT_FALL: u32 = 3;

    /// `check` with the default thresholds.
    pub const fn with_defaults(check: Check) -> Self {
        Self {
            check,
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
            rise: Self::DEFAULT_RISE,
            fall: Self::DEFAULT_FALL,
            on_down: OnDown::Keep,
        }
    }

    /// Parses the value of a spec's `health=` option: `tcp` or
    /// `http:/path` (status 200).
    pub fn parse_option(v: &str) -> Result<Self, String> {
        match v.split_once(':') {
            None if v == "tcp" => Ok(Self::with_defaults(Check::Tcp)),
            Some(("http", path)) if path.starts_with('/') => {
                Ok(Self::with_defaults(Check::Http { path: path.to_string(), status: 200 }))
            }
            Some(("http", path)) => Err(format!("health check path `{path}` must start with `/`")),
            _ => Err(format!("health check `{v}` is not `tcp` or `http:/PATH`")),
        }
    }

    /// The thresholds hold together: each at least 1 (interval 1 to 3600
    /// s), the timeout within the interval.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=3600).contains(&self.interval) {
            return Err(format!("health interval {} is not 1-3600 seconds", self.interval));
        }
        if self.timeout == 0 || self.timeout > self.interval {
            return Err(format!(
                "health timeout {} is not 1 to the interval ({}) seconds",
                self.timeout, self.interval
            ));
        }
        for (what, n) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=100).contains(&n) {
                return Err(format!("health {what} {n} is not 1-100"));
            }
        }
        match &self.check {
            Check::Http { path, .. } if !path.starts_with('/') => {
                Err(format!("health check path `{path}` must start with `/`"))
            }
            Check::Http { status, .. } if !(100..=599).contains(status) => {
                Err(format!("health status {status} is not an HTTP status (100-599)"))
            }
            Check::Exec { command } if command.trim().is_empty() => {
                Err("health command is empty".into())
            }
            _ => Ok(()),
        }
    }

    /// The spec option, when the check has one (`exec` and thresholds
    /// other than the defaults need a file).
    pub fn spec_option(&self) -> Option<String> {
        if *self != Self::with_defaults(self.check.clone()) {
            return None;
        }
        match &self.check {
            Check::Tcp => Some("health=tcp".into()),
            Check::Http { path, status: 200 } => Some(format!("health=http:{path}")),
            _ => None,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Http { path, status } => write!(f, "http {path} (status {status})"),
            Self::Exec { command } => write!(f, "exec `{command}`"),
        }
    }
}

/// `[rule.health]` as a file writes it.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHealth {
    check: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rise: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fall: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_down: Option<String>,
}

impl FileHealth {
    /// `h` as a file writes it (every threshold spelled out).
    pub(super) fn of(h: &Health) -> Self {
        let (check, path, status, command) = match &h.check {
            Check::Tcp => ("tcp", None, None, None),
            Check::Http { path, status } => ("http", Some(path.clone()), Some(*status), None),
            Check::Exec { command } => ("exec", None, None, Some(command.clone())),
        };
        Self {
            check: check.into(),
            path,
            status: status.map(i64::from),
            command,
            interval: Some(i64::from(h.interval)),
            timeout: Some(i64::from(h.timeout)),
            rise: Some(i64::from(h.rise)),
            fall: Some(i64::from(h.fall)),
            on_down: Some(h.on_down.name().into()),
        }
    }

    /// The check it describes, validated.
    pub(super) fn resolve(self) -> Result<Health, String> {
        let num = |v: Option<i64>, what: &str, default: u32| {
            v.map_or(Ok(default), |n| {
                u32::try_from(n).map_err(|_| format!("health {what} {n} is out of range"))
            })
        };
        let check = match (self.check.as_str(), self.path, self.command) {
            ("tcp", None, None) => Check::Tcp,
            ("http", path, None) => Check::Http {
                path: path.unwrap_or_else(|| "/".into()),
                status: {
                    let n = self.status.unwrap_or(200);
                    u16::try_from(n).map_err(|_| format!("health status {n} is out of range"))?
                },
            },
            ("exec", None, Some(command)) => Check::Exec { command },
            ("exec", _, None) => return Err("health check `exec` needs `command`".into()),
            ("tcp" | "http" | "exec", ..) => {
                return Err(format!(
                    "health check `{}`: `path`/`status` go with http, `command` with exec",
                    self.check
                ));
            }
            (c, ..) => return Err(format!("health check `{c}` is not tcp, http or exec")),
        };
        if self.status.is_some() && !matches!(check, Check::Http { .. }) {
            return Err("health `status` goes with check = \"http\"".into());
        }
        let on_down = match self.on_down.as_deref() {
            None | Some("keep") => OnDown::Keep,
            Some("reset") => OnDown::Reset,
            Some(other) => {
                return Err(format!("health on_down `{other}` is not `keep` or `reset`"));
            }
        };
        let h = Health {
            check,
            on_down,
            interval: num(self.interval, "interval", Health::DEFAULT_INTERVAL)?,
            timeout: num(self.timeout, "timeout", Health::DEFAULT_TIMEOUT)?,
            rise: num(self.rise, "rise", Health::DEFAULT_RISE)?,
            fall: num(self.fall, "fall", Health::DEFAULT_FALL)?,
        };
        h.validate()?;
        Ok(h)
    }
}
