//! Provider webhooks through the real HTTP stack (axum over TCP): signed fixtures per
//! provider (the bytes of `tests/fixtures/webhooks/`, unchanged unless a case says so),
//! sequences that flip a customer to 402 and back on the very next request, out-of-order
//! and duplicate deliveries, and a restart between a delivery and its retry (the redb
//! store reopened).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::Method;
use monetize_axum::{AdminRoutes, RouterExt, webhook_route};
use monetize_core::config::{Config, MeterConfig, PlanConfig};
use monetize_core::operator::Operator;
use monetize_core::webhook::{WebhookLog, WebhookProcessor};
use monetize_core::{Engine, EventKind, RedbStore, StateStore, StateSync};
use monetize_providers::chargebee::ChargebeeWebhook;
use monetize_providers::recurly::RecurlyWebhook;
use monetize_providers::stripe::StripeWebhook;
use monetize_tests::http::{Client, TestServer, api_key_layer, key_of};
use serde_json::Value;
use sha2::Sha256;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const STRIPE_SECRET: &str = "whsec_test_secret";
const RECURLY_SECRET: &str = "recurly_test_secret";
const ADMIN_TOKEN: &str = "admin-token-for-tests";
/// The Stripe customer of the fixtures (no mapping: it is our customer id too).
const CUS: &str = "cus_TAb3kZ9wQ1xY2z";
/// The Chargebee customer of the fixtures.
const CB: &str = "AzZTwBV1kR1Ww2Ln";

fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn hmac_hex(secret: &str, t: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// `Stripe-Signature` for `body` signed at unix second `t` with each of `secrets`.
fn stripe_sig(secrets: &[&str], t: u64, body: &[u8]) -> String {
    let mut s = format!("t={t}");
    for secret in secrets {
        s.push_str(&format!(",v1={}", hmac_hex(secret, &t.to_string(), body)));
    }
    s
}

fn engine() -> Engine {
    Engine::new(
        Config::builder()
            .meter(MeterConfig::count("calls").route("/v1/*"))
            .plan(PlanConfig::new("postpaid"))
            .plan(PlanConfig::new("prepaid").prepaid(0).price("calls", 1_000))
            .default_plan("postpaid")
            .build(),
    )
    .unwrap()
}

struct Stack {
    server: TestServer,
    engine: Engine,
    http: reqwest::Client,
}

/// The demo API (monetized), the three webhook routes and the admin routes.
async fn stack(engine: Engine, log: Arc<dyn WebhookLog>, recurly_api: Option<String>) -> Stack {
    let hooks = WebhookProcessor::new(engine.clone(), log);
    let mut recurly = RecurlyWebhook::new(RECURLY_SECRET.into());
    if let Some(url) = recurly_api {
        recurly = recurly.lookup(url, "rk".into());
    }
    let app = Router::new()
        .route("/v1/hello", get(|| async { "hello" }))
        .monetize(api_key_layer(&engine, &[CUS, CB, "acme"]))
        .route(
            "/webhooks/stripe",
            webhook_route(
                Arc::new(StripeWebhook::new(STRIPE_SECRET.into()).max_body(64 * 1024)),
                hooks.clone(),
            ),
        )
        .route(
            "/webhooks/recurly",
            webhook_route(Arc::new(recurly), hooks.clone()),
        )
        .route(
            "/webhooks/chargebee",
            webhook_route(
                Arc::new(ChargebeeWebhook::new("cb_user".into(), "cb_pass".into())),
                hooks.clone(),
            ),
        )
        .merge(
            AdminRoutes::new(
                Operator::new(engine.clone()).with_webhooks(hooks),
                ADMIN_TOKEN.into(),
            )
            .into_router(),
        );
    Stack {
        server: TestServer::start(app).await,
        engine,
        http: reqwest::Client::new(),
    }
}

struct Answer {
    status: u16,
    body: Value,
}

impl Stack {
    async fn hello(&self, customer: &str) -> u16 {
        Client::new(self.server.addr())
            .send(Method::GET, "/v1/hello", Some(customer), None)
            .await
            .status
    }

    async fn post(&self, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> Answer {
        let mut req = self.http.post(self.server.url(path)).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    async fn stripe(&self, body: &[u8]) -> Answer {
        let sig = stripe_sig(&[STRIPE_SECRET], now_ms() / 1000, body);
        self.stripe_signed(body, sig).await
    }

    async fn stripe_signed(&self, body: &[u8], sig: String) -> Answer {
        self.post(
            "/webhooks/stripe",
            &[("stripe-signature", sig)],
            body.to_vec(),
        )
        .await
    }

    async fn admin(
        &self,
        m: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self
            .http
            .request(m, self.server.url(path))
            .header("x-admin-actor", "alice");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        Answer {
            status,
            body: res.json().await.unwrap_or(Value::Null),
        }
    }

    fn delinquent(&self, customer: &str) -> bool {
        self.engine.account(customer).is_some_and(|a| a.delinquent)
    }
}

fn memory_log() -> Arc<dyn WebhookLog> {
    Arc::new(monetize_core::webhook::MemoryWebhookLog::new())
}

#[tokio::test]
async fn stripe_payment_failed_blocks_the_very_next_request_and_paid_restores() {
    let s = stack(engine(), memory_log(), None).await;
    assert_eq!(s.hello(CUS).await, 200);
    let a = s
        .stripe(&fixture("stripe_invoice.payment_failed.json"))
        .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("applied"))
    );
    assert_eq!(
        s.hello(CUS).await,
        402,
        "the request right after the 2xx is refused"
    );
    let kinds: Vec<EventKind> = s
        .engine
        .drain_events(50)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.iter().any(|k| matches!(k, EventKind::PaymentFailed { provider, amount_due: Some(4250), .. } if provider == "stripe")),
        "{kinds:?}"
    );
    let a = s.stripe(&fixture("stripe_invoice.paid.json")).await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("applied"))
    );
    assert_eq!(
        s.hello(CUS).await,
        200,
        "allowed again right after `invoice.paid`"
    );
    let kinds: Vec<EventKind> = s
        .engine
        .drain_events(50)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, EventKind::PaymentRecovered { .. })),
        "{kinds:?}"
    );
    // The subscription is deleted later: refused again (cancelled).
    let a = s
        .stripe(&fixture("stripe_customer.subscription.deleted.json"))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(s.hello(CUS).await, 402);
    assert!(s.engine.account(CUS).unwrap().cancelled);
}

#[tokio::test]
async fn stripe_signed_fixture_cases_answer_and_leave_state_as_they_must() {
    let s = stack(engine(), memory_log(), None).await;
    let body = fixture("stripe_invoice.payment_failed.json");
    let t = now_ms() / 1000;
    let cases: Vec<(&str, String, Vec<u8>, u16)> = vec![
        (
            "wrong secret",
            stripe_sig(&["whsec_other"], t, &body),
            body.clone(),
            401,
        ),
        (
            "stale timestamp",
            stripe_sig(&[STRIPE_SECRET], t - 330, &body),
            body.clone(),
            401,
        ),
        (
            "future timestamp",
            stripe_sig(&[STRIPE_SECRET], t + 330, &body),
            body.clone(),
            401,
        ),
        ("no signature", String::new(), body.clone(), 401),
        (
            "body changed after signing",
            stripe_sig(&[STRIPE_SECRET], t, &body),
            [&body[..], b"\n"].concat(),
            401,
        ),
        (
            "malformed JSON",
            stripe_sig(&[STRIPE_SECRET], t, b"{\"id\": "),
            b"{\"id\": ".to_vec(),
            400,
        ),
        (
            "oversized body",
            stripe_sig(&[STRIPE_SECRET], t, &vec![b' '; 65 * 1024]),
            vec![b' '; 65 * 1024],
            413,
        ),
    ];
    for (name, sig, b, want) in cases {
        let a = s.stripe_signed(&b, sig).await;
        assert_eq!(a.status, want, "{name}: {:?}", a.body);
        assert!(
            !s.delinquent(CUS),
            "{name}: a refused delivery changes nothing"
        );
        assert_eq!(s.hello(CUS).await, 200, "{name}");
    }
    // An unknown event type, validly signed: acknowledged, nothing changes.
    let unknown = String::from_utf8(body.clone())
        .unwrap()
        .replace(
            "\"invoice.payment_failed\"",
            "\"invoice.finalization_failed\"",
        )
        .into_bytes();
    let a = s.stripe(&unknown).await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("ignored"))
    );
    assert!(!s.delinquent(CUS));
    // Several signatures after a secret rotation (the old secret's first): accepted.
    let a = s
        .stripe_signed(
            &body,
            stripe_sig(&["whsec_old_secret", STRIPE_SECRET], t, &body),
        )
        .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("applied"))
    );
    assert!(s.delinquent(CUS));
    // The same event replayed (a provider retry): acknowledged as a duplicate.
    let a = s.stripe(&body).await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("duplicate"))
    );
    assert_eq!(s.hello(CUS).await, 402);
}

#[tokio::test]
async fn out_of_order_and_duplicate_deliveries_never_undo_newer_state() {
    let s = stack(engine(), memory_log(), None).await;
    // `invoice.paid` (created 1793408413) arrives before the failure it resolves (1793149209)
    // and the subscription's `past_due` update (1793149210).
    let a = s.stripe(&fixture("stripe_invoice.paid.json")).await;
    assert_eq!(a.body["status"], "applied");
    for late in [
        "stripe_invoice.payment_failed.json",
        "stripe_customer.subscription.updated.past_due.json",
    ] {
        let a = s.stripe(&fixture(late)).await;
        assert_eq!(
            (a.status, a.body["status"].as_str()),
            (200, Some("stale")),
            "{late}"
        );
        assert!(!s.delinquent(CUS), "{late} is older than `invoice.paid`");
        assert_eq!(s.hello(CUS).await, 200, "{late}");
    }
    // Chargebee: the failure, then its duplicate after the customer was cleared by an
    // operator... the duplicate changes nothing.
    let cb = |body: Vec<u8>| async {
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("cb_user:cb_pass")
        );
        s.post("/webhooks/chargebee", &[("authorization", auth)], body)
            .await
    };
    let a = cb(fixture("chargebee_payment_failed.json")).await;
    assert_eq!(a.body["status"], "applied");
    assert_eq!(s.hello(CB).await, 402);
    s.engine
        .apply(CB, monetize_core::StateChange::Delinquent(false))
        .unwrap();
    let a = cb(fixture("chargebee_payment_failed.json")).await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("duplicate"))
    );
    assert_eq!(
        s.hello(CB).await,
        200,
        "a duplicate delivery is not applied twice"
    );
}

#[tokio::test]
async fn chargebee_basic_auth_and_cancellation() {
    let s = stack(engine(), memory_log(), None).await;
    let basic = |u: &str, p: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    let failed = fixture("chargebee_payment_failed.json");
    for (name, auth) in [
        ("wrong password", Some(basic("cb_user", "nope"))),
        ("wrong user", Some(basic("someone", "cb_pass"))),
        ("no credentials", None),
    ] {
        let headers: Vec<(&str, String)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let a = s
            .post("/webhooks/chargebee", &headers, failed.clone())
            .await;
        assert_eq!(a.status, 401, "{name}");
        assert!(!s.delinquent(CB), "{name}");
    }
    let ok = vec![("authorization", basic("cb_user", "cb_pass"))];
    let a = s
        .post("/webhooks/chargebee", &ok, b"not json".to_vec())
        .await;
    assert_eq!(a.status, 400);
    let a = s
        .post(
            "/webhooks/chargebee",
            &ok,
            fixture("chargebee_subscription_cancelled.json"),
        )
        .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("applied"))
    );
    assert_eq!(s.hello(CB).await, 402);
    assert!(s.engine.account(CB).unwrap().cancelled);
}

#[tokio::test]
async fn recurly_thin_payload_is_mapped_through_the_api_and_verified() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/invoices/t2zvqk4h0f5m"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": "t2zvqk4h0f5m", "account": { "code": "acme" }
        })))
        .mount(&api)
        .await;
    let s = stack(engine(), memory_log(), Some(api.uri())).await;
    let body = fixture("recurly_charge_invoice.past_due.json");
    let sig = |secret: &str, ms: u64| {
        (
            "recurly-signature",
            format!("{ms},{}", hmac_hex(secret, &ms.to_string(), &body)),
        )
    };
    for (name, h, want) in [
        ("wrong secret", sig("other", now_ms()), 401),
        ("stale", sig(RECURLY_SECRET, now_ms() - 330_000), 401),
        ("future", sig(RECURLY_SECRET, now_ms() + 330_000), 401),
    ] {
        let a = s.post("/webhooks/recurly", &[h], body.clone()).await;
        assert_eq!(a.status, want, "{name}");
        assert!(!s.delinquent("acme"), "{name}");
    }
    let a = s
        .post(
            "/webhooks/recurly",
            &[sig(RECURLY_SECRET, now_ms())],
            body.clone(),
        )
        .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("applied"))
    );
    assert_eq!(s.hello("acme").await, 402);
    let a = s
        .post(
            "/webhooks/recurly",
            &[sig(RECURLY_SECRET, now_ms())],
            body.clone(),
        )
        .await;
    assert_eq!(a.body["status"], "duplicate");
}

#[tokio::test]
async fn a_restart_between_a_delivery_and_its_retry_keeps_state_and_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let failed = fixture("stripe_invoice.payment_failed.json");
    {
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let s = stack(engine(), store, None).await;
        let a = s.stripe(&failed).await;
        assert_eq!(a.body["status"], "applied");
        assert_eq!(s.hello(CUS).await, 402);
        // No state sync runs here: what is on disk is what the webhook committed before
        // its 2xx. Then the process goes away.
        s.server.shutdown().await;
    }
    let store = Arc::new(RedbStore::open(&path).unwrap());
    assert!(
        StateStore::load(
            store.as_ref(),
            &monetize_core::CustomerId::new(CUS).unwrap()
        )
        .await
        .unwrap()
        .is_some_and(|a| a.delinquent)
    );
    let engine = engine();
    let _sync = StateSync::start(engine.clone(), store.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let hooks = WebhookProcessor::new(engine.clone(), store.clone());
    assert_eq!(hooks.restore().await.unwrap(), 1);
    let s = stack(engine, store, None).await;
    assert_eq!(s.hello(CUS).await, 402, "delinquent after the restart");
    // Stripe retries the delivery it did not see acknowledged: a duplicate.
    let a = s.stripe(&failed).await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("duplicate"))
    );
    let a = s.stripe(&fixture("stripe_invoice.paid.json")).await;
    assert_eq!(a.body["status"], "applied");
    assert_eq!(s.hello(CUS).await, 200);
}

#[tokio::test]
async fn admin_routes_need_the_admin_token_and_control_customers() {
    let s = stack(engine(), memory_log(), None).await;
    assert_eq!(s.hello("acme").await, 200);
    for (name, token) in [
        ("no token", None),
        ("wrong token", Some("admin-token-for-test".to_owned())),
        ("a customer's API key", Some(key_of("acme"))),
    ] {
        let a = s
            .admin(
                Method::POST,
                "/admin/customers/acme/block",
                token.as_deref(),
                None,
            )
            .await;
        assert_eq!(a.status, 401, "{name}");
        let a = s
            .admin(Method::GET, "/admin/customers/acme", token.as_deref(), None)
            .await;
        assert_eq!(a.status, 401, "{name}");
    }
    assert_eq!(
        s.hello("acme").await,
        200,
        "refused admin calls change nothing"
    );
    let t = Some(ADMIN_TOKEN);
    let a = s
        .admin(Method::POST, "/admin/customers/acme/block", t, None)
        .await;
    assert_eq!(
        (a.status, a.body["status"]["blocked"].as_bool()),
        (200, Some(true))
    );
    assert_eq!(s.hello("acme").await, 403);
    let a = s
        .admin(Method::GET, "/admin/customers?status=blocked", t, None)
        .await;
    assert_eq!(a.body["customers"], serde_json::json!(["acme"]));
    let a = s
        .admin(Method::POST, "/admin/customers/acme/unblock", t, None)
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(s.hello("acme").await, 200);
    // Plan change to prepaid (no credits: 402), then a grant, twice with the same id.
    let a = s
        .admin(
            Method::PUT,
            "/admin/customers/acme/plan",
            t,
            Some(serde_json::json!({"plan": "prepaid"})),
        )
        .await;
    assert_eq!((a.status, a.body["plan"].as_str()), (200, Some("prepaid")));
    assert_eq!(s.hello("acme").await, 402);
    let a = s
        .admin(
            Method::PUT,
            "/admin/customers/acme/plan",
            t,
            Some(serde_json::json!({"plan": "gold"})),
        )
        .await;
    assert_eq!(a.status, 400, "unknown plan");
    let grant = serde_json::json!({"id": "topup-1", "amount": 2_000});
    let a = s
        .admin(
            Method::POST,
            "/admin/customers/acme/credits",
            t,
            Some(grant.clone()),
        )
        .await;
    assert_eq!(
        (
            a.status,
            a.body["granted"].as_bool(),
            a.body["balance"].as_i64()
        ),
        (200, Some(true), Some(2_000))
    );
    let a = s
        .admin(
            Method::POST,
            "/admin/customers/acme/credits",
            t,
            Some(grant),
        )
        .await;
    assert_eq!(
        (a.body["granted"].as_bool(), a.body["balance"].as_i64()),
        (Some(false), Some(2_000))
    );
    let a = s
        .admin(
            Method::POST,
            "/admin/customers/acme/credits",
            t,
            Some(serde_json::json!({"amount": 5})),
        )
        .await;
    assert_eq!(a.status, 400, "a grant needs an id");
    assert_eq!(s.hello("acme").await, 200);
    // A webhook makes another customer delinquent: listed, and shown in its state.
    s.stripe(&fixture("stripe_invoice.payment_failed.json"))
        .await;
    let a = s
        .admin(Method::GET, "/admin/customers?status=delinquent", t, None)
        .await;
    assert_eq!(a.body["customers"], serde_json::json!([CUS]));
    let a = s
        .admin(Method::GET, &format!("/admin/customers/{CUS}"), t, None)
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["status"]["delinquent"], true);
    assert_eq!(
        a.body["recent_events"][0]["event_id"],
        "evt_1SQv2hB7WZ01zgkWpFa1lD9x"
    );
    assert_eq!(
        a.body["recent_events"][0]["event_type"],
        "invoice.payment_failed"
    );
    let a = s.admin(Method::GET, "/admin/customers/acme", t, None).await;
    let actions: Vec<&str> = a.body["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["block", "unblock", "set_plan", "grant"]);
    assert_eq!(a.body["recent_events"][0]["source"], "operator:alice");
    assert_eq!(
        a.body["balance"], 1_000,
        "2,000 granted once, one call at 1,000 spent"
    );
    assert!(a.body["meters"].is_array(), "quota usage per meter");
    let a = s
        .admin(Method::GET, "/admin/customers/nobody", t, None)
        .await;
    assert_eq!(a.status, 404);
}

/// Admin credits go through the credits ledger: an expiring grant is listed in the
/// customer's state with its expiry and priority, a retry with the same id is a no-op
/// (also after a restart: the grant was written to the redb file before the `200`), the
/// same id with another amount is a `409`, and bad input is a `400` naming the field.
#[tokio::test]
async fn admin_credits_are_ledger_grants_with_expiry_idempotent_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let t = Some(ADMIN_TOKEN);
    let expires = now_ms() / 1000 + 30 * 24 * 3600;
    let grant = serde_json::json!({
        "id": "promo-dec", "amount": 3_000, "expires_at": expires, "priority": 2
    });
    let credits = "/admin/customers/acme/credits";
    {
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let s = stack(engine(), store, None).await;
        let a = s.admin(Method::POST, credits, t, Some(grant.clone())).await;
        assert_eq!(
            (
                a.status,
                a.body["granted"].as_bool(),
                a.body["balance"].as_i64(),
                a.body["expires_at"].as_u64()
            ),
            (200, Some(true), Some(3_000), Some(expires)),
            "{:?}",
            a.body
        );
        let a = s.admin(Method::GET, "/admin/customers/acme", t, None).await;
        assert_eq!(a.body["grants"].as_array().map(Vec::len), Some(1));
        let g = &a.body["grants"][0];
        assert_eq!(
            (
                g["id"].as_str(),
                g["amount"].as_i64(),
                g["remaining"].as_i64(),
                g["expires_at"].as_u64(),
                g["priority"].as_u64()
            ),
            (
                Some("promo-dec"),
                Some(3_000),
                Some(3_000),
                Some(expires),
                Some(2)
            )
        );
        let last = a.body["recent_events"].as_array().unwrap().last().unwrap();
        assert_eq!(
            (
                last["source"].as_str(),
                last["event_type"].as_str(),
                last["event_id"].as_str()
            ),
            (Some("operator:alice"), Some("grant"), Some("promo-dec"))
        );
        // The retry: nothing changes.
        let a = s.admin(Method::POST, credits, t, Some(grant.clone())).await;
        assert_eq!(
            (
                a.status,
                a.body["granted"].as_bool(),
                a.body["balance"].as_i64()
            ),
            (200, Some(false), Some(3_000))
        );
        // The same id for another grant.
        let other = serde_json::json!({"id": "promo-dec", "amount": 4_000});
        let a = s.admin(Method::POST, credits, t, Some(other)).await;
        assert_eq!(a.status, 409, "{:?}", a.body);
        // Bad input: a 400 naming the field, and nothing granted.
        for (body, field) in [
            (serde_json::json!({"id": "neg", "amount": -5}), "`amount`"),
            (serde_json::json!({"id": "zero", "amount": 0}), "`amount`"),
            (
                serde_json::json!({"id": "past", "amount": 5, "expires_at": now_ms() / 1000 - 60}),
                "`expires_at`",
            ),
            (
                serde_json::json!({"id": "typo", "amount": 5, "expires": expires}),
                "`expires`",
            ),
            (serde_json::json!({"id": "str", "amount": "5"}), "amount"),
            (serde_json::json!({"amount": 5}), "`id`"),
        ] {
            let a = s.admin(Method::POST, credits, t, Some(body.clone())).await;
            let error = a.body["error"].as_str().unwrap_or_default();
            assert_eq!(a.status, 400, "{body}: {:?}", a.body);
            assert!(error.contains(field), "{body}: {error}");
        }
        assert_eq!(s.engine.account("acme").unwrap().balance, 3_000);
        assert_eq!(s.engine.grants("acme").len(), 1);
        s.server.shutdown().await;
    }
    // After a restart, the grant is there, and the retry is still a no-op.
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let engine = engine();
    let _sync = StateSync::start(engine.clone(), store.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let s = stack(engine, store, None).await;
    assert_eq!(s.engine.account("acme").unwrap().balance, 3_000);
    assert_eq!(s.engine.grants("acme")[0].expires_at, Some(expires));
    let a = s.admin(Method::POST, credits, t, Some(grant)).await;
    assert_eq!(
        (
            a.status,
            a.body["granted"].as_bool(),
            a.body["balance"].as_i64()
        ),
        (200, Some(false), Some(3_000))
    );
}
