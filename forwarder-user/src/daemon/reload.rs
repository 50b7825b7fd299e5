//! A reload (SIGHUP, or a rule change from the control socket): the new
//! settings compiled, a new datapath on the same pinned state, swapped in
//! at once; a failure leaves the running tables as they were. A rule
//! added or deleted from the control socket is written into the running
//! tables instead, where they can take it (`plan::rule_diff`).

use std::collections::HashSet;

use anyhow::Context as _;

use super::core::{Daemon, egresses, register_logger};
use crate::{
    addrs,
    datapath::Datapath,
    plan::{System, diff::rule_diff},
    settings::Settings,
};

impl Daemon {
    /// Makes `next` (the running settings with a rule added or deleted)
    /// the running one: in the running tables when they can take the
    /// change, else by [`Self::swap`]. Either way it needs `--pin-dir`,
    /// so that whether a change is accepted never depends on how it is
    /// made; on any error nothing running changes.
    pub(super) fn change(&mut self, mut next: Settings) -> anyhow::Result<()> {
        if self.pins.is_none() {
            return self.swap(next);
        }
        let t0 = std::time::Instant::now();
        next.assign_handles(Some(&self.settings))?;
        let compiled = next.compile(&System)?;
        let Some(diff) = rule_diff(&self.compiled, &compiled) else {
            log::info!("rule change: the running tables cannot take it in place; reloading");
            return self.swap(next);
        };
        let planned = t0.elapsed();
        // A new rule counts from 0, even on a handle a deleted rule had.
        let handles = |s: &Settings| -> HashSet<u32> { s.rules.iter().map(|r| r.handle).collect() };
        let (running, staying) = (handles(&self.settings), handles(&next));
        let arriving: HashSet<u32> =
            next.rules.iter().map(|r| r.handle).filter(|h| !running.contains(h)).collect();
        for h in &arriving {
            self.dp.clear_rule_stats(*h)?;
        }
        let staged = self.dp.stage_rules(&diff, &compiled.services)?;
        // The arriving balanced rules' tables as their backends stand
        // (checked ones pending), before any rule entry names them.
        let mut backends = super::Pool::new(&next, &compiled, Some(&self.backends));
        if let Err(e) = backends.apply(&mut self.dp, &compiled, &next) {
            self.dp.abandon_rules(staged);
            return Err(e);
        }
        self.dp.commit_rules(&diff, staged)?;
        // Events of the rules that leave, with their text.
        self.audit.drain(&self.dp, &self.settings);
        for r in self.settings.rules.iter().filter(|r| !staying.contains(&r.handle)) {
            log::info!("rule {} removed: {r} ({})", r.handle, r.origin);
        }
        for r in next.rules.iter().filter(|r| arriving.contains(&r.handle)) {
            log::info!("rule {}: {r} ({})", r.handle, r.origin);
        }
        self.backends.stop_checks();
        backends.start_checks();
        self.backends = backends;
        self.settings = next;
        self.compiled = compiled;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        log::info!(
            "rule change made in the running tables in {:.1} ms ({:.1} ms to compile {} rules and compare them with the running ones; {} entries written, {} deleted)",
            ms(t0.elapsed()),
            ms(planned),
            self.settings.rules.len(),
            diff.put.len() + diff.src_put.len() + diff.services_new.len(),
            diff.gone.len() + diff.src_gone.len() + diff.services_gone.len()
        );
        Ok(())
    }

    /// Builds a datapath for `next` and swaps it in (one link update); on
    /// any error nothing running changes. Needs `--pin-dir`: the connection
    /// table must outlive the swap.
    pub(super) fn swap(&mut self, mut next: Settings) -> anyhow::Result<()> {
        let Some(p) = self.pins.clone() else {
            anyhow::bail!(
                "changing rules at runtime needs --pin-dir (the connection table must outlive the swap); restart instead"
            );
        };
        // Handles: kept where given or where the rule is unchanged; new
        // rules get new ones.
        next.assign_handles(Some(&self.settings))?;
        let mut compiled = next.compile(&System)?;
        // The connection table outlives the swap as it is sized (a new
        // size would need a new, empty table): the rest of the reload
        // applies, the size stays and is said so, as at a start that
        // adopts the table.
        let running = self.dp.connection_capacity();
        if compiled.conntrack.max_connections != running {
            log::warn!(
                "SIGHUP: conntrack max {} asked, but the running connection table holds {running} and is kept across reloads: it keeps its size (a new size takes a restart after `forwarder teardown`, which forgets every tracked connection)",
                compiled.conntrack.max_connections
            );
            compiled.conntrack.max_connections = running;
            next.conntrack.max_connections = running;
        }
        let mut dp = Datapath::load_pinned(compiled.conntrack.max_connections, Some(&p))?;
        dp.configure(&compiled)?;
        // A new rule counts from 0, even on a handle a deleted rule had
        // (the counters are pinned state).
        for r in next.rules.iter().filter(|r| self.settings.rule(r.handle).is_none()) {
            dp.clear_rule_stats(r.handle)?;
        }
        dp.sync_public_addrs(&addrs::public_addresses(&compiled.ifaces)?)?;
        // The egresses as they stand, on the new devmap, before it is live.
        let egress = egresses(&compiled, &self.egress);
        for e in &egress {
            dp.set_xdp_egress(e.ifindex, e.xdp)?;
        }
        // The backends keep their states (and drain) across the reload:
        // the new tables are right before the new programs go live.
        let mut backends = super::Pool::new(&next, &compiled, Some(&self.backends));
        backends.apply(&mut dp, &compiled, &next)?;
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
        self.backends.stop_checks();
        backends.start_checks();
        self.backends = backends;
        // The new datapath counts refusals from 0.
        self.egress = egress
            .into_iter()
            .map(|mut e| {
                e.refused = 0;
                e
            })
            .collect();
        for r in &self.settings.rules {
            log::info!("rule {}: {r} ({})", r.handle, r.origin);
        }
        Ok(())
    }
}
