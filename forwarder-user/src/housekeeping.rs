//! The daemon's housekeeping tasks (address sync, conntrack sweep, egress
//! watch, stats file, …) fail on their own, never the daemon: a failure is
//! logged, counted (`forwarder stats`, the metrics) and retried with
//! backoff, and forwarding, which runs in the kernel, never waits for
//! them.

use std::collections::BTreeMap;

/// Every task, by the name its failures are counted and injected under
/// ([`crate::faults`]).
pub const TASKS: [&str; 9] = [
    "public_addrs",
    "conntrack_sweep",
    "egress",
    "table_watch",
    "backend_tables",
    "conn_resets",
    "audit_report",
    "stats_file",
    "stats_log",
];

/// Retry delays after consecutive failures: 1, 2, 4, … seconds, at most this.
pub const MAX_BACKOFF_S: u64 = 60;

#[derive(Clone, Debug, Default)]
struct Task {
    /// Failures in all.
    failures: u64,
    /// Failures in a row (0: healthy).
    streak: u32,
    /// Not before this second (the daemon's tick count).
    next_s: u64,
}

/// Failure accounting and backoff for the tasks.
#[derive(Debug, Default)]
pub struct Housekeeping {
    tasks: BTreeMap<&'static str, Task>,
}

/// The delay after `streak` failures in a row.
pub const fn backoff_s(streak: u32) -> u64 {
    let s = if streak >= 7 { MAX_BACKOFF_S } else { 1u64 << (streak.saturating_sub(1)) };
    if s > MAX_BACKOFF_S { MAX_BACKOFF_S } else { s }
}

impl Housekeeping {
    /// Whether `task` is due at second `now_s` (not backing off).
    pub fn due(&self, task: &'static str, now_s: u64) -> bool {
        self.tasks.get(task).is_none_or(|t| now_s >= t.next_s)
    }

    /// Whether `task` should run at second `now_s`: due (not backing
    /// off) and not failed by injection ([`crate::faults`]; an injected
    /// failure counts as the task's).
    pub fn begin(&mut self, task: &'static str, now_s: u64) -> bool {
        if !self.due(task, now_s) {
            return false;
        }
        if let Err(e) = crate::faults::check(task) {
            self.end::<()>(task, now_s, Err(e.into()));
            return false;
        }
        true
    }

    /// Accounts for a pass of `task` that ended with `r`: a failure is
    /// logged (the first of a streak and then at each retry, so at most
    /// once per backoff), counted and retried later; a success after
    /// failures says so. Returns the value of a success.
    pub fn end<T>(&mut self, task: &'static str, now_s: u64, r: anyhow::Result<T>) -> Option<T> {
        let t = self.tasks.entry(task).or_default();
        match r {
            Ok(v) => {
                if t.streak > 0 {
                    log::info!("{task}: recovered after {} failed attempt(s)", t.streak);
                }
                t.streak = 0;
                Some(v)
            }
            Err(e) => {
                t.failures += 1;
                t.streak += 1;
                let wait = backoff_s(t.streak);
                t.next_s = now_s + wait;
                log::warn!(
                    "{task} failed ({} in a row): {e:#}; forwarding is not affected; retrying in {wait} s",
                    t.streak
                );
                None
            }
        }
    }

    /// [`Housekeeping::begin`], `f`, [`Housekeeping::end`].
    pub fn run<T>(
        &mut self,
        task: &'static str,
        now_s: u64,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> Option<T> {
        if !self.begin(task, now_s) {
            return None;
        }
        let r = f();
        self.end(task, now_s, r)
    }

    /// Failures so far, per task that ever failed.
    pub fn failures(&self) -> BTreeMap<String, u64> {
        self.tasks
            .iter()
            .filter(|(_, t)| t.failures > 0)
            .map(|(n, t)| ((*n).to_string(), t.failures))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_count_and_recover() {
        assert_eq!((1..=9).map(backoff_s).collect::<Vec<_>>(), [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let mut h = Housekeeping::default();
        let mut ran = Vec::new();
        for now in 0..20u64 {
            // Fails until second 10.
            let r = h.run("stats_file", now, || {
                ran.push(now);
                anyhow::ensure!(now >= 10, "disk full");
                Ok(now)
            });
            if now >= 10 && r.is_some() {
                assert_eq!(r, Some(now));
            }
        }
        // Tried at 0, then after 1, 2, 4, 8 s: 1, 3, 7, then 15 (8 after 7).
        assert_eq!(ran[..5], [0, 1, 3, 7, 15]);
        // Healthy again from 15 on: every second.
        assert_eq!(ran[5..], [16, 17, 18, 19]);
        assert_eq!(h.failures(), BTreeMap::from([("stats_file".to_string(), 4)]));
        // Other tasks are not held back by it.
        assert!(h.due("conntrack_sweep", 2));
    }
}
