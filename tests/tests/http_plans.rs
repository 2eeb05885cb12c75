//! Plans by id over real HTTP: `free` has a quota of 2 calls a month, `pro` none. A
//! reload that reorders the plans leaves each customer on the plan of the same id, and
//! `register()` on a customer that was evicted (dormant) puts it on the plan asked for.

use axum::Router;
use axum::routing::get;
use monetize_axum::RouterExt;
use monetize_core::Engine;
use monetize_core::config::{Config, MeterConfig, Period, PlanConfig, QuotaConfig};
use monetize_tests::http::{TestServer, api_key_layer, wait_for_used, within};

const CALLS: &str = "calls";

fn config(pro_first: bool) -> Config {
    let free = PlanConfig::new("free").quota(QuotaConfig::new(CALLS, 2, Period::Month));
    let pro = PlanConfig::new("pro");
    let b = Config::builder().meter(MeterConfig::count(CALLS));
    let b = if pro_first {
        b.plan(pro).plan(free)
    } else {
        b.plan(free).plan(pro)
    };
    b.default_plan("free").build()
}

fn app(engine: &Engine) -> Router {
    Router::new()
        .route("/v1/call", get(|| async { "ok" }))
        .monetize(api_key_layer(engine, &["acme", "globex"]))
}

fn plan_of(engine: &Engine, customer: &str) -> String {
    engine
        .usage(customer)
        .and_then(|u| u.plan)
        .map(|p| p.to_string())
        .unwrap_or_default()
}

/// Sends `n` calls as `customer`; returns their statuses.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_reorders_plans_moves_nobody() {
    let engine = Engine::new(config(false)).expect("valid config");
    engine.register("acme", "pro").expect("register acme");
    engine.register("globex", "free").expect("register globex");
    let server = TestServer::start(app(&engine)).await;
    assert_eq!(calls(&server, "acme", 1).await, [200]);
    assert_eq!(calls(&server, "globex", 1).await, [200]);

    engine.reload(config(true)).expect("reordered plans reload");
    assert_eq!(plan_of(&engine, "acme"), "pro");
    assert_eq!(plan_of(&engine, "globex"), "free");
    // acme (pro) has no quota; globex (free) has one more call.
    assert_eq!(calls(&server, "acme", 4).await, [200; 4]);
    assert_eq!(calls(&server, "globex", 2).await, [200, 429]);
    wait_for_used(&engine, "acme", CALLS, 5).await;

    // A reload that drops a plan customers may be on is refused, naming it.
    let err = engine
        .reload(
            Config::builder()
                .meter(MeterConfig::count(CALLS))
                .plan(PlanConfig::new("pro"))
                .default_plan("pro")
                .build(),
        )
        .expect_err("free was dropped");
    assert!(err.to_string().contains("free"), "{err}");
    assert_eq!(plan_of(&engine, "globex"), "free");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_on_an_evicted_customer_applies_the_plan_asked_for() {
    let engine = Engine::new(config(false)).expect("valid config");
    let server = TestServer::start(app(&engine)).await;
    // acme arrives on the default plan (free) and uses its quota.
    assert_eq!(calls(&server, "acme", 3).await, [200, 200, 429]);
    wait_for_used(&engine, "acme", CALLS, 2).await;
    assert_eq!(engine.evict_idle(0), 1, "acme is evicted");
    assert_eq!(engine.stats().dormant, 1);

    let handle = engine
        .register("acme", "pro")
        .expect("register acme on pro");
    drop(handle);
    assert_eq!(plan_of(&engine, "acme"), "pro");
    assert_eq!(
        calls(&server, "acme", 3).await,
        [200; 3],
        "pro has no quota"
    );
    wait_for_used(&engine, "acme", CALLS, 5).await;
    server.shutdown().await;
}
