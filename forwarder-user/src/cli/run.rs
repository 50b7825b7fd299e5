//! `forwarder run`: validate everything, load, fill the maps, attach, and
//! forward until SIGINT/SIGTERM; then detach and print the counters.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::{
    addrs,
    daemon::{Audit, Daemon, Options, Signals},
    datapath::{Datapath, XdpAttach},
    pin::Pins,
    plan::System,
    settings::{Mode, PortRange, Rule, Settings},
    sysctl,
};

#[derive(Args, Debug, Clone)]
#[command(after_long_help = crate::settings::help::run_help())]
pub struct RunArgs {
    /// Public (outside-facing) interface; repeat for several.
    #[arg(long = "public", value_name = "IFACE")]
    pub public: Vec<String>,
    /// Internal (backend-facing) interface; repeat for several.
    #[arg(long = "internal", value_name = "IFACE")]
    pub internal: Vec<String>,
    /// A rule: PROTO:PORTS[@IFACE]=BACKEND[+BACKEND…][,OPTION…] (see Rules
    /// below); repeat for several.
    #[arg(long = "rule", value_name = "SPEC")]
    pub rules: Vec<String>,
    /// A TOML configuration file (see Configuration file below); its
    /// interfaces and rules add to the flags', the flags override the rest.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Datapath hook for every interface: auto (the default: native XDP
    /// where the driver has it, TC elsewhere and on veth), xdp (TC behind
    /// it for what XDP cannot finish), tc (TC only).
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
    /// Connections the conntrack table holds (default 262144).
    #[arg(long, value_name = "CONNS")]
    pub conntrack_max: Option<u64>,
    /// A conntrack timeout in seconds (1 to 2073600, 24 days): `tcp_syn`,
    /// `tcp_syn_recv`, `tcp_established`, `tcp_fin`, `tcp_close`, `udp`,
    /// `udp_stream`; repeatable.
    #[arg(long = "ct-timeout", value_name = "NAME=SECS")]
    pub ct_timeouts: Vec<String>,
    /// New connections each CPU may set up per second (0: no limit, the
    /// default); beyond it they are dropped and counted
    /// (`drop_new_conn_rate`).
    #[arg(long, value_name = "N")]
    pub new_conn_rate: Option<u64>,
    /// New connections a CPU may set up at once (default: the rate).
    #[arg(long, value_name = "N")]
    pub new_conn_burst: Option<u64>,
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
    /// Check the settings (flags and --config: rules, handles, interfaces
    /// and their hooks) and exit, touching nothing: 0 when `forwarder
    /// run` with them would start.
    #[arg(long)]
    pub check_only: bool,
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

/// The settings were refused (nothing was loaded or attached):
/// `forwarder run` exits with [`InvalidSettings::EXIT_STATUS`], which the
/// service unit does not restart on.
#[derive(Debug)]
pub struct InvalidSettings;

impl InvalidSettings {
    pub const EXIT_STATUS: i32 = 2;
}

impl std::fmt::Display for InvalidSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid settings")
    }
}

/// What `--check-only` says of valid settings.
fn valid_text(s: &Settings) -> String {
    let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
    format!(
        "the settings are valid: {} rule(s); public {}; internal {}",
        s.rules.len(),
        list(&s.public),
        list(&s.internal)
    )
}

impl RunArgs {
    /// The settings, with their handles, and their plan: every check
    /// that needs no kernel object.
    fn validated(&self) -> anyhow::Result<(Settings, crate::plan::Compiled)> {
        let mut settings = self.settings()?;
        settings.assign_handles(None)?;
        let compiled = settings.compile(&System)?;
        Ok((settings, compiled))
    }

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
            let (iface, mode) = spec
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--iface-mode `{spec}`: expected IFACE=MODE"))?;
            let mode: Mode =
                mode.parse().map_err(|e| anyhow::anyhow!("--iface-mode `{spec}`: {e}"))?;
            s.iface_modes.push((iface.to_string(), mode));
        }
        if let Some(n) = self.conntrack_max {
            s.conntrack.set_max(n).map_err(|e| anyhow::anyhow!("--conntrack-max: {e}"))?;
        }
        for spec in &self.ct_timeouts {
            let (name, secs) = spec
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--ct-timeout `{spec}`: expected NAME=SECS"))?;
            let secs: u32 = secs.parse().map_err(|_| {
                anyhow::anyhow!("--ct-timeout `{spec}`: `{secs}` is not a number of seconds")
            })?;
            s.conntrack
                .set_timeout(name, secs)
                .map_err(|e| anyhow::anyhow!("--ct-timeout `{spec}`: {e}"))?;
        }
        if let Some(n) = self.new_conn_rate {
            s.conntrack
                .set_new_conn_rate(n)
                .map_err(|e| anyhow::anyhow!("--new-conn-rate: {e}"))?;
        }
        if let Some(n) = self.new_conn_burst {
            s.conntrack
                .set_new_conn_burst(n)
                .map_err(|e| anyhow::anyhow!("--new-conn-burst: {e}"))?;
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
    crate::faults::init_from_env().map_err(anyhow::Error::msg)?;
    let (mut settings, mut compiled) = args.validated().context(InvalidSettings)?;
    if args.check_only {
        println!("{}", valid_text(&settings));
        return Ok(());
    }
    // Before anything is loaded: a second daemon on the same socket is
    // refused without touching the running one.
    let control = bind_control(&args.control)?;
    let _socket_file = SocketFile(args.control.clone());
    // Also before anything is loaded: a metrics address taken by another
    // process refuses the start, not the daemon after it attached.
    let metrics = bind_metrics(args.metrics).await?;
    if settings.rules.is_empty() {
        log::warn!("no rules given: every packet passes to the kernel untouched");
    }
    let pins = args.pin_dir.as_deref().map(Pins::open).transpose()?;
    let adopting = pins.as_ref().is_some_and(Pins::has_state);
    let mut dp = Datapath::load_pinned(compiled.conntrack.max_connections, pins.as_ref())?;
    let held = dp.connection_capacity();
    if held != compiled.conntrack.max_connections {
        log::warn!(
            "conntrack max {} asked, but the adopted connection table holds {held}: it keeps its size (a new size takes `forwarder teardown` first, which forgets every tracked connection)",
            compiled.conntrack.max_connections,
        );
        compiled.conntrack.max_connections = held;
        settings.conntrack.max_connections = held;
    }
    // Before anything is attached: the loss counters' baseline (adopted
    // ones carry an earlier daemon's) must not miss the first events.
    let audit = Audit::new(&mut dp, &settings)?;
    if let Some(p) = &pins {
        if adopting {
            log::info!(
                "adopted the state maps pinned in {} (connections, counters)",
                p.dir.display()
            );
        } else {
            log::info!("pinning state maps and links in {}", p.dir.display());
        }
    }
    dp.configure(&compiled)?;
    dp.sync_public_addrs(&addrs::public_addresses(&compiled.ifaces)?)?;
    let reread = args.clone();
    let opts = Options {
        xdp_attach: args.xdp_attach,
        stats_file: args.stats_file.clone(),
        stats_interval: args.stats_interval,
        reread: Box::new(move || reread.settings()),
    };
    let mut daemon = Daemon::new(dp, settings, compiled, pins.clone(), opts, audit)?;
    // Before XDP runs: the egresses it cannot transmit into are TC's from
    // its first packet on.
    if let Err(e) = daemon.refresh_egress() {
        log::warn!(
            "checking the egresses' XDP features failed ({e:#}); XDP tries every egress, and refusals are watched"
        );
    }
    daemon.dp.attach_pinned(&daemon.compiled, args.xdp_attach, pins.as_ref())?;
    for a in &daemon.dp.attached {
        log::info!("attached to {} (ifindex {}): {}", a.name, a.ifindex, a.hook);
    }
    daemon.report_egress();
    for r in &daemon.settings.rules {
        log::info!("rule {}: {r} ({})", r.handle, r.origin);
    }
    log::info!(
        "masquerade source ports {}-{}",
        daemon.compiled.snat_ports.0,
        daemon.compiled.snat_ports.1
    );
    let was_forwarding = sysctl::ensure_ip_forward()?;
    if !was_forwarding {
        log::info!(
            "enabled net.ipv4.ip_forward (it was 0){}",
            if args.keep_ip_forward { "" } else { "; it is restored at exit" }
        );
    }
    // The settings in force, before "running": whoever waits for that
    // line finds them logged.
    let s = &daemon.settings;
    if s.audit.rate == 0 {
        log::info!("audit events off (--audit-rate 0)");
    } else {
        log::info!(
            "audit events: at most {}/s and bursts of {} per CPU{}",
            s.audit.rate,
            s.audit.burst,
            s.audit.syslog.map(|t| format!(", also to syslog {t}")).unwrap_or_default()
        );
    }
    log::info!(
        "conntrack: {} connections max; timeouts {}",
        daemon.compiled.conntrack.max_connections,
        crate::settings::timeouts_text(&s.conntrack.timeouts)
    );
    match s.conntrack.new_conn_limit() {
        (0, _) => {}
        (r, b) => log::info!("new connections: at most {r}/s and bursts of {b} per CPU"),
    }
    // Before saying "running": a signal right after must stop us cleanly,
    // not kill us with the datapath attached.
    let signals = Signals::new()?;
    println!("forwarder: running; Ctrl-C or SIGTERM to stop");
    let result = daemon.serve(control, metrics, signals).await;
    finish(daemon, &args, pins.as_ref(), was_forwarding, result)
}

/// After the loop: detach and unpin, or leave a pinned datapath
/// forwarding (`--persist`, or a fatal error, as a crash would); restore
/// `ip_forward`; write and print the final counters.
fn finish(
    daemon: Daemon,
    args: &RunArgs,
    pins: Option<&Pins>,
    was_forwarding: bool,
    result: anyhow::Result<()>,
) -> anyhow::Result<()> {
    let snap = daemon.snapshot(true);
    let keep_attached = pins.is_some() && (args.persist || result.is_err());
    match (pins, &result) {
        (Some(p), Err(e)) => log::error!(
            "fatal: {e:#}; the datapath stays attached and pinned in {0} and keeps forwarding; `forwarder run --pin-dir {0}` adopts it, `forwarder teardown --pin-dir {0}` removes it",
            p.dir.display()
        ),
        (None, Err(e)) => log::error!(
            "fatal: {e:#}; detaching (with --pin-dir the datapath would outlive the daemon)"
        ),
        (Some(p), Ok(())) if args.persist => log::info!(
            "left attached and pinned in {}: `forwarder run --pin-dir {0}` adopts it, `forwarder teardown --pin-dir {0}` removes it",
            p.dir.display()
        ),
        (Some(p), Ok(())) => {
            if let Err(e) = p.remove_all() {
                log::error!("removing the pins in {}: {e}", p.dir.display());
            }
        }
        (None, Ok(())) => {}
    }
    drop(daemon);
    if keep_attached {
        log::info!("exiting; the datapath keeps forwarding");
    } else {
        log::info!("detached from all interfaces");
    }
    if !was_forwarding && !args.keep_ip_forward && !keep_attached {
        sysctl::set_ip_forward(false)?;
        log::info!("restored net.ipv4.ip_forward=0");
    }
    match snap {
        Ok(snap) => {
            if let Some(path) = &args.stats_file {
                snap.write_json(path).with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{}", snap.table());
        }
        Err(e) => log::warn!("reading the final counters: {e:#}"),
    }
    result
}

/// Removes the control socket's file when the daemon ends, however it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the metrics endpoint, if asked for.
async fn bind_metrics(
    addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr} (--metrics)"))?;
    log::info!("metrics on http://{addr}/metrics");
    Ok(Some(l))
}

/// Binds the control socket (0600), replacing a stale one nobody listens on.
fn bind_control(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another forwarder listens on {}; give this one its own --control PATH",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    log::info!("control socket {}", path.display());
    Ok(l)
}
