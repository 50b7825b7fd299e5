//! The daemon's housekeeping, each task through `Housekeeping` (a
//! failure is logged, counted and retried, never the end of forwarding):
//! address sync, conntrack sweep, egress watch, table watch, audit
//! reports, stats file.

use anyhow::Context as _;

use super::core::{Daemon, HIGH_WATERMARK_PCT, LOW_WATERMARK_PCT};
use crate::addrs;

impl Daemon {
    /// Once a second: every task that is due, each on its own.
    pub(super) fn housekeeping(&mut self) {
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
        let (dp, backends) = (&mut self.dp, &mut self.backends);
        let (compiled, settings) = (&self.compiled, &self.settings);
        self.house.run("backend_tables", now, || backends.apply(dp, compiled, settings));
        let (dp, resets) = (&mut self.dp, &mut self.resets);
        if let Some(n @ 1..) = self.house.run("conn_resets", now, || Ok(resets.expire(dp)?)) {
            log::debug!("{n} reset connection(s) removed from the table");
        }
        // The sweep follows the running plan (a reload may change the
        // timeouts): often enough for the shortest, at most every 10 s, a
        // part of the table per second (a pass in about that time).
        let t = self.compiled.conntrack.timeouts;
        let gc_every = u64::from((t.shortest() / 2).clamp(1, 10));
        let budget =
            usize::try_from(self.ct_usage.entries / gc_every).unwrap_or(usize::MAX).max(4096);
        let (dp, sweep) = (&mut self.dp, &mut self.sweep);
        if let Some(Some(pass)) = self.house.run("conntrack_sweep", now, || {
            Ok(dp.sweep_step(sweep, &t, crate::datapath::monotonic_ns(), budget)?)
        }) {
            self.ct_usage = pass.usage;
            if pass.removed > 0 {
                log::debug!(
                    "conntrack: {} of {} connections expired and removed",
                    pass.removed.div_ceil(2),
                    pass.scanned.div_ceil(2)
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
    pub(super) fn table_watch(&mut self) -> anyhow::Result<()> {
        use forwarder_common::stats::{DROP_CT_FULL, DROP_NEW_CONN_RATE, EARLY_DROP};
        let (full, early, rate) = (
            self.dp.counter(DROP_CT_FULL)?,
            self.dp.counter(EARLY_DROP)?,
            self.dp.counter(DROP_NEW_CONN_RATE)?,
        );
        let cap = u64::from(self.compiled.conntrack.max_connections);
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
            let (r, b) = self.compiled.new_conn;
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
