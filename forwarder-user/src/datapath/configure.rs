//! Filling the configuration maps from a [`Compiled`] plan (rules, source
//! lists, interfaces, public addresses, the devmap, the config word), and
//! the changes the daemon makes to them at runtime.

use aya::maps::{
    Array, HashMap, MapData,
    lpm_trie::{Key, LpmTrie},
    xdp::DevMapHash,
};
use forwarder_common::abi::{self, BackendKey, Config, IfaceInfo, RuleKey, RuleTarget, Service};

use crate::{
    error::{Error, Result},
    plan::{Compiled, IfaceMode, Services},
};

use super::object::{Datapath, map_err};

/// What [`Datapath::sync_public_addrs`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrSync {
    pub changed: bool,
    /// Public addresses beyond the table's capacity (not hairpinned).
    pub left_out: usize,
}

impl Datapath {
    /// Fills config, interface, devmap and rule tables.
    pub fn configure(&mut self, c: &Compiled) -> Result<()> {
        let cfg = Config {
            snat_port_min: c.snat_ports.0,
            snat_port_max: c.snat_ports.1,
            snat_attempts: abi::DEFAULT_SNAT_ATTEMPTS,
            audit_rate: c.audit.0,
            audit_burst: c.audit.1,
            new_conn_rate: c.new_conn.0,
            new_conn_burst: c.new_conn.1,
            cpus: aya::util::nr_cpus().map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            _pad: 0,
        };
        let mut a: Array<&mut MapData, Config> =
            Array::try_from(self.map_mut(abi::MAP_CONFIG)?).map_err(map_err(abi::MAP_CONFIG))?;
        a.set(0, cfg, 0).map_err(map_err(abi::MAP_CONFIG))?;

        let mut ifaces: HashMap<&mut MapData, u32, IfaceInfo> =
            HashMap::try_from(self.map_mut(abi::MAP_IFACES)?).map_err(map_err(abi::MAP_IFACES))?;
        for i in &c.ifaces {
            // TC mode is set here; `NativeXdpElseTc` switches an interface
            // to TC in `attach` when its driver has no native XDP.
            let mut flags = if i.mode == IfaceMode::Tc { abi::IFACE_F_TC_ONLY } else { 0 };
            if c.rules.iter().any(|(_, k, _)| k.ifindex == i.ifindex) {
                flags |= abi::IFACE_F_BOUND_RULES;
            }
            ifaces
                .insert(i.ifindex, IfaceInfo { role: i.role, flags }, 0)
                .map_err(map_err(abi::MAP_IFACES))?;
        }
        let mut tx: DevMapHash<&mut MapData> =
            DevMapHash::try_from(self.map_mut(abi::MAP_TX_PORTS)?)
                .map_err(map_err(abi::MAP_TX_PORTS))?;
        for i in &c.ifaces {
            tx.insert(i.ifindex, i.ifindex, None, 0).map_err(|e| {
                Error::Io(format!("adding {} to {}: {e}", i.name, abi::MAP_TX_PORTS))
            })?;
        }
        let mut rules: LpmTrie<&mut MapData, RuleKey, RuleTarget> =
            LpmTrie::try_from(self.map_mut(abi::MAP_RULES)?).map_err(map_err(abi::MAP_RULES))?;
        for (prefix_len, k, v) in &c.rules {
            rules.insert(&Key::new(*prefix_len, *k), v, 0).map_err(map_err(abi::MAP_RULES))?;
        }
        let mut allow: LpmTrie<&mut MapData, abi::SrcKey, u8> =
            LpmTrie::try_from(self.map_mut(abi::MAP_SRC_ALLOW)?)
                .map_err(map_err(abi::MAP_SRC_ALLOW))?;
        for (prefix_len, k) in &c.sources {
            allow.insert(&Key::new(*prefix_len, *k), 1, 0).map_err(map_err(abi::MAP_SRC_ALLOW))?;
        }
        self.fill_services(&c.services, &c.services.entries)
    }

    /// The Maglev tables and backends of `entries` (services of `s`),
    /// then the services that point at them: a service is found only once
    /// what it names is in place.
    pub(super) fn fill_services(&mut self, s: &Services, entries: &[(u32, Service)]) -> Result<()> {
        // The live half of each rule's region (the spare one is written
        // when a table replaces it), in batches.
        let (slots, values): (Vec<u32>, Vec<u32>) = entries
            .iter()
            .flat_map(|(_, svc)| svc.table_off..svc.table_off + svc.table_len)
            .filter_map(|i| s.maglev.get(i as usize).map(|v| (i, *v)))
            .unzip();
        crate::batch::update(self.array_fd(abi::MAP_MAGLEV)?, &slots, &values, abi::MAP_MAGLEV)?;
        // Each rule's backends with the slot each counts in.
        let (mut ids, mut backends, mut keys) = (Vec::new(), Vec::new(), Vec::new());
        for (rule, svc) in entries {
            for i in svc.backends_off..svc.backends_off + svc.backends {
                if let Some(b) = s.backends.get(i as usize) {
                    ids.push(i);
                    backends.push(*b);
                    keys.push(BackendKey { rule: *rule, addr: b.addr, port: b.port, _pad: [0; 2] });
                }
            }
        }
        for (b, slot) in backends.iter_mut().zip(self.backend_slots(&keys)?) {
            b.stats_slot = slot;
        }
        crate::batch::update(
            self.array_fd(abi::MAP_BACKENDS)?,
            &ids,
            &backends,
            abi::MAP_BACKENDS,
        )?;
        let mut services: HashMap<&mut MapData, u32, Service> =
            HashMap::try_from(self.map_mut(abi::MAP_SERVICES)?)
                .map_err(map_err(abi::MAP_SERVICES))?;
        for (rule_id, svc) in entries {
            services.insert(rule_id, svc, 0).map_err(map_err(abi::MAP_SERVICES))?;
        }
        Ok(())
    }

    /// The descriptor of array map `name`, for batch writes.
    fn array_fd(&self, name: &str) -> Result<std::os::fd::BorrowedFd<'_>> {
        let aya::maps::Map::Array(data) = self.map(name)? else {
            return Err(Error::Io(format!("{name} is not an array")));
        };
        Ok(std::os::fd::AsFd::as_fd(data.fd()))
    }

    /// Makes `table` (`None`: no backend can take a connection) rule
    /// `rule_id`'s live Maglev table: written into the half of the rule's
    /// region (compiled as `base`) that is not live, then the service
    /// pointed at it in one map update, so a new connection meets the old
    /// table or the new one, whole. Connections already set up keep their
    /// backend.
    pub fn replace_table(
        &mut self,
        rule_id: u32,
        base: &Service,
        table: Option<&[u32]>,
    ) -> Result<()> {
        if table.is_some_and(|t| t.len() != base.table_len as usize) {
            return Err(Error::Io(format!(
                "rule {rule_id}: a table of {} slots for a region of {}",
                table.map_or(0, <[u32]>::len),
                base.table_len
            )));
        }
        let live = {
            let services: HashMap<&mut MapData, u32, Service> =
                HashMap::try_from(self.map_mut(abi::MAP_SERVICES)?)
                    .map_err(map_err(abi::MAP_SERVICES))?;
            services.get(&rule_id, 0).map_err(map_err(abi::MAP_SERVICES))?
        };
        let spare = if live.table_off == base.table_off {
            base.table_off + base.table_len
        } else {
            base.table_off
        };
        if let Some(t) = table {
            let slots: Vec<u32> = (spare..spare + base.table_len).collect();
            crate::batch::update(self.array_fd(abi::MAP_MAGLEV)?, &slots, t, abi::MAP_MAGLEV)?;
        }
        let next = Service {
            table_off: spare,
            table_len: if table.is_some() { base.table_len } else { 0 },
            ..*base
        };
        let mut services: HashMap<&mut MapData, u32, Service> =
            HashMap::try_from(self.map_mut(abi::MAP_SERVICES)?)
                .map_err(map_err(abi::MAP_SERVICES))?;
        services.insert(rule_id, next, 0).map_err(map_err(abi::MAP_SERVICES))
    }

    /// Puts egress `ifindex` into XDP's transmit set (the devmap) or takes
    /// it out (XDP then hands packets towards it to TC); whether it
    /// changed.
    pub fn set_xdp_egress(&mut self, ifindex: u32, on: bool) -> Result<bool> {
        let mut tx: DevMapHash<&mut MapData> =
            DevMapHash::try_from(self.map_mut(abi::MAP_TX_PORTS)?)
                .map_err(map_err(abi::MAP_TX_PORTS))?;
        let present = tx.get(ifindex, 0).is_ok();
        match (present, on) {
            (false, true) => tx.insert(ifindex, ifindex, None, 0).map_err(|e| {
                Error::Io(format!("adding ifindex {ifindex} to {}: {e}", abi::MAP_TX_PORTS))
            })?,
            (true, false) => tx.remove(ifindex).map_err(map_err(abi::MAP_TX_PORTS))?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The `abi::IFACE_F_*` bits the programs hold for `ifindex` (0: not
    /// one of ours).
    pub fn iface_flags(&self, ifindex: u32) -> Result<u32> {
        let ifaces: HashMap<&MapData, u32, IfaceInfo> =
            HashMap::try_from(self.map(abi::MAP_IFACES)?).map_err(map_err(abi::MAP_IFACES))?;
        Ok(ifaces.get(&ifindex, 0).map_or(0, |i| i.flags))
    }

    /// Sets (`on`) or clears [`abi::IFACE_F_TC_ALL`] on `ifindex`: the TC
    /// program behind XDP looks at every packet XDP lets through, as XDP
    /// has it do where it cannot mark a hand-over (it sets the bit itself).
    pub fn set_tc_takes_all(&mut self, ifindex: u32, on: bool) -> Result<()> {
        self.set_iface_flag(ifindex, abi::IFACE_F_TC_ALL, on).map(|_| ())
    }

    /// Sets (`on`) or clears `flag` on interface `ifindex`, keeping its
    /// other bits; the entry as it was.
    pub(super) fn set_iface_flag(
        &mut self,
        ifindex: u32,
        flag: u32,
        on: bool,
    ) -> Result<IfaceInfo> {
        let mut ifaces: HashMap<&mut MapData, u32, IfaceInfo> =
            HashMap::try_from(self.map_mut(abi::MAP_IFACES)?).map_err(map_err(abi::MAP_IFACES))?;
        let was = ifaces
            .get(&ifindex, 0)
            .map_err(|e| Error::Io(format!("ifindex {ifindex} in {}: {e}", abi::MAP_IFACES)))?;
        let flags = if on { was.flags | flag } else { was.flags & !flag };
        ifaces.insert(ifindex, IfaceInfo { flags, ..was }, 0).map_err(map_err(abi::MAP_IFACES))?;
        Ok(was)
    }

    /// Tells the programs that `ifindex` carries TC alone (its driver
    /// refused native XDP in [`IfaceMode::NativeXdpElseTc`]), keeping the
    /// flags [`Self::configure`] set (rules bound to it among them).
    pub(super) fn mark_tc_only(&mut self, ifindex: u32, role: u32) -> Result<()> {
        let mut ifaces: HashMap<&mut MapData, u32, IfaceInfo> =
            HashMap::try_from(self.map_mut(abi::MAP_IFACES)?).map_err(map_err(abi::MAP_IFACES))?;
        let flags = ifaces.get(&ifindex, 0).map_or(0, |i| i.flags) | abi::IFACE_F_TC_ONLY;
        ifaces.insert(ifindex, IfaceInfo { role, flags }, 0).map_err(map_err(abi::MAP_IFACES))
    }

    /// Makes the public-address table equal to `want`, or to its first
    /// [`abi::MAX_PUBLIC_ADDRS`] when it holds more (hairpin then works for
    /// those); says whether the table changed and how many did not fit.
    pub fn sync_public_addrs(
        &mut self,
        want: &std::collections::BTreeSet<([u8; 4], u32)>,
    ) -> Result<AddrSync> {
        let fit: std::collections::BTreeMap<[u8; 4], u32> =
            want.iter().take(abi::MAX_PUBLIC_ADDRS as usize).copied().collect();
        let left_out = want.len().saturating_sub(fit.len());
        let mut m: HashMap<&mut MapData, [u8; 4], u32> =
            HashMap::try_from(self.map_mut(abi::MAP_PUBLIC_ADDRS)?)
                .map_err(map_err(abi::MAP_PUBLIC_ADDRS))?;
        let have: std::collections::BTreeMap<[u8; 4], u32> = m
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(abi::MAP_PUBLIC_ADDRS))?;
        if have == fit {
            return Ok(AddrSync { changed: false, left_out });
        }
        // Removals first: the table never needs room for both.
        for a in have.keys().filter(|a| !fit.contains_key(*a)) {
            m.remove(a).map_err(map_err(abi::MAP_PUBLIC_ADDRS))?;
        }
        for (a, i) in fit.iter().filter(|(a, i)| have.get(*a) != Some(i)) {
            m.insert(a, i, 0).map_err(map_err(abi::MAP_PUBLIC_ADDRS))?;
        }
        Ok(AddrSync { changed: true, left_out })
    }
}
