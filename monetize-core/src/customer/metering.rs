//! [`Metering`]: what recording usage needs of an engine (its configuration, and a way to
//! its event queue), shared by the engine and every customer state it makes, so that a
//! customer handle meters a response without a reference to the engine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crossbeam_queue::ArrayQueue;

use crate::compiled::cell::ConfigCell;
use crate::compiled::validate::Compiled;
use crate::customer::CustomerState;
use crate::event::{Event, EventKind};
use crate::meter::{Aggregation, Exchange, Meter, MeterMatch, MeterPhases, SAMPLE_CAP, Sample};
use crate::plan::{MeterTerms, Plan};
use crate::quota::Quota;

/// An engine's queue of events for notifiers, and how many it dropped when full.
pub(crate) struct Events {
    pub(crate) queue: ArrayQueue<Event>,
    pub(crate) dropped: AtomicU64,
    /// Samples recorded as [`SAMPLE_CAP`] (or whose cost was capped at [`COST_CAP`])
    /// because they were larger.
    pub(crate) capped: AtomicU64,
}

/// The most credits one sample takes off a balance (2^52 micro-credits); a larger cost is
/// taken as this and counted in [`crate::EngineStats::samples_capped`].
pub(crate) const COST_CAP: i64 = 1 << 52;

/// Where a balance stops going down: -2^62 micro-credits. A subtraction that takes it
/// lower raises it back with a `fetch_max` (never lowering a grant that raced it), so a
/// balance stays above `BALANCE_FLOOR - k * COST_CAP` with `k` subtractions in flight at
/// once and never wraps (that would take 2^10 of them). Grants saturate at `i64::MAX`.
pub(crate) const BALANCE_FLOOR: i64 = -(1 << 62);

impl Events {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity),
            dropped: AtomicU64::new(0),
            capped: AtomicU64::new(0),
        }
    }

    /// Pushes an event; when the queue is full the oldest event is dropped and counted.
    pub(crate) fn push(&self, event: Event) {
        if let Some(_dropped) = self.queue.force_push(event) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The configuration of one engine, and a weak reference to its event queue.
///
/// Customer states hold it (and threads' caches hold customer states), so it may outlive
/// its engine: it keeps the configuration (small) but not the event queue (the engine's
/// 65,536 slots by default), which goes with the engine; an event raised after that has
/// nobody to drain it and is dropped.
pub(crate) struct Metering {
    pub(crate) config: ConfigCell,
    events: Weak<Events>,
    /// Responses whose request match came from another engine (a generation this engine
    /// never had): nothing of them can be metered here, so they are counted, never
    /// dropped silently ([`EngineStats::foreign_matches`](crate::EngineStats)).
    pub(crate) foreign_matches: AtomicU64,
}

impl Metering {
    pub(crate) fn new(config: ConfigCell, events: &Arc<Events>) -> Self {
        Self {
            config,
            events: Arc::downgrade(events),
            foreign_matches: AtomicU64::new(0),
        }
    }

    /// Counts a match from another engine, and logs the first one.
    #[cold]
    fn foreign_match(&self, generation: u32) {
        if self.foreign_matches.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::error!(
                generation,
                "a request matched by another engine was metered here: its usage is not \
                 recorded (pass each request's MeterMatch back to the engine that made it); \
                 counted in EngineStats::foreign_matches"
            );
        }
    }

    /// Counts a sample (or a cost) that was capped.
    #[cold]
    #[inline(never)]
    fn capped(&self) {
        if let Some(events) = self.events.upgrade() {
            events.capped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Pushes an event to the engine's queue, if the engine is still there (events are
    /// raised out of line: crossing a quota or credit threshold).
    #[cold]
    pub(crate) fn emit(&self, event: Event) {
        if let Some(events) = self.events.upgrade() {
            events.push(event);
        }
    }

    /// The response half of two-phase metering for the customer `s` when every meter in
    /// play reads only the response status (see
    /// [`CustomerHandle::meter_status`](crate::CustomerHandle::meter_status)): `false`,
    /// having recorded nothing, when one reads more.
    #[inline]
    pub(crate) fn meter_status(&self, s: &CustomerState, m: MeterMatch, status: u16) -> bool {
        let Some(cfg) = self.config.at(m.generation()) else {
            // A match from another engine: nothing to record, as `meter_response` does.
            self.foreign_match(m.generation());
            return true;
        };
        let phases = &cfg.phases;
        let mut todo = (m.bits() & phases.split()) | phases.mixed;
        if todo & !phases.status_counts != 0 || cfg.meters.len() > MeterMatch::CAPACITY {
            return false;
        }
        if todo != 0 {
            let plan = cfg.plan(s.plan.load(Ordering::Relaxed));
            while todo != 0 {
                let i = todo.trailing_zeros() as usize;
                todo &= todo - 1;
                let Some(meter) = cfg.meters.get(i) else {
                    break;
                };
                self.count_on_status(phases, plan, s, (i, meter), status);
            }
        }
        true
    }

    /// Count meter `i` of `MeterPhases::status_counts`: one more when `status` is in its
    /// range, then the quota test and the price, as [`Metering::add_on`] does. `i` is below
    /// 64 (a bit of a match).
    #[inline(always)]
    fn count_on_status(
        &self,
        phases: &MeterPhases,
        plan: Option<&Plan>,
        s: &CustomerState,
        (i, meter): (usize, &Meter),
        status: u16,
    ) {
        let (lo, hi) = phases.status_range[i % MeterMatch::CAPACITY];
        if (lo..=hi).contains(&status) {
            let prev = s.cells.add(i, 1);
            self.charge(plan, s, meter, prev, 1);
        }
    }

    /// The response half of two-phase metering for the customer `s` (see
    /// [`Engine::meter_response`](crate::Engine::meter_response)).
    #[inline]
    pub(crate) fn meter_response(&self, s: &CustomerState, m: MeterMatch, ex: &Exchange<'_>) {
        let Some(cfg) = self.config.at(m.generation()) else {
            // A match from another engine: nothing of it can be trusted here.
            self.foreign_match(m.generation());
            return;
        };
        let phases = &cfg.phases;
        // A mixed meter's response-side filter is its whole filter.
        let mut todo = (m.bits() & phases.split()) | phases.mixed;
        if todo != 0 {
            // The plan is read once for the exchange (`add` reads it per meter).
            let plan = cfg.plan(s.plan.load(Ordering::Relaxed));
            let status = ex.response.map(|r| r.status.as_u16());
            while todo != 0 {
                let i = todo.trailing_zeros() as usize;
                let bit = todo & todo.wrapping_neg();
                todo &= todo - 1;
                let Some(meter) = cfg.meters.get(i) else {
                    break;
                };
                if phases.status_counts & bit != 0 {
                    // A count on at most a status range: what the general path below does
                    // for it, without its filter and value dispatch.
                    if let Some(status) = status {
                        self.count_on_status(phases, plan, s, (i, meter), status);
                    }
                } else if meter.response_filter.matches(ex)
                    && let Some(sample) = meter.value_of(ex)
                {
                    self.add_on(plan, s, meter, sample);
                }
            }
        }
        if cfg.meters.len() > MeterMatch::CAPACITY {
            self.meter_past_capacity(&cfg, s, ex);
        }
    }

    /// The meters from index 64 on, which [`Metering::meter_response`] decides whole.
    #[cold]
    #[inline(never)]
    fn meter_past_capacity(&self, cfg: &Compiled, s: &CustomerState, ex: &Exchange<'_>) {
        if let Some(rest) = cfg.meters.get(MeterMatch::CAPACITY..) {
            for meter in rest {
                if let Some(sample) = meter.sample(ex) {
                    self.add(cfg, s, meter, sample);
                }
            }
        }
    }

    /// Records a sample under the customer's current plan.
    #[inline]
    pub(crate) fn add(&self, cfg: &Compiled, s: &CustomerState, m: &Meter, sample: Sample) {
        self.add_on(cfg.plan(s.plan.load(Ordering::Relaxed)), s, m, sample);
    }

    /// Records a sample: one atomic operation on the meter's cell; then, for a count or
    /// sum, the quota test when `plan` limits this meter and one atomic subtraction from
    /// the balance when it prices it. Events are raised out of line.
    #[inline]
    pub(crate) fn add_on(&self, plan: Option<&Plan>, s: &CustomerState, m: &Meter, sample: Sample) {
        let i = m.index.get();
        let q = match sample {
            Sample::Distinct(h) => {
                s.cells.add_distinct(i, h);
                return;
            }
            Sample::Quantity(q) if q > SAMPLE_CAP => {
                self.capped();
                SAMPLE_CAP
            }
            Sample::Quantity(q) => q,
        };
        let prev_cell = match m.aggregation {
            Aggregation::Max => {
                s.cells.max(i, q);
                return;
            }
            Aggregation::Latest => {
                s.cells.set_latest(i, q);
                return;
            }
            _ => s.cells.add(i, q),
        };
        self.charge(plan, s, m, prev_cell, q);
    }

    /// After `q` was added to a count or sum meter's cell (which held `prev_cell`): the
    /// quota test when `plan` limits the meter, and one atomic subtraction from the balance
    /// when it prices it. Events are raised out of line.
    // Always inlined: out of line (as its saturation tests made it) it cost about 30
    // instructions more per priced meter per request, measured with callgrind.
    #[inline(always)]
    fn charge(&self, plan: Option<&Plan>, s: &CustomerState, m: &Meter, prev_cell: u64, q: u64) {
        let i = m.index.get();
        let Some(plan) = plan else {
            return;
        };
        let Some(terms) = plan.terms.get(i) else {
            return;
        };
        if terms.watches_period() {
            self.period_crossing(plan, s, m, terms, prev_cell, q);
        }
        if terms.price > 0 {
            let mut cost = i64::try_from(q.saturating_mul(terms.price)).unwrap_or(i64::MAX);
            if cost > COST_CAP {
                self.capped();
                cost = COST_CAP;
            }
            let before = s.balance.fetch_sub(cost, Ordering::Relaxed);
            let after = before.saturating_sub(cost);
            if after < BALANCE_FLOOR {
                floor_balance(s);
            }
            if before > 0 && after <= 0 {
                self.credits_event(s, after, true);
            } else if before > plan.credits_low_at && after <= plan.credits_low_at {
                self.credits_event(s, after, false);
            }
        }
    }

    /// Records `q` on the count or sum meter `m` with its quota test but without its price:
    /// a [`Reservation`](crate::credits::Reservation) settles the credits itself.
    pub(crate) fn add_settled(&self, plan: Option<&Plan>, s: &CustomerState, m: &Meter, q: u64) {
        let i = m.index.get();
        let q = if q > SAMPLE_CAP {
            self.capped();
            SAMPLE_CAP
        } else {
            q
        };
        let prev_cell = s.cells.add(i, q);
        if let Some(plan) = plan
            && let Some(terms) = plan.terms.get(i)
            && terms.watches_period()
        {
            self.period_crossing(plan, s, m, terms, prev_cell, q);
        }
    }

    /// After `q` was added to meter `m`'s cell (which held `prev_cell`), under terms with a
    /// quota or tiers: the period's usage before and after the add (the cell's `fetch_add`
    /// gave each add its own "before", so one add of a burst crosses each threshold), and
    /// the events of the thresholds crossed.
    #[inline(always)]
    fn period_crossing(
        &self,
        plan: &Plan,
        s: &CustomerState,
        m: &Meter,
        terms: &MeterTerms,
        prev_cell: u64,
        q: u64,
    ) {
        let prev = s.cells.base(m.index.get()).saturating_add(prev_cell);
        let now = prev.saturating_add(q);
        if let Some(quota) = &terms.quota {
            self.quota_crossing(s, m, quota, prev, now);
        }
        if now >= terms.first_tier {
            self.tier_crossing(plan, s, m, prev, now);
        }
    }

    /// Past the first tier: raises `TierReached` for the highest tier in `(prev, now]`.
    #[inline(never)]
    fn tier_crossing(&self, plan: &Plan, s: &CustomerState, m: &Meter, prev: u64, now: u64) {
        let Some(tiers) = plan.tiers.get(m.index.get()) else {
            return;
        };
        if let Some(tier) = tiers.crossed(prev, now) {
            let kind = EventKind::TierReached {
                meter: m.id.clone(),
                tier,
                usage: now,
                next_tier: tiers.next_above(now),
            };
            self.emit(Event::new(Some(s.id.clone()), kind));
        }
    }

    /// The quota events of usage going from `prev` to `now` in the period: reached at the
    /// limit; else a warning when the first share above `prev` is crossed (a larger add may
    /// cross several: one warning, with the usage it reached).
    #[inline]
    fn quota_crossing(&self, s: &CustomerState, m: &Meter, quota: &Quota, prev: u64, now: u64) {
        if prev < quota.limit && now >= quota.limit {
            self.quota_event(s, m, now, quota.limit, true);
        } else {
            for &w in &quota.warn_at {
                if w > prev {
                    if now >= w && w < quota.limit {
                        self.quota_event(s, m, now, quota.limit, false);
                    }
                    break;
                }
            }
        }
    }

    /// Raises `QuotaReached` (`reached`) or `QuotaWarning`.
    #[cold]
    #[inline(never)]
    fn quota_event(&self, s: &CustomerState, m: &Meter, used: u64, limit: u64, reached: bool) {
        let meter = m.id.clone();
        let kind = if reached {
            EventKind::QuotaReached { meter, used, limit }
        } else {
            EventKind::QuotaWarning { meter, used, limit }
        };
        self.emit(Event::new(Some(s.id.clone()), kind));
    }

    /// Raises `CreditsExhausted` (`exhausted`) or `CreditsLow`.
    #[cold]
    #[inline(never)]
    fn credits_event(&self, s: &CustomerState, balance: i64, exhausted: bool) {
        let kind = if exhausted {
            EventKind::CreditsExhausted { balance }
        } else {
            EventKind::CreditsLow { balance }
        };
        self.emit(Event::new(Some(s.id.clone()), kind));
    }
}

/// Raises a balance that went below [`BALANCE_FLOOR`] back to it.
#[cold]
#[inline(never)]
fn floor_balance(s: &CustomerState) {
    s.balance.fetch_max(BALANCE_FLOOR, Ordering::Relaxed);
}

/// Adds `n` credits to a balance, saturating (a grant never wraps a balance negative).
pub(crate) fn grant(balance: &std::sync::atomic::AtomicI64, n: i64) {
    let _ = balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
        Some(b.saturating_add(n).max(BALANCE_FLOOR))
    });
}

/// A metering of an empty configuration, for tests of customer states.
#[cfg(test)]
pub(crate) fn for_tests() -> &'static Arc<Metering> {
    use crate::compiled::validate::{Predicates, compile};
    use crate::config::Config;
    static M: std::sync::OnceLock<Arc<Metering>> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let compiled = compile(&Config::builder().build(), &Predicates::default())
            .expect("an empty config is valid");
        Arc::new(Metering::new(
            ConfigCell::new(compiled),
            &Arc::new(Events::new(16)),
        ))
    })
}

#[cfg(test)]
mod foreign_tests {
    use http::{HeaderMap, Method, StatusCode};

    use crate::Engine;
    use crate::config::{Config, MeterConfig, ValueConfig};
    use crate::meter::Exchange;

    fn config() -> Config {
        let mut cfg = Config::builder()
            .meter(MeterConfig::sum("calls", ValueConfig::Count))
            .build();
        cfg.rules = Some(Vec::new());
        cfg
    }

    /// Issue 10 item 9: a response whose match came from another engine cannot be metered
    /// here; it is counted (and logged once), never dropped silently.
    #[test]
    fn a_match_from_another_engine_is_counted() {
        let a = Engine::new(config()).unwrap();
        a.reload(config()).unwrap();
        let b = Engine::new(config()).unwrap();
        let (get, hs) = (Method::GET, HeaderMap::new());
        let m = a.meter_request(&Exchange::new(&get, "/", &hs));
        let h = b.resolve("c1").unwrap();
        let ex = Exchange::new(&get, "", &hs).response(StatusCode::OK, &hs, 0);
        b.meter_response(&h, m, &ex);
        b.meter_response(&h, m, &ex);
        assert_eq!(b.stats().foreign_matches, 2);
        assert_eq!(a.stats().foreign_matches, 0);
        assert!(b.checkpoint().is_empty());
    }
}
