//! Backend health: the state each backend is in, from the outcomes of
//! its checks ([`Tracker`], pure), and the checks themselves ([`probe`]).
//!
//! A backend of a checked rule starts `pending` (out of the table) and is
//! up after its first success; an up backend goes down after `fall`
//! failures in a row, a down one comes back after `rise` successes in a
//! row. The hysteresis is the damping: a backend that fails now and then
//! never leaves the table, and one that flaps changes it at most once per
//! `rise + fall` checks.

pub mod probe;

use std::time::Duration;

/// Where a backend stands with its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not checked successfully yet: out of the table.
    Pending,
    Up,
    Down,
}

impl State {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// The last check of a backend.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    pub ok: bool,
    /// What happened (`connected`, `status 200`, `exit 0`, or the error).
    pub what: String,
    #[serde(serialize_with = "micros")]
    pub latency: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// One backend's state and its runs of successes and failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    pub state: State,
    successes: u32,
    failures: u32,
    pub last: Option<Outcome>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self { state: State::Pending, successes: 0, failures: 0, last: None }
    }
}

impl Tracker {
    /// A tracker already up (a backend carried over a reload).
    pub const fn up() -> Self {
        Self { state: State::Up, successes: 0, failures: 0, last: None }
    }

    /// A tracker already down (a backend a previous daemon had down: it
    /// needs `rise` successes to come back).
    pub const fn down() -> Self {
        Self { state: State::Down, successes: 0, failures: 0, last: None }
    }

    /// Takes one outcome; the new state when it changed.
    pub fn observe(&mut self, outcome: Outcome, rise: u32, fall: u32) -> Option<State> {
        if outcome.ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let ok = outcome.ok;
        self.last = Some(outcome);
        let next = match self.state {
            State::Pending if ok => State::Up,
            State::Pending | State::Up if self.failures >= fall => State::Down,
            State::Down if self.successes >= rise => State::Up,
            s => s,
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(ok: bool) -> Outcome {
        Outcome { ok, what: String::new(), latency: Duration::ZERO }
    }

    fn run(t: &mut Tracker, seq: &str) -> Vec<State> {
        seq.chars().filter_map(|c| t.observe(o(c == '+'), 2, 3)).collect()
    }

    #[test]
    fn up_after_the_first_success_then_hysteresis() {
        let mut t = Tracker::default();
        assert_eq!(t.state, State::Pending);
        assert_eq!(run(&mut t, "+"), [State::Up]);
        // Two failures are not three; a success resets the run.
        assert_eq!(run(&mut t, "--+--+"), []);
        assert_eq!(run(&mut t, "---"), [State::Down]);
        // One success is not two.
        assert_eq!(run(&mut t, "+-+"), []);
        assert_eq!(run(&mut t, "++"), [State::Up]);
        assert_eq!(t.state, State::Up);
    }

    #[test]
    fn a_backend_that_never_answers_goes_from_pending_to_down() {
        let mut t = Tracker::default();
        assert_eq!(run(&mut t, "--"), []);
        assert_eq!(run(&mut t, "-"), [State::Down]);
        assert_eq!(t.last.as_ref().map(|l| l.ok), Some(false));
    }

    #[test]
    fn flapping_changes_the_state_at_most_once_per_rise_plus_fall_checks() {
        let mut t = Tracker::up();
        // Alternating outcomes never take it down.
        assert_eq!(run(&mut t, &"+-".repeat(50)), []);
        // Runs just long enough: one change per run.
        let changes = run(&mut t, &"---++".repeat(10));
        assert_eq!(changes.len(), 20);
    }
}
