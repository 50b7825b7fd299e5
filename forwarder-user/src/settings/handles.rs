//! Rule handles, as nftables has them: a number given to a rule when it
//! is added that never changes while the rule exists. Deleting a rule
//! leaves every other rule's handle (and with it its counters, its
//! connections and its metrics) as it was.
//!
//! A handle is also the rule's index into the datapath's per-rule tables
//! (counters, source lists, Maglev services), so handles run from 1 to
//! [`MAX_HANDLE`].

use std::collections::HashSet;

use forwarder_common::abi;

use super::model::{Rule, Settings};
use crate::error::{Error, Result};

/// The highest handle (and so the most rules one daemon holds).
pub const MAX_HANDLE: u32 = abi::MAX_RULES - 1;

/// Whether `a` and `b` map the same traffic the same way (handle and
/// origin aside).
fn same_mapping(a: &Rule, b: &Rule) -> bool {
    let plain = |r: &Rule| Rule { handle: 0, origin: String::new(), ..r.clone() };
    plain(a) == plain(b)
}

impl Settings {
    /// Gives every rule without a handle one, after checking the handles
    /// given (from a file that `forwarder save` wrote, say): each within
    /// 1-[`MAX_HANDLE`] and used once.
    ///
    /// A rule without a handle keeps the handle of the same rule in
    /// `running` (a reload of a hand-written file keeps the handles of the
    /// rules it did not change); any other gets the next handle after the
    /// highest given so far, here or in `running` (never one a rule
    /// deleted since had, until the handles wrap round to the lowest free
    /// one).
    pub fn assign_handles(&mut self, running: Option<&Settings>) -> Result<()> {
        if self.rules.len() > MAX_HANDLE as usize {
            return Err(Error::TooManyRules(self.rules.len()));
        }
        let mut taken: HashSet<u32> = HashSet::new();
        for r in self.rules.iter().filter(|r| r.handle != 0) {
            if r.handle > MAX_HANDLE {
                return Err(Error::Rule {
                    spec: r.origin.clone(),
                    why: format!("handle {} is out of range 1-{MAX_HANDLE}", r.handle),
                });
            }
            if !taken.insert(r.handle) {
                let first = self
                    .rules
                    .iter()
                    .find(|o| o.handle == r.handle)
                    .map_or_else(String::new, |o| {
                        format!(": rule `{o}` ({}) has it already", o.origin)
                    });
                return Err(Error::Rule {
                    spec: r.origin.clone(),
                    why: format!("handle {} is given twice{first}", r.handle),
                });
            }
        }
        let mut last = self.rules.iter().map(|r| r.handle).max().unwrap_or(0).max(self.last_handle);
        if let Some(run) = running {
            last = last.max(run.last_handle);
            for i in 0..self.rules.len() {
                if self.rules[i].handle != 0 {
                    continue;
                }
                let inherited = run
                    .rules
                    .iter()
                    .find(|o| same_mapping(o, &self.rules[i]) && !taken.contains(&o.handle))
                    .map(|o| o.handle);
                if let Some(h) = inherited {
                    taken.insert(h);
                    self.rules[i].handle = h;
                }
            }
        }
        for r in self.rules.iter_mut().filter(|r| r.handle == 0) {
            // The next free one after `last`, wrapping round to 1; there
            // is one (fewer rules than handles).
            let h = (1..=MAX_HANDLE)
                .map(|k| (last + k - 1) % MAX_HANDLE + 1)
                .find(|h| !taken.contains(h))
                .ok_or(Error::TooManyRules(taken.len() + 1))?;
            taken.insert(h);
            r.handle = h;
            last = h;
        }
        self.last_handle = last;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(specs: &[&str]) -> Settings {
        let mut s = Settings::default();
        for spec in specs {
            s.rules.push(Rule::parse_spec(spec).unwrap());
        }
        s
    }

    fn handles(s: &Settings) -> Vec<u32> {
        s.rules.iter().map(|r| r.handle).collect()
    }

    #[test]
    fn rules_get_handles_in_order_and_keep_them_when_one_goes() {
        let mut s = settings(&["tcp:1=10.0.0.1", "tcp:2=10.0.0.2", "tcp:3=10.0.0.3"]);
        s.assign_handles(None).unwrap();
        assert_eq!(handles(&s), [1, 2, 3]);
        // `rule del 2`, then `rule add`: the others keep theirs, and the
        // new rule does not get the deleted rule's handle.
        let mut next = s.clone();
        next.rules.remove(1);
        next.rules.push(Rule::parse_spec("tcp:4=10.0.0.4").unwrap());
        next.assign_handles(Some(&s)).unwrap();
        assert_eq!(handles(&next), [1, 3, 4]);
        assert_eq!(next.rule(3).unwrap().to_string(), "tcp:3=10.0.0.3:3");
        assert!(next.rule(2).is_none());
    }

    #[test]
    fn a_reload_without_handles_keeps_those_of_unchanged_rules() {
        let mut s = settings(&["tcp:1=10.0.0.1", "tcp:2=10.0.0.2", "tcp:3=10.0.0.3"]);
        s.assign_handles(None).unwrap();
        // The file as re-read: a rule inserted first, one changed.
        let mut next = settings(&["udp:9=10.0.0.9", "tcp:1=10.0.0.1", "tcp:2=10.0.0.7"]);
        next.rules.push(Rule::parse_spec("tcp:3=10.0.0.3").unwrap());
        next.assign_handles(Some(&s)).unwrap();
        assert_eq!(handles(&next), [4, 1, 5, 3]);
    }

    #[test]
    fn given_handles_are_kept_and_checked() {
        let mut s = settings(&["tcp:1=10.0.0.1", "tcp:2=10.0.0.2", "tcp:3=10.0.0.3"]);
        s.rules[0].handle = 7;
        s.rules[2].handle = 2;
        s.assign_handles(None).unwrap();
        assert_eq!(handles(&s), [7, 8, 2]);

        let mut twice = settings(&["tcp:1=10.0.0.1", "tcp:2=10.0.0.2"]);
        twice.rules[0].origin = "a.toml:3".into();
        twice.rules[1].origin = "a.toml:9".into();
        twice.rules[0].handle = 5;
        twice.rules[1].handle = 5;
        let e = twice.assign_handles(None).unwrap_err().to_string();
        assert!(e.contains("a.toml:9") && e.contains("handle 5 is given twice"), "{e}");
        assert!(e.contains("tcp:1=10.0.0.1:1` (a.toml:3)"), "{e}");

        let mut high = settings(&["tcp:1=10.0.0.1"]);
        high.rules[0].handle = MAX_HANDLE + 1;
        let e = high.assign_handles(None).unwrap_err().to_string();
        assert!(e.contains(&format!("handle {} is out of range 1-{MAX_HANDLE}", MAX_HANDLE + 1)));
    }

    #[test]
    fn a_file_gives_handles_and_bad_ones_are_refused_with_their_line() {
        let path = std::path::Path::new("f.toml");
        let rule = |h: &str| format!("[[rule]]\nproto = \"tcp\"\nport = 1{h}\nto = \"10.0.0.1\"\n");
        let mut s = Settings::default();
        let text = format!("{}\n{}", rule("\nhandle = 9"), rule("1"));
        s.merge_toml(path, &text).unwrap();
        s.assign_handles(None).unwrap();
        assert_eq!(handles(&s), [9, 10]);
        for (h, why) in
            [("0", "line 1: rule: handle 0 is out of range 1-10239"), ("-3", "handle -3")]
        {
            let e = Settings::default()
                .merge_toml(path, &rule(&format!("\nhandle = {h}")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{e}");
        }
        let mut twice = Settings::default();
        twice
            .merge_toml(path, &format!("{}\n{}", rule("\nhandle = 2"), rule("1\nhandle = 2")))
            .unwrap();
        let e = twice.assign_handles(None).unwrap_err().to_string();
        assert!(e.contains("f.toml:7") && e.contains("handle 2 is given twice"), "{e}");
    }

    #[test]
    fn handles_wrap_round_to_the_lowest_free_one() {
        let mut s = settings(&["tcp:1=10.0.0.1", "tcp:2=10.0.0.2"]);
        s.rules[0].handle = MAX_HANDLE;
        s.assign_handles(None).unwrap();
        assert_eq!(handles(&s), [MAX_HANDLE, 1]);
        let too_many = Settings {
            rules: vec![Rule::parse_spec("tcp:1=10.0.0.1").unwrap(); MAX_HANDLE as usize + 1],
            ..Settings::default()
        };
        assert!(matches!(too_many.clone().assign_handles(None), Err(Error::TooManyRules(_))));
    }
}
