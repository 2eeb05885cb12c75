//! Governance over real HTTP: the layer's own `402`/`429`/`401` answers (status, JSON
//! body, headers), delinquency switched on and off at run time, `X-Credits-Remaining` on
//! allowed prepaid calls, shadow-mode rules, and blocked requests that neither reach the
//! handler nor get metered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use monetize_axum::RouterExt;
use monetize_core::config::{
    BlockConfig, ConditionConfig, Config, MeterConfig, Period, PlanConfig, QuotaConfig,
    RateLimitConfig, RuleConfig,
};
use monetize_core::{Engine, StateChange};
use monetize_tests::http::{Client, Reply, TestServer, api_key_layer, used, wait_for_used};
use serde_json::json;

const CALLS: &str = "api_calls";
const CUSTOMERS: [&str; 6] = ["acme", "globex", "initech", "hooli", "piedpiper", "bachman"];

/// Meters: `api_calls` (successful calls under `/v1/`). Plans: `postpaid` (the default),
/// `prepaid` (3,000 micro-credits, 1,000 per call), `free` (3 calls a month), `limited`
/// (2 requests per 60 s), `beta` (postpaid, targeted by a shadow rule). Rules: a shadow
/// rule that would refuse the `beta` plan with 403, then the default rules.
fn engine() -> Engine {
    let mut config = Config::builder()
        .meter(MeterConfig::count(CALLS).route("/v1/*").status("2xx"))
        .plan(PlanConfig::new("postpaid"))
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(3_000)
                .credits_low_at(1_000)
                .price(CALLS, 1_000),
        )
        .plan(PlanConfig::new("free").quota(QuotaConfig::new(CALLS, 3, Period::Month)))
        .plan(PlanConfig::new("limited").rate_limit(RateLimitConfig::new(2, 60)))
        .plan(PlanConfig::new("beta"))
        .default_plan("postpaid")
        .rule(
            RuleConfig::block(
                "beta_closed",
                ConditionConfig::PlanIn(vec!["beta".into()]),
                BlockConfig::new(403, "beta_closed", "The beta is closed."),
            )
            .shadow(),
        );
    for r in RuleConfig::defaults() {
        config = config.rule(r);
    }
    Engine::new(config.build()).expect("valid config")
}

/// The app: `GET /v1/hello`, counting how often the handler actually runs.
struct App {
    engine: Engine,
    server: TestServer,
    client: Client,
    handled: Arc<AtomicU64>,
}

impl App {
    async fn start() -> App {
        let engine = engine();
        let handled = Arc::new(AtomicU64::new(0));
        let h = handled.clone();
        let router = Router::new()
            .route(
                "/v1/hello",
                get(move || {
                    let h = h.clone();
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        "hello"
                    }
                }),
            )
            .monetize(api_key_layer(&engine, &CUSTOMERS).credits_header(true));
        let server = TestServer::start(router).await;
        let client = server.client();
        App {
            engine,
            server,
            client,
            handled,
        }
    }

    async fn hello(&self, customer: &str) -> Reply {
        self.client.get("/v1/hello", Some(customer)).await
    }

    /// Calls `/v1/hello` and expects the handler's 200; waits until the call is metered.
    async fn allowed(&self, customer: &str, metered_after: u64) -> Reply {
        let r = self.hello(customer).await;
        assert_eq!((r.status, r.text()), (200, "hello".into()), "{customer}");
        wait_for_used(&self.engine, customer, CALLS, metered_after).await;
        r
    }

    fn handled(&self) -> u64 {
        self.handled.load(Ordering::SeqCst)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The headers every refusal carries.
fn assert_json_refusal(r: &Reply, status: u16) {
    assert_eq!(
        r.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepaid_credits_count_down_then_402_credits_exhausted() {
    let app = App::start().await;
    app.engine.register("globex", "prepaid").unwrap();

    for (n, left) in [(1, 3_000), (2, 2_000), (3, 1_000)] {
        let r = app.allowed("globex", n).await;
        assert_eq!(
            r.header_u64("x-credits-remaining"),
            left,
            "balance before call {n}"
        );
    }
    assert_eq!(app.engine.usage("globex").unwrap().balance, 0);

    for _ in 0..3 {
        let r = app.hello("globex").await;
        assert_json_refusal(&r, 402);
        assert_eq!(r.header("x-credits-remaining"), Some("0"));
        assert_eq!(r.header("retry-after"), None);
        assert_eq!(
            r.json(),
            json!({
                "error": "payment_required",
                "reason": "credits_exhausted",
                "customer": "globex",
                "plan": "prepaid",
                "balance": 0,
                "message": "Prepaid credits are used up. Top up the balance to continue.",
            })
        );
    }
    // Refused calls neither ran the handler nor were metered or charged.
    assert_eq!(app.handled(), 3);
    assert_eq!(used(&app.engine, "globex", CALLS), 3);
    assert_eq!(app.engine.usage("globex").unwrap().balance, 0);

    // A top-up lets the customer back in.
    app.engine
        .apply("globex", StateChange::GrantCredits(2_000))
        .unwrap();
    let r = app.allowed("globex", 4).await;
    assert_eq!(r.header_u64("x-credits-remaining"), 2_000);
    assert_eq!(app.engine.usage("globex").unwrap().balance, 1_000);

    // Postpaid calls carry no credits header.
    let r = app.allowed("acme", 1).await;
    assert_eq!(r.header("x-credits-remaining"), None);
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delinquent_customer_gets_402_until_paid() {
    let app = App::start().await;
    app.allowed("acme", 1).await;

    app.engine
        .apply("acme", StateChange::Delinquent(true))
        .unwrap();
    for _ in 0..2 {
        let r = app.hello("acme").await;
        assert_json_refusal(&r, 402);
        assert_eq!(
            r.json(),
            json!({
                "error": "payment_required",
                "reason": "payment_overdue",
                "customer": "acme",
                "plan": "postpaid",
                "message": "An invoice is overdue. Pay it or update the payment method to continue.",
            }),
            "a postpaid refusal names no balance"
        );
        assert_eq!(r.header("x-credits-remaining"), None);
    }
    // Others are not affected.
    app.allowed("globex", 1).await;

    app.engine
        .apply("acme", StateChange::Delinquent(false))
        .unwrap();
    app.allowed("acme", 2).await;
    assert_eq!(app.handled(), 3);
    assert_eq!(used(&app.engine, "acme", CALLS), 2);
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exceeded_is_429_with_retry_after_and_the_quota() {
    let app = App::start().await;
    app.engine.register("initech", "free").unwrap();
    for n in 1..=3 {
        app.allowed("initech", n).await;
    }
    let before = unix_now();
    let r = app.hello("initech").await;
    let after = unix_now();
    assert_json_refusal(&r, 429);
    let v = r.json();
    assert_eq!(v["error"], "too_many_requests");
    assert_eq!(v["reason"], "quota_exceeded");
    assert_eq!(v["customer"], "initech");
    assert_eq!(v["plan"], "free");
    let resets_at = v["quota"]["resets_at"].as_u64().expect("quota.resets_at");
    assert_eq!(
        v["quota"],
        json!({"meter": CALLS, "used": 3, "limit": 3, "resets_at": resets_at})
    );
    // The month ends within 31 days.
    assert!(resets_at > after && resets_at <= before + 31 * 86_400);
    let retry = r.header_u64("retry-after");
    assert_eq!(v["retry_after"], retry, "body and header agree");
    assert!(
        retry >= resets_at - after && retry <= resets_at - before + 1,
        "Retry-After {retry} is the time to the reset at {resets_at} (now {before}..{after})"
    );
    // No rate limit on this plan: no RateLimit-* headers.
    assert_eq!(r.header("ratelimit-limit"), None);

    assert_eq!(app.hello("initech").await.status, 429);
    assert_eq!(app.handled(), 3);
    assert_eq!(used(&app.engine, "initech", CALLS), 3);
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_429_with_ratelimit_headers_and_retry_after() {
    let app = App::start().await;
    app.engine.register("hooli", "limited").unwrap();

    // 2 per 60 s: two calls pass and say what is left.
    let start = std::time::Instant::now();
    for (n, remaining) in [(1, 1), (2, 0)] {
        let r = app.allowed("hooli", n).await;
        assert_eq!(r.header_u64("ratelimit-limit"), 2);
        assert_eq!(r.header_u64("ratelimit-remaining"), remaining, "call {n}");
        let reset = r.header_u64("ratelimit-reset");
        assert!((1..=60).contains(&reset), "RateLimit-Reset {reset}");
        assert_eq!(r.header("retry-after"), None);
    }
    let r = app.hello("hooli").await;
    assert_json_refusal(&r, 429);
    assert_eq!(r.header_u64("ratelimit-limit"), 2);
    assert_eq!(r.header_u64("ratelimit-remaining"), 0);
    let reset = r.header_u64("ratelimit-reset");
    assert!((1..=60).contains(&reset), "RateLimit-Reset {reset}");
    // One request is allowed again 60 s / 2 = 30 s after the first (rounded up).
    let elapsed = start.elapsed().as_secs();
    let retry = r.header_u64("retry-after");
    assert!(
        retry <= 30 && retry + elapsed + 1 >= 30,
        "Retry-After {retry}, {elapsed} s after the first call"
    );
    let v = r.json();
    assert_eq!(v["error"], "too_many_requests");
    assert_eq!(v["reason"], "rate_limited");
    assert_eq!(v["customer"], "hooli");
    assert_eq!(v["retry_after"], retry);
    assert!(v.get("quota").is_none());

    // Refused requests are not served, not metered, and do not use up the limit of others.
    assert_eq!(app.handled(), 2);
    assert_eq!(used(&app.engine, "hooli", CALLS), 2);
    app.engine.register("bachman", "limited").unwrap();
    let r = app.allowed("bachman", 1).await;
    assert_eq!(r.header_u64("ratelimit-remaining"), 1);
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_unknown_api_keys_are_401() {
    let app = App::start().await;
    let cases = [
        (None, "missing_api_key"),
        (Some(""), "missing_api_key"),
        (Some("sk_test_nobody"), "unknown_api_key"),
        // Almost a valid key (keys are compared exactly).
        (Some("sk_test_acmE"), "unknown_api_key"),
        (Some("sk_test_acme2"), "unknown_api_key"),
    ];
    for (key, reason) in cases {
        let r = app
            .client
            .send_with_key(http::Method::GET, "/v1/hello", key, None)
            .await;
        assert_json_refusal(&r, 401);
        let v = r.json();
        assert_eq!(v["error"], "unauthorized", "{key:?}");
        assert_eq!(v["reason"], reason, "{key:?}");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("x-api-key")),
            "the message names the header: {v}"
        );
        assert!(v.get("customer").is_none());
        assert!(
            !r.text().contains("sk_test"),
            "the key is never echoed back"
        );
    }
    assert_eq!(app.handled(), 0);
    // Nobody was admitted or metered for these.
    assert_eq!(app.engine.stats().customers, 0);
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rule_lets_requests_through_and_counts_them() {
    let app = App::start().await;
    app.engine.register("piedpiper", "beta").unwrap();
    let hits = |engine: &Engine| -> Vec<(String, bool, u64)> {
        engine
            .stats()
            .rule_hits
            .into_iter()
            .filter(|(_, _, n)| *n > 0)
            .collect()
    };

    for n in 1..=4 {
        // Served (not the shadow rule's 403) and metered.
        app.allowed("piedpiper", n).await;
    }
    assert_eq!(hits(&app.engine), vec![("beta_closed".into(), true, 4)]);
    // A customer the rule does not apply to adds no hit.
    app.allowed("acme", 1).await;
    assert_eq!(hits(&app.engine), vec![("beta_closed".into(), true, 4)]);
    assert_eq!(app.handled(), 5);

    // The rule is listed as a shadow rule; the enforcing defaults were never hit.
    let all = app.engine.stats().rule_hits;
    assert_eq!(all[0], ("beta_closed".into(), true, 4));
    assert!(all[1..].iter().all(|(_, shadow, n)| !shadow && *n == 0));

    // A shadow hit on a customer the enforcing rules then block counts both.
    app.engine
        .apply("piedpiper", StateChange::Delinquent(true))
        .unwrap();
    assert_eq!(app.hello("piedpiper").await.status, 402);
    let hit = |name: &str| {
        app.engine
            .stats()
            .rule_hits
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, n)| n)
    };
    assert_eq!(hit("beta_closed"), Some(5));
    assert_eq!(hit("delinquent"), Some(1));
    assert_eq!(used(&app.engine, "piedpiper", CALLS), 4);
    app.server.shutdown().await;
}
