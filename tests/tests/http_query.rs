//! Query filters over real HTTP: a `count` meter with `not(query dry_run=1)` in front of a
//! handler that reads the query the way axum's `Query` does (decoded; it reports both the
//! first and the last `dry_run` it sees). Percent-encoded names and values, `+`, repeated
//! and conflicting parameters: a request goes unbilled only when every reading of it is a
//! dry run, so no encoding gives a free billable call, and an encoded dry run is not billed.

use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use monetize_axum::RouterExt;
use monetize_core::Engine;
use monetize_core::config::{Config, FilterConfig, MeterConfig, PlanConfig};
use monetize_tests::http::{TestServer, api_key_layer, used, wait_for_used, within};

const CALLS: &str = "billable_calls";

fn engine() -> Engine {
    let config = Config::builder()
        .meter(
            MeterConfig::count(CALLS).filter(
                FilterConfig::new()
                    .route("/v1/run")
                    .not(FilterConfig::new().query("dry_run", Some("1"))),
            ),
        )
        .plan(PlanConfig::new("postpaid"))
        .default_plan("postpaid")
        .build();
    Engine::new(config).expect("valid config")
}

/// Answers `first,last`: the first and the last decoded `dry_run` values (`-` when none).
async fn run(Query(pairs): Query<Vec<(String, String)>>) -> String {
    let mut vals = pairs.iter().filter(|(k, _)| k == "dry_run").map(|(_, v)| v);
    let first = vals.next().cloned().unwrap_or_else(|| "-".into());
    let last = vals.next_back().cloned().unwrap_or_else(|| first.clone());
    format!("{first},{last}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_and_repeated_query_parameters_never_give_a_free_call() {
    let engine = engine();
    let app = Router::new()
        .route("/v1/run", get(run))
        .monetize(api_key_layer(&engine, &["acme"]));
    let server = TestServer::start(app).await;
    let client = server.client();
    let queries = [
        "dry_run=1",
        "dry%5Frun=1",
        "dry%5frun=%31",
        "dry_run=%31",
        "a=b&dry_run=1&dry%5Frun=%31",
        "dry_run=0",
        "dry_run=1&dry_run=0",
        "dry_run=0&dry_run=1",
        "dry%5Frun=0&dry_run=1",
        "dry_run=1&dry%5Frun=",
        "dry_run",
        "dry_run=+1",
        "dry_run=1%00",
        "DRY_RUN=1",
        "dry_run%3D1",
        "",
    ];
    let mut billable = 0;
    for q in queries {
        let before = used(&engine, "acme", CALLS);
        let reply = within(q, client.get(&format!("/v1/run?{q}"), Some("acme"))).await;
        assert_eq!(reply.status, 200, "{q:?}: {}", reply.text());
        // What the handler read: a dry run only when both readings say `1`.
        let dry = reply.text() == "1,1";
        if !dry {
            billable += 1;
        }
        wait_for_used(&engine, "acme", CALLS, before + u64::from(!dry)).await;
        assert_eq!(
            used(&engine, "acme", CALLS),
            before + u64::from(!dry),
            "{q:?}: the handler read {}",
            reply.text()
        );
    }
    assert_eq!(billable, 11, "the dry runs are the first five queries");
    assert_eq!(used(&engine, "acme", CALLS), 11);
    server.shutdown().await;
}
