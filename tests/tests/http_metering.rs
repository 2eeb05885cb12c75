//! Exact metering over real HTTP: four customers send 200 requests each, concurrently,
//! across one templated route (`/v1/items/{id}`), a plain route, an unmetered route and
//! paths no route matches, with GET/POST/DELETE and handlers answering 200, 201, 404 and
//! 500. Every meter must show, per customer, exactly what the test sent: through
//! `Engine::usage` and through the deltas of `Engine::checkpoint`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use http::Method;
use monetize_axum::RouterExt;
use monetize_core::Engine;
use monetize_core::config::{Config, MeterConfig, PlanConfig, ValueConfig};
use monetize_tests::http::{
    TestServer, api_key_layer, checkpoint_totals, usage_map, wait_for_usage, wait_for_used, within,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const CUSTOMERS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];
const REQUESTS_PER_CUSTOMER: usize = 200;
/// Requests in flight at once, over all customers.
const IN_FLIGHT: usize = 32;

/// The meters under test, in config order.
const V1_OK: &str = "v1_ok"; // count, route /v1/*, status 2xx
const ITEM_REQUESTS: &str = "item_requests"; // count, route /v1/items/{id}
const ITEM_DELETES: &str = "item_deletes"; // count, DELETE on /v1/items/{id}
const SERVER_ERRORS: &str = "server_errors"; // count, status 5xx
const EGRESS: &str = "egress_bytes"; // sum of response body bytes
const ALL: &str = "all_requests"; // count, no filter

fn engine() -> Engine {
    let config = Config::builder()
        .meter(MeterConfig::count(V1_OK).route("/v1/*").status("2xx"))
        .meter(MeterConfig::count(ITEM_REQUESTS).route("/v1/items/{id}"))
        .meter(
            MeterConfig::count(ITEM_DELETES)
                .route("/v1/items/{id}")
                .method("DELETE"),
        )
        .meter(MeterConfig::count(SERVER_ERRORS).status("5xx"))
        .meter(MeterConfig::sum(EGRESS, ValueConfig::ResponseBytes))
        .meter(MeterConfig::count(ALL))
        .plan(PlanConfig::new("postpaid"))
        .default_plan("postpaid")
        .build();
    Engine::new(config).expect("valid config")
}

async fn get_item(Path(id): Path<String>) -> (StatusCode, String) {
    if id.starts_with("missing") {
        (StatusCode::NOT_FOUND, format!("no item {id}"))
    } else {
        (StatusCode::OK, format!("item {id}"))
    }
}

async fn create_item(Path(id): Path<String>) -> (StatusCode, String) {
    (StatusCode::CREATED, format!("created item {id}"))
}

async fn delete_item(Path(id): Path<String>) -> (StatusCode, String) {
    if id.starts_with("locked") {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot delete {id}"),
        )
    } else {
        (StatusCode::OK, format!("deleted {id}"))
    }
}

fn app(engine: &Engine) -> Router {
    Router::new()
        .route(
            "/v1/items/{id}",
            get(get_item).post(create_item).delete(delete_item),
        )
        .route(
            "/v1/other",
            get(|| async { "other" })
                .post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "other exploded") }),
        )
        .monetize(api_key_layer(engine, &CUSTOMERS))
        // Added after `monetize`: served, but neither identified nor metered.
        .route("/health", get(|| async { "ok" }))
}

/// One planned request and what the app must answer.
#[derive(Clone, Debug)]
struct Call {
    method: Method,
    path: String,
    status: u16,
    body: String,
    /// Whether the monetize layer sees it (a monetized route).
    metered: bool,
    /// Whether axum matches it to the `/v1/items/{id}` template.
    item: bool,
}

/// The `i`-th request of a customer, for operation `op` (0..9).
fn plan(op: u32, c: &str, i: usize) -> Call {
    let id = format!("{c}-{i}");
    let call = |method: Method, path: String, status: u16, body: String| Call {
        item: path.starts_with("/v1/items/"),
        metered: !(path == "/health" || path.starts_with("/v1/unrouted/")),
        method,
        path,
        status,
        body,
    };
    match op {
        0 => call(
            Method::GET,
            format!("/v1/items/{id}"),
            200,
            format!("item {id}"),
        ),
        1 => call(
            Method::GET,
            format!("/v1/items/missing-{id}"),
            404,
            format!("no item missing-{id}"),
        ),
        2 => call(
            Method::POST,
            format!("/v1/items/{id}"),
            201,
            format!("created item {id}"),
        ),
        3 => call(
            Method::DELETE,
            format!("/v1/items/{id}"),
            200,
            format!("deleted {id}"),
        ),
        4 => call(
            Method::DELETE,
            format!("/v1/items/locked-{id}"),
            500,
            format!("cannot delete locked-{id}"),
        ),
        5 => call(Method::GET, "/v1/other".into(), 200, "other".into()),
        6 => call(
            Method::POST,
            "/v1/other".into(),
            500,
            "other exploded".into(),
        ),
        7 => call(Method::GET, "/health".into(), 200, "ok".into()),
        // No route matches: the router's own 404 (empty body), before the layer.
        _ => call(
            Method::GET,
            format!("/v1/unrouted/{id}"),
            404,
            String::new(),
        ),
    }
}

/// What the meters must show for a set of calls of one customer.
fn expected_for(c: &str, calls: &[Call], into: &mut BTreeMap<(String, String), u64>) {
    let mut add = |meter: &str, n: u64| {
        if n > 0 {
            *into.entry((c.to_owned(), meter.to_owned())).or_insert(0) += n;
        }
    };
    for call in calls.iter().filter(|c| c.metered) {
        let ok = (200..300).contains(&call.status);
        add(V1_OK, u64::from(ok && call.path.starts_with("/v1/")));
        add(ITEM_REQUESTS, u64::from(call.item));
        add(
            ITEM_DELETES,
            u64::from(call.item && call.method == Method::DELETE),
        );
        add(SERVER_ERRORS, u64::from(call.status >= 500));
        add(EGRESS, call.body.len() as u64);
        add(ALL, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_customers_are_metered_exactly_across_routes_methods_and_statuses() {
    let engine = engine();
    let server = TestServer::start(app(&engine)).await;
    let client = server.client();

    // A different, reproducible mix of operations per customer.
    let mut calls: BTreeMap<&str, Vec<Call>> = BTreeMap::new();
    let mut ops = BTreeSet::new();
    for (n, c) in CUSTOMERS.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(0x6d6f_6e65 + n as u64);
        let list = (0..REQUESTS_PER_CUSTOMER)
            .map(|i| {
                let op = rng.random_range(0..9);
                ops.insert(op);
                plan(op, c, i)
            })
            .collect();
        calls.insert(c, list);
    }
    assert_eq!(ops.len(), 9, "every operation is exercised");

    // All customers at once, requests interleaved, IN_FLIGHT at a time.
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = JoinSet::new();
    for (c, list) in &calls {
        for call in list.clone() {
            let (client, gate, c) = (client.clone(), gate.clone(), c.to_string());
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore");
                let reply = client
                    .send(call.method.clone(), &call.path, Some(&c), None)
                    .await;
                assert_eq!(
                    (reply.status, reply.text()),
                    (call.status, call.body.clone()),
                    "{c}: {} {}",
                    call.method,
                    call.path
                );
            });
        }
    }
    within("all requests answered", async {
        while let Some(r) = tasks.join_next().await {
            r.expect("request task");
        }
    })
    .await;

    let mut expected = BTreeMap::new();
    for (c, list) in &calls {
        expected_for(c, list, &mut expected);
    }
    // Sanity: the plan covers every meter for every customer.
    for c in CUSTOMERS {
        for m in [
            V1_OK,
            ITEM_REQUESTS,
            ITEM_DELETES,
            SERVER_ERRORS,
            EGRESS,
            ALL,
        ] {
            assert!(
                expected.contains_key(&(c.to_owned(), m.to_owned())),
                "{c} never exercises {m}"
            );
        }
    }
    let sent_metered: u64 = calls.values().flatten().filter(|c| c.metered).count() as u64;
    let total_all: u64 = CUSTOMERS
        .iter()
        .map(|c| expected[&(c.to_string(), ALL.to_owned())])
        .sum();
    assert_eq!(total_all, sent_metered);

    // 1. Engine::usage: exactly what was sent, per customer and meter.
    wait_for_usage(&engine, &CUSTOMERS, &expected).await;

    // 2. The checkpoint hands over exactly the same figures, once.
    assert_eq!(checkpoint_totals(&engine), expected, "checkpoint deltas");
    assert_eq!(
        checkpoint_totals(&engine),
        BTreeMap::new(),
        "a second checkpoint has nothing new"
    );
    // The period figures are not consumed by checkpoints.
    assert_eq!(usage_map(&engine, &CUSTOMERS), expected);

    // 3. Unmetered traffic stays unmetered, and nobody else was admitted.
    let c = CUSTOMERS[0];
    for _ in 0..5 {
        assert_eq!(client.get("/health", Some(c)).await.status, 200);
        assert_eq!(client.get("/v1/unrouted/x", Some(c)).await.status, 404);
    }
    let reply = client.get("/v1/items/one-more", Some(c)).await;
    assert_eq!((reply.status, reply.text()), (200, "item one-more".into()));
    let mut after = BTreeMap::new();
    for (m, n) in [(V1_OK, 1), (ITEM_REQUESTS, 1), (EGRESS, 13), (ALL, 1)] {
        after.insert((c.to_owned(), m.to_owned()), n);
    }
    let all_before = expected[&(c.to_owned(), ALL.to_owned())];
    wait_for_used(&engine, c, ALL, all_before + 1).await;
    assert_eq!(
        checkpoint_totals(&engine),
        after,
        "only the one extra /v1/items call since the last checkpoint"
    );
    assert_eq!(engine.stats().customers, CUSTOMERS.len());

    server.shutdown().await;
}
