//! The service end to end in process: identify, govern, meter and the response body,
//! through `tower` (moved out of `service.rs`, which keeps its own unit test).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use monetize_core::config::{
    BlockConfig, BodySide, ConditionConfig, Config, JsonFieldConfig, MeterConfig, OverflowPolicy,
    Period, PlanConfig, QuotaConfig, RuleConfig, ValueConfig,
};
use monetize_core::{CustomerHandle, CustomerId, Engine, PlanId, ReportedUsage, StateChange};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

use monetize_tower::identify::{ApiKey, KeyDirectory};
use monetize_tower::{
    MissingPolicy, MonetizeLayer, RouteTemplate, TapBody, UsageRecorder, current_customer,
};

fn meters() -> monetize_core::config::ConfigBuilder {
    Config::builder()
        .meter(MeterConfig::count("calls").route("/v1/*").status("2xx"))
        .meter(MeterConfig::sum(
            "tokens",
            ValueConfig::Reported("tokens".into()),
        ))
        .meter(MeterConfig::sum("egress", ValueConfig::ResponseBytes))
        .meter(MeterConfig::count("user_reads").route("/users/{id}"))
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(3_000)
                .price("calls", 1_000),
        )
        .plan(PlanConfig::new("free").quota(QuotaConfig::new("calls", 5, Period::Month)))
        .default_plan("free")
}

fn engine() -> Engine {
    Engine::new(meters().build()).unwrap()
}

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

fn get(path: &str, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::get(path);
    if let Some(k) = key {
        b = b.header("x-api-key", format!("key-{k}"));
    }
    b.body(Full::default()).unwrap()
}

async fn hello(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::from("hello")))
}

async fn json(res: Response<impl Body<Data = Bytes, Error = Infallible>>) -> serde_json::Value {
    let b = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&b).unwrap()
}

#[tokio::test]
async fn counts_calls_and_response_bytes() {
    let engine = engine();
    let svc = ServiceBuilder::new()
        .layer(MonetizeLayer::new(engine.clone(), ApiKey::new(keys())))
        .service(service_fn(|req: Request<Full<Bytes>>| async move {
            let status = if req.uri().path() == "/v1/missing" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            let mut r = Response::new(Full::from("hello"));
            *r.status_mut() = status;
            Ok::<_, Infallible>(r)
        }));
    for path in ["/v1/a", "/v1/b", "/v1/missing", "/other"] {
        let res = svc.clone().oneshot(get(path, Some("acme"))).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }
    assert_eq!(used(&engine, "acme", "calls"), 2, "only /v1/* with 2xx");
    assert_eq!(used(&engine, "acme", "egress"), 20);
    assert_eq!(used(&engine, "globex", "calls"), 0);
}

/// Puts `customer` on the prepaid plan with `balance` micro-credits.
fn prepaid(engine: &Engine, customer: &str, balance: i64) {
    engine
        .apply(customer, StateChange::Plan(PlanId::new("prepaid").unwrap()))
        .unwrap();
    engine
        .apply(customer, StateChange::SetBalance(balance))
        .unwrap();
}

#[tokio::test]
async fn prepaid_credits_spent_then_402_with_json_body() {
    let engine = engine();
    prepaid(&engine, "acme", 3_000);
    // By default allowed responses carry no balance.
    let quiet = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(hello));
    let res = quiet.oneshot(get("/other", Some("acme"))).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-credits-remaining").is_none());
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys()))
        .credits_header(true)
        .layer(service_fn(hello));
    for i in 0..3 {
        let res = svc
            .clone()
            .oneshot(get("/v1/x", Some("acme")))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let left = res.headers()["x-credits-remaining"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(left, (3_000 - i * 1_000).to_string());
        res.into_body().collect().await.unwrap();
    }
    let res = svc
        .clone()
        .oneshot(get("/v1/x", Some("acme")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["x-credits-remaining"], "0");
    let v = json(res).await;
    assert_eq!(v["error"], "payment_required");
    assert_eq!(v["reason"], "credits_exhausted");
    assert_eq!(v["customer"], "acme");
    assert_eq!(v["balance"], 0);
    assert_eq!(
        used(&engine, "acme", "calls"),
        3,
        "a blocked call is not metered"
    );
}

#[tokio::test]
async fn delinquent_customer_gets_402_payment_overdue() {
    let engine = engine();
    engine
        .apply("globex", StateChange::Delinquent(true))
        .unwrap();
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(hello));
    let res = svc.oneshot(get("/v1/x", Some("globex"))).await.unwrap();
    assert_eq!(res.status(), 402);
    assert_eq!(json(res).await["reason"], "payment_overdue");
}

#[tokio::test]
async fn quota_exceeded_gets_429_with_retry_after() {
    let engine = engine();
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(hello));
    for _ in 0..5 {
        let res = svc
            .clone()
            .oneshot(get("/v1/x", Some("acme")))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();
    }
    let res = svc
        .clone()
        .oneshot(get("/v1/x", Some("acme")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v = json(res).await;
    assert_eq!(v["reason"], "quota_exceeded");
    assert_eq!(v["quota"]["limit"], 5);
    assert_eq!(v["quota"]["meter"], "calls");
    assert_eq!(v["retry_after"], retry);
}

/// Keys a thread remembers (under their MAC and the directory's version) are never
/// resolved from memory after the directory changes: a re-assigned key bills its new
/// customer at once, a revoked one is refused at once, for API keys and bearer tokens.
#[tokio::test(flavor = "current_thread")]
async fn remembered_keys_follow_reassignment_and_revocation_at_once() {
    for bearer in [false, true] {
        let engine = engine();
        let keys = keys();
        let layer = if bearer {
            MonetizeLayer::new(
                engine.clone(),
                monetize_tower::identify::Bearer::new(keys.clone()),
            )
        } else {
            MonetizeLayer::new(engine.clone(), ApiKey::new(keys.clone()))
        };
        let svc = layer.layer(service_fn(hello));
        let req = || {
            let b = Request::get("/v1/x");
            let b = if bearer {
                b.header("authorization", "Bearer key-acme")
            } else {
                b.header("x-api-key", "key-acme")
            };
            b.body(Full::default()).unwrap()
        };
        let status = |res: &Response<_>| res.status();
        // Seen twice on this thread: the key is remembered from the second request on.
        for _ in 0..4 {
            let res = svc.clone().oneshot(req()).await.unwrap();
            assert_eq!(status(&res), StatusCode::OK);
        }
        assert_eq!(used(&engine, "acme", "calls"), 4);
        // Re-assigned: the very next request is the new customer's.
        keys.insert("key-acme", CustomerId::new("globex").unwrap());
        for _ in 0..3 {
            let res = svc.clone().oneshot(req()).await.unwrap();
            assert_eq!(status(&res), StatusCode::OK);
        }
        assert_eq!(used(&engine, "acme", "calls"), 4, "bearer: {bearer}");
        assert_eq!(used(&engine, "globex", "calls"), 3, "bearer: {bearer}");
        // An unrelated change (another key added) keeps it working.
        keys.insert("key-new", CustomerId::new("initech").unwrap());
        let res = svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(status(&res), StatusCode::OK);
        // Metered when the body ends (a meter counts response bytes).
        drop(res);
        assert_eq!(used(&engine, "globex", "calls"), 4);
        // Revoked: refused at once.
        assert!(keys.remove("key-acme").is_some());
        for _ in 0..2 {
            let res = svc.clone().oneshot(req()).await.unwrap();
            assert_eq!(status(&res), StatusCode::UNAUTHORIZED, "bearer: {bearer}");
        }
        assert_eq!(used(&engine, "globex", "calls"), 4);
        // A remembered customer evicted since comes back through the directory, its
        // usage kept.
        keys.insert("key-acme", CustomerId::new("initech").unwrap());
        for _ in 0..2 {
            svc.clone().oneshot(req()).await.unwrap();
        }
        assert_eq!(engine.evict_idle(0), 3, "acme, globex and initech are idle");
        let res = svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(status(&res), StatusCode::OK);
        drop(res);
        assert_eq!(used(&engine, "initech", "calls"), 3);
    }
}

#[tokio::test]
async fn missing_and_unknown_keys_get_401_and_never_reach_the_api() {
    let engine = engine();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(move |r| {
        c.fetch_add(1, Ordering::Relaxed);
        hello(r)
    }));
    let res = svc.clone().oneshot(get("/v1/x", None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let v = json(res).await;
    assert_eq!(v["error"], "unauthorized");
    assert_eq!(v["reason"], "missing_api_key");
    assert!(v["message"].as_str().unwrap().contains("x-api-key"));

    let req = Request::get("/v1/x")
        .header("x-api-key", "sk_wrong_secret")
        .body(Full::default())
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let v = json(res).await;
    assert_eq!(v["reason"], "unknown_api_key");
    assert!(!v.to_string().contains("sk_wrong_secret"));
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(engine.stats().customers, 0);
}

/// The layer reads an `ApiKey`'s header itself (not through `dyn Identify`): a custom
/// header is the one read, for the directory's and the remembered-token paths alike,
/// and the refusal names it.
#[tokio::test(flavor = "current_thread")]
async fn a_custom_api_key_header_is_the_one_read() {
    let engine = engine();
    let api_key = ApiKey::new(keys()).header("x-acme-key").unwrap();
    let svc = MonetizeLayer::new(engine.clone(), api_key).layer(service_fn(hello));
    for _ in 0..3 {
        let req = Request::get("/v1/x")
            .header("x-acme-key", "key-globex")
            .header("x-api-key", "key-acme")
            .body(Full::default())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(used(&engine, "globex", "calls"), 3);
    assert_eq!(used(&engine, "acme", "calls"), 0);
    // `x-api-key` alone is no key for this layer; an empty value is none either.
    for value in ["key-acme", ""] {
        let mut b = Request::get("/v1/x").header("x-api-key", "key-acme");
        if value.is_empty() {
            b = b.header("x-acme-key", "");
        }
        let res = svc
            .clone()
            .oneshot(b.body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let v = json(res).await;
        assert_eq!(v["reason"], "missing_api_key");
        assert!(v["message"].as_str().unwrap().contains("x-acme-key"), "{v}");
    }
    // The same strategy behind an `Arc` is read through `dyn Identify`, alike.
    let shared = Arc::new(ApiKey::new(keys()).header("x-acme-key").unwrap());
    let svc = MonetizeLayer::new(engine.clone(), shared).layer(service_fn(hello));
    let req = Request::get("/v1/x")
        .header("x-acme-key", "key-globex")
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.into_body().collect().await.unwrap();
    assert_eq!(used(&engine, "globex", "calls"), 4);
}

#[tokio::test]
async fn anonymous_policy_lets_through_unmetered() {
    let engine = engine();
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys()))
        .on_missing(MissingPolicy::Anonymous)
        .layer(service_fn(|req: Request<Full<Bytes>>| async move {
            assert!(req.extensions().get::<CustomerHandle>().is_none());
            assert!(current_customer().is_none());
            assert!(!UsageRecorder::current().unwrap().is_attached());
            hello(req).await
        }));
    let res = svc.clone().oneshot(get("/v1/x", None)).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
    assert_eq!(engine.stats().customers, 0);
    // Unknown keys are still refused.
    let req = Request::get("/v1/x")
        .header("x-api-key", "nope")
        .body(Full::default())
        .unwrap();
    assert_eq!(svc.oneshot(req).await.unwrap().status(), 401);
}

#[tokio::test]
async fn missing_policy_can_serve_as_a_shared_customer() {
    let engine = engine();
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys()))
        .on_missing(MissingPolicy::Customer(
            CustomerId::new("anonymous").unwrap(),
        ))
        .layer(service_fn(hello));
    let res = svc.oneshot(get("/v1/x", None)).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(used(&engine, "anonymous", "calls"), 1);
}

#[tokio::test]
async fn shadow_rule_lets_through_and_counts_the_hit() {
    let cfg = meters()
        .rule(
            RuleConfig::block(
                "credits",
                ConditionConfig::CreditsExhausted,
                BlockConfig::new(402, "credits_exhausted", "Top up."),
            )
            .shadow(),
        )
        .build();
    let engine = Engine::new(cfg).unwrap();
    prepaid(&engine, "acme", 0);
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(hello));
    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(get("/v1/x", Some("acme")))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();
    }
    let hits = engine.stats().rule_hits;
    assert_eq!(hits, vec![("credits".to_owned(), true, 2)]);
    assert_eq!(used(&engine, "acme", "calls"), 2);
}

/// Count and reported meters only: nothing reads the body.
fn head_only_engine() -> Engine {
    Engine::new(
        Config::builder()
            .meter(MeterConfig::count("calls").route("/v1/*").status("2xx"))
            .meter(MeterConfig::sum(
                "tokens",
                ValueConfig::Reported("tokens".into()),
            ))
            .build(),
    )
    .unwrap()
}

#[tokio::test]
async fn without_body_meters_the_head_is_metered_and_the_body_passed_through() {
    let engine = head_only_engine();
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(
        |req: Request<Full<Bytes>>| async move {
            let rec = UsageRecorder::current().unwrap();
            rec.add("tokens", 7);
            let mut res = Response::new(Full::from("hello"));
            if req.uri().path() == "/v1/ext" {
                let mut r = ReportedUsage::new();
                r.add("tokens", 100);
                res.extensions_mut().insert(r);
            }
            Ok::<_, Infallible>(res)
        },
    ));
    let res = svc
        .clone()
        .oneshot(get("/v1/x", Some("acme")))
        .await
        .unwrap();
    // Metered before the body is read, and the body is the handler's own.
    assert_eq!(used(&engine, "acme", "calls"), 1);
    assert_eq!(used(&engine, "acme", "tokens"), 7);
    let body = res.into_body();
    assert!(!body.meters_at_end());
    let inner = body.into_inner().expect("passed through");
    assert_eq!(&inner.collect().await.unwrap().to_bytes()[..], b"hello");
    // Response-extension usage and the recorder's, summed.
    let res = svc.oneshot(get("/v1/ext", Some("acme"))).await.unwrap();
    drop(res);
    assert_eq!(used(&engine, "acme", "tokens"), 7 + 107);
    assert_eq!(used(&engine, "acme", "calls"), 2);
}

/// A body that reports tokens through a recorder as it streams.
struct Reporting {
    chunks: VecDeque<Bytes>,
    recorder: Option<UsageRecorder>,
}

impl Body for Reporting {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.chunks.pop_front();
        match (&next, &self.recorder) {
            (Some(_), Some(r)) => r.add("tokens", 10),
            // Done: let go of the recorder, as a finished stream would.
            (None, _) => self.recorder = None,
            _ => {}
        }
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn a_recorder_alive_in_the_body_defers_metering_to_its_end() {
    let engine = head_only_engine();
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(
        |_req: Request<Full<Bytes>>| async {
            let recorder = UsageRecorder::current();
            recorder.as_ref().unwrap().add("tokens", 1);
            let chunks = (0..3).map(|_| Bytes::from_static(b"xx")).collect();
            Ok::<_, Infallible>(Response::new(Reporting { chunks, recorder }))
        },
    ));
    let res = svc
        .clone()
        .oneshot(get("/v1/stream", Some("acme")))
        .await
        .unwrap();
    assert_eq!(used(&engine, "acme", "calls"), 0, "waits for the body");
    let body = res.into_body();
    assert!(body.meters_at_end());
    let all = body.collect().await.unwrap().to_bytes();
    assert_eq!(all.len(), 6);
    assert_eq!(used(&engine, "acme", "calls"), 1);
    assert_eq!(used(&engine, "acme", "tokens"), 31);
    // Dropped mid-body: what was added so far.
    let res = svc.oneshot(get("/v1/stream", Some("acme"))).await.unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    assert_eq!(used(&engine, "acme", "tokens"), 31 + 11);
    assert_eq!(used(&engine, "acme", "calls"), 2);
}

/// A body yielding its chunks one frame at a time.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn client_disconnecting_mid_body_is_metered_for_bytes_sent() {
    let engine = engine();
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(
        |_req: Request<Full<Bytes>>| async {
            let chunks = (0..3).map(|_| Bytes::from_static(&[b'x'; 10])).collect();
            Ok::<_, Infallible>(Response::new(Chunks(chunks)))
        },
    ));
    let res = svc
        .clone()
        .oneshot(get("/v1/stream", Some("acme")))
        .await
        .unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.data_ref().unwrap().len(), 10);
    assert_eq!(
        used(&engine, "acme", "egress"),
        0,
        "not metered before the body ends"
    );
    drop(body); // the client went away
    assert_eq!(used(&engine, "acme", "egress"), 10);
    assert_eq!(used(&engine, "acme", "calls"), 1);

    // A full read is metered in full, as soon as the body ends.
    let res = svc.oneshot(get("/v1/stream", Some("acme"))).await.unwrap();
    let all = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(all.len(), 30);
    assert_eq!(used(&engine, "acme", "egress"), 40);
}

#[tokio::test]
async fn reported_usage_from_response_extensions_and_recorders() {
    let engine = engine();
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(
        |req: Request<Full<Bytes>>| async move {
            let by_recorder = req.uri().path() == "/v1/recorder";
            let mut res = Response::new(Full::from("ok"));
            if by_recorder {
                let rec = UsageRecorder::current().expect("inside the layer");
                assert!(rec.is_attached());
                tokio::task::yield_now().await;
                rec.add("tokens", 500);
                UsageRecorder::current().unwrap().add("tokens", 12);
            } else {
                let mut r = ReportedUsage::new();
                r.add("tokens", 30);
                res.extensions_mut().insert(r);
            }
            Ok::<_, Infallible>(res)
        },
    ));
    for path in ["/v1/ext", "/v1/recorder"] {
        let res = svc.clone().oneshot(get(path, Some("acme"))).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(used(&engine, "acme", "tokens"), 542);
    assert!(UsageRecorder::current().is_none(), "outside the layer");
}

#[tokio::test]
async fn json_field_of_the_response_is_captured_without_changing_it() {
    let body = r#"{"answer":"yes","usage":{"total":42}}"#;
    for (cap, want) in [(64 * 1024, 42), (16, 0)] {
        let mut field = JsonFieldConfig::response("/usage/total");
        field.max_bytes = cap;
        let cfg = meters()
            .meter(MeterConfig::sum("llm_tokens", ValueConfig::Json(field)))
            .build();
        let engine = Engine::new(cfg).unwrap();
        let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(
            move |_req: Request<Full<Bytes>>| async move {
                let chunks = body
                    .as_bytes()
                    .chunks(7)
                    .map(Bytes::copy_from_slice)
                    .collect();
                Ok::<_, Infallible>(Response::new(Chunks(chunks)))
            },
        ));
        let res = svc.oneshot(get("/v1/chat", Some("acme"))).await.unwrap();
        let got = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &got[..],
            body.as_bytes(),
            "the client gets the body unchanged"
        );
        assert_eq!(used(&engine, "acme", "llm_tokens"), want, "cap {cap}");
    }
}

#[tokio::test]
async fn json_field_of_the_request_is_captured_through_the_tap() {
    let mut req_side = JsonFieldConfig::response("/max_tokens");
    req_side.from = BodySide::Request;
    let cfg = meters()
        .meter(MeterConfig::sum("requested", ValueConfig::Json(req_side)))
        .meter(MeterConfig::sum("in_bytes", ValueConfig::RequestBytes))
        .build();
    let engine = Engine::new(cfg).unwrap();
    let layer = MonetizeLayer::new(engine.clone(), ApiKey::new(keys()));
    assert!(layer.taps_request_body());
    let svc = ServiceBuilder::new()
        .layer(layer)
        .map_request(TapBody::from_request)
        .service(service_fn(
            |req: Request<TapBody<Full<Bytes>>>| async move {
                let got = req.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&got[..], br#"{"max_tokens":64}"#);
                Ok::<_, Infallible>(Response::new(Full::from("ok")))
            },
        ));
    let req = Request::post("/v1/chat")
        .header("x-api-key", "key-acme")
        .body(Full::from(r#"{"max_tokens":64}"#))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(used(&engine, "acme", "requested"), 64);
    assert_eq!(used(&engine, "acme", "in_bytes"), 17);
}

/// A streamed request body with no `Content-Length`.
mod streamed {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::Frame;

    /// `n` frames of 1,000 bytes each.
    pub(super) struct Chunks(pub(super) usize);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.0 == 0 {
                return Poll::Ready(None);
            }
            self.0 -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 1000])))))
        }
    }
}

#[tokio::test]
async fn request_bytes_are_the_frames_the_service_read() {
    let cfg = meters()
        .meter(MeterConfig::sum("in_bytes", ValueConfig::RequestBytes))
        .build();
    let engine = Engine::new(cfg).unwrap();
    let layer = MonetizeLayer::new(engine.clone(), ApiKey::new(keys()));
    assert!(layer.taps_request_body(), "a request-bytes meter taps");
    // Reads two frames of five, then answers.
    let svc = ServiceBuilder::new()
        .layer(layer)
        .map_request(TapBody::from_request)
        .service(service_fn(
            |req: Request<TapBody<streamed::Chunks>>| async move {
                let mut body = req.into_body();
                for _ in 0..2 {
                    body.frame().await.unwrap().unwrap();
                }
                Ok::<_, Infallible>(Response::new(Full::from("ok")))
            },
        ));
    let req = Request::post("/v1/upload")
        .header("x-api-key", "key-acme")
        .body(streamed::Chunks(5))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(
        used(&engine, "acme", "in_bytes"),
        2000,
        "what the handler read"
    );
}

#[tokio::test]
async fn the_customer_is_in_scope_and_route_templates_are_used() {
    let engine = engine();
    let svc = ServiceBuilder::new()
        .map_request(|mut req: Request<Full<Bytes>>| {
            req.extensions_mut()
                .insert(RouteTemplate::new("/users/{id}"));
            req
        })
        .layer(MonetizeLayer::new(engine.clone(), ApiKey::new(keys())))
        .service(service_fn(|req: Request<Full<Bytes>>| async move {
            let h = current_customer().expect("in the layer's scope");
            assert_eq!(h.id().as_str(), "initech");
            tokio::task::yield_now().await;
            assert_eq!(current_customer().unwrap().id().as_str(), "initech");
            assert!(
                req.extensions().get::<CustomerHandle>().is_none(),
                "not in the extensions unless asked"
            );
            hello(req).await
        }));
    for id in [1, 2, 3] {
        let res = svc
            .clone()
            .oneshot(get(&format!("/users/{id}"), Some("initech")))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(used(&engine, "initech", "user_reads"), 3);
    assert!(current_customer().is_none(), "outside the layer");
}

#[tokio::test]
async fn the_handle_goes_into_the_extensions_when_asked() {
    let engine = engine();
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys()))
        .customer_extension(true)
        .layer(service_fn(|req: Request<Full<Bytes>>| {
            // Read in `call`, outside the layer's scope.
            let h = req.extensions().get::<CustomerHandle>().cloned();
            async move {
                assert_eq!(h.expect("handle").id().as_str(), "globex");
                hello(req).await
            }
        }));
    let res = svc.oneshot(get("/v1/x", Some("globex"))).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn exempt_routes_are_identified_but_neither_governed_nor_metered() {
    let engine = engine();
    engine.apply("acme", StateChange::Delinquent(true)).unwrap();
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys()))
        .exempt("/v1/usage*")
        .unwrap()
        .layer(service_fn(|req: Request<Full<Bytes>>| async move {
            assert_eq!(current_customer().unwrap().id().as_str(), "acme");
            hello(req).await
        }));
    let res = svc
        .clone()
        .oneshot(get("/v1/usage", Some("acme")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
    assert_eq!(used(&engine, "acme", "calls"), 0);
    let res = svc
        .clone()
        .oneshot(get("/v1/other", Some("acme")))
        .await
        .unwrap();
    assert_eq!(res.status(), 402);
    assert_eq!(
        svc.oneshot(get("/v1/usage", None)).await.unwrap().status(),
        401
    );
    assert!(
        MonetizeLayer::new(engine.clone(), ApiKey::new(keys()))
            .exempt("usage")
            .is_err()
    );
}

#[tokio::test]
async fn customer_cap_answers_503() {
    let cfg = meters().max_customers(1, OverflowPolicy::Reject).build();
    let engine = Engine::new(cfg).unwrap();
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(hello));
    let res = svc
        .clone()
        .oneshot(get("/v1/x", Some("acme")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = svc.oneshot(get("/v1/x", Some("globex"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(res).await["reason"], "customer_cap_reached");
}

#[tokio::test]
async fn decides_in_call_not_in_poll_ready() {
    let engine = engine();
    prepaid(&engine, "acme", 1_000);
    let mut svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(hello));
    for _ in 0..10 {
        std::future::poll_fn(|cx| tower::Service::poll_ready(&mut svc, cx))
            .await
            .unwrap();
    }
    assert_eq!(engine.stats().customers, 1);
    assert_eq!(engine.stats().rule_hits.iter().map(|r| r.2).sum::<u64>(), 0);
    assert_eq!(engine.usage("acme").unwrap().balance, 1_000);
}

#[test]
fn keys_never_show_in_debug() {
    let layer = MonetizeLayer::new(engine(), ApiKey::new(keys()));
    let shown = format!("{layer:?}");
    assert!(!shown.contains("key-acme"), "{shown}");
}

#[tokio::test]
async fn mixed_filters_and_request_header_values_see_the_request_at_the_response() {
    use monetize_core::config::FilterConfig;
    let cfg = Config::builder()
        // Mixed: a request test or a response test, decided only at the response.
        .meter(
            MeterConfig::count("slow_or_failed").filter(FilterConfig::new().any(vec![
                FilterConfig::new().route("/v1/slow/*"),
                FilterConfig::new().status("5xx"),
            ])),
        )
        // A value read from a request header, with a query filter split off at `call`.
        .meter(
            MeterConfig::sum("units", ValueConfig::Header("x-units".into()))
                .filter(FilterConfig::new().query("bill", Some("yes"))),
        )
        .build();
    let engine = Engine::new(cfg).unwrap();
    assert!(engine.exchange_needs().request_at_response);
    let svc = MonetizeLayer::new(engine.clone(), ApiKey::new(keys())).layer(service_fn(
        |req: Request<Full<Bytes>>| async move {
            let mut r = Response::new(Full::from("x"));
            if req.uri().path() == "/v1/fail" {
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            Ok::<_, Infallible>(r)
        },
    ));
    let call = |path: &'static str, units: Option<&'static str>| {
        let svc = svc.clone();
        async move {
            let mut b = Request::get(path).header("x-api-key", "key-acme");
            if let Some(u) = units {
                b = b.header("x-units", u);
            }
            let res = svc.oneshot(b.body(Full::default()).unwrap()).await.unwrap();
            res.into_body().collect().await.unwrap();
        }
    };
    call("/v1/slow/a", None).await;
    call("/v1/fail", None).await;
    call("/v1/ok", None).await;
    call("/v1/ok?bill=yes", Some("7")).await;
    call("/v1/ok?bill=no", Some("100")).await;
    call("/v1/ok?x=1&bill=yes", Some("5")).await;
    assert_eq!(used(&engine, "acme", "slow_or_failed"), 2);
    assert_eq!(used(&engine, "acme", "units"), 12);
}
