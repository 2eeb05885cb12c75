//! Quota periods over real HTTP, on a wall clock the test moves (`EngineBuilder::
//! wall_clock`; [`housekeeping`] does by hand what the reporter does every checkpoint):
//!
//! - a monthly quota in `Asia/Tokyo` resets at Tokyo's midnight on the 1st (15:00 UTC the
//!   day before), and a clock that steps back across that boundary and forward again
//!   does not reset it a second time;
//! - a `billing_cycle` quota resets on the customer's anchor day, not on the 1st, while a
//!   customer without an anchor on the same plan follows calendar months.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::get;
use monetize_axum::RouterExt;
use monetize_core::config::{Config, MeterConfig, Period, PlanConfig, QuotaConfig};
use monetize_core::{Engine, StateChange};
use monetize_tests::http::{TestServer, api_key_layer, within};

const CALLS: &str = "calls";

/// 2026-11-30T14:00:00Z: 23:00 in Tokyo, the last hour of November there.
const TOKYO_NOV_30_2300: u64 = 1_796_047_200;
/// 2026-11-30T15:00:00Z: midnight, December 1st, in Tokyo.
const TOKYO_DEC_1: u64 = 1_796_050_800;

fn engine(period: Period, time_zone: &str, clock: &Arc<AtomicU64>) -> Engine {
    let config = Config::builder()
        .meter(MeterConfig::count(CALLS))
        .plan(PlanConfig::new("free").quota(QuotaConfig::new(CALLS, 2, period)))
        .default_plan("free")
        .time_zone(time_zone)
        .build();
    let clock = clock.clone();
    Engine::builder(config)
        .wall_clock(move || clock.load(Ordering::Relaxed))
        .build()
        .expect("valid config")
}

fn app(engine: &Engine) -> Router {
    Router::new()
        .route("/v1/call", get(|| async { "ok" }))
        .monetize(api_key_layer(engine, &["acme", "globex"]))
}

async fn calls(server: &TestServer, customer: &str, n: usize) -> Vec<u16> {
    let client = server.client();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            within("call", client.get("/v1/call", Some(customer)))
                .await
                .status,
        );
    }
    out
}

/// A checkpoint (what requests recorded moves into the period's usage), then a tick
/// (periods that ended are reset).
fn housekeeping(engine: &Engine) {
    let _ = engine.checkpoint();
    engine.tick();
}

fn resets_at(engine: &Engine, customer: &str) -> u64 {
    let usage = engine.usage(customer).expect("known customer");
    usage
        .meters
        .iter()
        .find(|m| m.meter.as_str() == CALLS)
        .expect("calls")
        .resets_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_quota_resets_at_midnight_in_its_time_zone_and_once_only() {
    let clock = Arc::new(AtomicU64::new(TOKYO_NOV_30_2300));
    let engine = engine(Period::Month, "Asia/Tokyo", &clock);
    let server = TestServer::start(app(&engine)).await;
    housekeeping(&engine);
    assert_eq!(calls(&server, "acme", 3).await, [200, 200, 429]);
    assert_eq!(resets_at(&engine, "acme"), TOKYO_DEC_1, "Tokyo's month end");

    // December begins in Tokyo (still November 30th in UTC): a new quota.
    clock.store(TOKYO_DEC_1 + 1, Ordering::Relaxed);
    housekeeping(&engine);
    assert_eq!(calls(&server, "acme", 3).await, [200, 200, 429]);

    // The clock steps back into November, then forward again: no second reset.
    clock.store(TOKYO_DEC_1 - 1800, Ordering::Relaxed);
    housekeeping(&engine);
    clock.store(TOKYO_DEC_1 + 60, Ordering::Relaxed);
    housekeeping(&engine);
    assert_eq!(
        calls(&server, "acme", 1).await,
        [429],
        "December's quota is spent"
    );
    server.shutdown().await;
}

/// 2026-01-15T00:00:00Z, acme's subscription start.
const ANCHOR: u64 = 1_768_435_200;
/// 2026-02-15T00:00:00Z: acme's second cycle starts.
const FEB_15: u64 = 1_771_113_600;
/// 2026-03-01T00:00:00Z: a calendar month starts.
const MAR_1: u64 = 1_772_323_200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_cycle_quota_resets_on_the_anchor_day() {
    let clock = Arc::new(AtomicU64::new(FEB_15 - 3600));
    let engine = engine(Period::BillingCycle, "UTC", &clock);
    engine
        .apply("acme", StateChange::BillingAnchor(ANCHOR))
        .expect("anchor acme");
    let server = TestServer::start(app(&engine)).await;
    housekeeping(&engine);
    assert_eq!(calls(&server, "acme", 3).await, [200, 200, 429]);
    assert_eq!(calls(&server, "globex", 3).await, [200, 200, 429]);
    assert_eq!(resets_at(&engine, "acme"), FEB_15);
    assert_eq!(
        resets_at(&engine, "globex"),
        MAR_1,
        "no anchor: calendar month"
    );

    // acme's cycle turns on the 15th; globex (no anchor) waits for March.
    clock.store(FEB_15 + 1, Ordering::Relaxed);
    housekeeping(&engine);
    assert_eq!(calls(&server, "acme", 3).await, [200, 200, 429]);
    assert_eq!(calls(&server, "globex", 1).await, [429]);

    // March 1st resets globex, not acme (whose cycle runs to March 15th).
    clock.store(MAR_1 + 1, Ordering::Relaxed);
    housekeeping(&engine);
    assert_eq!(calls(&server, "globex", 1).await, [200]);
    assert_eq!(calls(&server, "acme", 1).await, [429]);
    assert_eq!(
        resets_at(&engine, "acme"),
        1_773_532_800,
        "2026-03-15T00:00Z"
    );
    server.shutdown().await;
}

/// The same Tokyo month boundary on tokio's paused clock: the engine's wall clock is the
/// start time plus the paused clock's elapsed time, and the test moves it with
/// `tokio::time::advance` while real requests go over loopback TCP.
#[tokio::test(start_paused = true)]
async fn paused_time_carries_a_tokyo_quota_across_the_month_boundary() {
    let t0 = tokio::time::Instant::now();
    let engine = Engine::builder(
        Config::builder()
            .meter(MeterConfig::count(CALLS))
            .plan(PlanConfig::new("free").quota(QuotaConfig::new(CALLS, 2, Period::Month)))
            .default_plan("free")
            .time_zone("Asia/Tokyo")
            .build(),
    )
    .wall_clock(move || TOKYO_NOV_30_2300 + t0.elapsed().as_secs())
    .build()
    .expect("valid config");
    let server = TestServer::start(app(&engine)).await;
    // No client timeout: a paused clock may jump to any pending timer while IO waits.
    let client = reqwest::Client::new();
    let call = || async {
        client
            .get(server.url("/v1/call"))
            .header("x-api-key", monetize_tests::http::key_of("acme"))
            .send()
            .await
            .expect("call")
            .status()
            .as_u16()
    };
    housekeeping(&engine);
    let mut before = Vec::new();
    for _ in 0..3 {
        before.push(call().await);
    }
    assert_eq!(before, [200, 200, 429]);
    // 59 minutes later it is still November in Tokyo.
    tokio::time::advance(std::time::Duration::from_secs(59 * 60)).await;
    housekeeping(&engine);
    assert_eq!(call().await, 429);
    // Two minutes more: December 1st, 00:01 in Tokyo.
    tokio::time::advance(std::time::Duration::from_secs(120)).await;
    housekeeping(&engine);
    let mut after = Vec::new();
    for _ in 0..3 {
        after.push(call().await);
    }
    assert_eq!(after, [200, 200, 429]);
    assert_eq!(
        resets_at(&engine, "acme"),
        1_798_729_200,
        "2027-01-01T00:00 in Tokyo"
    );
    server.shutdown().await;
}

/// A customer's billing anchor is part of its saved state: a restart (a new engine restored
/// from the saved state) keeps its `billing_cycle` quota on the anchor day.
#[test]
fn the_billing_anchor_survives_a_restart() {
    let clock = Arc::new(AtomicU64::new(FEB_15 - 3600));
    let before = engine(Period::BillingCycle, "UTC", &clock);
    before
        .apply("acme", StateChange::BillingAnchor(ANCHOR))
        .expect("anchor acme");
    let saved = before.account("acme").expect("acme is known");
    assert_eq!(saved.billing_anchor, Some(ANCHOR));
    let after = engine(Period::BillingCycle, "UTC", &clock);
    after.restore_account("acme", &saved).expect("restored");
    assert_eq!(resets_at(&after, "acme"), FEB_15, "anchored, not the 1st");
    assert_eq!(
        after.account("acme").and_then(|a| a.billing_anchor),
        Some(ANCHOR)
    );
}
