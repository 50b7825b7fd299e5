//! `forwarder run`: validate everything, load, fill the maps, attach, and
//! forward until SIGINT/SIGTERM; then detach and print the counters.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;

use crate::{
    addrs,
    config::{Mode, PortRange, Rule, Settings},
    pin::Pins,
    iface,
    loader::{Datapath, XdpAttach},
    sysctl,
};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Public (outside-facing) interface; repeat for several.
    #[arg(long = "public", value_name = "IFACE")]
    pub public: Vec<String>,
    /// Internal (backend-facing) interface; repeat for several.
    #[arg(long = "internal", value_name = "IFACE")]
    pub internal: Vec<String>,
    /// A port mapping: PROTO:PORT[@IFACE]=ADDR[:PORT][,no-masquerade]; repeat for several.
    #[arg(long = "rule", value_name = "SPEC")]
    pub rules: Vec<String>,
    /// TOML config file (interfaces, rules, `snat_ports`); merged with the flags.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Datapath hook for every interface: xdp (TC behind it for what XDP
    /// cannot finish), tc (TC only), auto (native XDP where available, TC elsewhere and on veth).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Per-interface hook, overriding --mode: IFACE=xdp|tc|auto; repeatable.
    #[arg(long = "iface-mode", value_name = "IFACE=MODE")]
    pub iface_modes: Vec<String>,
    /// How XDP attaches in xdp mode: auto (native, else generic with a
    /// warning), native, generic.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_attach: XdpAttach,
    /// Masquerade source-port range (LOW-HIGH).
    #[arg(long, value_name = "LOW-HIGH")]
    pub snat_ports: Option<String>,
    /// Log the counters every N seconds (0 = only at exit).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub stats_interval: u64,
    /// Keep a JSON snapshot of the counters in FILE (refreshed every second,
    /// atomically; its conntrack figures at each conntrack sweep).
    #[arg(long, value_name = "FILE")]
    pub stats_file: Option<PathBuf>,
    /// Conntrack capacity in connections (two table entries each).
    #[arg(long, value_name = "CONNS")]
    pub conntrack_max: Option<u64>,
    /// A conntrack timeout in seconds: `tcp_syn`, `tcp_established`, `tcp_fin`,
    /// `tcp_close`, `udp`, `udp_stream`; repeatable.
    #[arg(long = "ct-timeout", value_name = "NAME=SECS")]
    pub ct_timeouts: Vec<String>,
    /// Leave `net.ipv4.ip_forward` on at exit even if this run turned it on.
    #[arg(long)]
    pub keep_ip_forward: bool,
    /// Pin the state maps and links here (bpffs; mounted if needed) and
    /// adopt what an earlier daemon left here: hitless restarts.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Control socket for `forwarder stats` / `forwarder conntrack` (mode
    /// 0600); one per daemon when several run side by side.
    #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET)]
    pub control: PathBuf,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9108), path /metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// At exit, leave the datapath attached and pinned (with --pin-dir), for
    /// the next `forwarder run --pin-dir` to adopt; `forwarder teardown`
    /// removes it.
    #[arg(long, requires = "pin_dir")]
    pub persist: bool,
    /// Audit events (new connection attempts, accepted or denied) per
    /// second and CPU; 0 turns audit off. Beyond it they are counted
    /// (`audit_rate_limited`), not logged. Default 1000.
    #[arg(long, value_name = "N")]
    pub audit_rate: Option<i64>,
    /// Audit events per CPU at once after a quiet spell. Default 2000.
    #[arg(long, value_name = "N")]
    pub audit_burst: Option<i64>,
    /// Also send audit events to this syslog server, RFC 5424:
    /// udp://ADDR:PORT or tcp://ADDR:PORT (octet-counted framing).
    #[arg(long, value_name = "URL")]
    pub syslog: Option<String>,
}

impl RunArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let mut s = Settings::default();
        if let Some(path) = &self.config {
            s.load_file(path)?;
        }
        s.public.extend(self.public.iter().cloned());
        s.internal.extend(self.internal.iter().cloned());
        for spec in &self.rules {
            s.rules.push(Rule::parse_spec(spec)?);
        }
        if let Some(m) = self.mode {
            s.mode = m;
        }
        for spec in &self.iface_modes {
            let (iface, mode) = spec.split_once('=').ok_or_else(|| anyhow::anyhow!("--iface-mode `{spec}`: expected IFACE=MODE"))?;
            let mode: Mode = mode.parse().map_err(|e| anyhow::anyhow!("--iface-mode `{spec}`: {e}"))?;
            s.iface_modes.push((iface.to_string(), mode));
        }
        if let Some(n) = self.conntrack_max {
            s.conntrack.set_max(n).map_err(|e| anyhow::anyhow!("--conntrack-max: {e}"))?;
        }
        for spec in &self.ct_timeouts {
            let (name, secs) = spec.split_once('=').ok_or_else(|| anyhow::anyhow!("--ct-timeout `{spec}`: expected NAME=SECS"))?;
            let secs: u32 = secs.parse().map_err(|_| anyhow::anyhow!("--ct-timeout `{spec}`: `{secs}` is not a number of seconds"))?;
            s.conntrack.set_timeout(name, secs).map_err(|e| anyhow::anyhow!("--ct-timeout `{spec}`: {e}"))?;
        }
        if let Some(r) = &self.snat_ports {
            s.snat_ports = r.parse::<PortRange>()?;
        }
        if let Some(n) = self.audit_rate {
            s.audit.set_rate(n).map_err(|e| anyhow::anyhow!("--audit-rate: {e}"))?;
        }
        if let Some(n) = self.audit_burst {
            s.audit.set_burst(n).map_err(|e| anyhow::anyhow!("--audit-burst: {e}"))?;
        }
        if let Some(t) = &self.syslog {
            s.audit.syslog = Some(t.parse().map_err(|e: String| anyhow::anyhow!("--syslog: {e}"))?);
        }
        Ok(s)
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let compiled = settings.compile(iface::index)?;
    // Before anything is loaded: a second daemon on the same socket is
    // refused without touching the running one.
    let control = bind_control(&args.control)?;
    let _socket_file = SocketFile(args.control.clone());
    if settings.rules.is_empty() {
        log::warn!("no rules given: every packet passes to the kernel untouched");
    }
    let pins = args.pin_dir.as_deref().map(Pins::open).transpose()?;
    let adopting = pins.as_ref().is_some_and(Pins::has_state);
    let mut dp = Datapath::load_pinned(settings.conntrack.max_connections, pins.as_ref())?;
    // Before anything is attached: the loss counters' baseline (adopted
    // ones carry an earlier daemon's) must not miss the first events.
    let audit = Audit::new(&mut dp, &settings)?;
    if let Some(p) = &pins {
        if adopting {
            log::info!("adopted the state maps pinned in {} (connections, counters)", p.dir.display());
        } else {
            log::info!("pinning state maps and links in {}", p.dir.display());
        }
    }
    dp.configure(&compiled)?;
    dp.sync_public_addrs(&addrs::public_addresses(&compiled.ifaces)?)?;
    dp.attach_pinned(&compiled, args.xdp_attach, pins.as_ref())?;
    for a in &dp.attached {
        log::info!("attached to {} (ifindex {}): {}", a.name, a.ifindex, a.hook);
    }
    for r in &settings.rules {
        log::info!("rule {r} ({})", r.origin);
    }
    log::info!("masquerade source ports {}-{}", compiled.snat_ports.0, compiled.snat_ports.1);
    let was_forwarding = sysctl::ensure_ip_forward()?;
    if !was_forwarding {
        log::info!("enabled net.ipv4.ip_forward (it was 0){}", if args.keep_ip_forward { "" } else { "; it is restored at exit" });
    }
    // Before saying "running": a signal right after must stop us cleanly,
    // not kill us with the datapath attached.
    let inputs = Inputs::new(control)?;
    let logger = dp.take_logger().context("kernel log channel")?;
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd
    // owns the logger, and always reports that same fd.
    let klog = unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the kernel log channel: {e}"))?;
    let channels = Channels { klog, audit };
    println!("forwarder: running; Ctrl-C or SIGTERM to stop");

    if settings.audit.rate == 0 {
        log::info!("audit events off (--audit-rate 0)");
    } else {
        log::info!("audit events: at most {}/s and bursts of {} per CPU{}", settings.audit.rate, settings.audit.burst,
            settings.audit.syslog.map(|t| format!(", also to syslog {t}")).unwrap_or_default());
    }
    log::info!(
        "conntrack: {} connections max; timeouts {:?}",
        settings.conntrack.max_connections,
        settings.conntrack.timeouts
    );
    let mut settings = settings;
    let mut compiled = compiled;
    let result = serve(&mut dp, channels, inputs, &mut settings, &mut compiled, &args, pins.as_ref()).await;

    let snap = dp.snapshot(&settings.rules);
    match (&pins, args.persist) {
        (Some(p), true) => log::info!(
            "left attached and pinned in {}: `forwarder run --pin-dir {0}` adopts it, `forwarder teardown --pin-dir {0}` removes it",
            p.dir.display()
        ),
        (Some(p), false) => {
            p.remove_all()?;
        }
        (None, _) => {}
    }
    drop(dp);
    if args.persist {
        log::info!("exiting; the datapath keeps forwarding");
    } else {
        log::info!("detached from all interfaces");
    }
    if !was_forwarding && !args.keep_ip_forward && !args.persist {
        sysctl::set_ip_forward(false)?;
        log::info!("restored net.ipv4.ip_forward=0");
    }
    let snap = snap?;
    if let Some(path) = &args.stats_file {
        snap.write_json(path).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", snap.table());
    result
}

/// What the daemon is told from outside: the control socket and the
/// signals it handles (registered once, before it says it runs).
struct Inputs {
    control: tokio::net::UnixListener,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Inputs {
    fn new(control: tokio::net::UnixListener) -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { control, int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())?, hup: signal(SignalKind::hangup())? })
    }
}

/// What the daemon reads from the datapath: aya-log's records and the
/// audit events. Both are replaced when a reload swaps the datapath.
struct Channels {
    klog: tokio::io::unix::AsyncFd<crate::loader::KernelLogger>,
    audit: Audit,
}

/// The audit trail: the kernel's event ring, read when it has data, each
/// event logged (target `audit`) and sent to syslog if configured.
struct Audit {
    ring: tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    syslog: Option<crate::audit::SyslogSink>,
    fmt: syslog::Formatter5424,
    /// Loss counters at the last report: rate limited, ring full, syslog.
    seen: (u64, u64, u64),
}

impl Audit {
    fn new(dp: &mut Datapath, settings: &Settings) -> anyhow::Result<Self> {
        let ring = Self::ring(dp)?;
        let syslog = settings.audit.syslog.map(crate::audit::SyslogSink::start);
        let seen = (dp.counter(forwarder_common::stats::AUDIT_RATE_LIMITED)?, dp.counter(forwarder_common::stats::AUDIT_RING_FULL)?, 0);
        Ok(Self { ring, syslog, fmt: crate::audit::formatter(), seen })
    }

    fn ring(dp: &mut Datapath) -> anyhow::Result<tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>> {
        // SAFETY: the ring owns its map fd for as long as the AsyncFd owns
        // the ring, and always reports that same fd.
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(dp.take_events()?, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("polling the audit event ring: {e}"))
    }

    /// After a reload: the new datapath's ring, and the syslog target
    /// the new settings name.
    fn replace(&mut self, dp: &mut Datapath, settings: &Settings) -> anyhow::Result<()> {
        self.ring = Self::ring(dp)?;
        if self.syslog.as_ref().map(|s| s.target) != settings.audit.syslog {
            self.syslog = settings.audit.syslog.map(crate::audit::SyslogSink::start);
            self.seen.2 = 0;
        }
        Ok(())
    }

    /// Logs every event waiting in the ring.
    fn drain(&mut self, dp: &Datapath, settings: &Settings) {
        let (mono, wall) = (crate::loader::monotonic_ns(), std::time::SystemTime::now());
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            let Some(ev) = crate::audit::parse_event(&item) else { continue };
            let d = crate::audit::Described {
                ev: &ev,
                time: crate::audit::wall_time(ev.ts_ns, mono, wall),
                rule: settings.rules.get(ev.rule_id as usize).map(ToString::to_string),
                iface: dp.attached.iter().find(|a| a.ifindex == ev.ifindex).map(|a| a.name.clone()),
            };
            log::info!(target: "audit", "{d}");
            if let Some(s) = &self.syslog {
                s.send(d.syslog_message(&self.fmt));
            }
        }
    }

    /// At exit: the events still in the ring, and the losses since the
    /// last report.
    fn finish(&mut self, dp: &Datapath, settings: &Settings) {
        self.drain(dp, settings);
        if let Err(e) = self.report_losses(dp) {
            log::warn!(target: "audit", "reading the audit counters: {e:#}");
        }
    }

    /// Says how many events the rate limit, a full ring or the syslog
    /// queue cost since the last report (nothing when none).
    fn report_losses(&mut self, dp: &Datapath) -> anyhow::Result<()> {
        use forwarder_common::stats::{AUDIT_RATE_LIMITED, AUDIT_RING_FULL};
        let now = (dp.counter(AUDIT_RATE_LIMITED)?, dp.counter(AUDIT_RING_FULL)?, self.syslog.as_ref().map_or(0, crate::audit::SyslogSink::dropped));
        let d = (now.0.saturating_sub(self.seen.0), now.1.saturating_sub(self.seen.1), now.2.saturating_sub(self.seen.2));
        self.seen = now;
        if d == (0, 0, 0) {
            return Ok(());
        }
        let text = format!("{} events suppressed by the rate limit, {} lost to a full ring, {} not delivered to syslog since the last report", d.0, d.1, d.2);
        log::warn!(target: "audit", "{text}");
        if let Some(s) = &self.syslog {
            s.send(crate::audit::syslog_notice(&self.fmt, syslog::Severity::LOG_WARNING, &text));
        }
        Ok(())
    }
}

/// Removes the control socket's file when the daemon ends, however it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the control socket (0600), replacing a stale one nobody listens on.
fn bind_control(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another forwarder listens on {}; give this one its own --control PATH", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let l = tokio::net::UnixListener::bind(path).with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    log::info!("control socket {}", path.display());
    Ok(l)
}

/// Reads one control request line.
async fn read_request(s: tokio::net::UnixStream) -> (anyhow::Result<crate::control::Request>, tokio::net::UnixStream) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let req = match tokio::time::timeout(Duration::from_secs(2), r.read_line(&mut line)).await {
        Ok(Ok(_)) => serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("bad request `{}`: {e}", line.trim())),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(anyhow::anyhow!("request timed out")),
    };
    (req, r.into_inner())
}

/// Answers one control request with a JSON line.
async fn write_reply(s: &mut tokio::net::UnixStream, reply: anyhow::Result<serde_json::Value>) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let v = match reply {
        Ok(data) => serde_json::json!({"ok": true, "data": data}),
        Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
    };
    let mut out = serde_json::to_vec(&v)?;
    out.push(b'\n');
    s.write_all(&out).await?;
    Ok(())
}

/// Builds a datapath for `next` and swaps it in (one link update); on any
/// error nothing running changes. Needs `--pin-dir`: the connection table
/// must outlive the swap.
fn swap(
    args: &RunArgs,
    pins: Option<&Pins>,
    next: Settings,
    dp: &mut Datapath,
    settings: &mut Settings,
    compiled: &mut crate::config::Compiled,
    ch: &mut Channels,
) -> anyhow::Result<()> {
    let Some(p) = pins else {
        anyhow::bail!("changing rules at runtime needs --pin-dir (the connection table must outlive the swap); restart instead");
    };
    let (mut new_dp, new_settings, new_compiled) = reload(args, p, next)?;
    let new_logger = new_dp.take_logger().context("kernel log channel")?;
    // SAFETY: as for the first logger.
    ch.klog = unsafe { tokio::io::unix::AsyncFd::register_with_interest(new_logger, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the kernel log channel: {e}"))?;
    // Events the old programs left in their ring, before it goes.
    ch.audit.drain(dp, settings);
    ch.audit.replace(&mut new_dp, &new_settings)?;
    *dp = new_dp;
    *settings = new_settings;
    *compiled = new_compiled;
    for r in &settings.rules {
        log::info!("rule {r} ({})", r.origin);
    }
    Ok(())
}

fn control_reply(req: crate::control::Request, dp: &mut Datapath, settings: &Settings) -> anyhow::Result<serde_json::Value> {
    use crate::control::{Request, connections, write_atomically};
    Ok(match req {
        Request::Stats => serde_json::to_value(dp.snapshot(&settings.rules)?)?,
        Request::Rules => {
            let snap = dp.snapshot(&settings.rules)?;
            serde_json::Value::Array(
                settings
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
        Request::Add { .. } | Request::Del { .. } => anyhow::bail!("rule changes are applied by the daemon loop"),
        Request::Save { path } => {
            let text = format!("# saved by `forwarder save` from the running daemon\n{}", settings.to_toml());
            write_atomically(&path, &text).with_context(|| format!("writing {}", path.display()))?;
            log::info!("saved the running configuration to {}", path.display());
            serde_json::json!({ "path": path })
        }
        Request::Conntrack { filter } => {
            let conns: Vec<_> = connections(&dp.flows()?, crate::loader::monotonic_ns()).into_iter().map(|c| c.0).filter(|c| filter.matches(c)).collect();
            serde_json::to_value(conns)?
        }
        Request::Flush { filter } => {
            let keys: Vec<_> = connections(&dp.flows()?, crate::loader::monotonic_ns()).into_iter().filter(|c| filter.matches(&c.0)).flat_map(|c| [c.1, c.2]).collect();
            let removed = dp.remove_flows(&keys)?;
            log::info!("conntrack flush: {} connection(s) removed", removed / 2);
            serde_json::json!({ "removed_connections": removed / 2 })
        }
    })
}

/// SIGHUP: a new datapath from the re-read configuration, filled, then
/// swapped into the pinned links in one step; the conntrack table carries
/// over. Any error leaves the running datapath as it was.
fn reload(args: &RunArgs, pins: &Pins, settings: Settings) -> anyhow::Result<(Datapath, Settings, crate::config::Compiled)> {
    let compiled = settings.compile(iface::index)?;
    let mut dp = Datapath::load_pinned(settings.conntrack.max_connections, Some(pins))?;
    dp.configure(&compiled)?;
    dp.sync_public_addrs(&addrs::public_addresses(&compiled.ifaces)?)?;
    dp.attach_pinned(&compiled, args.xdp_attach, Some(pins))?;
    let keep: Vec<String> = compiled.ifaces.iter().map(|i| i.name.clone()).collect();
    for gone in pins.prune_links(&keep)? {
        log::info!("{gone}: no longer configured, detached");
    }
    Ok((dp, settings, compiled))
}

#[expect(clippy::too_many_lines, reason = "the daemon loop: one select over every event source")]
async fn serve(
    dp: &mut Datapath,
    mut ch: Channels,
    mut sig: Inputs,
    settings: &mut Settings,
    compiled: &mut crate::config::Compiled,
    args: &RunArgs,
    pins: Option<&Pins>,
) -> anyhow::Result<()> {
    let metrics = match args.metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the metrics endpoint {addr}"))?;
            log::info!("metrics on http://{addr}/metrics");
            Some(l)
        }
        None => None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    let t = settings.conntrack.timeouts;
    // Collect often enough for the shortest timeout, at most every 10 s.
    let shortest = [t.tcp_syn, t.tcp_established, t.tcp_fin, t.tcp_close, t.udp, t.udp_stream].into_iter().min().unwrap_or(10);
    let gc_every = u64::from((shortest / 2).clamp(1, 10));
    // The sweep goes through the table a part per second, a pass in about
    // `gc_every` seconds (in one step while the table is small): its work
    // is spread, never one long burst.
    let mut sweep = crate::loader::Sweep::default();
    // The conntrack table's use, as the last sweep pass found it: the
    // stats file and the periodic table take it from there (reading the
    // whole table every second cost CPU that latency-sensitive neighbours
    // felt); `forwarder stats` and /metrics count afresh.
    let mut ct_usage = crate::loader::CtUsage::of(&dp.flows()?);
    let mut full_seen = 0;
    loop {
        tokio::select! {
            guard = ch.audit.ring.readable_mut() => {
                let mut guard = guard?;
                guard.clear_ready();
                drop(guard);
                ch.audit.drain(dp, settings);
            }
            guard = ch.klog.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = sig.int.recv() => { log::info!("SIGINT: stopping"); ch.audit.finish(dp, settings); return Ok(()); }
            _ = sig.term.recv() => { log::info!("SIGTERM: stopping"); ch.audit.finish(dp, settings); return Ok(()); }
            conn = async { metrics.as_ref().expect("guarded").accept().await }, if metrics.is_some() => {
                if let Ok((mut s, _)) = conn {
                    let body = crate::metrics::render(&dp.snapshot(&settings.rules)?);
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut req = [0u8; 1024];
                        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut req)).await;
                        let head = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n", body.len());
                        let _ = s.write_all(head.as_bytes()).await;
                        let _ = s.write_all(body.as_bytes()).await;
                    });
                }
            }
            conn = sig.control.accept() => {
                let Ok((s, _)) = conn else { continue };
                let (req, mut s) = read_request(s).await;
                let reply = match req {
                    Ok(crate::control::Request::Add { spec }) => {
                        let mut next = settings.clone();
                        Rule::parse_spec(&spec).map_err(anyhow::Error::from).and_then(|r| {
                            next.rules.push(r);
                            swap(args, pins, next, dp, settings, compiled, &mut ch).map(|()| serde_json::json!({"id": settings.rules.len() - 1}))
                        })
                    }
                    Ok(crate::control::Request::Del { id }) => {
                        let mut next = settings.clone();
                        if id < next.rules.len() {
                            let gone = next.rules.remove(id);
                            swap(args, pins, next, dp, settings, compiled, &mut ch).map(|()| serde_json::json!({"removed": gone.to_string()}))
                        } else {
                            Err(anyhow::anyhow!("no rule {id} (see `forwarder rule list`)"))
                        }
                    }
                    Ok(other) => control_reply(other, dp, settings),
                    Err(e) => Err(e),
                };
                if let Err(e) = write_reply(&mut s, reply).await {
                    log::warn!("control request: {e:#}");
                }
            }
            _ = sig.hup.recv() => {
                match args.settings().and_then(|next| swap(args, pins, next, dp, settings, compiled, &mut ch)) {
                    Ok(()) => log::info!("SIGHUP: reloaded, {} rule(s) live at once; existing connections keep their translation", settings.rules.len()),
                    Err(e) => log::error!("SIGHUP: reload refused, the running configuration is unchanged: {e:#}"),
                }
            }
            _ = tick.tick() => {
                ticks += 1;
                if dp.sync_public_addrs(&addrs::public_addresses(&compiled.ifaces)?)? {
                    log::info!("public addresses changed; hairpin follows");
                }
                let budget = usize::try_from(ct_usage.entries / gc_every).unwrap_or(usize::MAX).max(4096);
                if let Some(pass) = dp.sweep_step(&mut sweep, &t, crate::loader::monotonic_ns(), budget)? {
                    ct_usage = pass.usage;
                    if pass.removed > 0 {
                        log::debug!("conntrack: {} of {} entries expired and removed", pass.removed, pass.scanned);
                    }
                }
                let full = dp.counter(forwarder_common::stats::DROP_CT_FULL)?;
                if full > full_seen {
                    log::warn!(
                        "conntrack table full: {} new connections refused (capacity {} connections; raise --conntrack-max)",
                        full - full_seen,
                        settings.conntrack.max_connections
                    );
                    full_seen = full;
                }
                if ticks.is_multiple_of(10) {
                    ch.audit.report_losses(dp)?;
                }
                let periodic = args.stats_interval > 0 && ticks.is_multiple_of(args.stats_interval);
                if args.stats_file.is_none() && !periodic {
                    continue;
                }
                let snap = dp.snapshot_with(&settings.rules, ct_usage)?;
                if let Some(path) = &args.stats_file {
                    snap.write_json(path).with_context(|| format!("writing {}", path.display()))?;
                }
                if periodic {
                    log::info!("\n{}", snap.table());
                }
            }
        }
    }
}
