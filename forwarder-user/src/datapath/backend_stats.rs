//! Per-backend counters: which slot of `FWD_BACKEND_STATS` each backend of
//! a balanced rule counts in (`FWD_BACKEND_SLOTS`, kept across reloads and
//! restarts with the counters), and the counts.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuValues};
use forwarder_common::abi::{self, BackendKey, Traffic};

use super::object::{Datapath, map_err};
use crate::error::{Error, Result};

/// What [`assign`] decided: a slot per backend asked for (0: none left),
/// the backends that got one now, and those that gave theirs up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SlotPlan {
    pub per_backend: Vec<u16>,
    pub added: Vec<(BackendKey, u16)>,
    pub evicted: Vec<(BackendKey, u16)>,
}

/// Gives every backend of `wanted` a slot in `1..max`: the one `known`
/// says it has (its counts go on), else a free one, lowest first. A
/// backend no longer wanted keeps its slot (and its counts, should it come
/// back) until the slots run out; then those give theirs up, lowest slot
/// first. Backends beyond every slot get 0 (counted with their rule only).
pub fn assign(known: &[(BackendKey, u16)], wanted: &[BackendKey], max: u16) -> SlotPlan {
    let mut out = SlotPlan::default();
    let mut holder: BTreeMap<BackendKey, u16> = known.iter().copied().collect();
    let mut taken: BTreeSet<u16> = holder.values().copied().collect();
    let wanted_set: BTreeSet<&BackendKey> = wanted.iter().collect();
    let mut free = (1..max).filter(|s| !taken.contains(s)).collect::<Vec<_>>().into_iter();
    // Slots held by backends no longer wanted, the lowest first.
    let mut stale: Vec<(u16, BackendKey)> =
        known.iter().filter(|(k, _)| !wanted_set.contains(k)).map(|(k, s)| (*s, *k)).collect();
    stale.sort_unstable();
    let mut stale = stale.into_iter();
    for k in wanted {
        if let Some(s) = holder.get(k) {
            out.per_backend.push(*s);
            continue;
        }
        let slot = free.next().or_else(|| {
            let (s, old) = stale.next()?;
            holder.remove(&old);
            out.evicted.push((old, s));
            Some(s)
        });
        match slot {
            Some(s) => {
                taken.insert(s);
                holder.insert(*k, s);
                out.added.push((*k, s));
                out.per_backend.push(s);
            }
            None => out.per_backend.push(0),
        }
    }
    out
}

impl Datapath {
    /// The stats slots of `wanted` (see [`assign`]), recorded in
    /// `FWD_BACKEND_SLOTS`; a slot given anew starts from 0.
    pub(super) fn backend_slots(&mut self, wanted: &[BackendKey]) -> Result<Vec<u16>> {
        let max = u16::try_from(abi::MAX_BACKEND_SLOTS).unwrap_or(u16::MAX);
        let known: Vec<(BackendKey, u16)> = {
            let m: HashMap<&MapData, BackendKey, u32> =
                HashMap::try_from(self.map(abi::MAP_BACKEND_SLOTS)?)
                    .map_err(map_err(abi::MAP_BACKEND_SLOTS))?;
            m.iter()
                .filter_map(std::result::Result::ok)
                .filter_map(|(k, v)| {
                    u16::try_from(v & abi::BACKEND_SLOT_MASK)
                        .ok()
                        .filter(|s| *s < max)
                        .map(|s| (k, s))
                })
                .collect()
        };
        let plan = assign(&known, wanted, max);
        {
            let mut m: HashMap<&mut MapData, BackendKey, u32> =
                HashMap::try_from(self.map_mut(abi::MAP_BACKEND_SLOTS)?)
                    .map_err(map_err(abi::MAP_BACKEND_SLOTS))?;
            for (k, _) in &plan.evicted {
                m.remove(k).map_err(map_err(abi::MAP_BACKEND_SLOTS))?;
            }
            for (k, s) in &plan.added {
                m.insert(k, u32::from(*s), 0).map_err(map_err(abi::MAP_BACKEND_SLOTS))?;
            }
        }
        let cpus =
            aya::util::nr_cpus().map_err(|(_, e)| Error::Io(format!("counting the CPUs: {e}")))?;
        let mut stats: PerCpuArray<&mut MapData, Traffic> =
            PerCpuArray::try_from(self.map_mut(abi::MAP_BACKEND_STATS)?)
                .map_err(map_err(abi::MAP_BACKEND_STATS))?;
        for (_, s) in &plan.added {
            let zero = PerCpuValues::try_from(vec![Traffic::default(); cpus])
                .map_err(|e| Error::Io(format!("per-CPU values: {e}")))?;
            stats.set(u32::from(*s), zero, 0).map_err(map_err(abi::MAP_BACKEND_STATS))?;
        }
        if plan.per_backend.contains(&0) {
            log::warn!(
                "more than {} backends: the rest are counted with their rules only",
                max - 1
            );
        }
        Ok(plan.per_backend)
    }

    /// What was last known of each backend of `keys` (`BACKEND_WAS_*`
    /// bits; 0: nothing, a backend new to the datapath).
    pub fn backends_known(&self, keys: &[BackendKey]) -> Result<Vec<u32>> {
        let m: HashMap<&MapData, BackendKey, u32> =
            HashMap::try_from(self.map(abi::MAP_BACKEND_SLOTS)?)
                .map_err(map_err(abi::MAP_BACKEND_SLOTS))?;
        Ok(keys.iter().map(|k| m.get(k, 0).map_or(0, |v| v & !abi::BACKEND_SLOT_MASK)).collect())
    }

    /// Records what is known of backend `key` now (`BACKEND_WAS_*` bits),
    /// beside its slot, for a daemon that adopts this datapath.
    pub fn remember_backend(&mut self, key: &BackendKey, known: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, BackendKey, u32> =
            HashMap::try_from(self.map_mut(abi::MAP_BACKEND_SLOTS)?)
                .map_err(map_err(abi::MAP_BACKEND_SLOTS))?;
        let Ok(v) = m.get(key, 0) else { return Ok(()) };
        let next = (v & abi::BACKEND_SLOT_MASK) | (known & !abi::BACKEND_SLOT_MASK);
        if next != v {
            m.insert(key, next, 0).map_err(map_err(abi::MAP_BACKEND_SLOTS))?;
        }
        Ok(())
    }

    /// The counts of each backend of `keys`, summed over CPUs (zero for
    /// one without a slot).
    pub fn backend_stats(&self, keys: &[BackendKey]) -> Result<Vec<Traffic>> {
        let slots: HashMap<&MapData, BackendKey, u32> =
            HashMap::try_from(self.map(abi::MAP_BACKEND_SLOTS)?)
                .map_err(map_err(abi::MAP_BACKEND_SLOTS))?;
        let stats: PerCpuArray<&MapData, Traffic> =
            PerCpuArray::try_from(self.map(abi::MAP_BACKEND_STATS)?)
                .map_err(map_err(abi::MAP_BACKEND_STATS))?;
        keys.iter()
            .map(|k| {
                let Ok(v) = slots.get(k, 0) else { return Ok(Traffic::default()) };
                let per_cpu = stats
                    .get(&(v & abi::BACKEND_SLOT_MASK), 0)
                    .map_err(map_err(abi::MAP_BACKEND_STATS))?;
                Ok(per_cpu.iter().fold(Traffic::default(), |mut sum, s| {
                    sum.add(s);
                    sum
                }))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rule: u32, last: u8) -> BackendKey {
        BackendKey { rule, addr: [10, 0, 0, last], port: 80u16.to_be_bytes(), _pad: [0; 2] }
    }

    #[test]
    fn backends_keep_their_slots_and_new_ones_take_free_ones() {
        let first = assign(&[], &[key(1, 1), key(1, 2), key(2, 1)], 8);
        assert_eq!(first.per_backend, [1, 2, 3]);
        assert_eq!(first.added.len(), 3);
        // A reload: one backend gone, one new, the others where they were.
        let known: Vec<_> = first.added.clone();
        let second = assign(&known, &[key(2, 1), key(1, 1), key(1, 9)], 8);
        assert_eq!(second.per_backend, [3, 1, 4]);
        assert_eq!(second.added, [(key(1, 9), 4)]);
        assert!(second.evicted.is_empty(), "a backend gone keeps its slot while there is room");
        // The one that went comes back: its old slot, its counts.
        let mut known = known;
        known.extend(second.added);
        let third = assign(&known, &[key(1, 2)], 8);
        assert_eq!(third.per_backend, [2]);
        assert!(third.added.is_empty());
    }

    #[test]
    fn full_slots_are_taken_back_from_backends_gone_then_none_is_left() {
        // Slots 1-3 (max 4): all held; one backend still wanted.
        let known = [(key(1, 1), 2), (key(1, 2), 1), (key(1, 3), 3)];
        let r = assign(&known, &[key(1, 3), key(2, 1), key(2, 2), key(2, 3)], 4);
        // The lowest stale slots go first; the fourth backend finds none.
        assert_eq!(r.per_backend, [3, 1, 2, 0]);
        assert_eq!(r.evicted, [(key(1, 2), 1), (key(1, 1), 2)]);
        assert_eq!(r.added, [(key(2, 1), 1), (key(2, 2), 2)]);
    }
}
