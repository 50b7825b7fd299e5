//! The audit events' rate limit: a token bucket per CPU, in integer
//! nanotoken arithmetic (no floats in BPF). Each CPU may emit `rate` events
//! per second on average and `burst` at once after a quiet spell (per CPU:
//! no lock or atomic on the fast path; the gateway's total is at most the
//! CPU count times that); what it may not emit is counted, never queued.

/// One CPU's bucket (value of `abi::MAP_AUDIT_BUCKET`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TokenBucket {
    /// Tokens in units of 10⁻⁹ (one event costs `NANO`).
    pub nanotokens: u64,
    /// When the bucket was last refilled (`bpf_ktime_get_ns`).
    pub last_ns: u64,
}

/// One token, in the bucket's unit.
pub const NANO: u64 = 1_000_000_000;
/// Refill at most this long a gap: `gap × rate` stays far from overflow,
/// and a bucket is full after a second at any rate ≥ burst anyway.
const MAX_GAP_NS: u64 = 10 * NANO;
/// Highest rate honoured per CPU (higher values are treated as this).
pub const MAX_RATE: u32 = 1_000_000;

impl TokenBucket {
    /// Refills for the time since the last call and takes one token if
    /// there is one. `rate` = tokens per second, `burst` = capacity;
    /// `rate == 0` refuses everything.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return false;
        }
        let cap = u64::from(burst.max(1)) * NANO;
        // A clock that went backwards (never for CLOCK_MONOTONIC, but a
        // zeroed bucket starts at 0) counts as no time.
        let gap = now_ns.saturating_sub(self.last_ns);
        let gap = if gap > MAX_GAP_NS { MAX_GAP_NS } else { gap };
        // gap ≤ 10¹⁰ and rate ≤ 10⁶: the product ≤ 10¹⁶, far below 2⁶⁴.
        let rate = if rate > MAX_RATE { MAX_RATE } else { rate };
        let refill = gap * u64::from(rate);
        let t = self.nanotokens.saturating_add(refill);
        self.nanotokens = if t > cap { cap } else { t };
        self.last_ns = now_ns;
        if self.nanotokens >= NANO {
            self.nanotokens -= NANO;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NANO;

    #[test]
    fn a_fresh_bucket_fills_for_the_first_events() {
        let mut b = TokenBucket::default();
        // At t = 1 s a fresh bucket holds `burst`.
        let took = (0..20).filter(|_| b.take(S, 100, 10)).count();
        assert_eq!(took, 10);
    }

    #[test]
    fn steady_rate_is_held_under_a_flood() {
        let mut b = TokenBucket::default();
        let (rate, burst) = (100, 10);
        // 1 000 000 attempts evenly over 10 s: 10 burst + 100/s × 10 s.
        let n = 1_000_000u64;
        let took = (0..n).filter(|i| b.take(S + i * 10 * S / n, rate, burst)).count() as u64;
        assert!((1000..=1011).contains(&took), "took {took}");
    }

    #[test]
    fn idle_time_refills_only_up_to_burst() {
        let mut b = TokenBucket::default();
        assert!(b.take(S, 5, 3));
        // An hour later: 3, not 18 000.
        let t = S + 3600 * S;
        assert_eq!((0..10).filter(|_| b.take(t, 5, 3)).count(), 3);
    }

    #[test]
    fn rate_zero_refuses_and_huge_values_do_not_overflow() {
        let mut b = TokenBucket::default();
        assert!(!b.take(S, 0, 100));
        let mut b = TokenBucket::default();
        assert!(b.take(u64::MAX, u32::MAX, u32::MAX));
        assert!(b.take(u64::MAX, u32::MAX, u32::MAX));
    }
}
