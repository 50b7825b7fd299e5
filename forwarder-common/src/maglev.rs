//! Maglev consistent hashing (Eisenbud et al., NSDI '16): which backend of
//! a rule a new connection goes to.
//!
//! A rule with several backends has a lookup table of `M` slots (`M`
//! prime), each holding a backend's index. A connection's client side
//! ([`flow_hash`]) picks a slot ([`slot`]); the conntrack entry then keeps
//! the connection on that backend, so a table change moves only new
//! connections.
//!
//! The table is built ([`build`], userspace only) deterministically from
//! the backends' addresses, ports and weights alone: the same backend set
//! gives a byte-identical table in any input order and on any gateway, and
//! so does the flow hash, which leaves out the gateway's own address. A
//! backend's preference list is a permutation of the slots derived from a
//! fixed-seed hash of its address and port; backends take turns claiming
//! their next free preferred slot, a backend of weight `w` taking a turn
//! `w` times in every `max weight` rounds (weight 0: not in the table).
//! Removing one backend of `N` moves about `1/N` of the slots, nearly all
//! of them the removed backend's own.

/// Table sizes: primes, each about twice the one before. A table holds
/// more than 100 slots per backend, so that shares stay within 1 %.
pub const TABLE_SIZES: [u32; 10] =
    [251, 509, 1021, 2039, 4093, 8191, 16_381, 32_749, 65_537, 131_071];

/// The table size used when the backend set allows it (more than 100
/// slots per backend for up to 655 backends).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// An empty slot (while building; a built table has none).
#[cfg(any(test, feature = "user"))]
const EMPTY: u32 = u32::MAX;

/// Seeds of the backends' permutations: fixed, so that every gateway
/// derives the same ones.
#[cfg(any(test, feature = "user"))]
const SEED_OFFSET: u64 = 0x6d61_676c_6576_0001;
#[cfg(any(test, feature = "user"))]
const SEED_SKIP: u64 = 0x6d61_676c_6576_0002;
/// Seed of the flow hash.
const SEED_FLOW: u32 = 0x6677_6431;

/// The 32-bit finalizer of `MurmurHash3`: every input bit flips about half of the
/// output bits.
#[inline(always)]
const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The finalizer of `SplitMix64`.
#[cfg(any(test, feature = "user"))]
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of a connection's client side: source address and port (as
/// they sit in the packet, network order) and protocol. Not the gateway's
/// address, so every gateway with the same table picks the same backend.
#[inline(always)]
pub fn flow_hash(saddr: [u8; 4], sport: [u8; 2], proto: u8) -> u32 {
    let h = fmix32(u32::from_be_bytes(saddr) ^ SEED_FLOW);
    fmix32(h ^ ((u32::from(u16::from_be_bytes(sport)) << 8) | u32::from(proto)))
}

/// The slot of a table of `size` slots that `hash` picks (`size` > 0).
#[inline(always)]
pub fn slot(hash: u32, size: u32) -> u32 {
    hash % size
}

/// The table size for `backends` backends: the smallest of
/// [`TABLE_SIZES`] with more than 100 slots per backend, at least 251 and
/// at most the largest.
pub const fn table_size(backends: usize) -> u32 {
    let mut i = 0;
    while i < TABLE_SIZES.len() {
        if TABLE_SIZES[i] as usize > backends * 100 {
            return TABLE_SIZES[i];
        }
        i += 1;
    }
    TABLE_SIZES[TABLE_SIZES.len() - 1]
}

/// Whether `m` is prime (table sizes given by an operator are checked).
pub const fn is_prime(m: u32) -> bool {
    if m < 2 {
        return false;
    }
    let mut d = 2u32;
    while (d as u64) * (d as u64) <= m as u64 {
        if m.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// One backend as the table sees it: address and port (network order)
/// and weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub weight: u32,
}

#[cfg(any(test, feature = "user"))]
impl Backend {
    /// Sort key and permutation input: address, then port.
    const fn key(&self) -> u64 {
        ((u32::from_be_bytes(self.addr) as u64) << 16) | u16::from_be_bytes(self.port) as u64
    }

    /// The first slot and the step of this backend's preference list
    /// over `m` slots (`m` prime, so every step in `1..m` visits all).
    const fn permutation(&self, m: u32) -> (u64, u64) {
        let m = m as u64;
        let offset = mix64(self.key() ^ SEED_OFFSET) % m;
        let skip = mix64(self.key() ^ SEED_SKIP) % (m - 1) + 1;
        (offset, skip)
    }
}

/// Why a table cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// `m` is not a prime above 2.
    NotPrime(u32),
    /// No backend has a weight above 0.
    NoBackend,
    /// The same address and port twice.
    Duplicate([u8; 4], [u8; 2]),
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotPrime(m) => write!(f, "Maglev table size {m} is not a prime above 2"),
            Self::NoBackend => f.write_str("no backend with a weight above 0"),
            Self::Duplicate(a, p) => write!(
                f,
                "backend {}.{}.{}.{}:{} is given twice",
                a[0],
                a[1],
                a[2],
                a[3],
                u16::from_be_bytes(*p)
            ),
        }
    }
}

/// Fills `table` (its length is `M`, a prime) with indices into
/// `backends`. Deterministic: which backend each slot names depends on
/// the set of `(address, port, weight)` only, not on the order of
/// `backends` (the same order gives the same bytes).
///
/// # Errors
///
/// [`BuildError`]: `M` not prime, no backend with a weight, a backend twice.
#[cfg(any(test, feature = "user"))]
pub fn build(backends: &[Backend], table: &mut [u32]) -> Result<(), BuildError> {
    extern crate alloc;
    use alloc::vec::Vec;

    let m = u32::try_from(table.len()).map_err(|_| BuildError::NotPrime(u32::MAX))?;
    if m < 3 || !is_prime(m) {
        return Err(BuildError::NotPrime(m));
    }
    // Backends in address order: the turns go round in that order, which
    // makes the table independent of the input's.
    let mut order: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].weight > 0).collect();
    order.sort_by_key(|&i| backends[i].key());
    if order.is_empty() {
        return Err(BuildError::NoBackend);
    }
    if let Some(w) = order.windows(2).find(|w| backends[w[0]].key() == backends[w[1]].key()) {
        return Err(BuildError::Duplicate(backends[w[0]].addr, backends[w[0]].port));
    }
    let max_weight = order.iter().map(|&i| backends[i].weight).max().unwrap_or(1);
    let perms: Vec<(u64, u64)> = order.iter().map(|&i| backends[i].permutation(m)).collect();
    let mut next = alloc::vec![0u64; order.len()];
    let mut credit = alloc::vec![0u32; order.len()];
    table.fill(EMPTY);
    let mut filled = 0u32;
    loop {
        for (k, &i) in order.iter().enumerate() {
            // A backend takes `weight` turns in every `max_weight` rounds.
            credit[k] += backends[i].weight;
            if credit[k] < max_weight {
                continue;
            }
            credit[k] -= max_weight;
            let (offset, skip) = perms[k];
            loop {
                let c = ((offset + next[k] * skip) % u64::from(m)) as usize;
                next[k] += 1;
                if table[c] == EMPTY {
                    table[c] = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn backend(last: u8, port: u16, weight: u32) -> Backend {
        Backend { addr: [192, 168, 1, last], port: port.to_be_bytes(), weight }
    }

    fn table(backends: &[Backend], m: u32) -> Vec<u32> {
        let mut t = vec![0; m as usize];
        build(backends, &mut t).unwrap();
        t
    }

    /// 100 000 client sides from a fixed xorshift sequence.
    fn tuples() -> Vec<u32> {
        let mut x = 0x2545_f491_u64;
        (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = x.to_be_bytes();
                flow_hash(
                    [b[0], b[1], b[2], b[3]],
                    [b[4], b[5]],
                    if b[6] & 1 == 0 { 6 } else { 17 },
                )
            })
            .collect()
    }

    /// The backend (address, port) each tuple's slot holds.
    fn picks(backends: &[Backend], t: &[u32], hashes: &[u32]) -> Vec<([u8; 4], [u8; 2])> {
        hashes
            .iter()
            .map(|h| {
                let b = backends[t[slot(*h, t.len() as u32) as usize] as usize];
                (b.addr, b.port)
            })
            .collect()
    }

    #[test]
    fn sizes_are_primes_above_100_slots_per_backend() {
        assert!(TABLE_SIZES.iter().all(|m| is_prime(*m)));
        assert!(is_prime(DEFAULT_TABLE_SIZE) && !is_prime(65_536) && !is_prime(1));
        assert_eq!(table_size(1), 251);
        assert_eq!(table_size(3), 509);
        assert_eq!(table_size(100), 16_381);
        assert_eq!(table_size(400), DEFAULT_TABLE_SIZE);
        assert_eq!(table_size(5000), 131_071);
    }

    #[test]
    fn equal_weights_share_within_one_percent() {
        for n in [2u8, 3, 7, 10, 50] {
            let bs: Vec<Backend> = (0..n).map(|i| backend(10 + i, 80, 1)).collect();
            let t = table(&bs, DEFAULT_TABLE_SIZE);
            let mut count = vec![0u32; usize::from(n)];
            for i in &t {
                count[*i as usize] += 1;
            }
            let fair = f64::from(DEFAULT_TABLE_SIZE) / f64::from(n);
            for c in count {
                assert!((f64::from(c) - fair).abs() / fair < 0.01, "n={n}: {c} vs {fair}");
            }
        }
    }

    #[test]
    fn weights_share_in_proportion_and_zero_is_left_out() {
        let bs = [backend(1, 80, 3), backend(2, 80, 1), backend(3, 80, 0)];
        let t = table(&bs, DEFAULT_TABLE_SIZE);
        let count = |k: u32| u32::try_from(t.iter().filter(|i| **i == k).count()).unwrap();
        let (a, b) = (count(0), count(1));
        assert!(!t.contains(&2), "weight 0 is not in the table");
        assert!((f64::from(a) / f64::from(b) - 3.0).abs() < 0.03, "{a}:{b}");
        assert_eq!(a + b, DEFAULT_TABLE_SIZE);
    }

    #[test]
    fn the_same_set_in_any_order_gives_the_same_choices() {
        let bs = [backend(5, 80, 1), backend(1, 8080, 2), backend(9, 80, 1), backend(1, 80, 1)];
        let mut rev = bs;
        rev.reverse();
        let (t1, t2) = (table(&bs, 4093), table(&rev, 4093));
        let hashes = tuples();
        assert_eq!(picks(&bs, &t1, &hashes), picks(&rev, &t2, &hashes));
        // Byte-identical when the input order is the same.
        assert_eq!(t1, table(&bs, 4093));
    }

    #[test]
    fn removing_one_backend_moves_only_its_own_tuples() {
        let hashes = tuples();
        for n in [3u8, 5, 10] {
            let all: Vec<Backend> = (0..n).map(|i| backend(20 + i, 80, 1)).collect();
            let before = picks(&all, &table(&all, DEFAULT_TABLE_SIZE), &hashes);
            let gone = all[1];
            let rest: Vec<Backend> = all.iter().copied().filter(|b| *b != gone).collect();
            let after = picks(&rest, &table(&rest, DEFAULT_TABLE_SIZE), &hashes);
            let (mut others, mut kept) = (0u32, 0u32);
            for (b, a) in before.iter().zip(&after) {
                assert_ne!(*a, (gone.addr, gone.port));
                if *b != (gone.addr, gone.port) {
                    others += 1;
                    kept += u32::from(a == b);
                }
            }
            let share = f64::from(kept) / f64::from(others);
            assert!(share >= 0.99, "n={n}: {share} of the other backends' tuples kept");
        }
    }

    #[test]
    fn tuples_spread_over_backends() {
        let bs: Vec<Backend> = (0..3).map(|i| backend(50 + i, 80, 1)).collect();
        let t = table(&bs, DEFAULT_TABLE_SIZE);
        let mut count: HashMap<_, u32> = HashMap::new();
        for p in picks(&bs, &t, &tuples()) {
            *count.entry(p).or_default() += 1;
        }
        assert_eq!(count.len(), 3);
        assert!(count.values().all(|c| (f64::from(*c) - 33_333.0).abs() < 1_000.0), "{count:?}");
    }

    #[test]
    fn bad_input_is_refused_with_the_value() {
        let bs = [backend(1, 80, 1)];
        assert_eq!(build(&bs, &mut [0; 1000]), Err(BuildError::NotPrime(1000)));
        assert_eq!(build(&[backend(1, 80, 0)], &mut [0; 251]), Err(BuildError::NoBackend));
        let e = build(&[backend(1, 80, 1), backend(1, 80, 2)], &mut [0; 251]).unwrap_err();
        assert_eq!(e.to_string(), "backend 192.168.1.1:80 is given twice");
        // One backend: every slot is it.
        assert!(table(&bs, 251).iter().all(|i| *i == 0));
    }
}
