//! The connection table from userspace: reading it (whole, in batches),
//! removing connections, the expiry sweep, what it holds.

use aya::maps::{HashMap, MapData};
use forwarder_common::{
    abi::{self},
    conntrack::{self, Timeouts},
};

use crate::error::{Error, Result};

use super::object::{Datapath, map_err};

/// How much of the conntrack table is in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtUsage {
    /// Entries (two per connection).
    pub entries: u64,
    /// Masquerade source ports held (one per masqueraded connection).
    pub snat_ports: u64,
}

impl CtUsage {
    /// Counts `flows` (the table's entries).
    pub fn of(flows: &[(abi::FlowKey, abi::FlowEntry)]) -> Self {
        let mut u = Self::default();
        for (k, e) in flows {
            u.add(k, e);
        }
        u
    }

    /// Counts one entry.
    pub fn add(&mut self, k: &abi::FlowKey, e: &abi::FlowEntry) {
        self.entries += 1;
        // A reply entry is keyed by the translated tuple: its destination
        // is the masquerade address unless the rule keeps the client's
        // (then it equals where the reply goes).
        if e.dir == abi::DIR_REPLY && k.daddr != e.daddr {
            self.snat_ports += 1;
        }
    }
}

/// The time a sweep step should take at most: 10 ms, 1 % of a core at the
/// daemon's step a second. A step over more entries than that allows is
/// cut short (the pass takes more steps), so a large table costs the
/// daemon no more CPU, only a slower pass (about 40 s over a million
/// connections on the machine of the scale benchmark).
pub const SWEEP_STEP_AIM: std::time::Duration = std::time::Duration::from_millis(10);
/// A step cut short still looks at this many entries, whatever they cost.
pub const SWEEP_STEP_MIN: usize = 4096;

/// A conntrack sweep in progress ([`Datapath::sweep_step`]).
#[derive(Debug, Default)]
pub struct Sweep {
    at: crate::batch::Walk,
    pass: SweepPass,
    /// Entries a step takes at most to stay near [`SWEEP_STEP_AIM`],
    /// learnt from the steps before (0: not yet known).
    cap: usize,
}

impl Sweep {
    /// Entries a step over `budget` wanted ones takes: at most the
    /// learnt cap (which is never below [`SWEEP_STEP_MIN`]).
    pub fn step_size(&self, budget: usize) -> usize {
        if self.cap == 0 { budget } else { budget.min(self.cap) }
    }

    /// Learns from a step that looked at `entries` in `took`.
    fn learn(&mut self, entries: usize, took: std::time::Duration) {
        if entries < SWEEP_STEP_MIN || took.is_zero() {
            return;
        }
        let fits = usize::try_from(entries as u128 * SWEEP_STEP_AIM.as_nanos() / took.as_nanos())
            .unwrap_or(usize::MAX);
        // Halfway from the last estimate: one slow step does not halve it.
        self.cap =
            if self.cap == 0 { fits } else { usize::midpoint(self.cap, fits) }.max(SWEEP_STEP_MIN);
    }
}

/// What one pass of a sweep over the whole table did and found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepPass {
    /// Entries looked at.
    pub scanned: usize,
    /// Entries removed (two per connection).
    pub removed: usize,
    /// The table's use: the entries it kept.
    pub usage: CtUsage,
}

impl Datapath {
    /// Removes flow table entries (both directions of connections).
    pub fn remove_flows(&mut self, keys: &[abi::FlowKey]) -> Result<usize> {
        let mut flows: HashMap<&mut MapData, abi::FlowKey, abi::FlowEntry> =
            HashMap::try_from(self.map_mut(abi::MAP_FLOWS)?).map_err(map_err(abi::MAP_FLOWS))?;
        Ok(keys.iter().filter(|k| flows.remove(k).is_ok()).count())
    }

    /// Marks the entries of `keys` that are still there as reset
    /// (`abi::VLAN_RESET`); returns how many. (A write of the datapath to
    /// one of them in between — its last-seen time, a state change — may
    /// be undone: these connections end anyway.)
    pub fn mark_reset(&mut self, keys: &[abi::FlowKey]) -> Result<usize> {
        let mut flows: HashMap<&mut MapData, abi::FlowKey, abi::FlowEntry> =
            HashMap::try_from(self.map_mut(abi::MAP_FLOWS)?).map_err(map_err(abi::MAP_FLOWS))?;
        let mut n = 0;
        for k in keys {
            let Ok(mut e) = flows.get(k, 0) else { continue };
            e.vlan = abi::VLAN_RESET;
            // BPF_EXIST (2): never recreate an entry removed meanwhile.
            if flows.insert(k, e, 2).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The flow table's entry for `key`, if there is one.
    pub fn flow(&self, key: &abi::FlowKey) -> Result<Option<abi::FlowEntry>> {
        let flows: HashMap<&MapData, abi::FlowKey, abi::FlowEntry> =
            HashMap::try_from(self.map(abi::MAP_FLOWS)?).map_err(map_err(abi::MAP_FLOWS))?;
        match flows.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(abi::MAP_FLOWS)(e)),
        }
    }

    /// The flow table's entries (both directions).
    pub fn flows(&self) -> Result<Vec<(abi::FlowKey, abi::FlowEntry)>> {
        crate::batch::lookup_all(self.flows_fd()?, abi::MAP_FLOWS)
    }

    /// The flow table's descriptor, for batch reads.
    pub(super) fn flows_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        let aya::maps::Map::HashMap(data) = self.map(abi::MAP_FLOWS)? else {
            return Err(Error::Io(format!("{} is not a hash map", abi::MAP_FLOWS)));
        };
        Ok(std::os::fd::AsFd::as_fd(data.fd()))
    }

    /// Removes the connections idle past their timeout (both entries),
    /// `now_ns` on the datapath's clock ([`monotonic_ns`]): a whole
    /// [`Sweep`] pass at once.
    pub fn collect_expired(&mut self, t: &Timeouts, now_ns: u64) -> Result<SweepPass> {
        let mut sweep = Sweep::default();
        loop {
            if let Some(pass) = self.sweep_step(&mut sweep, t, now_ns, usize::MAX)? {
                return Ok(pass);
            }
        }
    }

    /// Goes on with `sweep` over at least `budget` entries (whole hash
    /// buckets; fewer when that would take longer than [`SWEEP_STEP_AIM`],
    /// as earlier steps measured), removing the connections idle past their timeout (both
    /// entries). Returns the pass's totals when it has reached the end of
    /// the table (the next step starts a new pass). The table is read a
    /// few hundred entries per syscall; an entry is looked at again, fresh,
    /// with its peer, only when it looks expired on its own (both entries
    /// of a connection carry its state, so a pair is expired only if its
    /// more advanced entry looks so alone).
    pub fn sweep_step(
        &mut self,
        sweep: &mut Sweep,
        t: &Timeouts,
        now_ns: u64,
        budget: usize,
    ) -> Result<Option<SweepPass>> {
        let t0 = std::time::Instant::now();
        let (chunk, next) = crate::batch::lookup_from::<abi::FlowKey, abi::FlowEntry>(
            self.flows_fd()?,
            sweep.at,
            sweep.step_size(budget),
            abi::MAP_FLOWS,
        )?;
        let mut flows: HashMap<&mut MapData, abi::FlowKey, abi::FlowEntry> =
            HashMap::try_from(self.map_mut(abi::MAP_FLOWS)?).map_err(map_err(abi::MAP_FLOWS))?;
        // Idle past its timeout, judged with its peer (the other direction).
        let expired = |k: &abi::FlowKey, e: &abi::FlowEntry, peer: Option<&abi::FlowEntry>| {
            let (ps, pl) =
                peer.map_or((e.expiry_state(), e.last_seen), |p| (p.expiry_state(), p.last_seen));
            conntrack::expired(t, k.proto, e.expiry_state(), ps, e.last_seen, pl, now_ns)
        };
        for (k, e) in &chunk {
            sweep.pass.scanned += 1;
            if expired(k, e, None) {
                // Gone meanwhile: removed with its peer earlier in the pass.
                let Ok(e) = flows.get(k, 0) else { continue };
                let pk = abi::FlowKey::new(&e.tuple().reversed(), k.proto);
                let peer = flows.get(&pk, 0).ok();
                if expired(k, &e, peer.as_ref()) {
                    sweep.pass.removed += usize::from(flows.remove(k).is_ok());
                    sweep.pass.removed += usize::from(peer.is_some() && flows.remove(&pk).is_ok());
                    continue;
                }
            }
            sweep.pass.usage.add(k, e);
        }
        sweep.at = next;
        sweep.learn(chunk.len(), t0.elapsed());
        Ok((next == crate::batch::Walk::Done).then(|| {
            sweep.at = crate::batch::Walk::Start;
            std::mem::take(&mut sweep.pass)
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{SWEEP_STEP_MIN, Sweep};

    #[test]
    fn a_sweep_step_is_cut_to_what_fits_its_time_aim() {
        let mut s = Sweep::default();
        // Nothing known yet: what the timeouts call for.
        assert_eq!(s.step_size(400_000), 400_000);
        assert_eq!(s.step_size(10), 10);
        // 100 000 entries took 50 ms: 20 000 fit the 10 ms aim.
        s.learn(100_000, Duration::from_millis(50));
        assert_eq!(s.step_size(400_000), 20_000);
        assert_eq!(s.step_size(5_000), 5_000, "a small budget stays as it is");
        // One slow step moves the estimate halfway.
        s.learn(20_000, Duration::from_millis(40));
        assert_eq!(s.step_size(400_000), 12_500);
        // Steps too small to tell teach nothing; the cap never falls
        // below the minimum.
        s.learn(100, Duration::from_secs(1));
        assert_eq!(s.step_size(400_000), 12_500);
        s.learn(SWEEP_STEP_MIN, Duration::from_secs(10));
        assert_eq!(s.step_size(400_000), 6_252, "halfway from 12 500 to the 4 that fit");
        s.learn(SWEEP_STEP_MIN, Duration::from_secs(10));
        assert_eq!(s.step_size(400_000), SWEEP_STEP_MIN);
    }
}
