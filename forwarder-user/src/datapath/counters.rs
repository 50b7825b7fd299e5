//! The datapath's own counters, summed over CPUs: global ones, and the
//! frames the kernel refused to transmit after an XDP redirect.

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use forwarder_common::abi::{self};

use crate::error::Result;

use super::object::{Datapath, map_err};

impl Datapath {
    /// Frames the kernel refused after XDP redirected them, per egress
    /// ifindex: (frames, the last errno, negative). Empty when not watched.
    pub fn xdp_tx_errors(&self) -> Result<std::collections::BTreeMap<u32, (u64, i32)>> {
        let m: aya::maps::PerCpuHashMap<&MapData, u32, abi::XdpTxErrors> =
            aya::maps::PerCpuHashMap::try_from(self.map(abi::MAP_XDP_TX_ERRORS)?)
                .map_err(map_err(abi::MAP_XDP_TX_ERRORS))?;
        let mut out = std::collections::BTreeMap::new();
        for item in &m {
            let (ifindex, per_cpu) = item.map_err(map_err(abi::MAP_XDP_TX_ERRORS))?;
            let frames = per_cpu.iter().map(|v| v.frames).sum();
            let last_err = per_cpu.iter().map(|v| v.last_err).find(|e| *e != 0).unwrap_or(0);
            out.insert(ifindex, (frames, last_err));
        }
        Ok(out)
    }

    /// One global counter (`forwarder_common::stats::*`), summed over CPUs.
    pub fn counter(&self, index: u32) -> Result<u64> {
        let gs: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(abi::MAP_STATS)?).map_err(map_err(abi::MAP_STATS))?;
        Ok(gs.get(&index, 0).map_err(map_err(abi::MAP_STATS))?.iter().sum())
    }

    /// The counters of the rules with handles `handles`, summed over CPUs.
    pub fn rule_stats(&self, handles: &[u32]) -> Result<Vec<abi::RuleStats>> {
        let rs: PerCpuArray<&MapData, abi::RuleStats> =
            PerCpuArray::try_from(self.map(abi::MAP_RULE_STATS)?)
                .map_err(map_err(abi::MAP_RULE_STATS))?;
        handles
            .iter()
            .map(|&id| {
                let per_cpu = rs.get(&id, 0).map_err(map_err(abi::MAP_RULE_STATS))?;
                let mut sum = abi::RuleStats::default();
                for s in per_cpu.iter() {
                    sum.traffic.add(&s.traffic);
                    sum.new_conns += s.new_conns;
                    sum.denied += s.denied;
                }
                Ok(sum)
            })
            .collect()
    }

    /// Sets the counters of the rule with handle `handle` to 0 (a new
    /// rule whose handle a deleted one had: it starts from nothing).
    pub fn clear_rule_stats(&mut self, handle: u32) -> Result<()> {
        let mut rs: PerCpuArray<&mut MapData, abi::RuleStats> =
            PerCpuArray::try_from(self.map_mut(abi::MAP_RULE_STATS)?)
                .map_err(map_err(abi::MAP_RULE_STATS))?;
        let zero = PerCpuValues::try_from(vec![
            abi::RuleStats::default();
            aya::util::nr_cpus().map_err(|(_, e)| {
                crate::error::Error::Io(format!("counting the CPUs: {e}"))
            })?
        ])
        .map_err(|e| crate::error::Error::Io(format!("per-CPU values: {e}")))?;
        rs.set(handle, zero, 0).map_err(map_err(abi::MAP_RULE_STATS))
    }

    /// Every global counter (index `forwarder_common::stats::*`), summed
    /// over CPUs.
    pub fn counters(&self) -> Result<Vec<u64>> {
        let gs: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(abi::MAP_STATS)?).map_err(map_err(abi::MAP_STATS))?;
        (0..forwarder_common::stats::COUNT)
            .map(|i| Ok(gs.get(&i, 0).map_err(map_err(abi::MAP_STATS))?.iter().sum()))
            .collect()
    }
}
