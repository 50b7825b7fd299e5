//! A rule change made in the running tables ([`RuleDiff`]): no new
//! programs, no verifier, a handful of map writes. In two steps, so that
//! the daemon can set the tables of arriving balanced rules to their
//! backends' states in between: [`Datapath::stage_rules`] writes what no
//! rule names yet (the new services and their regions),
//! [`Datapath::commit_rules`] the rest, in an order that never lets a
//! packet meet a rule entry whose service or source list is missing. Each
//! write is logged with what it replaced; a failure undoes them all, so
//! the running tables stay as they were.

use aya::maps::{
    HashMap, MapData,
    lpm_trie::{Key, LpmTrie},
};
use forwarder_common::abi::{self, IfaceInfo, RuleKey, RuleTarget, Service, SrcKey};

use crate::{
    error::Result,
    plan::{Services, diff::RuleDiff},
};

use super::object::{Datapath, map_err};

/// One write of a rule change, as it is undone.
#[derive(Debug)]
enum Undo {
    /// Put the service back (`None`: delete it).
    Service(u32, Option<Service>),
    /// Put the rule entry back (`None`: delete it).
    Rule(u32, RuleKey, Option<RuleTarget>),
    /// Put the allow-list entry back (`true`) or delete it.
    Src(u32, SrcKey, bool),
    /// Put the interface's entry back.
    Iface(u32, IfaceInfo),
}

/// A rule change under way: what undoes it.
#[derive(Debug, Default)]
#[must_use = "commit or abandon the change"]
pub struct RuleChange {
    undo: Vec<Undo>,
}

impl Datapath {
    /// The first step: the services of arriving balanced rules, with their
    /// tables and backends (slots no running rule uses). Nothing is undone
    /// when it fails but the services it wrote.
    pub fn stage_rules(&mut self, d: &RuleDiff, s: &Services) -> Result<RuleChange> {
        let mut change = RuleChange::default();
        change.undo.extend(d.services_new.iter().map(|(h, _)| Undo::Service(*h, None)));
        if let Err(e) = self.fill_services(s, &d.services_new) {
            self.abandon_rules(change);
            return Err(e);
        }
        Ok(change)
    }

    /// The second step: interfaces that gain bound rules, allow-list
    /// entries, rule entries written then deleted, allow-list entries and
    /// services that leave, interfaces that lose bound rules. On a failure
    /// everything written since [`Self::stage_rules`] is undone.
    pub fn commit_rules(&mut self, d: &RuleDiff, mut change: RuleChange) -> Result<()> {
        match self.write_rules(d, &mut change) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.abandon_rules(change);
                Err(e)
            }
        }
    }

    fn write_rules(&mut self, d: &RuleDiff, change: &mut RuleChange) -> Result<()> {
        let u = &mut change.undo;
        for (ifindex, _) in d.bound.iter().filter(|(_, on)| *on) {
            let was = self.set_iface_flag(*ifindex, abi::IFACE_F_BOUND_RULES, true)?;
            u.push(Undo::Iface(*ifindex, was));
        }
        {
            let mut allow = self.allow_trie()?;
            for (p, k) in &d.src_put {
                allow.insert(&Key::new(*p, *k), 1, 0).map_err(map_err(abi::MAP_SRC_ALLOW))?;
                u.push(Undo::Src(*p, *k, false));
            }
        }
        {
            let mut rules = self.rule_trie()?;
            for (p, k, t, was) in &d.put {
                rules.insert(&Key::new(*p, *k), t, 0).map_err(map_err(abi::MAP_RULES))?;
                u.push(Undo::Rule(*p, *k, *was));
            }
            crate::faults::check("rules_in_place")?;
            for (p, k, t) in &d.gone {
                rules.remove(&Key::new(*p, *k)).map_err(map_err(abi::MAP_RULES))?;
                u.push(Undo::Rule(*p, *k, Some(*t)));
            }
        }
        {
            let mut allow = self.allow_trie()?;
            for (p, k) in &d.src_gone {
                allow.remove(&Key::new(*p, *k)).map_err(map_err(abi::MAP_SRC_ALLOW))?;
                u.push(Undo::Src(*p, *k, true));
            }
        }
        {
            let mut services = self.services()?;
            for (h, svc) in &d.services_gone {
                services.remove(h).map_err(map_err(abi::MAP_SERVICES))?;
                u.push(Undo::Service(*h, Some(*svc)));
            }
        }
        for (ifindex, _) in d.bound.iter().filter(|(_, on)| !*on) {
            let was = self.set_iface_flag(*ifindex, abi::IFACE_F_BOUND_RULES, false)?;
            u.push(Undo::Iface(*ifindex, was));
        }
        Ok(())
    }

    /// Undoes a change's writes, the last first; a write that cannot be
    /// undone is logged (the tables then hold a mix: the error the caller
    /// reports says the change failed).
    pub fn abandon_rules(&mut self, change: RuleChange) {
        for u in change.undo.into_iter().rev() {
            let r = match &u {
                Undo::Service(h, svc) => self.services().and_then(|mut m| {
                    match svc {
                        Some(s) => m.insert(h, s, 0),
                        None => m.remove(h),
                    }
                    .map_err(map_err(abi::MAP_SERVICES))
                }),
                Undo::Rule(p, k, t) => self.rule_trie().and_then(|mut m| {
                    match t {
                        Some(t) => m.insert(&Key::new(*p, *k), t, 0),
                        None => m.remove(&Key::new(*p, *k)),
                    }
                    .map_err(map_err(abi::MAP_RULES))
                }),
                Undo::Src(p, k, present) => self.allow_trie().and_then(|mut m| {
                    if *present {
                        m.insert(&Key::new(*p, *k), 1, 0)
                    } else {
                        m.remove(&Key::new(*p, *k))
                    }
                    .map_err(map_err(abi::MAP_SRC_ALLOW))
                }),
                Undo::Iface(i, info) => self
                    .ifaces()
                    .and_then(|mut m| m.insert(i, info, 0).map_err(map_err(abi::MAP_IFACES))),
            };
            if let Err(e) = r {
                log::error!("undoing a rule change: {u:?}: {e}");
            }
        }
    }

    fn rule_trie(&mut self) -> Result<LpmTrie<&mut MapData, RuleKey, RuleTarget>> {
        LpmTrie::try_from(self.map_mut(abi::MAP_RULES)?).map_err(map_err(abi::MAP_RULES))
    }

    fn allow_trie(&mut self) -> Result<LpmTrie<&mut MapData, SrcKey, u8>> {
        LpmTrie::try_from(self.map_mut(abi::MAP_SRC_ALLOW)?).map_err(map_err(abi::MAP_SRC_ALLOW))
    }

    fn services(&mut self) -> Result<HashMap<&mut MapData, u32, Service>> {
        HashMap::try_from(self.map_mut(abi::MAP_SERVICES)?).map_err(map_err(abi::MAP_SERVICES))
    }

    fn ifaces(&mut self) -> Result<HashMap<&mut MapData, u32, IfaceInfo>> {
        HashMap::try_from(self.map_mut(abi::MAP_IFACES)?).map_err(map_err(abi::MAP_IFACES))
    }
}
