//! The daemon's state and its loop: one `select!` over every event source
//! (the audit ring, the kernel log, signals, control and metrics
//! requests, a one-second tick) around a loaded, attached datapath.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio::sync::mpsc;

use super::{
    audit::Audit,
    backends::{Checked, Pool},
    clients::{Ask, control_server, metrics_server},
};
use crate::{
    datapath::{CtUsage, Datapath, Hook, Resets, Sweep, XdpAttach},
    egress::{Capability, Egress, Event},
    housekeeping::Housekeeping,
    iface,
    netdev::Netdev,
    pin::Pins,
    plan::Compiled,
    settings::Settings,
    stats::Snapshot,
};

/// What the daemon is told at start, besides its settings.
pub struct Options {
    pub xdp_attach: XdpAttach,
    pub stats_file: Option<PathBuf>,
    /// Log the counters every N seconds (0: never).
    pub stats_interval: u64,
    /// Re-reads the settings (SIGHUP).
    pub reread: Box<dyn Fn() -> anyhow::Result<Settings>>,
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
pub(super) struct TableSeen {
    pub(super) full: u64,
    pub(super) early: u64,
    pub(super) rate: u64,
    /// When it last said something (tick), to say it at most every 10 s.
    pub(super) said_at: Option<u64>,
    /// Above the high watermark.
    pub(super) high: bool,
}

/// Use of the table (in connections) above which the daemon warns, and
/// below which it says the pressure is over.
pub const HIGH_WATERMARK_PCT: u64 = 90;
pub const LOW_WATERMARK_PCT: u64 = 80;

pub struct Daemon {
    pub dp: Datapath,
    pub settings: Settings,
    pub compiled: Compiled,
    pub(super) pins: Option<Pins>,
    pub(super) opts: Options,
    pub(super) klog: tokio::io::unix::AsyncFd<crate::datapath::KernelLogger>,
    pub audit: Audit,
    pub(super) house: Housekeeping,
    pub(super) egress: Vec<Egress>,
    pub(super) netdev: Option<Netdev>,
    pub(super) sweep: Sweep,
    /// The table's use as the last sweep pass found it (the stats file
    /// and the periodic table take it from there; `forwarder stats` and
    /// /metrics count afresh).
    pub(super) ct_usage: CtUsage,
    pub(super) ticks: u64,
    pub(super) table: TableSeen,
    /// Public addresses that did not fit the hairpin table, last said.
    pub(super) addrs_left_out: usize,
    /// The balanced rules' backends and their checks.
    pub backends: Pool,
    /// Connections reset because their backend went down.
    pub(super) resets: Resets,
}

pub(super) fn register_logger(
    logger: crate::datapath::KernelLogger,
) -> anyhow::Result<tokio::io::unix::AsyncFd<crate::datapath::KernelLogger>> {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd
    // owns the logger, and always reports that same fd.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("polling the kernel log channel: {e}"))
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
        // Before attaching: checked backends start out of the table until
        // their first success, unless the datapath adopted says how an
        // earlier daemon left them.
        let mut backends = Pool::new(&settings, &compiled, None);
        backends.recall(&dp)?;
        backends.apply(&mut dp, &compiled, &settings)?;
        backends.start_checks();
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
            backends,
            resets: Resets::default(),
        })
    }

    /// Whether any interface runs XDP (else the egress choice is moot).
    pub(super) fn xdp_in_use(&self) -> bool {
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
        let members: Vec<_> = self.backends.members().collect();
        let keys: Vec<_> = members.iter().map(|(r, m)| r.stats_key(m)).collect();
        let counts = self.dp.backend_stats(&keys)?;
        s.backends = members
            .iter()
            .zip(counts)
            .map(|((r, m), c)| crate::stats::BackendStatus {
                rule: r.handle,
                backend: format!("{}:{}", m.addr, m.port),
                weight: m.weight,
                state: m.state().into(),
                check_latency_us: m
                    .tracker
                    .as_ref()
                    .and_then(|t| t.last.as_ref())
                    .map(|l| u64::try_from(l.latency.as_micros()).unwrap_or(u64::MAX)),
                packets_in: c.orig_packets,
                bytes_in: c.orig_bytes,
                packets_out: c.reply_packets,
                bytes_out: c.reply_bytes,
            })
            .collect();
        Ok(s)
    }

    /// Runs until SIGINT/SIGTERM (`Ok`) or a fatal error.
    pub async fn serve(
        &mut self,
        control: tokio::net::UnixListener,
        metrics: Option<tokio::net::TcpListener>,
        mut sig: Signals,
    ) -> anyhow::Result<()> {
        let (tx, mut asks) = mpsc::channel::<Ask>(64);
        tokio::spawn(control_server(control, tx.clone()));
        if let Some(l) = metrics {
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
                Some(checked) = self.backends.rx.recv() => self.on_check(checked),
                _ = sig.hup.recv() => {
                    let t0 = std::time::Instant::now();
                    match (self.opts.reread)().and_then(|next| self.swap(next)) {
                        Ok(()) => log::info!("SIGHUP: reloaded in {:.1} ms, {} rule(s) live at once; existing connections keep their translation", t0.elapsed().as_secs_f64() * 1e3, self.settings.rules.len()),
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

    /// One health check's outcome: a changed state rewrites the rule's
    /// table at once (a failed rewrite is retried by the tick).
    fn on_check(&mut self, c: Checked) {
        let audit = &self.audit;
        let gone = self.backends.observe(c, &mut |level, text| audit.notice(level, &text));
        let (dp, backends) = (&mut self.dp, &mut self.backends);
        let (compiled, settings) = (&self.compiled, &self.settings);
        self.house.run("backend_tables", self.ticks, || backends.apply(dp, compiled, settings));
        if let Some((handle, addr, port)) = gone {
            self.on_backend_down(handle, addr, port);
        }
    }

    /// Answers one client request (never fails the loop).
    fn answer(&mut self, ask: Ask) {
        match ask {
            Ask::Control(req, reply) => {
                let r = self.control(req);
                let _ = reply.send(r);
            }
            Ask::Metrics(format, reply) => {
                let body = self.snapshot(true).and_then(|s| {
                    crate::metrics::render(&s, format)
                        .map_err(|e| anyhow::anyhow!("encoding the metrics: {e}"))
                });
                let _ = reply.send(body);
            }
        }
    }
}

/// The egresses of `compiled`'s interfaces, keeping the state of those in
/// `old` (a reload).
pub(super) fn egresses(compiled: &Compiled, old: &[Egress]) -> Vec<Egress> {
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
