//! The backends of balanced rules (several backends, or a health check):
//! their checks (one tokio task per checked backend, outcomes into the
//! loop), drain and weight, and the Maglev tables that follow them.
//!
//! A backend takes new connections when it is not drained, has a weight
//! above 0 and, if its rule is checked, is up. A change rewrites that
//! rule's table at once (the spare half of its region, then the service
//! pointed at it); a rewrite that fails is logged, counted and retried by
//! the next tick.

use std::net::Ipv4Addr;

use forwarder_common::abi;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    datapath::Datapath,
    health::{Outcome, State, Tracker, probe},
    plan::{Compiled, maglev_table},
    settings::{Health, Proto, Rule, Settings},
};

/// One backend of a balanced rule.
#[derive(Clone, Debug)]
pub struct Member {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub drained: bool,
    /// `None`: the rule is not checked.
    pub tracker: Option<Tracker>,
}

impl Balanced {
    /// Where member `m` counts its packets in the datapath.
    pub fn stats_key(&self, m: &Member) -> abi::BackendKey {
        abi::BackendKey {
            rule: self.handle,
            addr: m.addr.octets(),
            port: m.port.to_be_bytes(),
            _pad: [0; 2],
        }
    }
}

impl Member {
    /// What is known of it, as the datapath keeps it (`BACKEND_WAS_*`).
    fn known(&self) -> u32 {
        let health = match self.tracker.as_ref().map(|t| t.state) {
            Some(State::Up) => abi::BACKEND_WAS_UP,
            Some(State::Down) => abi::BACKEND_WAS_DOWN,
            Some(State::Pending) | None => 0,
        };
        health | if self.drained { abi::BACKEND_WAS_DRAINED } else { 0 }
    }

    /// The weight the table gives it now.
    pub fn effective(&self) -> u32 {
        let down = self.tracker.as_ref().is_some_and(|t| t.state != State::Up);
        if self.drained || down { 0 } else { self.weight }
    }

    /// `up`, `down`, `pending` or `draining`.
    pub fn state(&self) -> &'static str {
        if self.drained {
            return "draining";
        }
        self.tracker.as_ref().map_or("up", |t| t.state.name())
    }
}

/// A balanced rule: its handle, backends in the rule's order, its check.
#[derive(Debug)]
pub struct Balanced {
    pub handle: u32,
    /// What identifies the rule across a reload: protocol, first public
    /// port, interface.
    key: (Proto, u16, Option<String>),
    pub members: Vec<Member>,
    health: Option<Health>,
    /// The table in the datapath lags the members (a rewrite failed).
    dirty: bool,
}

/// The outcome of one check.
pub(super) struct Checked {
    generation: u64,
    rule: usize,
    member: usize,
    outcome: Outcome,
}

/// Every balanced rule, the running checks and where their outcomes
/// arrive.
pub struct Pool {
    pub rules: Vec<Balanced>,
    tx: mpsc::Sender<Checked>,
    pub(super) rx: mpsc::Receiver<Checked>,
    tasks: Vec<JoinHandle<()>>,
    /// Outcomes of checks started before a reload are ignored.
    generation: u64,
}

fn key_of(r: &Rule) -> (Proto, u16, Option<String>) {
    (r.proto, r.ports.lo, r.interface.clone())
}

impl Pool {
    /// The balanced rules of `compiled`; a backend also in `old` (same
    /// rule, address and port) keeps its state, drain included.
    pub fn new(settings: &Settings, compiled: &Compiled, old: Option<&Self>) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let mut rules = Vec::new();
        for (handle, _) in &compiled.services.entries {
            let Some(r) = settings.rule(*handle) else { continue };
            let key = key_of(r);
            let before = old.and_then(|o| o.rules.iter().find(|b| b.key == key));
            let members = r
                .backends
                .iter()
                .map(|b| {
                    let port = b.ports.lo;
                    let prev = before.and_then(|p| {
                        p.members.iter().find(|m| m.addr == b.addr && m.port == port)
                    });
                    let tracker = r
                        .health
                        .as_ref()
                        .map(|_| prev.and_then(|m| m.tracker.clone()).unwrap_or_default());
                    Member {
                        addr: b.addr,
                        port,
                        weight: b.weight,
                        drained: prev.is_some_and(|m| m.drained),
                        tracker,
                    }
                })
                .collect();
            rules.push(Balanced {
                handle: *handle,
                key,
                members,
                health: r.health.clone(),
                dirty: true,
            });
        }
        let generation = old.map_or(0, |o| o.generation + 1);
        Self { rules, tx, rx, tasks: Vec::new(), generation }
    }

    /// Takes up what an earlier daemon left of each backend in the
    /// datapath it adopted: a checked backend it had up starts up (no
    /// refusals until the first check of this daemon answers), one it had
    /// down starts down (it needs `rise` successes); a drained one stays
    /// drained. A backend the datapath knows nothing of starts as
    /// [`Pool::new`] has it. For a daemon that starts, not a reload.
    pub fn recall(&mut self, dp: &Datapath) -> anyhow::Result<()> {
        let keys: Vec<_> = self.members().map(|(b, m)| b.stats_key(m)).collect();
        let mut known = dp.backends_known(&keys)?.into_iter();
        for r in &mut self.rules {
            for m in &mut r.members {
                let bits = known.next().unwrap_or(0);
                if let Some(t) = m.tracker.as_mut() {
                    if bits & abi::BACKEND_WAS_UP != 0 {
                        *t = Tracker::up();
                    } else if bits & abi::BACKEND_WAS_DOWN != 0 {
                        *t = Tracker::down();
                    }
                }
                m.drained |= bits & abi::BACKEND_WAS_DRAINED != 0;
                r.dirty = true;
            }
        }
        Ok(())
    }

    /// Starts one task per checked backend: a check at once, then one per
    /// interval.
    pub fn start_checks(&mut self) {
        for (ri, r) in self.rules.iter().enumerate() {
            let Some(h) = r.health.clone() else { continue };
            for (mi, m) in r.members.iter().enumerate() {
                let (tx, h, addr, port, generation) =
                    (self.tx.clone(), h.clone(), m.addr, m.port, self.generation);
                self.tasks.push(tokio::spawn(async move {
                    let every = std::time::Duration::from_secs(u64::from(h.interval));
                    let timeout = std::time::Duration::from_secs(u64::from(h.timeout));
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let outcome = probe::run(&h.check, addr, port, timeout).await;
                        let c = Checked { generation, rule: ri, member: mi, outcome };
                        if tx.send(c).await.is_err() {
                            return;
                        }
                    }
                }));
            }
        }
    }

    /// Every member of every balanced rule, with its rule.
    pub fn members(&self) -> impl Iterator<Item = (&Balanced, &Member)> {
        self.rules.iter().flat_map(|b| b.members.iter().map(move |m| (b, m)))
    }

    /// Stops every check (a reload starts the new pool's).
    pub fn stop_checks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Takes one outcome: the member's new state, said in the log and the
    /// audit trail, when it changed (the rule's table is then stale); the
    /// member when it went down from up: `(rule handle, addr, port)`.
    pub(super) fn observe(
        &mut self,
        checked: Checked,
        say: &mut dyn FnMut(log::Level, String),
    ) -> Option<(u32, Ipv4Addr, u16)> {
        if checked.generation != self.generation {
            return None;
        }
        let rule = self.rules.get_mut(checked.rule)?;
        let health = rule.health.clone()?;
        let member = rule.members.get_mut(checked.member)?;
        let what = checked.outcome.what.clone();
        let tracker = member.tracker.as_mut()?;
        let was = tracker.state;
        let state = tracker.observe(checked.outcome, health.rise, health.fall)?;
        rule.dirty = true;
        let (addr, port, id) = (member.addr, member.port, rule.handle);
        match state {
            State::Up => {
                say(log::Level::Info, format!("rule {id}: backend {addr}:{port} is up ({what})"));
            }
            _ => say(
                log::Level::Warn,
                format!(
                    "rule {id}: backend {addr}:{port} is down ({what}; {} check failures in a row); new connections go to the others",
                    health.fall
                ),
            ),
        }
        if rule.members.iter().all(|m| m.effective() == 0) {
            say(
                log::Level::Error,
                format!(
                    "rule {id}: no backend can take new connections: they are refused (TCP reset, UDP ICMP port unreachable; drop_no_backend) until one is up"
                ),
            );
        }
        (was == State::Up && state == State::Down).then_some((id, addr, port))
    }

    /// Rewrites the tables that lag their members; the first error (the
    /// rest stay stale and are retried).
    pub fn apply(
        &mut self,
        dp: &mut Datapath,
        compiled: &Compiled,
        settings: &Settings,
    ) -> anyhow::Result<()> {
        for r in self.rules.iter_mut().filter(|r| r.dirty) {
            let base = compiled
                .services
                .of(r.handle)
                .ok_or_else(|| anyhow::anyhow!("rule {} has no table region", r.handle))?;
            let backends = &settings
                .rule(r.handle)
                .ok_or_else(|| anyhow::anyhow!("rule {} is not in the settings", r.handle))?
                .backends;
            let table = maglev_table(backends, base.table_len, |i| r.members[i].effective());
            dp.replace_table(r.handle, base, table.as_deref())?;
            // What a daemon that adopts this datapath starts from.
            for m in &r.members {
                dp.remember_backend(&r.stats_key(m), m.known())?;
            }
            r.dirty = false;
        }
        Ok(())
    }

    /// The members matching `addr:port` (of rule `rule` only, if given):
    /// `(rule index, member index)`.
    pub fn find(&self, addr: Ipv4Addr, port: u16, rule: Option<u32>) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (ri, r) in self.rules.iter().enumerate() {
            if rule.is_some_and(|h| h != r.handle) {
                continue;
            }
            for (mi, m) in r.members.iter().enumerate() {
                if m.addr == addr && m.port == port {
                    out.push((ri, mi));
                }
            }
        }
        out
    }

    /// Drains (or undrains) a member; its table is then stale.
    pub fn set_drained(&mut self, at: (usize, usize), on: bool) {
        let r = &mut self.rules[at.0];
        r.members[at.1].drained = on;
        r.dirty = true;
    }

    /// Gives a member another weight; its table is then stale.
    pub fn set_weight(&mut self, at: (usize, usize), weight: u32) {
        let r = &mut self.rules[at.0];
        r.members[at.1].weight = weight;
        r.dirty = true;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop_checks();
    }
}
