//! How a meter folds the values of many requests into one figure per report window.

use std::sync::atomic::{AtomicU8, Ordering};

use serde::{Deserialize, Serialize};

pub use crate::config::Aggregation;

/// What one checkpoint took out of a usage cell, and what the spool merges per key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Measure {
    /// A count or sum: merged by adding.
    Sum(u64),
    /// A maximum: merged by taking the larger.
    Max(u64),
    /// A gauge: merged by taking the newer.
    Latest(u64),
    /// HyperLogLog registers: merged register by register with `max`.
    Sketch(Vec<u8>),
}

impl Measure {
    /// Folds a newer measure of the same kind into this one. Measures of different kinds
    /// (a meter whose aggregation changed between restarts) keep the newer one.
    pub fn merge(&mut self, newer: &Measure) {
        match (self, newer) {
            (Measure::Sum(a), Measure::Sum(b)) => *a = a.saturating_add(*b),
            (Measure::Max(a), Measure::Max(b)) => *a = (*a).max(*b),
            (Measure::Latest(a), Measure::Latest(b)) => *a = *b,
            (Measure::Sketch(a), Measure::Sketch(b)) if a.len() == b.len() => {
                for (x, y) in a.iter_mut().zip(b) {
                    *x = (*x).max(*y);
                }
            }
            (this, newer) => *this = newer.clone(),
        }
    }

    /// The billable quantity: the sum, max or latest value, or the distinct-count estimate.
    pub fn quantity(&self) -> u64 {
        match self {
            Measure::Sum(v) | Measure::Max(v) | Measure::Latest(v) => *v,
            Measure::Sketch(regs) => hll_estimate(regs),
        }
    }
}

/// Number of HyperLogLog index bits.
pub(crate) const HLL_P: u32 = 10;
/// Number of HyperLogLog registers.
pub(crate) const HLL_M: usize = 1 << HLL_P;

/// A lock-free HyperLogLog sketch: adding is one `fetch_max` on a byte.
pub(crate) struct Sketch {
    regs: Box<[AtomicU8]>,
}

impl Sketch {
    pub(crate) fn new() -> Self {
        Self {
            regs: (0..HLL_M).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// Adds an item by its 64-bit hash (use a well-mixed hash).
    #[inline]
    pub(crate) fn add_hash(&self, hash: u64) {
        let idx = (hash >> (64 - HLL_P)) as usize;
        let rest = (hash << HLL_P) | (1 << (HLL_P - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        self.regs[idx].fetch_max(rank, Ordering::Relaxed);
    }

    /// Swaps every register to zero and returns the old registers, or `None` when empty.
    pub(crate) fn take(&self) -> Option<Vec<u8>> {
        let mut out = vec![0u8; HLL_M];
        let mut any = false;
        for (o, r) in out.iter_mut().zip(self.regs.iter()) {
            if r.load(Ordering::Relaxed) != 0 {
                *o = r.swap(0, Ordering::AcqRel);
                any |= *o != 0;
            }
        }
        any.then_some(out)
    }
}

/// The distinct-count sketch on its own, for `benches/benches/peers.rs` (compared with
/// `hyperloglockless`). Not part of the API.
#[doc(hidden)]
pub struct BenchSketch(Sketch);

#[doc(hidden)]
impl BenchSketch {
    /// An empty sketch.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Sketch::new())
    }

    /// Adds an item by its 64-bit hash, as recording does.
    #[inline]
    pub fn add_hash(&self, hash: u64) {
        self.0.add_hash(hash);
    }

    /// Takes the registers (as a checkpoint does) and estimates their count.
    pub fn take_count(&self) -> u64 {
        self.0.take().map_or(0, |r| hll_estimate(&r))
    }
}

/// A stable hash of `bytes` as distinct counting uses it (for the bench).
#[doc(hidden)]
pub fn bench_stable_hash(bytes: &[u8]) -> u64 {
    stable_hash(bytes)
}

/// The HyperLogLog estimate with linear counting for small cardinalities.
pub(crate) fn hll_estimate(regs: &[u8]) -> u64 {
    if regs.is_empty() {
        return 0;
    }
    let m = regs.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let mut sum = 0.0;
    let mut zeros = 0usize;
    for &r in regs {
        sum += 2f64.powi(-(r as i32));
        if r == 0 {
            zeros += 1;
        }
    }
    let raw = alpha * m * m / sum;
    let est = if raw <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln()
    } else {
        raw
    };
    est.round() as u64
}

/// A well-mixed 64-bit hash of bytes, stable across processes (for distinct counting).
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    // FNV-1a followed by a SplitMix64 finaliser: stable across runs and machines.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    mix64(h)
}

/// SplitMix64 finaliser.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_rules() {
        let mut m = Measure::Sum(2);
        m.merge(&Measure::Sum(3));
        assert_eq!(m.quantity(), 5);
        let mut m = Measure::Max(7);
        m.merge(&Measure::Max(3));
        assert_eq!(m.quantity(), 7);
        let mut m = Measure::Latest(7);
        m.merge(&Measure::Latest(3));
        assert_eq!(m.quantity(), 3);
    }

    #[test]
    fn sketch_estimates_within_error() {
        for n in [1u64, 10, 100, 1000, 50_000] {
            let s = Sketch::new();
            for i in 0..n {
                s.add_hash(mix64(i + 1));
                s.add_hash(mix64(i + 1)); // duplicates do not count
            }
            let regs = s.take().expect("non-empty");
            let est = hll_estimate(&regs) as f64;
            let err = (est - n as f64).abs() / n as f64;
            assert!(err < 0.1, "n={n} est={est}");
            assert!(s.take().is_none(), "take empties the sketch");
        }
    }

    #[test]
    fn sketches_merge_as_union() {
        let a = Sketch::new();
        let b = Sketch::new();
        for i in 0..500u64 {
            a.add_hash(mix64(i + 1));
            b.add_hash(mix64(i + 251));
        }
        let mut m = Measure::Sketch(a.take().unwrap());
        m.merge(&Measure::Sketch(b.take().unwrap()));
        let est = m.quantity() as f64;
        assert!((est - 750.0).abs() / 750.0 < 0.1, "{est}");
    }
}
