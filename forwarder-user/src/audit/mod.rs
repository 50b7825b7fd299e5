//! Audit trail: the datapath's events (one per new connection attempt to a
//! forwarded port, accepted or denied by a source list) as log lines, and
//! optionally as RFC 5424 syslog messages to a remote server.
//!
//! Nothing here queues without bound: the kernel rate-limits and counts
//! what it does not emit (`stats::AUDIT_*`), and the syslog sender has a
//! fixed queue whose overflow is counted too ([`SyslogSink::dropped`]).

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use forwarder_common::abi::{AUDIT_ACCEPTED, AUDIT_DENIED, AuditEvent, PROTO_TCP, PROTO_UDP};
use syslog::{Facility, Formatter5424, LogFormat, Severity};

/// RFC 5424 structured data: SD-ID → (name → value).
type StructuredData =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;

/// Audit settings: the global event rate limit and the remote syslog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditSettings {
    /// Events per second per CPU (0: audit off).
    pub rate: u32,
    /// Events per CPU at once after a quiet spell.
    pub burst: u32,
    pub syslog: Option<SyslogTarget>,
}

/// Default rate: a busy gateway's steady connection rate is far above
/// this; a flood must not turn into a flood of log lines.
pub const DEFAULT_RATE: u32 = 1000;
pub const DEFAULT_BURST: u32 = 2000;
/// Highest accepted `rate`/`burst`.
pub const MAX_RATE: u32 = 1_000_000;

impl Default for AuditSettings {
    fn default() -> Self {
        Self { rate: DEFAULT_RATE, burst: DEFAULT_BURST, syslog: None }
    }
}

impl AuditSettings {
    pub fn set_rate(&mut self, n: i64) -> Result<(), String> {
        self.rate = checked(n, 0, "rate")?;
        Ok(())
    }

    pub fn set_burst(&mut self, n: i64) -> Result<(), String> {
        self.burst = checked(n, 1, "burst")?;
        Ok(())
    }
}

fn checked(n: i64, min: i64, what: &str) -> Result<u32, String> {
    if !(min..=i64::from(MAX_RATE)).contains(&n) {
        return Err(format!("audit {what} {n} is out of range {min}-{MAX_RATE} events per second"));
    }
    u32::try_from(n).map_err(|_| format!("audit {what} {n} is out of range"))
}

/// Where syslog messages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyslogTarget {
    pub transport: Transport,
    pub addr: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One message per datagram (RFC 5426).
    Udp,
    /// Octet-counted frames (RFC 6587 3.4.1), reconnecting after failures.
    Tcp,
}

impl FromStr for SyslogTarget {
    type Err = String;
    /// `udp://HOST:PORT`, `tcp://HOST:PORT` or `HOST:PORT` (UDP); HOST is
    /// an IP address (no DNS lookups in the datapath's daemon).
    fn from_str(s: &str) -> Result<Self, String> {
        let (transport, rest) = match s.split_once("://") {
            Some(("udp", r)) => (Transport::Udp, r),
            Some(("tcp", r)) => (Transport::Tcp, r),
            Some((other, _)) => {
                return Err(format!(
                    "syslog target `{s}`: unknown transport `{other}` (udp or tcp)"
                ));
            }
            None => (Transport::Udp, s),
        };
        let addr = rest.parse::<SocketAddr>().map_err(|_| {
            format!(
                "syslog target `{s}`: expected [udp://|tcp://]ADDRESS:PORT, e.g. udp://10.0.0.5:514"
            )
        })?;
        if addr.port() == 0 {
            return Err(format!("syslog target `{s}`: port 0"));
        }
        Ok(Self { transport, addr })
    }
}

impl fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        };
        write!(f, "{t}://{}", self.addr)
    }
}

/// Reads an event from a ring buffer record.
pub fn parse_event(bytes: &[u8]) -> Option<AuditEvent> {
    (bytes.len() >= size_of::<AuditEvent>())
        .then(|| bytemuck::pod_read_unaligned(&bytes[..size_of::<AuditEvent>()]))
}

/// An event with the names the daemon knows.
pub struct Described<'a> {
    pub ev: &'a AuditEvent,
    /// The wall-clock time of the event.
    pub time: SystemTime,
    /// The rule as configured (`tcp:8080=…`), if it still exists.
    pub rule: Option<String>,
    pub iface: Option<String>,
}

fn addr(a: [u8; 4], p: [u8; 2]) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(a), u16::from_be_bytes(p))
}

fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        n => format!("proto-{n}"),
    }
}

fn verdict_name(v: u8) -> &'static str {
    match v {
        AUDIT_ACCEPTED => "accepted",
        AUDIT_DENIED => "denied",
        _ => "unknown",
    }
}

/// RFC 3339 UTC with milliseconds (always three digits).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    match time::OffsetDateTime::from_unix_timestamp(i64::try_from(d.as_secs()).unwrap_or(0)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            d.subsec_millis()
        ),
        Err(_) => format!("{}s", d.as_secs()),
    }
}

/// Converts a `bpf_ktime_get_ns` stamp to wall-clock time, given the
/// monotonic and wall clocks read at one moment.
pub fn wall_time(ts_ns: u64, mono_now_ns: u64, wall_now: SystemTime) -> SystemTime {
    wall_now
        .checked_sub(Duration::from_nanos(mono_now_ns.saturating_sub(ts_ns)))
        .unwrap_or(wall_now)
}

impl fmt::Display for Described<'_> {
    /// `2026-11-25T18:30:01.123Z accepted tcp 203.0.113.5:40000 -> 203.0.113.1:8080 on pub0 rule 0 (tcp:8080=192.168.1.50:80) backend 192.168.1.50:80 via 192.168.1.1:10001`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.ev;
        write!(
            f,
            "{} {} {} {} -> {}",
            rfc3339(self.time),
            verdict_name(e.verdict),
            proto_name(e.proto),
            addr(e.client, e.client_port),
            addr(e.public, e.public_port)
        )?;
        match &self.iface {
            Some(i) => write!(f, " on {i}")?,
            None => write!(f, " on ifindex {}", e.ifindex)?,
        }
        write!(f, " rule {}", e.rule_id)?;
        if let Some(r) = &self.rule {
            write!(f, " ({r})")?;
        }
        write!(f, " backend {}", addr(e.backend, e.backend_port))?;
        if e.verdict == AUDIT_DENIED {
            write!(f, " (source not allowed)")?;
        } else if e.snat != [0; 4] {
            write!(f, " via {}", addr(e.snat, e.snat_port))?;
        }
        Ok(())
    }
}

impl Described<'_> {
    /// RFC 5424 structured data: the event's fields, for machines.
    fn structured(&self) -> StructuredData {
        let e = self.ev;
        let mut p = std::collections::BTreeMap::new();
        p.insert("verdict".to_string(), verdict_name(e.verdict).to_string());
        p.insert("proto".to_string(), proto_name(e.proto));
        p.insert("client".to_string(), addr(e.client, e.client_port).to_string());
        p.insert("public".to_string(), addr(e.public, e.public_port).to_string());
        p.insert("backend".to_string(), addr(e.backend, e.backend_port).to_string());
        p.insert("rule".to_string(), e.rule_id.to_string());
        if e.snat != [0; 4] {
            p.insert("snat".to_string(), addr(e.snat, e.snat_port).to_string());
        }
        // 32473: the private enterprise number reserved for examples and
        // documentation (RFC 5612); an SD-ID needs one.
        std::iter::once(("forwarder@32473".to_string(), p)).collect()
    }

    /// The event as one RFC 5424 message (MSGID 1 accepted, 2 denied).
    pub fn syslog_message(&self, fmt: &Formatter5424) -> Vec<u8> {
        let severity = if self.ev.verdict == AUDIT_DENIED {
            Severity::LOG_WARNING
        } else {
            Severity::LOG_NOTICE
        };
        let mut out = Vec::new();
        let _ = fmt.format(
            &mut out,
            severity,
            (u32::from(self.ev.verdict), self.structured(), self.to_string()),
        );
        out
    }
}

/// The formatter for this host and process.
pub fn formatter() -> Formatter5424 {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    Formatter5424 {
        facility: Facility::LOG_DAEMON,
        hostname,
        process: "forwarder".into(),
        pid: std::process::id(),
    }
}

/// A plain message (not an event) for the syslog server, e.g. the
/// rate-limit summary.
pub fn syslog_notice(fmt: &Formatter5424, severity: Severity, text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = fmt.format(&mut out, severity, (0u32, StructuredData::new(), text));
    out
}

/// Sends messages to the syslog server from a task of its own, through a
/// bounded queue: a slow or unreachable server costs dropped (and counted)
/// messages, never memory or the daemon's attention.
pub struct SyslogSink {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
    pub target: SyslogTarget,
}

/// Messages waiting for the server at most.
const QUEUE: usize = 4096;

impl SyslogSink {
    /// Starts the sender task (on the current tokio runtime).
    pub fn start(target: SyslogTarget) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(send_loop(target, rx, dropped.clone()));
        Self { tx, dropped, target }
    }

    /// Queues one message; counts it as dropped if the queue is full.
    pub fn send(&self, msg: Vec<u8>) {
        if self.tx.try_send(msg).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Messages lost so far (queue full, or the server unreachable).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Whether the server's end of a syslog connection is gone: end of
/// stream or an error where there is nothing to read.
fn peer_gone(s: &tokio::net::TcpStream) -> bool {
    match s.try_read(&mut [0u8; 256]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// RFC 6587 octet counting: `LEN SP MSG`.
pub fn octet_counted(msg: &[u8]) -> Vec<u8> {
    let mut f = format!("{} ", msg.len()).into_bytes();
    f.extend_from_slice(msg);
    f
}

async fn send_loop(
    target: SyslogTarget,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    dropped: Arc<AtomicU64>,
) {
    use tokio::io::AsyncWriteExt;
    let unspecified: SocketAddr = if target.addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let mut udp: Option<tokio::net::UdpSocket> = None;
    let mut tcp: Option<tokio::net::TcpStream> = None;
    let mut retry_at = tokio::time::Instant::now();
    let mut warned = false;
    while let Some(msg) = rx.recv().await {
        let sent = match target.transport {
            Transport::Udp => {
                if udp.is_none() {
                    udp = tokio::net::UdpSocket::bind(unspecified).await.ok();
                }
                match &udp {
                    Some(s) => s.send_to(&msg, target.addr).await.map(|_| ()),
                    None => Err(std::io::Error::other("no UDP socket")),
                }
            }
            Transport::Tcp => {
                // A syslog server never writes: a readable socket means it
                // closed (or reset) the connection. Found before the write,
                // not after: a write into a closed connection still
                // succeeds once, and that message would be lost uncounted.
                if tcp.as_ref().is_some_and(peer_gone) {
                    tcp = None;
                }
                if tcp.is_none() && tokio::time::Instant::now() >= retry_at {
                    match tokio::time::timeout(
                        Duration::from_secs(3),
                        tokio::net::TcpStream::connect(target.addr),
                    )
                    .await
                    {
                        Ok(Ok(s)) => {
                            if warned {
                                log::info!("syslog: connected to {target} again");
                            }
                            tcp = Some(s);
                            warned = false;
                        }
                        _ => retry_at = tokio::time::Instant::now() + Duration::from_secs(5),
                    }
                }
                match &mut tcp {
                    Some(s) => match tokio::time::timeout(
                        Duration::from_secs(3),
                        s.write_all(&octet_counted(&msg)),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(std::io::Error::other("write timed out")),
                    },
                    None => Err(std::io::Error::other("not connected (retrying every 5 s)")),
                }
            }
        };
        if let Err(e) = sent {
            dropped.fetch_add(1, Ordering::Relaxed);
            tcp = None;
            if !warned {
                log::warn!(
                    "syslog: cannot send to {target}: {e}; messages are dropped (and counted) until it works"
                );
                warned = true;
            }
        }
    }
}

#[cfg(test)]
mod tests;
