//! Quota warnings at configurable shares: 80 % and 90 % by default (100 % is
//! `quota_reached`), each once per period; other shares from `warn_at_percents`.

use http::{HeaderMap, Method, StatusCode};
use monetize_core::config::{Config, MeterConfig, Period, PlanConfig, QuotaConfig};
use monetize_core::{Engine, EventKind, Exchange};

fn engine(quota: QuotaConfig) -> Engine {
    let config = Config::builder()
        .meter(MeterConfig::count("calls").route("/v1/*"))
        .plan(PlanConfig::new("free").quota(quota))
        .default_plan("free")
        .build();
    Engine::new(config).unwrap()
}

/// Makes `n` metered calls; returns (used, limit) of every quota event, reached ones
/// with `true`.
fn run(engine: &Engine, n: usize) -> Vec<(u64, u64, bool)> {
    let customer = engine.resolve("acme").unwrap();
    let (method, headers) = (Method::GET, HeaderMap::new());
    for _ in 0..n {
        let ex = Exchange::new(&method, "/v1/x", &headers);
        engine.meter(&customer, &ex.response(StatusCode::OK, &headers, 0));
    }
    engine
        .drain_events(100)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::QuotaWarning { used, limit, .. } => Some((used, limit, false)),
            EventKind::QuotaReached { used, limit, .. } => Some((used, limit, true)),
            _ => None,
        })
        .collect()
}

#[test]
fn warns_at_80_and_90_percent_then_reaches_100_by_default() {
    let e = engine(QuotaConfig::new("calls", 10, Period::Month));
    assert_eq!(
        run(&e, 12),
        [(8, 10, false), (9, 10, false), (10, 10, true)]
    );
}

#[test]
fn other_shares_are_configurable_and_refused_out_of_range() {
    let e = engine(QuotaConfig::new("calls", 20, Period::Month).warn_at_percents([75, 50]));
    assert_eq!(
        run(&e, 20),
        [(10, 20, false), (15, 20, false), (20, 20, true)]
    );
    let bad = Config::builder()
        .meter(MeterConfig::count("calls"))
        .plan(
            PlanConfig::new("free")
                .quota(QuotaConfig::new("calls", 10, Period::Month).warn_at_percents([0])),
        )
        .build();
    let e = Engine::new(bad).unwrap_err().to_string();
    assert!(e.contains("warn_at_percents"), "{e}");
}
