//! What a rule change does to the running datapath's rule tables, when
//! they can take it in place: entries to write and to delete, each with
//! what it replaces, so that a failed update can be undone. A change the
//! running tables cannot take in place (other interfaces or limits, or a
//! balanced rule that stays but moves in the Maglev pool) needs a new
//! datapath (`None`).

use std::{collections::HashMap, ops::Range};

use forwarder_common::abi::{RuleKey, RuleTarget, Service, SrcKey};

use super::Compiled;

/// The in-place change from one compiled rule set to the next.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RuleDiff {
    /// Balanced rules that arrive: their regions of the Maglev pool and
    /// backends (unused by the running rules) are written, then the
    /// service that points at them, before any rule entry names them.
    pub services_new: Vec<(u32, Service)>,
    /// Rule trie entries to write, with the target each replaces (`None`:
    /// a new key).
    pub put: Vec<(u32, RuleKey, RuleTarget, Option<RuleTarget>)>,
    /// Rule trie entries to delete, with their target.
    pub gone: Vec<(u32, RuleKey, RuleTarget)>,
    /// Allow-list entries to add, then to delete.
    pub src_put: Vec<(u32, SrcKey)>,
    pub src_gone: Vec<(u32, SrcKey)>,
    /// Balanced rules that leave: their services, deleted once no rule
    /// entry names them.
    pub services_gone: Vec<(u32, Service)>,
    /// Interfaces that gain (`true`) or lose rules bound to them.
    pub bound: Vec<(u32, bool)>,
}

impl RuleDiff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The slots `s` takes in the Maglev pool (both of its tables) and in
/// the backends array.
fn regions(s: &Service) -> (Range<u32>, Range<u32>) {
    (s.table_off..s.table_off + 2 * s.table_len, s.backends_off..s.backends_off + s.backends)
}

fn overlap(a: &Range<u32>, b: &Range<u32>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The change from `old` (what the running tables hold) to `new`, or
/// `None` when it cannot be made in place.
pub fn rule_diff(old: &Compiled, new: &Compiled) -> Option<RuleDiff> {
    if old.ifaces != new.ifaces
        || old.snat_ports != new.snat_ports
        || old.conntrack != new.conntrack
        || old.audit != new.audit
        || old.new_conn != new.new_conn
    {
        return None;
    }
    let mut d = RuleDiff::default();
    // Services: a rule that stays keeps its region, its table and its
    // backends exactly; one that arrives takes slots no running rule has.
    let old_svc: HashMap<u32, Service> = old.services.entries.iter().copied().collect();
    let region = |c: &Compiled, s: &Service| {
        let (t, b) = regions(s);
        (
            c.services.maglev.get(t.start as usize..t.end as usize).map(<[u32]>::to_vec),
            c.services.backends.get(b.start as usize..b.end as usize).map(<[_]>::to_vec),
        )
    };
    for (handle, s) in &new.services.entries {
        match old_svc.get(handle) {
            Some(o) if o == s && region(old, o) == region(new, s) => {}
            Some(_) => return None,
            None => {
                let (t, b) = regions(s);
                if old.services.entries.iter().any(|(_, o)| {
                    let (ot, ob) = regions(o);
                    overlap(&t, &ot) || overlap(&b, &ob)
                }) {
                    return None;
                }
                d.services_new.push((*handle, *s));
            }
        }
    }
    let new_handles: Vec<u32> = new.services.entries.iter().map(|(h, _)| *h).collect();
    d.services_gone =
        old.services.entries.iter().filter(|(h, _)| !new_handles.contains(h)).copied().collect();
    // Rule trie entries, by key.
    let old_rules: HashMap<(u32, RuleKey), RuleTarget> =
        old.rules.iter().map(|(p, k, t)| ((*p, *k), *t)).collect();
    let new_rules: HashMap<(u32, RuleKey), RuleTarget> =
        new.rules.iter().map(|(p, k, t)| ((*p, *k), *t)).collect();
    for (p, k, t) in &new.rules {
        let before = old_rules.get(&(*p, *k)).copied();
        if before != Some(*t) {
            d.put.push((*p, *k, *t, before));
        }
    }
    for (p, k, t) in &old.rules {
        if !new_rules.contains_key(&(*p, *k)) {
            d.gone.push((*p, *k, *t));
        }
    }
    d.src_put = new.sources.iter().filter(|s| !old.sources.contains(s)).copied().collect();
    d.src_gone = old.sources.iter().filter(|s| !new.sources.contains(s)).copied().collect();
    for i in &new.ifaces {
        let bound = |c: &Compiled| c.rules.iter().any(|(_, k, _)| k.ifindex == i.ifindex);
        if bound(old) != bound(new) {
            d.bound.push((i.ifindex, bound(new)));
        }
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        error::{Error, Result},
        plan::Host,
        settings::{Rule, Settings},
    };

    /// `pub0` (2) public, `int0` (3) internal.
    struct TwoPorts;

    impl Host for TwoPorts {
        fn index(&self, n: &str) -> Result<u32> {
            match n {
                "pub0" => Ok(2),
                "int0" => Ok(3),
                _ => Err(Error::UnknownInterface(n.into())),
            }
        }
        fn driver(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn compiled(rules: &[&str]) -> Compiled {
        let mut s = Settings {
            public: vec!["pub0".into()],
            internal: vec!["int0".into()],
            rules: rules.iter().map(|r| Rule::parse_spec(r).unwrap()).collect(),
            ..Default::default()
        };
        s.assign_handles(None).unwrap();
        s.compile(&TwoPorts).unwrap()
    }

    #[test]
    fn an_added_rule_is_put_and_a_removed_one_deleted() {
        let a = compiled(&["tcp:8080=10.0.0.1:80"]);
        let b = compiled(&["tcp:8080=10.0.0.1:80", "udp:5000-5003=10.0.0.2:53"]);
        let d = rule_diff(&a, &b).unwrap();
        assert!(
            !d.put.is_empty()
                && d.put
                    .iter()
                    .all(|(_, k, t, was)| { k.proto == 17 && t.rule_id == 2 && was.is_none() })
        );
        assert!(d.gone.is_empty() && d.services_new.is_empty());
        let back = rule_diff(&b, &a).unwrap();
        assert_eq!(back.gone.len(), d.put.len());
        assert!(back.put.is_empty());
        assert!(rule_diff(&a, &a).unwrap().is_empty());
        // A rule bound to pub0 sets its flag; its source list arrives.
        let c = compiled(&["tcp:8080=10.0.0.1:80", "udp:53@pub0=10.0.0.2,src=10.9.0.0/16"]);
        let d = rule_diff(&a, &c).unwrap();
        assert_eq!(d.bound, [(2, true)]);
        assert_eq!(d.src_put.len(), 1);
        let back = rule_diff(&c, &a).unwrap();
        assert_eq!((back.bound.as_slice(), back.src_gone.len()), ([(2, false)].as_slice(), 1));
    }

    #[test]
    fn a_balanced_rule_arrives_in_free_slots_and_one_that_moves_needs_a_new_datapath() {
        let one = "tcp:8080=10.0.0.1:80+10.0.0.2:80";
        let two = "tcp:8081=10.0.0.3:80+10.0.0.4:80";
        let a = compiled(&[one]);
        let b = compiled(&[one, two]);
        let d = rule_diff(&a, &b).unwrap();
        assert_eq!(d.services_new.len(), 1);
        assert_eq!(d.services_new[0].0, 2);
        // The last one leaves: the first keeps its region.
        let back = rule_diff(&b, &a).unwrap();
        assert_eq!(back.services_gone.iter().map(|(h, _)| *h).collect::<Vec<_>>(), [2]);
        // The first leaves: the second would move to its slots while live.
        let mut c = compiled(&[two]);
        c.rules.iter_mut().for_each(|(_, _, t)| t.rule_id = 2);
        c.services.entries.iter_mut().for_each(|(h, _)| *h = 2);
        assert_eq!(rule_diff(&b, &c), None);
    }

    #[test]
    fn other_limits_need_a_new_datapath() {
        let a = compiled(&["tcp:8080=10.0.0.1:80"]);
        let mut b = compiled(&["tcp:8080=10.0.0.1:80"]);
        b.snat_ports.0 += 1;
        assert_eq!(rule_diff(&a, &b), None);
    }
}
