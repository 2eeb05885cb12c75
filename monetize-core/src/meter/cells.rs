//! Usage cells: one atomic word per (customer, meter), the only storage touched when a
//! request is metered.
//!
//! All access goes through [`UsageCells`], so the storage can later move into a
//! file-backed shared mapping (surviving `kill -9`) without touching callers.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Aggregation, Measure, Sketch};

/// A customer's usage cells, one per meter, plus distinct-count sketches where needed.
pub(crate) struct UsageCells {
    words: Box<[AtomicU64]>,
    sketches: Box<[Option<Sketch>]>,
}

impl UsageCells {
    /// Cells for the given meter aggregations.
    pub(crate) fn new(aggs: &[Aggregation]) -> Self {
        let words = aggs.iter().map(|_| AtomicU64::new(0)).collect();
        let sketches: Box<[Option<Sketch>]> = if aggs.contains(&Aggregation::UniqueCount) {
            aggs.iter()
                .map(|a| (*a == Aggregation::UniqueCount).then(Sketch::new))
                .collect()
        } else {
            Box::new([])
        };
        Self { words, sketches }
    }

    /// Adds to a count or sum cell: one relaxed `fetch_add`.
    #[inline]
    pub(crate) fn add(&self, i: usize, v: u64) {
        if let Some(w) = self.words.get(i) {
            w.fetch_add(v, Ordering::Relaxed);
        }
    }

    /// Raises a max cell.
    #[inline]
    pub(crate) fn max(&self, i: usize, v: u64) {
        if let Some(w) = self.words.get(i) {
            w.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// Sets a latest cell (stored as `v + 1`, so that 0 means "no value this checkpoint").
    #[inline]
    pub(crate) fn set_latest(&self, i: usize, v: u64) {
        if let Some(w) = self.words.get(i) {
            w.store(v.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// Adds an item to a distinct-count cell.
    #[inline]
    pub(crate) fn add_distinct(&self, i: usize, hash: u64) {
        if let Some(Some(s)) = self.sketches.get(i) {
            s.add_hash(hash);
        }
    }

    /// Swaps cell `i` to empty and returns what it held, or `None` when it was empty.
    /// An add racing with this lands either in the returned measure or in the cell for
    /// the next take, never both and never neither (the swap is one atomic operation).
    pub(crate) fn take(&self, i: usize, agg: Aggregation) -> Option<Measure> {
        if agg == Aggregation::UniqueCount {
            return match self.sketches.get(i) {
                Some(Some(s)) => s.take().map(Measure::Sketch),
                _ => None,
            };
        }
        let w = self.words.get(i)?;
        if w.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let v = w.swap(0, Ordering::AcqRel);
        if v == 0 {
            return None;
        }
        Some(match agg {
            Aggregation::Max => Measure::Max(v),
            Aggregation::Latest => Measure::Latest(v - 1),
            _ => Measure::Sum(v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_per_aggregation() {
        let aggs = [
            Aggregation::Sum,
            Aggregation::Max,
            Aggregation::Latest,
            Aggregation::UniqueCount,
        ];
        let c = UsageCells::new(&aggs);
        c.add(0, 5);
        c.add(0, 6);
        c.max(1, 3);
        c.max(1, 9);
        c.max(1, 4);
        c.set_latest(2, 0);
        c.add_distinct(3, super::super::mix64(1));
        assert_eq!(c.take(0, aggs[0]), Some(Measure::Sum(11)));
        assert_eq!(c.take(1, aggs[1]), Some(Measure::Max(9)));
        assert_eq!(
            c.take(2, aggs[2]),
            Some(Measure::Latest(0)),
            "a latest 0 is a value"
        );
        assert_eq!(c.take(3, aggs[3]).map(|m| m.quantity()), Some(1));
        for (i, a) in aggs.iter().enumerate() {
            assert_eq!(c.take(i, *a), None, "cell {i} empty after take");
        }
        // out-of-range indexes are ignored, not a panic
        c.add(9, 1);
        assert_eq!(c.take(9, Aggregation::Sum), None);
    }
}
