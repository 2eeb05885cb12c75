//! Upsell candidates: when a period ends, each customer whose usage of a meter reached its
//! plan's allowance (the meter's quota limit, else its first tier) extends a streak (an
//! enforced quota stops usage at its limit, so reaching it is what shows demand beyond it);
//! at the plan's `upsell_after_periods` periods in a row (and at each further one) an
//! `upsell_candidate` event goes to sales. Never on the request path: the tick that rolls
//! periods over reads the usage before resetting it.
//!
//! Streaks live off the request path (a map behind a mutex that only background work and
//! operator calls take) and are persisted with the rest of the customer's durable state
//! ([`AccountState::upsell`]): spool checkpoints and state stores keep them across
//! restarts. A period is counted once (its start is remembered); a period that was never
//! evaluated (the process was down when it ended and its usage could not be restored)
//! breaks the streak, so a missed evaluation never invents a candidate.

use crate::store::UpsellStreak;

use super::*;

/// Upsell streaks by customer (only customers with one).
pub(super) type Streaks = Mutex<HashMap<CustomerId, Vec<UpsellStreak>>>;

/// One meter's usage of one customer in a period that ended.
pub(super) struct Ended {
    pub(super) customer: CustomerId,
    pub(super) plan: u32,
    pub(super) meter: usize,
    pub(super) used: u64,
}

impl Engine {
    fn streaks(&self) -> std::sync::MutexGuard<'_, HashMap<CustomerId, Vec<UpsellStreak>>> {
        self.inner.upsell.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the usage of `meter` by a customer on `plan` ending at `used` is worth
    /// evaluating: at or above the allowance, or `streaking` (the customer has a streak that it
    /// may end).
    pub(super) fn upsell_candidate(
        cfg: &Compiled,
        plan: u32,
        meter: usize,
        used: u64,
        streaking: bool,
    ) -> bool {
        cfg.plan(plan).is_some_and(|p| {
            p.upsell_after.is_some()
                && p.allowance(meter)
                    .is_some_and(|allowance| streaking || used >= allowance)
        })
    }

    /// Calls `f` with the customers that have a streak (for the rollover's scan).
    pub(super) fn with_streaking<R>(&self, f: impl FnOnce(&dyn Fn(&CustomerId) -> bool) -> R) -> R {
        let streaks = self.streaks();
        f(&|id| streaks.contains_key(id))
    }

    /// Counts periods that ended: extends or ends streaks, raises `upsell_candidate` where
    /// a streak reaches the plan's count, and notes changed accounts for the next
    /// checkpoint. `ended_start` gives, for a customer and a kind of period, the start of
    /// the period that ended and of the one before it ([`Engine::previous_periods`]).
    pub(super) fn upsell_count(
        &self,
        cfg: &Compiled,
        ended: Vec<Ended>,
        ended_start: impl Fn(&CustomerId, Period) -> (u64, u64),
    ) {
        if ended.is_empty() {
            return;
        }
        let mut changed = Vec::new();
        let mut events = Vec::new();
        {
            let mut streaks = self.streaks();
            for e in ended {
                let Some(plan) = cfg.plan(e.plan) else {
                    continue;
                };
                let (Some(after), Some(allowance), Some(meter)) = (
                    plan.upsell_after,
                    plan.allowance(e.meter),
                    cfg.meters.get(e.meter),
                ) else {
                    continue;
                };
                // (start of the ended period, start of the one before it)
                let (start, before) = ended_start(&e.customer, plan.period_of(e.meter));
                let list = streaks.entry(e.customer.clone()).or_default();
                let pos = list.iter().position(|s| s.meter == meter.id);
                let last = pos
                    .and_then(|p| list.get(p))
                    .map(|s| (s.periods, s.period_start));
                if last.is_some_and(|(_, s)| s == start) {
                    continue;
                }
                if e.used >= allowance {
                    let periods = match last {
                        Some((n, s)) if s == before => n.saturating_add(1),
                        _ => 1,
                    };
                    let streak = UpsellStreak::new(meter.id.clone(), periods, start);
                    match pos.and_then(|p| list.get_mut(p)) {
                        Some(slot) => *slot = streak,
                        None => list.push(streak),
                    }
                    if periods >= after {
                        events.push(Event::new(
                            Some(e.customer.clone()),
                            EventKind::UpsellCandidate {
                                meter: meter.id.clone(),
                                periods,
                                usage: e.used,
                                allowance,
                            },
                        ));
                    }
                } else if let Some(p) = pos {
                    list.remove(p);
                } else {
                    if list.is_empty() {
                        streaks.remove(&e.customer);
                    }
                    continue;
                }
                if list.is_empty() {
                    streaks.remove(&e.customer);
                }
                changed.push(e.customer);
            }
        }
        for id in changed {
            self.account_changed(&id);
        }
        for event in events {
            self.emit(event);
        }
    }

    /// The start of the period of kind `period` before the current one for `customer`,
    /// and of the one before that.
    pub(super) fn previous_periods(
        &self,
        cfg: &Compiled,
        customer: &CustomerId,
        period: Period,
        now: u64,
    ) -> (u64, u64) {
        let current = self.bounds(cfg, customer, period, now).start;
        let ended = self
            .bounds(cfg, customer, period, current.saturating_sub(1))
            .start;
        let before = self
            .bounds(cfg, customer, period, ended.saturating_sub(1))
            .start;
        (ended, before)
    }

    /// Adds each customer's upsell streaks to their durable state.
    pub(super) fn fill_upsell(&self, out: &mut [(CustomerId, AccountState)]) {
        let streaks = self.streaks();
        if streaks.is_empty() {
            return;
        }
        for (id, state) in out.iter_mut() {
            if let Some(list) = streaks.get(id) {
                state.upsell = list.clone();
            }
        }
    }

    /// Takes a restored state's streaks (per meter, the one whose last period counted is
    /// the later: restoring from a state store and then a spool, or the same state twice,
    /// counts nothing twice); then counts the restored usage of a period that ended while
    /// the process was down (the one just before the current period), which no tick saw
    /// end.
    pub(super) fn restore_upsell(&self, cfg: &Compiled, s: &CustomerState, state: &AccountState) {
        if !state.upsell.is_empty() {
            let mut streaks = self.streaks();
            let list = streaks.entry(s.id.clone()).or_default();
            for restored in &state.upsell {
                match list.iter_mut().find(|x| x.meter == restored.meter) {
                    Some(x) if x.period_start >= restored.period_start => {}
                    Some(x) => *x = restored.clone(),
                    None => list.push(restored.clone()),
                }
            }
        }
        let plan = s.plan.load(Ordering::Relaxed);
        if cfg.plan(plan).is_none_or(|p| p.upsell_after.is_none()) {
            return;
        }
        let now = self.now();
        let ended: Vec<Ended> = state
            .period_usage
            .iter()
            .filter_map(|pu| {
                let meter = cfg.meter_index.get(pu.meter.as_str())?.get();
                let period = cfg.plan(plan)?.period_of(meter);
                let (ended, _) = self.previous_periods(cfg, &s.id, period, now);
                (pu.period_start == ended).then(|| Ended {
                    customer: s.id.clone(),
                    plan,
                    meter,
                    used: pu.used,
                })
            })
            .collect();
        self.upsell_count(cfg, ended, |id, period| {
            self.previous_periods(cfg, id, period, now)
        });
    }
}
