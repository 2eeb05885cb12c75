//! Upsell candidates: `upsell_candidate` when a customer's usage of a meter reached its
//! plan's allowance (the quota limit, else the first tier) in `upsell_after_periods`
//! periods in a row; evaluated when periods roll over (an injected wall clock here),
//! never on the request path; streaks survive a restart through the account state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use monetize_core::config::{Config, MeterConfig, Period, PlanConfig, QuotaConfig};
use monetize_core::{Engine, EventKind, UpsellStreak};

/// 2026-11-01T00:00:00Z and the following month starts.
const NOV: u64 = 1_793_491_200;
const DEC: u64 = 1_796_083_200;
const JAN: u64 = 1_798_761_600;
const FEB: u64 = 1_801_440_000;
const MAR: u64 = 1_803_859_200;

struct Clocked {
    engine: Engine,
    now: Arc<AtomicU64>,
}

impl Clocked {
    fn new(plan: PlanConfig, start: u64) -> Self {
        let now = Arc::new(AtomicU64::new(start));
        let clock = now.clone();
        let config = Config::builder()
            .meter(MeterConfig::count("calls"))
            .plan(plan)
            .default_plan("growth")
            .build();
        let engine = Engine::builder(config)
            .wall_clock(move || clock.load(Ordering::Relaxed))
            .build()
            .unwrap();
        Self { engine, now }
    }

    /// `n` calls by `customer`, checkpointed (as the reporter does before each tick).
    fn calls(&self, customer: &str, n: u64) {
        let h = self.engine.resolve(customer).unwrap();
        let calls = self.engine.meter_index("calls").unwrap();
        for _ in 0..n {
            self.engine.record(&h, calls, 1);
        }
        let _ = self.engine.checkpoint();
    }

    /// Moves the clock to `at` (a few seconds in) and ticks; returns the upsell events.
    fn roll_to(&self, at: u64) -> Vec<(String, u32, u64, u64)> {
        self.now.store(at + 5, Ordering::Relaxed);
        self.engine.tick();
        upsells(&self.engine)
    }
}

/// (customer, periods, usage, allowance) of the upsell events raised so far.
fn upsells(engine: &Engine) -> Vec<(String, u32, u64, u64)> {
    let mut out: Vec<_> = engine
        .drain_events(1_000)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::UpsellCandidate {
                meter,
                periods,
                usage,
                allowance,
            } => {
                assert_eq!(meter.as_str(), "calls");
                Some((e.customer?.to_string(), periods, usage, allowance))
            }
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn quota_plan(after: u32) -> PlanConfig {
    PlanConfig::new("growth")
        .quota(QuotaConfig::new("calls", 5, Period::Month))
        .upsell_after_periods(after)
}

fn up(customer: &str, periods: u32, usage: u64, allowance: u64) -> (String, u32, u64, u64) {
    (customer.into(), periods, usage, allowance)
}

#[test]
fn usage_at_the_quota_for_n_periods_in_a_row_raises_an_upsell() {
    let c = Clocked::new(quota_plan(2), NOV + 100);
    c.engine.tick();
    c.calls("acme", 6);
    c.calls("globex", 5);
    c.calls("initech", 2);
    assert_eq!(c.roll_to(DEC), [], "one period above is not a streak of 2");
    assert_eq!(c.engine.drain_events(1_000).len(), 0);
    c.calls("acme", 7);
    c.calls("globex", 4);
    c.calls("initech", 9);
    assert_eq!(
        c.roll_to(JAN),
        [up("acme", 2, 7, 5)],
        "acme twice at or above 5; globex fell back; initech only once"
    );
    c.calls("acme", 6);
    c.calls("initech", 6);
    assert_eq!(
        c.roll_to(FEB),
        [up("acme", 3, 6, 5), up("initech", 2, 6, 5)],
        "again each further period above"
    );
    c.calls("acme", 4);
    assert_eq!(c.roll_to(MAR), [], "below the allowance ends the streak");
    assert_eq!(c.engine.account("acme").unwrap().upsell, []);
}

#[test]
fn without_a_quota_the_first_tier_is_the_allowance() {
    let c = Clocked::new(
        PlanConfig::new("growth")
            .tiers("calls", [10, 100])
            .upsell_after_periods(1),
        NOV + 100,
    );
    c.engine.tick();
    c.calls("acme", 11);
    c.calls("globex", 10);
    c.calls("initech", 9);
    assert_eq!(
        c.roll_to(DEC),
        [up("acme", 1, 11, 10), up("globex", 1, 10, 10)],
        "reaching the allowance counts (an enforced quota stops usage there)"
    );
}

#[test]
fn plans_without_upsell_after_periods_raise_nothing() {
    let c = Clocked::new(
        PlanConfig::new("growth").quota(QuotaConfig::new("calls", 5, Period::Month)),
        NOV + 100,
    );
    c.engine.tick();
    for next in [DEC, JAN, FEB] {
        c.calls("acme", 50);
        assert_eq!(c.roll_to(next), []);
    }
    assert_eq!(c.engine.account("acme").unwrap().upsell, []);
}

#[test]
fn evicted_customers_are_counted_too() {
    let c = Clocked::new(quota_plan(2), NOV + 100);
    c.engine.tick();
    for next in [DEC, JAN] {
        c.calls("sleepy", 8);
        assert_eq!(c.engine.evict_idle(0), 1);
        assert_eq!(c.engine.stats().dormant, 1);
        let _ = c.engine.checkpoint();
        let got = c.roll_to(next);
        if next == JAN {
            assert_eq!(got, [up("sleepy", 2, 8, 5)]);
        } else {
            assert_eq!(got, []);
        }
    }
}

#[test]
fn streaks_survive_a_restart_through_the_account_state() {
    let a = Clocked::new(quota_plan(3), NOV + 100);
    a.engine.tick();
    a.calls("acme", 6);
    assert_eq!(a.roll_to(DEC), []);
    a.calls("acme", 6);
    assert_eq!(a.roll_to(JAN), []);
    let state = a.engine.account("acme").unwrap();
    let calls = monetize_core::MeterId::new("calls").unwrap();
    assert_eq!(state.upsell, [UpsellStreak::new(calls, 2, DEC)]);
    // Through JSON, as a state store keeps it.
    let stored: monetize_core::AccountState =
        serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    assert_eq!(stored, state);
    drop(a);

    let b = Clocked::new(quota_plan(3), JAN + 100);
    b.engine.restore_account("acme", &stored).unwrap();
    b.engine.tick();
    b.calls("acme", 6);
    assert_eq!(
        b.roll_to(FEB),
        [up("acme", 3, 6, 5)],
        "the third period in a row"
    );
}

#[test]
fn a_period_that_ended_while_down_is_counted_from_the_restored_usage() {
    let a = Clocked::new(quota_plan(2), NOV + 100);
    a.engine.tick();
    a.calls("acme", 6);
    assert_eq!(a.roll_to(DEC), []);
    a.calls("acme", 9);
    let state = a.engine.account("acme").unwrap();
    assert_eq!(state.period_usage[0].period_start, DEC);
    drop(a);

    // Restarted in January: December's usage ended above the quota, no tick saw it end.
    let b = Clocked::new(quota_plan(2), JAN + 100);
    b.engine.restore_account("acme", &state).unwrap();
    assert_eq!(upsells(&b.engine), [up("acme", 2, 9, 5)]);
    // Restoring the same state again counts nothing twice.
    b.engine.restore_account("acme", &state).unwrap();
    assert_eq!(upsells(&b.engine), []);
}

#[test]
fn a_period_never_evaluated_breaks_the_streak() {
    let a = Clocked::new(quota_plan(2), NOV + 100);
    a.engine.tick();
    a.calls("acme", 6);
    assert_eq!(a.roll_to(DEC), []);
    let state = a.engine.account("acme").unwrap();
    drop(a);
    // Down through December and its rollover: December's usage is unknown.
    let b = Clocked::new(quota_plan(2), JAN + 100);
    b.engine.restore_account("acme", &state).unwrap();
    b.engine.tick();
    b.calls("acme", 6);
    assert_eq!(b.roll_to(FEB), [], "November and January are not in a row");
    b.calls("acme", 6);
    assert_eq!(b.roll_to(MAR), [up("acme", 2, 6, 5)]);
}
