//! Allocation budgets of the layer's allow path, counted by `stats_alloc` in a test binary
//! of their own (so that no other test runs under a counting allocator).
//!
//! The counts are process-wide: the tests take turns (`ONE_AT_A_TIME`), and each request
//! runs on a current-thread runtime, so nothing else allocates while they count.

use std::alloc::System;
use std::convert::Infallible;
use std::sync::Mutex;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use monetize_core::config::{Config, MeterConfig, Period, PlanConfig, QuotaConfig, ValueConfig};
use monetize_core::{CustomerId, Engine};
use monetize_tower::identify::{ApiKey, KeyDirectory};
use monetize_tower::{MonetizeLayer, RouteTemplate, UsageRecorder};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn keys() -> KeyDirectory {
    let k = KeyDirectory::new();
    for c in ["acme", "globex", "initech"] {
        k.insert(format!("key-{c}"), CustomerId::new(c).unwrap());
    }
    k
}

fn used(engine: &Engine, customer: &str, meter: &str) -> u64 {
    engine.usage(customer).map_or(0, |u| {
        u.meters
            .iter()
            .find(|m| m.meter.as_str() == meter)
            .map_or(0, |m| m.used)
    })
}

/// Allocations of one request through `svc`, body read to the end.
async fn allocations_of<S, B>(svc: &S, req: Request<Full<Bytes>>) -> u64
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let svc = svc.clone();
    let region = Region::new(GLOBAL);
    let res = svc.oneshot(req).await.unwrap();
    let mut body = std::pin::pin!(res.into_body());
    while let Some(f) = body.frame().await {
        f.unwrap();
    }
    region.change().allocations as u64
}

fn layered_request() -> Request<Full<Bytes>> {
    let mut r = Request::get("/v1/x")
        .header("x-api-key", "key-acme")
        .body(Full::default())
        .unwrap();
    // Shared, as a server's parsed URI and header values are.
    let _ = r.uri().clone();
    r.extensions_mut().insert(RouteTemplate::new("/v1/x"));
    r
}

#[test]
fn allocations_on_the_allow_path() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = Engine::new(
            Config::builder()
                .meter(MeterConfig::count("calls").route("/v1/*").status("2xx"))
                .meter(MeterConfig::sum(
                    "tokens",
                    ValueConfig::Reported("tokens".into()),
                ))
                .meter(MeterConfig::sum("egress", ValueConfig::ResponseBytes))
                .plan(
                    PlanConfig::new("prepaid")
                        .prepaid(3_000)
                        .price("calls", 1_000),
                )
                .plan(PlanConfig::new("free").quota(QuotaConfig::new("calls", 5, Period::Month)))
                .default_plan("free")
                .build(),
        )
        .unwrap();
        let inner = service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        });
        let layered = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(inner);
        // Warm up: admit the customer; then this thread remembers its key (on the key's
        // second sighting, allocating the thread's token slots once).
        allocations_of(&layered, layered_request()).await;
        allocations_of(&layered, layered_request()).await;
        let base = allocations_of(&inner, layered_request()).await;
        let with = allocations_of(&layered, layered_request()).await;
        let extra = with - base;
        eprintln!("allocations per request: inner alone {base}, with the layer {with} (+{extra})");
        assert_eq!(used(&engine, "acme", "calls"), 3);
        // No header copies (no meter reads headers), no extension slot, no box.
        assert_eq!(extra, 0, "{extra} allocations added by the layer");
    });
}

/// The benchmark's setup: a prepaid customer (an `X-Credits-Remaining` header on every
/// response), a count and a reported meter, a handler reporting through a recorder.
#[test]
fn allocations_with_credits_and_a_recorder() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = Engine::new(
            Config::builder()
                .meter(MeterConfig::count("calls").route("/v1/*").status("2xx"))
                .meter(MeterConfig::sum(
                    "tokens",
                    ValueConfig::Reported("tokens".into()),
                ))
                .plan(
                    PlanConfig::new("prepaid")
                        .prepaid(1_000_000_000)
                        .price("calls", 1),
                )
                .default_plan("prepaid")
                .build(),
        )
        .unwrap();
        // Responses with a header already, as real ones have (the first header of an
        // empty map allocates it).
        fn text() -> Response<Full<Bytes>> {
            let mut r = Response::new(Full::new(Bytes::from_static(b"hello")));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            r
        }
        let plain = service_fn(|_req: Request<Full<Bytes>>| async { Ok::<_, Infallible>(text()) });
        let reporting = service_fn(|_req: Request<Full<Bytes>>| async {
            UsageRecorder::current().unwrap().add("tokens", 3);
            Ok::<_, Infallible>(text())
        });
        let layer = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).credits_header(true);
        let (layered, layered_reporting) = (layer.layer(plain), layer.layer(reporting));
        // Warm up: admit the customer, fill the recorder pool.
        allocations_of(&layered_reporting, layered_request()).await;
        let n: u32 = 200;
        let (mut base, mut with, mut reported) = (0, 0, 0);
        for _ in 0..n {
            base += allocations_of(&plain, layered_request()).await;
            with += allocations_of(&layered, layered_request()).await;
            reported += allocations_of(&layered_reporting, layered_request()).await;
        }
        let per = |a: u64| a as f64 / f64::from(n);
        eprintln!(
            "allocations per request: inner alone {}, with the layer {}, reporting {}",
            per(base),
            per(with),
            per(reported)
        );
        assert_eq!(used(&engine, "acme", "calls"), 2 * u64::from(n) + 1);
        assert_eq!(used(&engine, "acme", "tokens"), 3 * (u64::from(n) + 1));
        // Every response carries the balance.
        let res = layered.clone().oneshot(layered_request()).await.unwrap();
        assert!(res.headers().contains_key("x-credits-remaining"));
        // `X-Credits-Remaining` values come from a shared chunk: one allocation per few
        // dozen responses.
        assert!(per(with - base) < 0.1, "{}", per(with - base));
        // The recorder's slot is pooled; its first `add` allocates the list of reported
        // quantities (`ReportedUsage` cannot be cleared in place yet).
        assert!(per(reported - base) < 1.1, "{}", per(reported - base));
    });
}
