//! Recording usage: one-step and two-phase metering of an exchange, and quantities recorded
//! directly by the application.

use super::*;

impl Engine {
    /// Runs every meter against a completed exchange and records what matches.
    pub fn meter(&self, handle: &CustomerHandle, ex: &Exchange<'_>) {
        let cfg = &*self.inner.metering.config.load();
        let s: &CustomerState = &handle.0;
        // The plan is read once for the exchange, as `meter_response` does.
        let plan = cfg.plan(s.plan.load(Ordering::Relaxed));
        for m in &cfg.meters {
            if let Some(sample) = m.sample(ex) {
                self.inner.metering.add_on(plan, s, m, sample);
            }
        }
    }

    /// The request half of two-phase metering: tests each meter's request-side filter
    /// (method, route or path, query, request headers) and returns which passed, to hand to
    /// [`Engine::meter_response`] with the response. Only the request side of `ex` is read;
    /// its response, reported usage and bodies may be left unset.
    ///
    /// A meter's filter is split when the config is compiled: the leaves of an `all` go to
    /// the request or the response side. Meters whose filter cannot be split (an `any` or
    /// `not` over both sides) and meters from index 64 on are not tested here: the
    /// response half tests their whole filter (see [`MeterMatch`]).
    ///
    /// One configuration load and the request-side tests of the meters that have one; no
    /// allocation, no lock.
    #[inline]
    pub fn meter_request(&self, ex: &Exchange<'_>) -> MeterMatch {
        request_match(&self.inner.metering.config.load(), ex)
    }

    /// The response half of two-phase metering: for each meter whose request-side filter
    /// passed in `m` (from [`Engine::meter_request`] on the same request), tests the
    /// response-side filter and records the value as [`Engine::meter`] would; meters decided
    /// whole at the response (mixed filters, indices 64 and up) are tested against `ex` in
    /// full. Meters are recorded in index order, as [`Engine::meter`] does, so credit and
    /// quota events come out the same.
    ///
    /// `ex` carries the response (status, headers, bytes), reported usage, captured bodies
    /// and `request_bytes`. Its method, route, path, query and request headers are read
    /// only when [`ExchangeNeeds::request_at_response`] is set; otherwise they may be
    /// placeholders. Costs one configuration load when no meter matched and none is
    /// decided at the response.
    ///
    /// The response half uses the configuration the request half used, even if
    /// [`Engine::reload`] replaced it in between: a request in flight during a reload is
    /// metered (filters, values, prices, quotas) entirely under the configuration it
    /// started with.
    ///
    /// [`ExchangeNeeds::request_at_response`]: crate::ExchangeNeeds::request_at_response
    #[inline]
    pub fn meter_response(&self, handle: &CustomerHandle, m: MeterMatch, ex: &Exchange<'_>) {
        self.inner.metering.meter_response(&handle.0, m, ex);
    }

    /// Records `quantity` base units on a meter directly (no filter), taking credits and
    /// counting quota as a metered request would. Never allocates, locks or awaits.
    #[inline]
    pub fn record(&self, handle: &CustomerHandle, meter: MeterIndex, quantity: u64) {
        let cfg = &*self.inner.metering.config.load();
        if let Some(m) = cfg.meters.get(meter.get()) {
            self.inner
                .metering
                .add(cfg, &handle.0, m, sample_of(m, quantity));
        }
    }

    /// Resolves by id and records, for callers without a handle. Unknown meter names and
    /// invalid customer ids are errors.
    pub fn record_by_id(
        &self,
        customer: &str,
        meter: &str,
        quantity: u64,
    ) -> Result<(), CoreError> {
        let cfg = &*self.inner.metering.config.load();
        let m = cfg
            .meter_index
            .get(meter)
            .and_then(|i| cfg.meters.get(i.get()))
            .ok_or_else(|| CoreError::UnknownMeter(meter.to_owned()))?;
        let sample = sample_of(m, quantity);
        let h = self.resolve(customer)?;
        self.inner.metering.add(cfg, &h.0, m, sample);
        Ok(())
    }
}

/// The request half of two-phase metering (see [`Engine::meter_request`]).
#[inline]
pub(super) fn request_match(cfg: &Compiled, ex: &Exchange<'_>) -> MeterMatch {
    let phases = &cfg.phases;
    let mut bits = phases.always;
    let mut todo = phases.checked;
    while todo != 0 {
        let i = todo.trailing_zeros() as usize;
        todo &= todo - 1;
        if cfg
            .meters
            .get(i)
            .is_some_and(|m| m.request_filter.matches(ex))
        {
            bits |= 1 << i;
        }
    }
    MeterMatch::new(bits, phases.whole, cfg.generation)
}

/// What a directly recorded quantity contributes to a meter.
#[inline]
pub(super) fn sample_of(m: &Meter, quantity: u64) -> Sample {
    if m.aggregation == Aggregation::UniqueCount {
        Sample::Distinct(crate::meter::mix64(quantity ^ 0x9e37_79b9_7f4a_7c15))
    } else {
        Sample::Quantity(quantity)
    }
}
