//! The customer-facing usage route over real HTTP: `GET /v1/usage` shows the calling
//! customer its own plan, balance and per-meter figures; asking for another customer's
//! usage is refused with `403` and reveals none of its figures; without a valid key it is
//! `401`; the route itself is not metered and stays readable for a customer out of credits.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::{get, post};
use http::Method;
use monetize_axum::{RouterExt, Usage, UsageRoutes};
use monetize_core::Engine;
use monetize_core::config::{Config, MeterConfig, Period, PlanConfig, QuotaConfig, ValueConfig};
use monetize_tests::http::{Client, Reply, TestServer, api_key_layer, used, wait_for_used};
use serde_json::{Value, json};

const CUSTOMERS: [&str; 3] = ["acme", "globex", "initech"];

fn engine() -> Engine {
    let config = Config::builder()
        .meter(MeterConfig::count("api_calls").route("/v1/*").status("2xx"))
        .meter(MeterConfig::sum(
            "tokens",
            ValueConfig::Reported("tokens".into()),
        ))
        .plan(
            PlanConfig::new("free")
                .quota(QuotaConfig::new("api_calls", 10, Period::Month))
                .quota(QuotaConfig::new("tokens", 1_000, Period::Month)),
        )
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(3_000)
                .price("api_calls", 1_000),
        )
        .default_plan("free")
        .build();
    Engine::new(config).expect("valid config")
}

fn app(engine: &Engine) -> Router {
    let usage_routes = UsageRoutes::new(engine.clone());
    let layer = api_key_layer(engine, &CUSTOMERS)
        .exempt(&usage_routes.exempt_pattern())
        .expect("valid pattern");
    Router::new()
        .route("/v1/hello", get(|| async { "hello" }))
        .route(
            "/v1/complete",
            post(|usage: Usage| async move {
                usage.add("tokens", 25);
                "done"
            }),
        )
        .merge(usage_routes.into_router())
        .monetize(layer)
}

/// The usage document without the `resets_at` instants (they move at period ends), after
/// checking each is in the future.
fn without_resets(mut v: Value) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    for m in v["meters"].as_array_mut().expect("meters array") {
        let at = m["resets_at"].as_u64().expect("resets_at");
        assert!(at > now, "resets_at {at} is in the future");
        m.as_object_mut().expect("meter object").remove("resets_at");
    }
    v
}

/// The meter named `name` in a usage document.
fn meter<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["meters"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["meter"] == name))
        .unwrap_or_else(|| panic!("no meter {name} in {v}"))
}

fn assert_usage_of(r: &Reply, engine: &Engine, customer: &str) -> Value {
    assert_eq!(
        r.status,
        200,
        "{customer}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    let direct = serde_json::to_value(engine.usage(customer).expect("known customer"))
        .expect("usage serializes");
    assert_eq!(
        without_resets(v.clone()),
        without_resets(direct),
        "{customer}: the route shows the engine's figures"
    );
    v
}

fn assert_refused_other(r: &Reply, others: &[&str]) {
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(
        v,
        json!({
            "error": "forbidden",
            "reason": "other_customer",
            "message": "The usage route shows only your own usage.",
        })
    );
    let text = r.text();
    for o in others {
        assert!(!text.contains(o), "the refusal names {o}: {text}");
    }
}

async fn setup() -> (Engine, TestServer, Client) {
    let engine = engine();
    engine.register("acme", "free").unwrap();
    engine.register("globex", "prepaid").unwrap();
    engine.register("initech", "free").unwrap();
    let server = TestServer::start(app(&engine)).await;
    let client = server.client();

    for n in 1..=3 {
        assert_eq!(client.get("/v1/hello", Some("acme")).await.status, 200);
        wait_for_used(&engine, "acme", "api_calls", n).await;
    }
    let r = client
        .send(Method::POST, "/v1/complete", Some("acme"), None)
        .await;
    assert_eq!(r.status, 200);
    wait_for_used(&engine, "acme", "tokens", 25).await;
    wait_for_used(&engine, "acme", "api_calls", 4).await;
    for n in 1..=2 {
        assert_eq!(client.get("/v1/hello", Some("globex")).await.status, 200);
        wait_for_used(&engine, "globex", "api_calls", n).await;
    }
    (engine, server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_customer_sees_its_own_figures() {
    let (engine, server, client) = setup().await;

    let acme = assert_usage_of(
        &client.get("/v1/usage", Some("acme")).await,
        &engine,
        "acme",
    );
    assert_eq!(acme["customer"], "acme");
    assert_eq!(acme["plan"], "free");
    assert_eq!(acme["prepaid"], false);
    assert_eq!(acme["balance"], 0);
    assert_eq!(
        acme["status"],
        json!({"delinquent": false, "cancelled": false, "blocked": false})
    );
    let calls = meter(&acme, "api_calls");
    assert_eq!(
        (&calls["used"], &calls["limit"], &calls["remaining"]),
        (&json!(4), &json!(10), &json!(6))
    );
    assert_eq!(calls["period"], "month");
    let tokens = meter(&acme, "tokens");
    assert_eq!(
        (&tokens["used"], &tokens["limit"], &tokens["remaining"]),
        (&json!(25), &json!(1_000), &json!(975))
    );
    assert!(!acme.to_string().contains("globex"));

    let globex = assert_usage_of(
        &client.get("/v1/usage", Some("globex")).await,
        &engine,
        "globex",
    );
    assert_eq!(globex["customer"], "globex");
    assert_eq!(globex["plan"], "prepaid");
    assert_eq!(globex["prepaid"], true);
    assert_eq!(globex["balance"], 1_000);
    let calls = meter(&globex, "api_calls");
    assert_eq!(
        (&calls["used"], &calls["limit"], &calls["remaining"]),
        (&json!(2), &Value::Null, &Value::Null)
    );
    assert_eq!(meter(&globex, "tokens")["used"], 0);

    // A customer that has not called yet sees zeros against its plan.
    let initech = assert_usage_of(
        &client.get("/v1/usage", Some("initech")).await,
        &engine,
        "initech",
    );
    assert_eq!(meter(&initech, "api_calls")["remaining"], 10);

    // The path form, for oneself, is the same document.
    let again = assert_usage_of(
        &client.get("/v1/usage/acme", Some("acme")).await,
        &engine,
        "acme",
    );
    assert_eq!(without_resets(again), without_resets(acme));

    // Reading usage is not metered: the next real call is number 5, not more.
    assert_eq!(client.get("/v1/hello", Some("acme")).await.status, 200);
    wait_for_used(&engine, "acme", "api_calls", 5).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_customers_usage_is_refused_and_never_leaked() {
    let (engine, server, client) = setup().await;

    for (caller, path) in [
        ("acme", "/v1/usage/globex"),
        ("acme", "/v1/usage?customer=globex"),
        ("acme", "/v1/usage?page=1&customer_id=globex"),
        ("acme", "/v1/usage/nobody"),
        ("globex", "/v1/usage/acme"),
        ("globex", "/v1/usage?customer=acme"),
        ("initech", "/v1/usage/acme"),
    ] {
        let r = client.get(path, Some(caller)).await;
        let target = if caller == "acme" { "globex" } else { "acme" };
        // Neither the other's name nor its figures (balance 1,000 / 4 calls / 25 tokens).
        assert_refused_other(&r, &[target, "meters", "balance", "plan", "used"]);
    }
    // The refusals changed nothing.
    assert_eq!(used(&engine, "acme", "api_calls"), 4);
    assert_eq!(used(&engine, "globex", "api_calls"), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_route_needs_a_valid_key() {
    let (engine, server, client) = setup().await;
    for path in ["/v1/usage", "/v1/usage/acme"] {
        for (key, reason) in [
            (None, "missing_api_key"),
            (Some("sk_test_nobody"), "unknown_api_key"),
        ] {
            let r = client.send_with_key(Method::GET, path, key, None).await;
            assert_eq!(r.status, 401, "{path} {key:?}");
            assert_eq!(r.header("content-type"), Some("application/json"));
            let v = r.json();
            assert_eq!(v["error"], "unauthorized");
            assert_eq!(v["reason"], reason);
            assert!(v.get("meters").is_none() && v.get("customer").is_none());
            assert!(!r.text().contains("acme"), "{path}: {}", r.text());
        }
    }
    assert_eq!(used(&engine, "acme", "api_calls"), 4);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_out_of_credits_can_still_read_its_usage() {
    let (engine, server, client) = setup().await;
    // globex has 1,000 micro-credits left: one more call, then 402.
    assert_eq!(client.get("/v1/hello", Some("globex")).await.status, 200);
    wait_for_used(&engine, "globex", "api_calls", 3).await;
    let r = client.get("/v1/hello", Some("globex")).await;
    assert_eq!(r.status, 402);
    assert_eq!(r.json()["reason"], "credits_exhausted");

    let v = assert_usage_of(
        &client.get("/v1/usage", Some("globex")).await,
        &engine,
        "globex",
    );
    assert_eq!(v["balance"], 0);
    assert_eq!(meter(&v, "api_calls")["used"], 3);
    server.shutdown().await;
}
