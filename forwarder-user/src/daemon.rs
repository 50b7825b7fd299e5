//! The running daemon: one loop over every event source (the audit ring,
//! the kernel log, signals, control and metrics requests, a one-second
//! tick) around a loaded, attached [`Datapath`].
//!
//! Forwarding runs in the kernel and never waits for this loop. The
//! loop's own work is split so that nothing in it can end the daemon by
//! accident:
//! - housekeeping (address sync, conntrack sweep, egress watch, table
//!   watch, audit reports, stats file) runs through [`Housekeeping`]:
//!   a failure is logged, counted and retried with backoff;
//! - control and metrics clients are read and answered by tasks of their
//!   own; the loop only computes answers, so a slow or silent client
//!   holds up nothing, and a bad request gets an error answer;
//! - what remains fatal (a signal stream or an event ring that cannot be
//!   polled) ends [`Daemon::serve`] with an error: the caller then leaves a
//!   pinned datapath attached (see `cli::run`).

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use crate::{
    addrs,
    config::{Compiled, Rule, Settings},
    egress::{Capability, Egress, Event},
    housekeeping::Housekeeping,
    iface,
    loader::{CtUsage, Datapath, Hook, Sweep, XdpAttach},
    netdev::Netdev,
    pin::Pins,
    stats::Snapshot,
};

/// What the daemon is told at start, besides its settings.
pub struct Options {
    pub xdp_attach: XdpAttach,
    pub stats_file: Option<PathBuf>,
    /// Log the counters every N seconds (0: never).
    pub stats_interval: u64,
    pub metrics: Option<std::net::SocketAddr>,
    /// Re-reads the settings (SIGHUP).
    pub reread: Box<dyn Fn() -> anyhow::Result<Settings>>,
}

/// An answer's data: a JSON value, or JSON text made straight from its
/// type (a listing of a large table: no value tree of a million nodes).
pub enum Data {
    Value(serde_json::Value),
    Text(String),
}

/// A request for the loop, from a client task.
enum Ask {
    Control(crate::control::Request, oneshot::Sender<anyhow::Result<Data>>),
    Metrics(oneshot::Sender<anyhow::Result<String>>),
}

/// Signals the daemon handles (registered once, before it says it runs).
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Counters the table watch reports on, as last reported.
#[derive(Default)]
struct TableSeen {
    full: u64,
    early: u64,
    rate: u64,
    /// When it last said something (tick), to say it at most every 10 s.
    said_at: Option<u64>,
    /// Above the high watermark.
    high: bool,
}

/// Use of the table (in connections) above which the daemon warns, and
/// below which it says the pressure is over.
pub const HIGH_WATERMARK_PCT: u64 = 90;
pub const LOW_WATERMARK_PCT: u64 = 80;

pub struct Daemon {
    pub dp: Datapath,
    pub settings: Settings,
    pub compiled: Compiled,
    pins: Option<Pins>,
    opts: Options,
    klog: tokio::io::unix::AsyncFd<crate::loader::KernelLogger>,
    pub audit: Audit,
    house: Housekeeping,
    egress: Vec<Egress>,
    netdev: Option<Netdev>,
    sweep: Sweep,
    /// The table's use as the last sweep pass found it (the stats file
    /// and the periodic table take it from there; `forwarder stats` and
    /// /metrics count afresh).
    ct_usage: CtUsage,
    ticks: u64,
    table: TableSeen,
    /// Public addresses that did not fit the hairpin table, last said.
    addrs_left_out: usize,
}

impl Daemon {
    /// Wraps a loaded datapath (configured; attached or about to be: call
    /// [`Daemon::refresh_egress`] before attaching, so XDP never starts
    /// with an egress it cannot transmit into).
    pub fn new(
        mut dp: Datapath,
        settings: Settings,
        compiled: Compiled,
        pins: Option<Pins>,
        opts: Options,
        audit: Audit,
    ) -> anyhow::Result<Self> {
        let logger = dp.take_logger().context("kernel log channel")?;
        let klog = register_logger(logger)?;
        let netdev = match Netdev::open() {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!(
                    "cannot ask the kernel for interfaces' XDP features ({e}); XDP is tried on every egress and refusals are watched"
                );
                None
            }
        };
        let egress = egresses(&compiled, &[]);
        Ok(Self {
            dp,
            settings,
            compiled,
            pins,
            opts,
            klog,
            audit,
            house: Housekeeping::default(),
            egress,
            netdev,
            sweep: Sweep::default(),
            ct_usage: CtUsage::default(),
            ticks: 0,
            table: TableSeen::default(),
            addrs_left_out: 0,
        })
    }

    /// Whether any interface runs XDP (else the egress choice is moot).
    fn xdp_in_use(&self) -> bool {
        self.dp.attached.iter().any(|a| a.hook != Hook::Tc)
    }

    /// Decides, for every egress, whether XDP transmits into it, applies
    /// that to the datapath and logs what changed (at info level only when
    /// some interface runs XDP; else it changes nothing a packet meets).
    pub fn refresh_egress(&mut self) -> anyhow::Result<()> {
        let now_s = self.ticks;
        let errors = self.dp.xdp_tx_errors()?;
        let loud = self.xdp_in_use();
        // (Fault injection: as on a kernel that does not report them.)
        let unknown = crate::faults::check("xdp_features_unknown").is_err();
        for e in &mut self.egress {
            let features = match &mut self.netdev {
                Some(n) if !unknown => n.xdp_features(e.ifindex)?,
                _ => None,
            };
            let (refused, last_err) = errors.get(&e.ifindex).copied().unwrap_or((0, 0));
            if let Some(ev) = e.step(Capability::from_features(features), refused, last_err, now_s)
            {
                match (&ev, loud) {
                    (Event::ToTc { .. }, true) => log::warn!("{}", ev.text()),
                    (_, true) => log::info!("{}", ev.text()),
                    _ => log::debug!("{}", ev.text()),
                }
            }
            e.settle(now_s);
            self.dp.set_xdp_egress(e.ifindex, e.xdp)?;
        }
        Ok(())
    }

    /// Says, once attached, which egresses XDP leaves to TC and why (an
    /// explicit `--mode xdp` that cannot transmit says so at start).
    pub fn report_egress(&self) {
        if !self.xdp_in_use() {
            return;
        }
        for e in self.egress.iter().filter(|e| !e.xdp) {
            log::warn!(
                "{}",
                Event::ToTc { iface: e.iface.clone(), why: e.status(true).why }.text()
            );
        }
    }

    /// A snapshot of the counters, with what the daemon knows: the
    /// egresses and its own failures. `fresh`: count the table now (else
    /// as of the last sweep).
    pub fn snapshot(&self, fresh: bool) -> anyhow::Result<Snapshot> {
        let mut s = if fresh {
            self.dp.snapshot(&self.settings.rules)?
        } else {
            self.dp.snapshot_with(&self.settings.rules, self.ct_usage)?
        };
        let xdp = self.xdp_in_use();
        s.egress = self.egress.iter().map(|e| e.status(xdp)).collect();
        s.daemon_errors = self.house.failures();
        Ok(s)
    }

    /// Runs until SIGINT/SIGTERM (`Ok`) or a fatal error.
    pub async fn serve(
        &mut self,
        control: tokio::net::UnixListener,
        mut sig: Signals,
    ) -> anyhow::Result<()> {
        let (tx, mut asks) = mpsc::channel::<Ask>(64);
        tokio::spawn(control_server(control, tx.clone()));
        if let Some(addr) = self.opts.metrics {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
            log::info!("metrics on http://{addr}/metrics");
            tokio::spawn(metrics_server(l, tx.clone()));
        }
        drop(tx);
        self.ct_usage = CtUsage::of(&self.dp.flows()?);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                guard = self.audit.ring.readable_mut() => {
                    let mut guard = guard.context("polling the audit event ring")?;
                    guard.clear_ready();
                    drop(guard);
                    self.audit.drain(&self.dp, &self.settings);
                }
                guard = self.klog.readable_mut() => {
                    let mut guard = guard.context("polling the kernel log channel")?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                _ = sig.int.recv() => { log::info!("SIGINT: stopping"); self.audit.finish(&self.dp, &self.settings); return Ok(()); }
                _ = sig.term.recv() => { log::info!("SIGTERM: stopping"); self.audit.finish(&self.dp, &self.settings); return Ok(()); }
                Some(ask) = asks.recv() => self.answer(ask),
                _ = sig.hup.recv() => {
                    match (self.opts.reread)().and_then(|next| self.swap(next)) {
                        Ok(()) => log::info!("SIGHUP: reloaded, {} rule(s) live at once; existing connections keep their translation", self.settings.rules.len()),
                        Err(e) => log::error!("SIGHUP: reload refused, the running configuration is unchanged: {e:#}"),
                    }
                }
                _ = tick.tick() => {
                    // (Fault injection: a fatal error, as the caller must survive it.)
                    crate::faults::check("fatal")?;
                    self.housekeeping();
                }
            }
        }
    }

    /// Answers one client request (never fails the loop).
    fn answer(&mut self, ask: Ask) {
        match ask {
            Ask::Control(req, reply) => {
                let r = self.control(req);
                let _ = reply.send(r);
            }
            Ask::Metrics(reply) => {
                let _ = reply.send(self.snapshot(true).map(|s| crate::metrics::render(&s)));
            }
        }
    }

    fn control(&mut self, req: crate::control::Request) -> anyhow::Result<Data> {
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
                return Ok(Data::Text(connections_json(&conns, crate::loader::monotonic_ns())));
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

    /// Builds a datapath for `next` and swaps it in (one link update); on
    /// any error nothing running changes. Needs `--pin-dir`: the connection
    /// table must outlive the swap.
    fn swap(&mut self, mut next: Settings) -> anyhow::Result<()> {
        let Some(p) = self.pins.clone() else {
            anyhow::bail!(
                "changing rules at runtime needs --pin-dir (the connection table must outlive the swap); restart instead"
            );
        };
        // The connection table outlives the swap as it is sized (a new
        // size would need a new, empty table): the rest of the reload
        // applies, the size stays and is said so, as at a start that
        // adopts the table.
        let running = self.dp.connection_capacity();
        if next.conntrack.max_connections != running {
            log::warn!(
                "SIGHUP: conntrack max {} asked, but the running connection table holds {running} and is kept across reloads: it keeps its size (a new size takes a restart after `forwarder teardown`, which forgets every tracked connection)",
                next.conntrack.max_connections
            );
            next.conntrack.max_connections = running;
        }
        let compiled = next.compile(iface::index)?;
        let mut dp = Datapath::load_pinned(next.conntrack.max_connections, Some(&p))?;
        dp.configure(&compiled)?;
        dp.sync_public_addrs(&addrs::public_addresses(&compiled.ifaces)?)?;
        // The egresses as they stand, on the new devmap, before it is live.
        let egress = egresses(&compiled, &self.egress);
        for e in &egress {
            dp.set_xdp_egress(e.ifindex, e.xdp)?;
        }
        dp.attach_pinned(&compiled, self.opts.xdp_attach, Some(&p))?;
        let keep: Vec<String> = compiled.ifaces.iter().map(|i| i.name.clone()).collect();
        for gone in p.prune_links(&keep)? {
            log::info!("{gone}: no longer configured, detached");
        }
        let klog = register_logger(dp.take_logger().context("kernel log channel")?)?;
        // Events the old programs left in their ring, before it goes.
        self.audit.drain(&self.dp, &self.settings);
        self.audit.replace(&mut dp, &next)?;
        self.klog = klog;
        self.dp = dp;
        self.settings = next;
        self.compiled = compiled;
        // The new datapath counts refusals from 0.
        self.egress = egress
            .into_iter()
            .map(|mut e| {
                e.refused = 0;
                e
            })
            .collect();
        for r in &self.settings.rules {
            log::info!("rule {r} ({})", r.origin);
        }
        Ok(())
    }

    /// Once a second: every task that is due, each on its own.
    fn housekeeping(&mut self) {
        self.ticks += 1;
        let now = self.ticks;
        if let Some(s) = self.house.run("public_addrs", now, || {
            Ok(self.dp.sync_public_addrs(&addrs::public_addresses(&self.compiled.ifaces)?)?)
        }) {
            if s.changed {
                log::info!("public addresses changed; hairpin follows");
            }
            if s.left_out != self.addrs_left_out {
                if s.left_out > 0 {
                    log::warn!(
                        "the public interfaces have {} more IPv4 addresses than the hairpin table holds ({}): internal hosts cannot reach those through the gateway's public address (forwarding from outside is not affected)",
                        s.left_out,
                        forwarder_common::abi::MAX_PUBLIC_ADDRS
                    );
                }
                self.addrs_left_out = s.left_out;
            }
        }
        // The sweep follows the running settings (a reload may change the
        // timeouts): often enough for the shortest, at most every 10 s, a
        // part of the table per second (a pass in about that time).
        let t = self.settings.conntrack.timeouts;
        let gc_every = u64::from((t.shortest() / 2).clamp(1, 10));
        let budget =
            usize::try_from(self.ct_usage.entries / gc_every).unwrap_or(usize::MAX).max(4096);
        let (dp, sweep) = (&mut self.dp, &mut self.sweep);
        if let Some(Some(pass)) = self.house.run("conntrack_sweep", now, || {
            Ok(dp.sweep_step(sweep, &t, crate::loader::monotonic_ns(), budget)?)
        }) {
            self.ct_usage = pass.usage;
            if pass.removed > 0 {
                log::debug!(
                    "conntrack: {} of {} entries expired and removed",
                    pass.removed,
                    pass.scanned
                );
            }
        }
        if self.house.begin("egress", now) {
            let r = self.refresh_egress();
            self.house.end("egress", now, r);
        }
        if self.house.begin("table_watch", now) {
            let r = self.table_watch();
            self.house.end("table_watch", now, r);
        }
        if now.is_multiple_of(10) && self.house.begin("audit_report", now) {
            let r = self.audit.report_losses(&self.dp);
            self.house.end("audit_report", now, r);
        }
        let periodic = self.opts.stats_interval > 0 && now.is_multiple_of(self.opts.stats_interval);
        if self.opts.stats_file.is_none() && !periodic {
            return;
        }
        let task = if self.opts.stats_file.is_some() { "stats_file" } else { "stats_log" };
        if !self.house.begin(task, now) {
            return;
        }
        let r = self.snapshot(false).and_then(|snap| {
            if let Some(path) = &self.opts.stats_file {
                snap.write_json(path).with_context(|| format!("writing {}", path.display()))?;
            }
            if periodic {
                log::info!("\n{}", snap.table());
            }
            Ok(())
        });
        self.house.end(task, now, r);
    }

    /// Table pressure: early drops, refusals and rate-limit drops since it
    /// last spoke (at most every 10 s), and the watermarks of the table's
    /// use as the sweep last found it.
    fn table_watch(&mut self) -> anyhow::Result<()> {
        use forwarder_common::stats::{DROP_CT_FULL, DROP_NEW_CONN_RATE, EARLY_DROP};
        let (full, early, rate) = (
            self.dp.counter(DROP_CT_FULL)?,
            self.dp.counter(EARLY_DROP)?,
            self.dp.counter(DROP_NEW_CONN_RATE)?,
        );
        let cap = u64::from(self.settings.conntrack.max_connections);
        let t = &mut self.table;
        let quiet = t.said_at.is_some_and(|at| self.ticks < at + 10);
        if (full > t.full || early > t.early) && !quiet {
            log::warn!(
                "conntrack table full ({cap} connections): {} unassured or closing connection(s) gave way to new ones (early drop), {} new connection(s) refused (nothing could give way); raise --conntrack-max if this is not a flood",
                early - t.early,
                full - t.full
            );
            (t.full, t.early, t.said_at) = (full, early, Some(self.ticks));
        }
        if rate > t.rate && !quiet {
            let (r, b) = self.settings.conntrack.new_conn_limit();
            log::warn!(
                "new-connection rate limit: {} new connection(s) dropped (at most {r}/s and bursts of {b} per CPU: --new-conn-rate)",
                rate - t.rate
            );
            (t.rate, t.said_at) = (rate, Some(self.ticks));
        }
        let used = self.ct_usage.entries / 2;
        if !t.high && used * 100 >= cap * HIGH_WATERMARK_PCT {
            log::warn!(
                "conntrack table {}% full ({used} of {cap} connections)",
                used * 100 / cap.max(1)
            );
            t.high = true;
        } else if t.high && used * 100 < cap * LOW_WATERMARK_PCT {
            log::info!(
                "conntrack table below {LOW_WATERMARK_PCT}% again ({used} of {cap} connections)"
            );
            t.high = false;
        }
        Ok(())
    }
}

/// The egresses of `compiled`'s interfaces, keeping the state of those in
/// `old` (a reload).
fn egresses(compiled: &Compiled, old: &[Egress]) -> Vec<Egress> {
    compiled
        .ifaces
        .iter()
        .map(|i| {
            old.iter()
                .find(|e| e.ifindex == i.ifindex)
                .cloned()
                .unwrap_or_else(|| Egress::new(&i.name, i.ifindex, iface::driver(&i.name)))
        })
        .collect()
}

fn register_logger(
    logger: crate::loader::KernelLogger,
) -> anyhow::Result<tokio::io::unix::AsyncFd<crate::loader::KernelLogger>> {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd
    // owns the logger, and always reports that same fd.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("polling the kernel log channel: {e}"))
}

/// Accepts control clients; each is read and answered by a task of its own.
async fn control_server(l: tokio::net::UnixListener, tx: mpsc::Sender<Ask>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (req, mut s) = read_request(s).await;
            let reply = match req {
                Ok(req) => {
                    let (otx, orx) = oneshot::channel();
                    if tx.send(Ask::Control(req, otx)).await.is_err() {
                        return;
                    }
                    orx.await.unwrap_or_else(|_| Err(anyhow::anyhow!("the daemon is stopping")))
                }
                Err(e) => Err(e),
            };
            if let Err(e) = write_reply(&mut s, reply).await {
                log::debug!("control client: {e:#}");
            }
        });
    }
}

/// Serves `/metrics` (Prometheus text) to each client from a task of its
/// own; the loop only renders the body.
async fn metrics_server(l: tokio::net::TcpListener, tx: mpsc::Sender<Ask>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut req)).await;
            let (otx, orx) = oneshot::channel();
            if tx.send(Ask::Metrics(otx)).await.is_err() {
                return;
            }
            let (status, body) = match orx.await {
                Ok(Ok(body)) => ("200 OK", body),
                Ok(Err(e)) => (
                    "500 Internal Server Error",
                    format!("# the forwarder could not read its counters: {e:#}\n"),
                ),
                Err(_) => return,
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}

/// Reads one control request line.
async fn read_request(
    s: tokio::net::UnixStream,
) -> (anyhow::Result<crate::control::Request>, tokio::net::UnixStream) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let req = match tokio::time::timeout(Duration::from_secs(2), r.read_line(&mut line)).await {
        Ok(Ok(_)) => serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("bad request `{}`: {e}", line.trim())),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(anyhow::anyhow!("request timed out")),
    };
    (req, r.into_inner())
}

/// Answers one control request with a JSON line.
async fn write_reply(
    s: &mut tokio::net::UnixStream,
    reply: anyhow::Result<Data>,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut out = match reply {
        Ok(Data::Value(data)) => {
            serde_json::to_vec(&serde_json::json!({"ok": true, "data": data}))?
        }
        Ok(Data::Text(data)) => format!("{{\"ok\":true,\"data\":{data}}}").into_bytes(),
        Err(e) => serde_json::to_vec(&serde_json::json!({"ok": false, "error": format!("{e:#}")}))?,
    };
    out.push(b'\n');
    s.write_all(&out).await?;
    Ok(())
}

/// The audit trail: the kernel's event ring, read when it has data, each
/// event logged (target `audit`) and sent to syslog if configured.
pub struct Audit {
    ring: tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    syslog: Option<crate::audit::SyslogSink>,
    fmt: syslog::Formatter5424,
    /// Loss counters at the last report: rate limited, ring full, syslog.
    seen: (u64, u64, u64),
}

impl Audit {
    /// Takes the datapath's ring; reads the loss counters' baseline (call
    /// before anything is attached: adopted counters carry an earlier
    /// daemon's, and the first events must not be missed).
    pub fn new(dp: &mut Datapath, settings: &Settings) -> anyhow::Result<Self> {
        let ring = Self::ring(dp)?;
        let syslog = settings.audit.syslog.map(crate::audit::SyslogSink::start);
        let seen = (
            dp.counter(forwarder_common::stats::AUDIT_RATE_LIMITED)?,
            dp.counter(forwarder_common::stats::AUDIT_RING_FULL)?,
            0,
        );
        Ok(Self { ring, syslog, fmt: crate::audit::formatter(), seen })
    }

    fn ring(
        dp: &mut Datapath,
    ) -> anyhow::Result<tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>> {
        // SAFETY: the ring owns its map fd for as long as the AsyncFd owns
        // the ring, and always reports that same fd.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                dp.take_events()?,
                tokio::io::Interest::READABLE,
            )
        }
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
    pub fn finish(&mut self, dp: &Datapath, settings: &Settings) {
        self.drain(dp, settings);
        if let Err(e) = self.report_losses(dp) {
            log::warn!(target: "audit", "reading the audit counters: {e:#}");
        }
    }

    /// Says how many events the rate limit, a full ring or the syslog
    /// queue cost since the last report (nothing when none).
    fn report_losses(&mut self, dp: &Datapath) -> anyhow::Result<()> {
        use forwarder_common::stats::{AUDIT_RATE_LIMITED, AUDIT_RING_FULL};
        let now = (
            dp.counter(AUDIT_RATE_LIMITED)?,
            dp.counter(AUDIT_RING_FULL)?,
            self.syslog.as_ref().map_or(0, crate::audit::SyslogSink::dropped),
        );
        let d = (
            now.0.saturating_sub(self.seen.0),
            now.1.saturating_sub(self.seen.1),
            now.2.saturating_sub(self.seen.2),
        );
        self.seen = now;
        if d == (0, 0, 0) {
            return Ok(());
        }
        let text = format!(
            "{} events suppressed by the rate limit, {} lost to a full ring, {} not delivered to syslog since the last report",
            d.0, d.1, d.2
        );
        log::warn!(target: "audit", "{text}");
        if let Some(s) = &self.syslog {
            s.send(crate::audit::syslog_notice(&self.fmt, syslog::Severity::LOG_WARNING, &text));
        }
        Ok(())
    }
}
