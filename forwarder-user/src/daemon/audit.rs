//! The audit ring: events read as they come, written to the log and to
//! syslog, losses (rate limit, full ring, syslog) reported.

use crate::{datapath::Datapath, settings::Settings};

/// The audit trail: the kernel's event ring, read when it has data, each
/// event logged (target `audit`) and sent to syslog if configured.
pub struct Audit {
    pub(super) ring: tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    pub(super) syslog: Option<crate::audit::SyslogSink>,
    pub(super) fmt: syslog::Formatter5424,
    /// Loss counters at the last report: rate limited, ring full, syslog.
    pub(super) seen: (u64, u64, u64),
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

    pub(super) fn ring(
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
    pub(super) fn replace(&mut self, dp: &mut Datapath, settings: &Settings) -> anyhow::Result<()> {
        self.ring = Self::ring(dp)?;
        if self.syslog.as_ref().map(|s| s.target) != settings.audit.syslog {
            self.syslog = settings.audit.syslog.map(crate::audit::SyslogSink::start);
            self.seen.2 = 0;
        }
        Ok(())
    }

    /// Logs every event waiting in the ring.
    pub(super) fn drain(&mut self, dp: &Datapath, settings: &Settings) {
        let (mono, wall) = (crate::datapath::monotonic_ns(), std::time::SystemTime::now());
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            let Some(ev) = crate::audit::parse_event(&item) else { continue };
            let d = crate::audit::Described {
                ev: &ev,
                time: crate::audit::wall_time(ev.ts_ns, mono, wall),
                rule: settings.rule(ev.rule_id).map(ToString::to_string),
                iface: dp.attached.iter().find(|a| a.ifindex == ev.ifindex).map(|a| a.name.clone()),
            };
            log::info!(target: "audit", "{d}");
            if let Some(s) = &self.syslog {
                s.send(d.syslog_message(&self.fmt));
            }
        }
    }

    /// A state change worth the audit trail (a backend up or down): logged
    /// (target `audit`) and sent to syslog if configured.
    pub(super) fn notice(&self, level: log::Level, text: &str) {
        log::log!(target: "audit", level, "{text}");
        if let Some(s) = &self.syslog {
            let severity = match level {
                log::Level::Error => syslog::Severity::LOG_ERR,
                log::Level::Warn => syslog::Severity::LOG_WARNING,
                _ => syslog::Severity::LOG_NOTICE,
            };
            s.send(crate::audit::syslog_notice(&self.fmt, severity, text));
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
    pub(super) fn report_losses(&mut self, dp: &Datapath) -> anyhow::Result<()> {
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
