//! Balances and meters never wrap: grants saturate at `i64::MAX`, a balance set or spent
//! far below zero stops at the floor (-2^62 micro-credits), and recorded samples past 2^48
//! are capped and counted.

use monetize_core::config::{Config, MeterConfig, PlanConfig};
use monetize_core::{Engine, StateChange};

fn engine() -> Engine {
    let config = Config::builder()
        .meter(MeterConfig::sum("units", Default::default()))
        .plan(PlanConfig::new("prepaid").prepaid(0).price("units", 1_000))
        .default_plan("prepaid")
        .build();
    Engine::new(config).expect("valid config")
}

fn balance(e: &Engine) -> i64 {
    e.usage("acme").expect("known").balance
}

#[test]
fn grants_saturate_instead_of_wrapping_negative() {
    let e = engine();
    e.apply("acme", StateChange::SetBalance(i64::MAX - 5))
        .unwrap();
    e.apply("acme", StateChange::GrantCredits(i64::MAX))
        .unwrap();
    assert_eq!(balance(&e), i64::MAX);
}

#[test]
fn a_balance_stops_at_the_floor() {
    let e = engine();
    e.apply("acme", StateChange::SetBalance(i64::MIN)).unwrap();
    assert_eq!(balance(&e), -(1 << 62), "set below the floor");
    e.apply("acme", StateChange::GrantCredits(i64::MIN))
        .unwrap();
    assert_eq!(balance(&e), -(1 << 62), "a negative grant stops there too");
    // Spending from the floor (recorded directly, as a handler would) stays there.
    for _ in 0..4 {
        e.record_by_id("acme", "units", u64::MAX).unwrap();
    }
    assert_eq!(balance(&e), -(1 << 62));
    assert_eq!(e.stats().samples_capped, 8, "4 samples and 4 costs capped");
    let used = e.usage("acme").unwrap().meters[0].used;
    assert_eq!(used, 4 << 48);
}
