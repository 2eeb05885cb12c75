//! Reserve, then settle, over real HTTP (axum on a TCP port, reqwest): `tokens` (reported
//! by the handler, 2 micro-credits a token) reserves 100 tokens (200 micro-credits) on
//! `/v1/chat/{mode}` and `/v1/stream` before the handler runs.
//!
//! - concurrent requests never take the balance below zero (a sampler watches it while
//!   they run), the ones the balance cannot cover get `402`, and every token reported is
//!   counted and charged exactly once (not by the settlement and the metering layer both);
//! - a handler that answers an error without reporting, one that panics, and one whose
//!   client disconnects give back everything they held;
//! - a handler that reports tokens from its streaming body is settled at the end of the
//!   body for all it reported, and a client that disconnects mid-stream is settled for
//!   what was reported until then.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::routing::post;
use futures_util::stream;
use http::{Method, StatusCode};
use monetize_axum::{RouterExt, Usage, reserve_layer};
use monetize_core::config::{Config, MeterConfig, PlanConfig, ValueConfig};
use monetize_core::credits::RESERVATION_RULE;
use monetize_core::{Engine, EventKind};
use monetize_tests::http::{TestServer, api_key_layer, eventually, key_of, used, within};

const PRICE: i64 = 2;
const ESTIMATE: u64 = 100;
const HELD: i64 = ESTIMATE as i64 * PRICE;

fn engine(initial: i64) -> Engine {
    let cfg = Config::builder()
        .meter(
            MeterConfig::sum("tokens", ValueConfig::Reported("tokens".into()))
                .route("/v1/chat/{mode}")
                .route("/v1/stream")
                .reserve(ESTIMATE),
        )
        .meter(MeterConfig::count("calls").route("/v1/*"))
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(initial)
                .price("tokens", PRICE as u64),
        )
        .default_plan("prepaid")
        .build();
    Engine::new(cfg).expect("valid config")
}

async fn chat(
    Path(mode): Path<String>,
    Query(p): Query<HashMap<String, u64>>,
    usage: Usage,
) -> (StatusCode, String) {
    let param = |name: &str| p.get(name).copied().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(param("sleep_ms"))).await;
    match mode.as_str() {
        "ok" => {
            usage.add("tokens", param("tokens"));
            (StatusCode::OK, "ok".into())
        }
        "fail" => (StatusCode::INTERNAL_SERVER_ERROR, "model down".into()),
        "panic" => panic!("the handler panics"),
        _ => (StatusCode::NOT_FOUND, String::new()),
    }
}

/// Streams `chunks` chunks, `gap_ms` apart, reporting `tokens` tokens as it hands each
/// one to the server (as an LLM streams its completion): the recorder lives in the body.
async fn stream(usage: Usage, Query(p): Query<HashMap<String, u64>>) -> Body {
    let param = |name: &str| p.get(name).copied().unwrap_or(0);
    let (chunks, tokens, gap) = (param("chunks"), param("tokens"), param("gap_ms"));
    Body::from_stream(stream::unfold(0u64, move |i| {
        let usage = usage.clone();
        async move {
            if i == chunks {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
            usage.add("tokens", tokens);
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from("chunk;")),
                i + 1,
            ))
        }
    }))
}

fn app(engine: &Engine) -> Router {
    Router::new()
        .route("/v1/chat/{mode}", post(chat))
        .route("/v1/stream", post(stream))
        .route_layer(reserve_layer(engine))
        .monetize(api_key_layer(engine, &["acme"]))
}

/// Reads the balance every 200 µs while `running`; returns the lowest seen.
fn sampler(engine: &Engine, running: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    let h = engine.resolve("acme").expect("acme");
    tokio::spawn(async move {
        let low = AtomicI64::new(i64::MAX);
        while running.load(Ordering::Relaxed) {
            low.fetch_min(h.balance(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        low.fetch_min(h.balance(), Ordering::Relaxed);
        low.load(Ordering::Relaxed)
    })
}

async fn post_chat(server: &TestServer, path: &str) -> u16 {
    within(
        path,
        server.client().send(Method::POST, path, Some("acme"), None),
    )
    .await
    .status
}

/// 40 requests at once on a balance that covers 10 reservations, each using at most its
/// estimate: the balance never goes below zero, the refused get `402`, and the balance
/// ends at exactly the start minus the price of the tokens the served requests reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_never_overspend_and_are_charged_once() {
    let initial = 10 * HELD;
    let engine = engine(initial);
    engine.register("acme", "prepaid").unwrap();
    let server = Arc::new(TestServer::start(app(&engine)).await);
    let running = Arc::new(AtomicBool::new(true));
    let low = sampler(&engine, running.clone());
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let tokens = (i * 37) % (ESTIMATE + 1);
            let path = format!("/v1/chat/ok?tokens={tokens}&sleep_ms=30");
            (post_chat(&server, &path).await, tokens)
        }));
    }
    let mut served_tokens = 0;
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (status, tokens) = t.await.unwrap();
        match status {
            200 => {
                ok += 1;
                served_tokens += tokens;
            }
            402 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    running.store(false, Ordering::Relaxed);
    let low = low.await.unwrap();
    assert!(low >= 0, "the balance went down to {low}");
    assert!(ok >= 10, "at least the first 10 fit: {ok} served");
    assert!(
        refused > 0,
        "40 reservations of 200 cannot all fit in 2,000"
    );
    let balance = engine.usage("acme").unwrap().balance;
    assert_eq!(balance, initial - served_tokens as i64 * PRICE);
    assert_eq!(used(&engine, "acme", "tokens"), served_tokens);
    // Refused requests are not metered at all (as a block is not).
    assert_eq!(used(&engine, "acme", "calls"), ok);
}

/// A reservation the balance cannot cover (above zero, so no rule blocks first) is
/// refused with a `402` that raises the event a blocking rule's `402` raises: `Blocked`,
/// naming the reservation, once a minute per customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reservation_raises_a_blocked_event() {
    let engine = engine(HELD - 1);
    engine.register("acme", "prepaid").unwrap();
    let server = TestServer::start(app(&engine)).await;
    for _ in 0..3 {
        let reply = within(
            "the refused request",
            server
                .client()
                .send(Method::POST, "/v1/chat/ok?tokens=1", Some("acme"), None),
        )
        .await;
        assert_eq!(reply.status, 402);
        assert_eq!(reply.json()["reason"], "credits_insufficient");
    }
    let blocked: Vec<_> = engine
        .drain_events(1_000)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Blocked { rule } => Some((e.customer.map(|c| c.to_string()), rule)),
            _ => None,
        })
        .collect();
    assert_eq!(
        blocked,
        vec![(Some("acme".to_owned()), RESERVATION_RULE.into())]
    );
    assert_eq!(engine.usage("acme").unwrap().balance, HELD - 1);
}

/// Requests reporting more than their estimate: the excess is taken only down to zero,
/// whatever the concurrency; the usage is counted in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overruns_never_take_the_balance_below_zero() {
    let initial = 5 * HELD;
    let engine = engine(initial);
    engine.register("acme", "prepaid").unwrap();
    let server = Arc::new(TestServer::start(app(&engine)).await);
    let running = Arc::new(AtomicBool::new(true));
    let low = sampler(&engine, running.clone());
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let status = post_chat(&server, "/v1/chat/ok?tokens=250&sleep_ms=20").await;
            assert!(status == 200 || status == 402, "status {status}");
            status
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    running.store(false, Ordering::Relaxed);
    assert!(low.await.unwrap() >= 0);
    assert!(engine.usage("acme").unwrap().balance >= 0);
    assert!(ok >= 1);
    assert_eq!(used(&engine, "acme", "tokens"), ok * 250);
}

/// An error answer without reported usage, a panic, and a client that goes away: each
/// gives back all it held and records no tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_panics_and_disconnects_release_the_reservation() {
    let initial = 1_000;
    let engine = engine(initial);
    engine.register("acme", "prepaid").unwrap();
    let server = TestServer::start(app(&engine)).await;
    let balance = || engine.usage("acme").unwrap().balance;

    assert_eq!(post_chat(&server, "/v1/chat/fail").await, 500);
    assert_eq!(balance(), initial);

    // The panic closes the connection: the client sees an error, not a response.
    let http = reqwest::Client::new();
    let res = http
        .post(server.url("/v1/chat/panic"))
        .header("x-api-key", key_of("acme"))
        .send()
        .await;
    assert!(res.is_err(), "{res:?}");
    eventually("the panicking request's reservation is released", || {
        balance() == initial
    })
    .await;

    // A client that gives up while the handler runs.
    let slow = http
        .post(server.url("/v1/chat/ok?tokens=50&sleep_ms=5000"))
        .header("x-api-key", key_of("acme"))
        .timeout(Duration::from_millis(300))
        .send();
    let watcher = async {
        eventually("the reservation is held while the handler runs", || {
            balance() == initial - HELD
        })
        .await;
    };
    let (res, ()) = tokio::join!(slow, watcher);
    assert!(res.is_err(), "timed out");
    eventually("the disconnected request's reservation is released", || {
        balance() == initial
    })
    .await;
    assert_eq!(used(&engine, "acme", "tokens"), 0);

    // And a served one is charged what it reported.
    assert_eq!(post_chat(&server, "/v1/chat/ok?tokens=30").await, 200);
    assert_eq!(balance(), initial - 30 * PRICE);
    assert_eq!(used(&engine, "acme", "tokens"), 30);
}

/// A handler that reports its tokens from the streaming body, after the response head:
/// the reservation is settled when the body ends, for every token reported, and charged
/// once (the metering layer leaves the meter to the settlement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reported_while_streaming_is_settled_at_the_end_of_the_body() {
    let initial = 1_000;
    let engine = engine(initial);
    engine.register("acme", "prepaid").unwrap();
    let server = TestServer::start(app(&engine)).await;
    let balance = || engine.usage("acme").unwrap().balance;

    // 5 chunks of 12 tokens: 60 tokens, below the estimate.
    let reply = within(
        "the streamed completion",
        server.client().send(
            Method::POST,
            "/v1/stream?chunks=5&tokens=12&gap_ms=5",
            Some("acme"),
            None,
        ),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "chunk;".repeat(5));
    eventually("the streamed request to be settled", || {
        balance() == initial - 60 * PRICE
    })
    .await;
    assert_eq!(used(&engine, "acme", "tokens"), 60);
    assert_eq!(used(&engine, "acme", "calls"), 1);

    // 3 chunks of 60 tokens: 180 tokens, beyond the estimate of 100; the excess is taken
    // from the balance (which covers it).
    let reply = server
        .client()
        .send(
            Method::POST,
            "/v1/stream?chunks=3&tokens=60&gap_ms=5",
            Some("acme"),
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
    eventually("the overrun to be settled", || {
        balance() == initial - 240 * PRICE
    })
    .await;
    assert_eq!(used(&engine, "acme", "tokens"), 240);
    assert_eq!(used(&engine, "acme", "calls"), 2);
}

/// A client that disconnects mid-stream consumed what was streamed to it: the reservation
/// is settled for the tokens reported until the server dropped the body, the rest of the
/// estimate given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_is_charged_what_was_reported() {
    let initial = 1_000;
    let engine = engine(initial);
    engine.register("acme", "prepaid").unwrap();
    let server = TestServer::start(app(&engine)).await;
    let balance = || engine.usage("acme").unwrap().balance;

    // 50 chunks of 1 token, 40 ms apart: two seconds of body; the client reads one chunk.
    let http = reqwest::Client::new();
    let mut res = within(
        "the response head",
        http.post(server.url("/v1/stream?chunks=50&tokens=1&gap_ms=40"))
            .header("x-api-key", key_of("acme"))
            .send(),
    )
    .await
    .expect("response head");
    assert_eq!(res.status(), 200);
    let first = within("the first chunk", res.chunk())
        .await
        .expect("a chunk");
    assert_eq!(first.as_deref(), Some(&b"chunk;"[..]));
    assert_eq!(balance(), initial - HELD, "held while streaming");
    drop(res);

    eventually("the cut-short stream to be settled", || {
        balance() != initial - HELD
    })
    .await;
    let reported = used(&engine, "acme", "tokens");
    assert!(
        (1..50).contains(&reported),
        "some tokens were reported before the disconnect, not all: {reported}"
    );
    assert_eq!(balance(), initial - reported as i64 * PRICE);
    // Nothing more is settled after: the body is gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(used(&engine, "acme", "tokens"), reported);
    assert_eq!(balance(), initial - reported as i64 * PRICE);
}
