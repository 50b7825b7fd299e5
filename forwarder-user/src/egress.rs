//! Which egress interfaces XDP transmits into, and which ones it leaves to
//! TC: never a silent drop.
//!
//! XDP sends a translated packet out through the devmap (`FWD_TX_PORTS`);
//! an egress that is not in it makes XDP hand the packet to the TC
//! program, which sends it through the kernel's skb path (slower, but it
//! works on any device). An egress is in the devmap only while
//!
//! - the kernel says it takes XDP frames (its `xdp_features` include
//!   `NDO_XMIT`, see [`crate::netdev`]): a veth does only while its peer
//!   has NAPI (an XDP program, or GRO on), a NIC driver only while it has
//!   its XDP transmit rings; and
//! - the kernel has not refused frames redirected into it lately (the
//!   `xdp_redirect_err` tracepoint, counted per egress by the datapath):
//!   an egress that collects refusals goes to TC for a while (30 s, then
//!   doubling up to 10 min while it keeps failing), then XDP is tried
//!   again.
//!
//! [`Egress::step`] is the decision, a plain function of what was read;
//! the daemon reads, steps every egress once a second, applies the
//! membership and logs the events.

use serde::{Deserialize, Serialize};

/// What the kernel says about transmitting XDP frames into a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// `NDO_XMIT` set.
    Takes,
    /// `NDO_XMIT` not set: the kernel would drop what XDP redirects there.
    Refuses,
    /// The kernel does not report XDP features (before 6.3): try, and
    /// watch the refusals.
    Unknown,
}

impl Capability {
    pub const fn from_features(f: Option<u64>) -> Self {
        match f {
            Some(f) if crate::netdev::takes_xdp_frames(f) => Self::Takes,
            Some(_) => Self::Refuses,
            None => Self::Unknown,
        }
    }
}

/// First time an egress goes to TC after refusals, in seconds.
pub const QUARANTINE_FIRST_S: u64 = 30;
/// Longest time between two tries.
pub const QUARANTINE_MAX_S: u64 = 600;

/// One egress's state.
#[derive(Clone, Debug)]
pub struct Egress {
    pub iface: String,
    pub ifindex: u32,
    /// The driver (`veth`, …), for the advice in messages.
    pub driver: Option<String>,
    /// In the devmap: XDP transmits into it.
    pub xdp: bool,
    pub cap: Capability,
    /// Refused frames counted so far (the datapath's total).
    pub refused: u64,
    /// The last refusal's errno (negative), 0 if none.
    pub last_err: i32,
    /// After refusals: TC until this time (seconds on the daemon's clock),
    /// and the length of that spell.
    pub quarantine: Option<(u64, u64)>,
    /// Times it went to TC after refusals.
    pub fallbacks: u64,
}

/// What changed in one step (for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// XDP transmits into it (again).
    ToXdp { iface: String, why: String },
    /// Its packets go through TC from now on.
    ToTc { iface: String, why: String },
}

impl Event {
    pub fn text(&self) -> String {
        match self {
            Self::ToXdp { iface, why } => format!("{iface}: XDP transmits into it ({why})"),
            Self::ToTc { iface, why } => format!(
                "{iface}: XDP cannot transmit into it: {why}; packets towards {iface} go through TC (slower, nothing lost)"
            ),
        }
    }
}

/// Names an errno the way the kernel's headers do.
pub fn errno_name(e: i32) -> String {
    match -e {
        95 => "EOPNOTSUPP (the device takes no XDP frames)".into(),
        6 => "ENXIO (no XDP transmit queue)".into(),
        100 => "ENETDOWN (the device is down)".into(),
        90 => "EMSGSIZE (frame larger than the device's MTU)".into(),
        22 => "EINVAL".into(),
        0 => "no error".into(),
        n => format!("errno {n}"),
    }
}

impl Egress {
    /// A managed interface, not yet in the devmap.
    pub fn new(iface: &str, ifindex: u32, driver: Option<String>) -> Self {
        Self {
            iface: iface.to_string(),
            ifindex,
            driver,
            xdp: false,
            cap: Capability::Unknown,
            refused: 0,
            last_err: 0,
            quarantine: None,
            fallbacks: 0,
        }
    }

    /// What to do to make a device take XDP frames, for messages.
    fn advice(&self) -> String {
        if self.driver.as_deref() == Some("veth") {
            "its veth peer has no XDP program and GRO off (for XDP towards it: `ethtool -K PEER gro on` in the peer's namespace)".to_string()
        } else {
            "its driver takes no redirected XDP frames now (see `forwarder check`)".into()
        }
    }

    /// One decision: `cap` as the kernel says now, `refused` the datapath's
    /// count of refused frames so far (and `last_err`), `now_s` the
    /// daemon's clock in seconds. Updates `self.xdp` and says what changed.
    pub fn step(
        &mut self,
        cap: Capability,
        refused: u64,
        last_err: i32,
        now_s: u64,
    ) -> Option<Event> {
        self.cap = cap;
        let was = self.xdp;
        let new_refusals = refused.saturating_sub(self.refused);
        self.refused = refused;
        if last_err != 0 {
            self.last_err = last_err;
        }
        if new_refusals > 0 && was {
            // Refused while we sent: to TC, for longer each time in a row.
            let spell =
                self.quarantine.map_or(QUARANTINE_FIRST_S, |(_, s)| (s * 2).min(QUARANTINE_MAX_S));
            self.quarantine = Some((now_s + spell, spell));
            self.fallbacks += 1;
            self.xdp = false;
            return Some(Event::ToTc {
                iface: self.iface.clone(),
                why: format!(
                    "the kernel refused {new_refusals} frame(s) XDP redirected into it ({}); XDP is tried again in {spell} s",
                    errno_name(self.last_err)
                ),
            });
        }
        let quarantined = self.quarantine.is_some_and(|(until, _)| now_s < until);
        let want = !quarantined && cap != Capability::Refuses;
        self.xdp = want;
        if want == was {
            return None;
        }
        Some(if want {
            let why = match (cap, self.quarantine.is_some()) {
                (_, true) => "trying again after refusals".to_string(),
                (Capability::Unknown, _) => {
                    "the kernel does not say whether it takes XDP frames; refusals are watched"
                        .to_string()
                }
                _ => "the device takes redirected XDP frames".to_string(),
            };
            Event::ToXdp { iface: self.iface.clone(), why }
        } else {
            Event::ToTc { iface: self.iface.clone(), why: self.advice() }
        })
    }

    /// Keeps a spell after refusals only while they go on: a try that
    /// sent without refusals for a whole spell clears it.
    pub fn settle(&mut self, now_s: u64) {
        if let (true, Some((until, spell))) = (self.xdp, self.quarantine)
            && now_s >= until + spell
        {
            self.quarantine = None;
        }
    }

    pub fn status(&self, xdp_in_use: bool) -> EgressStatus {
        let why = if !xdp_in_use {
            "no interface runs XDP".to_string()
        } else if self.xdp {
            match self.cap {
                Capability::Unknown => {
                    "XDP features not reported by the kernel; refusals watched".into()
                }
                _ => "takes redirected XDP frames".into(),
            }
        } else if self.quarantine.is_some() {
            format!("refused {} frame(s), last {}", self.refused, errno_name(self.last_err))
        } else {
            self.advice()
        };
        EgressStatus {
            iface: self.iface.clone(),
            ifindex: self.ifindex,
            xdp: xdp_in_use && self.xdp,
            why,
            refused_frames: self.refused,
            fallbacks: self.fallbacks,
        }
    }
}

/// How one egress is served, as `forwarder stats` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressStatus {
    pub iface: String,
    pub ifindex: u32,
    /// XDP transmits into it; else its packets go through TC.
    pub xdp: bool,
    /// Why, in words.
    pub why: String,
    /// Frames the kernel refused after XDP redirected them into it.
    pub refused_frames: u64,
    /// Times it went to TC after refusals.
    pub fallbacks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth() -> Egress {
        Egress::new("int0", 3, Some("veth".into()))
    }

    #[test]
    fn capable_devices_take_xdp_and_incapable_ones_go_to_tc_with_advice() {
        let mut e = veth();
        let ev = e.step(Capability::Takes, 0, 0, 0).unwrap();
        assert!(matches!(&ev, Event::ToXdp { .. }) && e.xdp, "{ev:?}");
        assert_eq!(e.step(Capability::Takes, 0, 0, 1), None, "nothing changed: nothing said");
        // The peer turned GRO off.
        let ev = e.step(Capability::Refuses, 0, 0, 2).unwrap();
        assert!(!e.xdp);
        assert!(
            ev.text().contains("int0: XDP cannot transmit into it")
                && ev.text().contains("ethtool -K PEER gro on"),
            "{}",
            ev.text()
        );
        assert_eq!(e.step(Capability::Refuses, 0, 0, 3), None);
        // And on again.
        assert!(matches!(e.step(Capability::Takes, 0, 0, 4), Some(Event::ToXdp { .. })) && e.xdp);
        // Unknown (old kernel): tried.
        let mut u = Egress::new("eth1", 4, None);
        assert!(matches!(u.step(Capability::Unknown, 0, 0, 0), Some(Event::ToXdp { .. })) && u.xdp);
    }

    #[test]
    fn refusals_send_an_egress_to_tc_for_doubling_spells() {
        let mut e = Egress::new("eth1", 4, None);
        e.step(Capability::Unknown, 0, 0, 0);
        let ev = e.step(Capability::Unknown, 5, -95, 10).unwrap();
        assert!(!e.xdp && e.fallbacks == 1);
        assert!(
            ev.text().contains("refused 5 frame(s)")
                && ev.text().contains("EOPNOTSUPP")
                && ev.text().contains("in 30 s"),
            "{}",
            ev.text()
        );
        // Held on TC for the spell, whatever the features say.
        assert_eq!(e.step(Capability::Takes, 5, 0, 39), None);
        assert!(!e.xdp);
        // Tried again after it.
        assert!(matches!(e.step(Capability::Takes, 5, 0, 40), Some(Event::ToXdp { .. })) && e.xdp);
        // Refused again at once: twice as long.
        let ev = e.step(Capability::Takes, 9, -95, 41).unwrap();
        assert!(
            ev.text().contains("refused 4 frame(s)") && ev.text().contains("in 60 s"),
            "{}",
            ev.text()
        );
        assert_eq!(e.quarantine, Some((101, 60)));
        // Refusals counted while it was on TC (late frames) do not extend it.
        assert_eq!(e.step(Capability::Takes, 10, -95, 50), None);
        assert_eq!((e.xdp, e.fallbacks), (false, 2));
        // The cap.
        e.quarantine = Some((0, QUARANTINE_MAX_S));
        e.step(Capability::Takes, 10, 0, 200);
        e.step(Capability::Takes, 11, -95, 201);
        assert_eq!(e.quarantine.unwrap().1, QUARANTINE_MAX_S);
    }

    #[test]
    fn a_clean_spell_forgets_the_refusals() {
        let mut e = Egress::new("eth1", 4, None);
        e.step(Capability::Takes, 0, 0, 0);
        e.step(Capability::Takes, 1, -6, 1);
        e.step(Capability::Takes, 1, 0, 31);
        assert!(e.xdp);
        e.settle(60);
        assert!(e.quarantine.is_some(), "not a whole spell yet");
        e.settle(61);
        assert_eq!(e.quarantine, None);
        // The next refusal starts from 30 s again.
        let ev = e.step(Capability::Takes, 2, -6, 70).unwrap();
        assert!(ev.text().contains("in 30 s") && ev.text().contains("ENXIO"), "{}", ev.text());
    }

    #[test]
    fn status_words() {
        let mut e = veth();
        e.step(Capability::Refuses, 0, 0, 0);
        let s = e.status(true);
        assert!(!s.xdp && s.why.contains("GRO"), "{s:?}");
        assert_eq!(e.status(false).why, "no interface runs XDP");
        e.step(Capability::Takes, 0, 0, 1);
        assert_eq!(
            e.status(true),
            EgressStatus {
                iface: "int0".into(),
                ifindex: 3,
                xdp: true,
                why: "takes redirected XDP frames".into(),
                refused_frames: 0,
                fallbacks: 0
            }
        );
    }
}
