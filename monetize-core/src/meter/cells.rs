//! Usage cells: one atomic word per (customer, meter), the only storage touched when a
//! request is metered.
//!
//! All access goes through [`UsageCells`], so the storage can later move into a
//! file-backed shared mapping (surviving `kill -9`) without touching callers.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Aggregation, Measure, Sketch};

/// A customer's usage cells, one per meter, plus distinct-count sketches where needed.
///
/// Each meter has two words: the *cell*, what was recorded since the last checkpoint, and
/// the *base*, what earlier checkpoints took this quota period. Recording touches only the
/// cell; a checkpoint swaps the cell to zero and folds what it took into the base, so the
/// period's usage is `base + cell` (for a count or sum) without a second atomic add per
/// record. Between a checkpoint's swap and its fold (a few instructions) a reader sees the
/// period's usage low by what that checkpoint took; never high.
///
/// The first [`INLINE`] meters' words live inside the customer's own allocation (one
/// cache line with the rest of its state), so resolving a customer and recording touches
/// no further memory; more meters spill into one extra allocation.
#[repr(C)]
pub(crate) struct UsageCells {
    inline: [Cell; INLINE],
    extra: Box<[Cell]>,
    sketches: Box<[Option<Sketch>]>,
}

/// The largest quantity one sample adds to a meter (2^48, about 2.8 * 10^14): a larger
/// sample (a header or JSON value of `u64::MAX`, say) is recorded as this cap and counted
/// in [`crate::EngineStats::samples_capped`]. Keeping samples this far below `u64::MAX`
/// is what lets one `fetch_add` record them with no wrap: see [`CELL_MAX`].
pub(crate) const SAMPLE_CAP: u64 = 1 << 48;

/// Where a count or sum cell (and the period's base) saturates: 2^63. An add that takes a
/// cell to this mark lowers it back with a `fetch_min` (which never raises a cell a
/// checkpoint has just emptied), so a cell stays below `CELL_MAX + k * SAMPLE_CAP` with `k`
/// adds in flight at once: wrapping would take 2^15 of them. What a checkpoint takes is
/// clamped to `CELL_MAX`.
pub(crate) const CELL_MAX: u64 = 1 << 63;

/// Meters whose cells are stored inline.
pub(crate) const INLINE: usize = 4;

/// One meter's cell and base, side by side.
#[derive(Default)]
struct Cell {
    word: AtomicU64,
    base: AtomicU64,
}

impl Cell {
    /// Brings a count or sum cell that reached [`CELL_MAX`] back to it.
    #[cold]
    #[inline(never)]
    fn saturate(&self) {
        self.word.fetch_min(CELL_MAX, Ordering::Relaxed);
    }
}

impl UsageCells {
    /// Cells for the given meter aggregations.
    pub(crate) fn new(aggs: &[Aggregation]) -> Self {
        let extra = (INLINE..aggs.len().max(INLINE))
            .map(|_| Cell::default())
            .collect();
        let sketches: Box<[Option<Sketch>]> = if aggs.contains(&Aggregation::UniqueCount) {
            aggs.iter()
                .map(|a| (*a == Aggregation::UniqueCount).then(Sketch::new))
                .collect()
        } else {
            Box::new([])
        };
        Self {
            inline: Default::default(),
            extra,
            sketches,
        }
    }

    #[inline]
    fn cell(&self, i: usize) -> Option<&Cell> {
        if i < INLINE {
            self.inline.get(i)
        } else {
            self.extra.get(i - INLINE)
        }
    }

    /// Adds `v` (at most [`SAMPLE_CAP`]) to a count or sum cell: one relaxed `fetch_add`,
    /// saturating at [`CELL_MAX`]. Returns what the cell held.
    #[inline]
    pub(crate) fn add(&self, i: usize, v: u64) -> u64 {
        debug_assert!(v <= SAMPLE_CAP);
        self.cell(i).map_or(0, |c| {
            let prev = c.word.fetch_add(v, Ordering::Relaxed);
            if prev >= CELL_MAX - v {
                c.saturate();
            }
            prev
        })
    }

    /// What earlier checkpoints took from cell `i` this quota period.
    #[inline]
    pub(crate) fn base(&self, i: usize) -> u64 {
        self.cell(i).map_or(0, |c| c.base.load(Ordering::Relaxed))
    }

    /// Usage of meter `i` in the current quota period.
    #[inline]
    pub(crate) fn period_used(&self, i: usize, agg: Aggregation) -> u64 {
        let Some(c) = self.cell(i) else {
            return 0;
        };
        let (cell, base) = (
            c.word.load(Ordering::Relaxed),
            c.base.load(Ordering::Relaxed),
        );
        match agg {
            Aggregation::Max => cell.max(base),
            Aggregation::Latest if cell != 0 => cell - 1,
            Aggregation::Latest => base,
            Aggregation::UniqueCount => 0,
            _ => base.saturating_add(cell),
        }
    }

    /// Every meter's usage in the current quota period.
    pub(crate) fn period_all(&self, aggs: &[Aggregation]) -> Vec<u64> {
        aggs.iter()
            .enumerate()
            .map(|(i, a)| self.period_used(i, *a))
            .collect()
    }

    /// Sets meter `i`'s checkpointed usage this period (0 when a period rolls over; the
    /// stored figure when a customer is restored).
    pub(crate) fn set_period(&self, i: usize, v: u64) {
        if let Some(c) = self.cell(i) {
            c.base.store(v, Ordering::Relaxed);
        }
    }

    /// Raises a max cell.
    #[inline]
    pub(crate) fn max(&self, i: usize, v: u64) {
        if let Some(c) = self.cell(i) {
            c.word.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// Sets a latest cell (stored as `v + 1`, so that 0 means "no value this checkpoint").
    #[inline]
    pub(crate) fn set_latest(&self, i: usize, v: u64) {
        if let Some(c) = self.cell(i) {
            c.word.store(v.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// Adds an item to a distinct-count cell.
    #[inline]
    pub(crate) fn add_distinct(&self, i: usize, hash: u64) {
        if let Some(Some(s)) = self.sketches.get(i) {
            s.add_hash(hash);
        }
    }

    /// Swaps cell `i` to empty and returns what it held, or `None` when it was empty; what
    /// it took is folded into the period's base. An add racing with this lands either in
    /// the returned measure or in the cell for the next take, never both and never neither
    /// (the swap is one atomic operation).
    pub(crate) fn take(&self, i: usize, agg: Aggregation) -> Option<Measure> {
        if agg == Aggregation::UniqueCount {
            return match self.sketches.get(i) {
                Some(Some(s)) => s.take().map(Measure::Sketch),
                _ => None,
            };
        }
        let c = self.cell(i)?;
        if c.word.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let v = c.word.swap(0, Ordering::AcqRel);
        if v == 0 {
            return None;
        }
        let base = Some(&c.base);
        Some(match agg {
            Aggregation::Max => {
                if let Some(b) = base {
                    b.fetch_max(v, Ordering::Relaxed);
                }
                Measure::Max(v)
            }
            Aggregation::Latest => {
                if let Some(b) = base {
                    b.store(v - 1, Ordering::Relaxed);
                }
                Measure::Latest(v - 1)
            }
            _ => {
                let v = v.min(CELL_MAX);
                if let Some(b) = base {
                    // Background work: a saturating update, never a wrap.
                    let _ = b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
                        Some(x.saturating_add(v).min(CELL_MAX))
                    });
                }
                Measure::Sum(v)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meters_past_the_inline_ones_spill_over() {
        let aggs = [Aggregation::Sum; 7];
        let c = UsageCells::new(&aggs);
        for i in 0..7 {
            c.add(i, i as u64 + 1);
        }
        for (i, a) in aggs.iter().enumerate() {
            assert_eq!(c.take(i, *a), Some(Measure::Sum(i as u64 + 1)), "meter {i}");
        }
        assert_eq!(c.period_all(&aggs), vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(c.add(7, 1), 0, "no cell past the last meter");
        assert_eq!(c.take(7, Aggregation::Sum), None);
    }

    #[test]
    fn count_and_sum_cells_saturate_instead_of_wrapping() {
        let c = UsageCells::new(&[Aggregation::Sum]);
        // 2^15 maximal samples reach the mark; as many again must not wrap.
        for _ in 0..(1u64 << 16) {
            c.add(0, SAMPLE_CAP);
        }
        assert_eq!(c.period_used(0, Aggregation::Sum), CELL_MAX);
        assert_eq!(c.take(0, Aggregation::Sum), Some(Measure::Sum(CELL_MAX)));
        for _ in 0..(1u64 << 16) {
            c.add(0, SAMPLE_CAP);
        }
        assert_eq!(c.take(0, Aggregation::Sum), Some(Measure::Sum(CELL_MAX)));
        assert_eq!(
            c.period_used(0, Aggregation::Sum),
            CELL_MAX,
            "the period's base saturates too"
        );
        c.add(0, 3);
        assert_eq!(c.take(0, Aggregation::Sum), Some(Measure::Sum(3)));
    }

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
        // What was taken stays in the period's usage.
        assert_eq!(c.period_all(&aggs)[..3], [11, 9, 0]);
        c.add(0, 4);
        c.set_latest(2, 7);
        c.max(1, 3);
        assert_eq!(c.period_all(&aggs)[..3], [15, 9, 7]);
        c.set_period(0, 0);
        assert_eq!(
            c.period_used(0, aggs[0]),
            4,
            "a new period keeps what is not yet checkpointed"
        );
        // out-of-range indexes are ignored, not a panic
        assert_eq!(c.add(9, 1), 0);
        assert_eq!(c.take(9, Aggregation::Sum), None);
    }
}
