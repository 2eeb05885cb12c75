//! Usage tiers: thresholds of a meter's usage per period (the steps of a graduated price,
//! `tiers = [10000, 100000]`), at which a `tier_reached` event fires in the request that
//! crosses one.
//!
//! The crossing test reuses what the quota test has already computed: the period's usage
//! before the request's add (from the cell's `fetch_add`) and after it. Each add sees a
//! distinct "before", so exactly one add of a burst crosses a given tier; no further
//! atomic operation is needed. Usage resets when the period rolls over, so each tier fires
//! again in the next period.

use crate::error::ConfigError;

/// The most tiers per plan and meter.
pub(crate) const MAX_TIERS: usize = 8;

/// A meter's tiers under one plan: ascending thresholds, `len` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tiers {
    at: [u64; MAX_TIERS],
    len: u8,
}

impl Default for Tiers {
    fn default() -> Self {
        Self::NONE
    }
}

impl Tiers {
    /// No tiers.
    pub(crate) const NONE: Tiers = Tiers {
        at: [u64::MAX; MAX_TIERS],
        len: 0,
    };

    /// Checks and compiles configured tiers; errors name `field`.
    pub(crate) fn compile(tiers: &[u64], field: &str) -> Result<Tiers, ConfigError> {
        let shown = || format!("{tiers:?}");
        if tiers.len() > MAX_TIERS {
            return Err(ConfigError::new(field, shown(), "at most 8 tiers"));
        }
        if tiers.first() == Some(&0) {
            return Err(ConfigError::new(
                field,
                shown(),
                "each tier must be positive",
            ));
        }
        if tiers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::new(
                field,
                shown(),
                "tiers must be strictly increasing",
            ));
        }
        let mut at = [u64::MAX; MAX_TIERS];
        for (slot, t) in at.iter_mut().zip(tiers) {
            *slot = *t;
        }
        Ok(Tiers {
            at,
            len: tiers.len() as u8,
        })
    }

    /// The first tier (the end of what the plan includes), if any.
    pub(crate) fn first(&self) -> Option<u64> {
        (self.len > 0).then_some(self.at[0])
    }

    /// The first tier above `usage`, if any.
    pub(crate) fn next_above(&self, usage: u64) -> Option<u64> {
        self.at
            .iter()
            .take(self.len as usize)
            .copied()
            .find(|t| *t > usage)
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The highest tier in `(prev, now]`: the tier that usage going from `prev` to `now`
    /// reached, if it crossed one.
    pub(crate) fn crossed(&self, prev: u64, now: u64) -> Option<u64> {
        let mut hit = None;
        for &t in self.at.iter().take(self.len as usize) {
            if t > now {
                break;
            }
            if t > prev {
                hit = Some(t);
            }
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_tier_crossed_by_one_add() {
        let t = Tiers::compile(&[10, 100, 1000], "f").unwrap();
        assert_eq!(t.crossed(0, 9), None);
        assert_eq!(t.crossed(9, 10), Some(10));
        assert_eq!(t.crossed(10, 11), None, "already past it");
        assert_eq!(
            t.crossed(50, 5000),
            Some(1000),
            "one add crossing two tiers"
        );
        assert_eq!(t.crossed(1000, 9999), None);
        assert_eq!(Tiers::NONE.crossed(0, u64::MAX - 1), None);
        assert_eq!(t.first(), Some(10));
        assert_eq!(t.next_above(10), Some(100));
        assert_eq!(t.next_above(5_099), None);
        assert_eq!(Tiers::NONE.first(), None);
    }

    #[test]
    fn tiers_must_be_positive_increasing_and_few() {
        for (bad, problem) in [
            (vec![0, 5], "positive"),
            (vec![5, 5], "strictly increasing"),
            (vec![10, 5], "strictly increasing"),
            ((1..=9).collect(), "at most 8"),
        ] {
            let e = Tiers::compile(&bad, "plans[0].meters.calls.tiers").unwrap_err();
            assert_eq!(e.field, "plans[0].meters.calls.tiers");
            assert!(e.to_string().contains(problem), "{e}");
        }
        assert!(Tiers::compile(&[], "f").unwrap().is_empty());
    }
}
