//! Overflow over real HTTP. A sum meter reads the numeric request header `x-units`;
//! clients send `u64::MAX` (and a value past `i64::MAX`): the meter saturates, never
//! wraps, and the capped samples are counted. A prepaid plan prices a meter read from the
//! response header `x-cost`; two requests admitted together each report `u64::MAX`: the
//! balance goes down and stays down (it used to wrap back positive, giving free calls).

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use http::Method;
use monetize_axum::RouterExt;
use monetize_core::Engine;
use monetize_core::config::{Config, MeterConfig, PlanConfig, ValueConfig};
use monetize_tests::http::{TestServer, api_key_layer, key_of, used, wait_for_used, within};
use tokio::sync::Barrier;

const UNITS: &str = "units";
const COST: &str = "cost";
/// The most one sample adds (documented on `EngineStats::samples_capped`).
const SAMPLE_CAP: u64 = 1 << 48;

fn engine() -> Engine {
    let config = Config::builder()
        .meter(MeterConfig::sum(
            UNITS,
            ValueConfig::Header("x-units".into()),
        ))
        .meter(MeterConfig::sum(
            COST,
            ValueConfig::ResponseHeader("x-cost".into()),
        ))
        .plan(PlanConfig::new("metered"))
        .plan(PlanConfig::new("prepaid").prepaid(1000).price(COST, 1))
        .default_plan("metered")
        .build();
    Engine::new(config).expect("valid config")
}

async fn send(server: &TestServer, units: &str) -> u16 {
    let res = within(
        units,
        reqwest::Client::new()
            .request(Method::POST, server.url("/v1/work"))
            .header("x-api-key", key_of("acme"))
            .header("x-units", units)
            .send(),
    )
    .await
    .expect("request");
    res.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u64_max_in_a_numeric_header_saturates_and_is_counted() {
    let engine = engine();
    let app = Router::new()
        .route("/v1/work", post(|| async { "done" }))
        .monetize(api_key_layer(&engine, &["acme"]));
    let server = TestServer::start(app).await;

    assert_eq!(send(&server, &u64::MAX.to_string()).await, 200);
    wait_for_used(&engine, "acme", UNITS, SAMPLE_CAP).await;
    assert_eq!(send(&server, &u64::MAX.to_string()).await, 200);
    wait_for_used(&engine, "acme", UNITS, 2 * SAMPLE_CAP).await;
    assert_eq!(send(&server, "9223372036854775809").await, 200);
    wait_for_used(&engine, "acme", UNITS, 3 * SAMPLE_CAP).await;
    assert_eq!(send(&server, "5").await, 200);
    wait_for_used(&engine, "acme", UNITS, 3 * SAMPLE_CAP + 5).await;

    assert_eq!(used(&engine, "acme", UNITS), 3 * SAMPLE_CAP + 5);
    assert_eq!(engine.stats().samples_capped, 3);
    let total: u64 = engine
        .checkpoint()
        .iter()
        .filter(|d| d.meter.as_str() == UNITS)
        .map(|d| d.measure.quantity())
        .sum();
    assert_eq!(total, 3 * SAMPLE_CAP + 5, "what goes to the spool");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_never_wraps_back_to_credit() {
    let engine = engine();
    engine
        .register("acme", "prepaid")
        .expect("register acme on the prepaid plan");
    // Both requests are admitted (the balance is positive) before either is charged.
    let barrier = Arc::new(Barrier::new(2));
    let app = Router::new()
        .route(
            "/v1/costly",
            get(move || {
                let barrier = barrier.clone();
                async move {
                    barrier.wait().await;
                    ([("x-cost", u64::MAX.to_string())], "costly")
                }
            }),
        )
        .route("/v1/cheap", get(|| async { ([("x-cost", "1")], "cheap") }))
        .monetize(api_key_layer(&engine, &["acme"]));
    let server = TestServer::start(app).await;
    let client = server.client();
    let (a, b) = tokio::join!(
        within("costly 1", client.get("/v1/costly", Some("acme"))),
        within("costly 2", client.get("/v1/costly", Some("acme"))),
    );
    assert_eq!((a.status, b.status), (200, 200));
    wait_for_used(&engine, "acme", COST, 2 * SAMPLE_CAP).await;
    let balance = engine.usage("acme").expect("acme is known").balance;
    assert_eq!(
        balance,
        1000 - 2 * (SAMPLE_CAP as i64),
        "charged, not wrapped"
    );
    assert_eq!(engine.stats().samples_capped, 2);
    let next = within("cheap", client.get("/v1/cheap", Some("acme"))).await;
    assert_eq!(next.status, 402, "credits are spent: {}", next.text());
    server.shutdown().await;
}
