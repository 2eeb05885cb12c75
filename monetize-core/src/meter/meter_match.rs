//! Two-phase metering: the request half records, in a [`MeterMatch`], which meters'
//! request-side filters passed, so that the response half needs neither the request nor
//! a second look at it.

use super::{Aggregation, Filter, Meter};
use crate::id::MeterIndex;

/// Which meters' request-side filters passed, as found by
/// [`Engine::meter_request`](crate::Engine::meter_request) before the response, to hand to
/// [`Engine::meter_response`](crate::Engine::meter_response) with the response.
///
/// One bit per meter index below 64. Meters not in the mask are decided whole at the
/// response, from the exchange given there: meters whose filter is *mixed* (an `any` or a
/// `not` that reads both the request and the response, which cannot be split into a
/// request test and a response test) and, in configs with more than 64 meters, every meter
/// from index 64 on. When such a meter reads the request,
/// [`ExchangeNeeds::request_at_response`](crate::ExchangeNeeds::request_at_response) is
/// set and the layer must pass the real request side at the response.
///
/// Sixteen bytes, `Copy`: cheap to keep in a response future.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeterMatch {
    /// Bit `i`: meter `i`'s request-side filter passed.
    bits: u64,
    /// The configuration the request half used; the response half uses the same one,
    /// even after a reload.
    generation: u32,
    /// Some meter is decided whole at the response.
    whole: bool,
}

impl MeterMatch {
    /// How many meters the mask holds.
    pub(crate) const CAPACITY: usize = 64;

    pub(crate) fn new(bits: u64, whole: bool, generation: u32) -> Self {
        Self {
            bits,
            generation,
            whole,
        }
    }

    /// The configuration the request half used.
    pub(crate) fn generation(self) -> u32 {
        self.generation
    }

    /// The mask: bit `i` is set when meter `i`'s request-side filter passed.
    pub(crate) fn bits(self) -> u64 {
        self.bits
    }

    /// Whether [`Engine::meter_response`](crate::Engine::meter_response) will record nothing
    /// whatever the response: no meter's request-side filter passed and no meter is
    /// decided whole at the response. A layer may then skip the response half (and any
    /// body counting it would do for metering).
    pub fn is_empty(self) -> bool {
        self.bits == 0 && !self.whole
    }

    /// The same match without the meters of `mask` (bit `i`: meter `i`).
    pub(crate) fn without(self, mask: u64) -> Self {
        Self {
            bits: self.bits & !mask,
            ..self
        }
    }

    /// Whether `meter`'s request-side filter passed. Always `false` for the meters decided
    /// whole at the response (mixed filters, indices 64 and up): see the type's docs.
    pub fn contains(self, meter: MeterIndex) -> bool {
        meter.get() < Self::CAPACITY && self.bits & (1 << meter.get()) != 0
    }
}

/// How the meters divide between the two phases, by index; computed with the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MeterPhases {
    /// Split meters (index below 64) whose request-side filter is `True`: always in the
    /// mask, without a test.
    pub(crate) always: u64,
    /// Split meters (index below 64) whose request-side filter is tested at the request.
    pub(crate) checked: u64,
    /// Mixed meters below index 64: their whole filter is tested at the response.
    pub(crate) mixed: u64,
    /// Some meter's whole filter is tested at the response (mixed, or index 64 and up).
    pub(crate) whole: bool,
    /// Split count meters (index below 64) whose response-side filter is at most a status
    /// range: at the response they add one when the status is in
    /// [`MeterPhases::status_range`], without the general filter and value code.
    pub(crate) status_counts: u64,
    /// Per meter index below 64: the status range of a meter in `status_counts` (all
    /// statuses when its response side has no test).
    pub(crate) status_range: [(u16, u16); MeterMatch::CAPACITY],
}

impl Default for MeterPhases {
    fn default() -> Self {
        Self {
            always: 0,
            checked: 0,
            mixed: 0,
            whole: false,
            status_counts: 0,
            status_range: [(0, 0); MeterMatch::CAPACITY],
        }
    }
}

impl MeterPhases {
    /// The phases of `meters`, which are in index order.
    pub(crate) fn of(meters: &[Meter]) -> Self {
        let mut p = MeterPhases::default();
        for m in meters {
            let i = m.index.get();
            if m.whole_at_response() {
                p.whole = true;
            }
            if i >= MeterMatch::CAPACITY {
                continue;
            }
            let bit = 1u64 << i;
            if m.mixed {
                p.mixed |= bit;
                continue;
            }
            if matches!(m.request_filter, Filter::True) {
                p.always |= bit;
            } else {
                p.checked |= bit;
            }
            let range = match m.response_filter {
                Filter::True => Some((0, u16::MAX)),
                Filter::StatusRange(lo, hi) => Some((lo, hi)),
                _ => None,
            };
            if let (Some(range), Aggregation::Count) = (range, m.aggregation) {
                p.status_counts |= bit;
                p.status_range[i] = range;
            }
        }
        p
    }

    /// The meters below index 64 the mask can hold (split ones).
    pub(crate) fn split(&self) -> u64 {
        self.always | self.checked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_match_is_small_and_copy() {
        fn copy<T: Copy>() {}
        copy::<MeterMatch>();
        assert!(std::mem::size_of::<MeterMatch>() <= 16);
    }

    #[test]
    fn contains_and_empty() {
        let m = MeterMatch::new(0b101, false, 0);
        assert!(m.contains(MeterIndex(0)));
        assert!(!m.contains(MeterIndex(1)));
        assert!(m.contains(MeterIndex(2)));
        assert!(!m.contains(MeterIndex(64)));
        assert!(!m.contains(MeterIndex(u16::MAX)));
        assert!(!m.is_empty());
        assert!(MeterMatch::new(0, false, 0).is_empty());
        assert!(!MeterMatch::new(0, true, 0).is_empty());
    }
}
