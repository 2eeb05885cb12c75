//! Usage tiers per plan and meter (`[plans.meters.NAME] tiers = [...]`): `tier_reached`
//! fires in the request that crosses a tier, once per tier and period, even when a burst
//! of concurrent requests crosses it; a new period raises it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use monetize_core::config::{
    Aggregation, Config, MeterConfig, Period, PlanConfig, QuotaConfig, ValueConfig,
};
use monetize_core::{Engine, EventKind};

fn config(plan: PlanConfig) -> Config {
    Config::builder()
        .meter(MeterConfig::count("calls"))
        .meter(MeterConfig::sum(
            "tokens",
            ValueConfig::Reported("tokens".into()),
        ))
        .plan(plan)
        .default_plan("growth")
        .build()
}

fn engine(plan: PlanConfig) -> Engine {
    Engine::new(config(plan)).unwrap()
}

/// (customer, meter, tier, usage) of every `tier_reached` event raised so far.
fn tiers(engine: &Engine) -> Vec<(String, String, u64, u64)> {
    engine
        .drain_events(100_000)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::TierReached {
                meter, tier, usage, ..
            } => Some((
                e.customer.map(|c| c.to_string()).unwrap_or_default(),
                meter.to_string(),
                tier,
                usage,
            )),
            _ => None,
        })
        .collect()
}

fn t(customer: &str, meter: &str, tier: u64, usage: u64) -> (String, String, u64, u64) {
    (customer.into(), meter.into(), tier, usage)
}

#[test]
fn each_tier_fires_once_in_the_request_that_crosses_it() {
    let e = engine(PlanConfig::new("growth").tiers("calls", [3, 5]));
    let h = e.resolve("acme").unwrap();
    let calls = e.meter_index("calls").unwrap();
    let mut seen = Vec::new();
    for n in 1..=8u64 {
        e.record(&h, calls, 1);
        for ev in tiers(&e) {
            seen.push((n, ev));
        }
    }
    assert_eq!(
        seen,
        [(3, t("acme", "calls", 3, 3)), (5, t("acme", "calls", 5, 5))],
        "raised by the 3rd and the 5th call, nothing after"
    );
    // Another customer has its own usage.
    let other = e.resolve("globex").unwrap();
    for _ in 0..3 {
        e.record(&other, calls, 1);
    }
    assert_eq!(tiers(&e), [t("globex", "calls", 3, 3)]);
}

#[test]
fn one_add_crossing_several_tiers_raises_the_highest() {
    let e = engine(PlanConfig::new("growth").tiers("tokens", [100, 1_000, 10_000]));
    let h = e.resolve("acme").unwrap();
    let tokens = e.meter_index("tokens").unwrap();
    e.record(&h, tokens, 99);
    assert_eq!(tiers(&e), []);
    e.record(&h, tokens, 5_000);
    assert_eq!(tiers(&e), [t("acme", "tokens", 1_000, 5_099)]);
    e.record(&h, tokens, 4_901);
    assert_eq!(tiers(&e), [t("acme", "tokens", 10_000, 10_000)]);
}

#[test]
fn a_burst_of_concurrent_requests_crossing_a_tier_raises_it_once() {
    let e = engine(PlanConfig::new("growth").tiers("calls", [1_000, 5_000, 7_999]));
    let calls = e.meter_index("calls").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let e = e.clone();
            std::thread::spawn(move || {
                let h = e.resolve("acme").unwrap();
                for _ in 0..1_000 {
                    e.record(&h, calls, 1);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(e.usage("acme").unwrap().meters[0].used, 8_000);
    let mut got = tiers(&e);
    got.sort();
    assert_eq!(
        got,
        [
            t("acme", "calls", 1_000, 1_000),
            t("acme", "calls", 5_000, 5_000),
            t("acme", "calls", 7_999, 7_999),
        ],
        "exactly one event per tier, each with the usage the crossing call reached"
    );
}

#[test]
fn checkpoints_between_calls_do_not_repeat_a_tier() {
    let e = engine(PlanConfig::new("growth").tiers("calls", [2, 4]));
    let h = e.resolve("acme").unwrap();
    let calls = e.meter_index("calls").unwrap();
    for _ in 0..6 {
        e.record(&h, calls, 1);
        let _ = e.checkpoint();
    }
    assert_eq!(
        tiers(&e),
        [t("acme", "calls", 2, 2), t("acme", "calls", 4, 4)],
        "usage moved to the period's base still counts"
    );
}

#[test]
fn a_new_period_raises_the_tiers_again() {
    // 2026-11-30T23:00:00Z, one hour before December.
    let now = Arc::new(AtomicU64::new(1_796_079_600));
    let clock = now.clone();
    let e = Engine::builder(config(
        PlanConfig::new("growth")
            .tiers("calls", [2])
            .quota(QuotaConfig::new("calls", 100, Period::Month)),
    ))
    .wall_clock(move || clock.load(Ordering::Relaxed))
    .build()
    .unwrap();
    let h = e.resolve("acme").unwrap();
    let calls = e.meter_index("calls").unwrap();
    e.tick();
    for _ in 0..3 {
        e.record(&h, calls, 1);
    }
    let _ = e.checkpoint();
    assert_eq!(tiers(&e), [t("acme", "calls", 2, 2)]);
    e.tick();
    e.record(&h, calls, 1);
    assert_eq!(tiers(&e), [], "still November");
    // The reporter checkpoints, then ticks (what is not yet checkpointed at a rollover
    // counts in the new period).
    let _ = e.checkpoint();
    now.fetch_add(3_600, Ordering::Relaxed);
    e.tick();
    e.record(&h, calls, 1);
    assert_eq!(tiers(&e), []);
    e.record(&h, calls, 1);
    assert_eq!(
        tiers(&e),
        [t("acme", "calls", 2, 2)],
        "December counts anew"
    );
}

#[test]
fn tiers_read_from_toml_equal_the_builder() {
    let toml = r#"
        [customers]
        default_plan = "growth"
        [[meters]]
        id = "calls"
        [[meters]]
        id = "tokens"
        aggregation = "sum"
        value = { reported = "tokens" }
        [[plans]]
        id = "growth"
        upsell_after_periods = 2
        quotas = [{ meter = "calls", limit = 100, period = "month" }]
        [plans.meters.calls]
        tiers = [10000, 100000]
    "#;
    let from_toml = Config::from_toml_str(toml).unwrap();
    let built = config(
        PlanConfig::new("growth")
            .quota(QuotaConfig::new("calls", 100, Period::Month))
            .tiers("calls", [10_000, 100_000])
            .upsell_after_periods(2),
    );
    assert_eq!(from_toml, built);
    Engine::new(from_toml).unwrap();
}

#[test]
fn bad_tiers_are_errors_naming_the_field() {
    for (plan, field, problem) in [
        (
            PlanConfig::new("growth").tiers("calls", [10, 10]),
            "plans[0].meters.calls.tiers",
            "strictly increasing",
        ),
        (
            PlanConfig::new("growth").tiers("calls", [100, 10]),
            "plans[0].meters.calls.tiers",
            "strictly increasing",
        ),
        (
            PlanConfig::new("growth").tiers("calls", [0, 10]),
            "plans[0].meters.calls.tiers",
            "positive",
        ),
        (
            PlanConfig::new("growth").tiers("nope", [10]),
            "plans[0].meters.nope",
            "no meter has this id",
        ),
        (
            PlanConfig::new("growth").upsell_after_periods(0),
            "plans[0].upsell_after_periods",
            "at least 1",
        ),
        (
            PlanConfig::new("growth").upsell_after_periods(2),
            "plans[0].upsell_after_periods",
            "no meter of this plan has an allowance",
        ),
    ] {
        let e = Engine::new(config(plan)).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.problem.contains(problem), "{e}");
    }
    let max = Config::builder()
        .meter(
            MeterConfig::sum("peak", ValueConfig::Reported("peak".into()))
                .aggregation(Aggregation::Max),
        )
        .plan(PlanConfig::new("growth").tiers("peak", [10]))
        .build();
    let e = Engine::new(max).unwrap_err();
    assert_eq!(e.field, "plans[0].meters.peak.tiers", "{e}");
    assert!(e.problem.contains("only `count` and `sum`"), "{e}");
}

#[test]
fn usage_settled_by_a_reservation_crosses_tiers_too() {
    let config = Config::builder()
        .meter(MeterConfig::sum("tokens", ValueConfig::Reported("tokens".into())).reserve(100))
        .plan(
            PlanConfig::new("growth")
                .prepaid(1_000_000)
                .price("tokens", 1)
                .tiers("tokens", [500]),
        )
        .default_plan("growth")
        .build();
    let e = Engine::new(config).unwrap();
    let h = e.resolve("acme").unwrap();
    let tokens = e.meter_index("tokens").unwrap();
    e.reserve(&h, tokens, 100).unwrap().settle(450);
    assert_eq!(tiers(&e), []);
    e.reserve(&h, tokens, 100).unwrap().settle(60);
    assert_eq!(tiers(&e), [t("acme", "tokens", 500, 510)]);
}

#[test]
fn the_event_names_the_next_tier() {
    let e = engine(PlanConfig::new("growth").tiers("calls", [2, 4]));
    let h = e.resolve("acme").unwrap();
    let calls = e.meter_index("calls").unwrap();
    let mut next = Vec::new();
    for _ in 0..5 {
        e.record(&h, calls, 1);
        for ev in e.drain_events(10) {
            if let EventKind::TierReached {
                tier, next_tier, ..
            } = ev.kind
            {
                next.push((tier, next_tier));
            }
        }
    }
    assert_eq!(next, [(2, Some(4)), (4, None)]);
}
