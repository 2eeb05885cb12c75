//! Recurly's wire format against a wiremock server, and check-before-resend.
#![cfg(feature = "recurly")]

use std::sync::Arc;
use std::time::Duration;

use monetize_core::{
    BillingProvider, CustomerId, MeterId, ProviderError, RecordOutcome, UsageRecord,
};
use monetize_providers::recurly::RecurlyProvider;
use monetize_providers::{Mapping, MeterTarget};
use secrecy::SecretString;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const USAGE: &str = "/subscriptions/uuid-sub1/add_ons/code-calls/usage";
// base64("rk_1:")
const BASIC: &str = "Basic cmtfMTo=";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn provider(server: &MockServer) -> RecurlyProvider {
    RecurlyProvider::builder(SecretString::from("rk_1"))
        .base_url(server.uri())
        .mapper(Arc::new(
            Mapping::new()
                .with_customer(CustomerId::new("acme").unwrap(), "uuid-sub1")
                .with_meter(
                    MeterId::new("calls").unwrap(),
                    MeterTarget::new("code-calls"),
                ),
        ))
        .build()
        .unwrap()
}

fn record(window_start: u64, quantity: u64) -> UsageRecord {
    UsageRecord::new(
        "i",
        "recurly",
        MeterId::new("calls").unwrap(),
        CustomerId::new("acme").unwrap(),
        window_start,
        60,
        0,
        quantity,
    )
}

fn rfc3339(s: u64) -> String {
    jiff::Timestamp::from_second(s as i64).unwrap().to_string()
}

fn created() -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(serde_json::json!({"object": "usage", "id": "u1"}))
}

#[tokio::test]
async fn usage_is_posted_with_version_header_basic_auth_and_merchant_tag() {
    let server = MockServer::start().await;
    let start = (now() / 60 - 2) * 60;
    let r = record(start, 12);
    let key = r.idempotency_key.clone();
    let ts = rfc3339(start + 59);
    Mock::given(method("POST"))
        .and(path(USAGE))
        .and(header("accept", "application/vnd.recurly.v2021-02-25+json"))
        .and(header("authorization", BASIC))
        .and(header("content-type", "application/json"))
        .and(move |req: &Request| {
            let b: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
            let recorded = b["recording_timestamp"].as_str().unwrap_or_default();
            b["amount"] == 12
                && b["merchant_tag"] == key.as_str()
                && b["usage_timestamp"] == ts.as_str()
                && recorded.parse::<jiff::Timestamp>().is_ok()
                && b.as_object().unwrap().len() == 4
        })
        .respond_with(created())
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server);
    assert_eq!(p.dedup_horizon(), Duration::MAX);
    assert_eq!(p.report(&[r]).await.unwrap(), vec![RecordOutcome::Accepted]);
}

#[tokio::test]
async fn a_retried_record_is_looked_for_before_it_is_sent_again() {
    let server = MockServer::start().await;
    let start = (now() / 60 - 5) * 60;
    let mut held = record(start, 3);
    held.attempts = 1;
    let mut missing = record(start + 60, 4);
    missing.attempts = 2;
    // the window of `held`: one page holding its tag
    Mock::given(method("GET"))
        .and(path(USAGE))
        .and(header("accept", "application/vnd.recurly.v2021-02-25+json"))
        .and(query_param("begin_time", rfc3339(start).as_str()))
        .and(query_param("end_time", rfc3339(start + 59).as_str()))
        .and(query_param("sort", "usage_timestamp"))
        .and(query_param("order", "asc"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "object": "list", "has_more": false, "next": null,
            "data": [{"object": "usage", "id": "u9", "merchant_tag": "someone else"},
                     {"object": "usage", "id": "u1", "merchant_tag": held.idempotency_key, "amount": 3}]
        })))
        .expect(1)
        .mount(&server)
        .await;
    // the window of `missing`: two pages, neither holding its tag
    let next = format!("{USAGE}?cursor=abc&limit=200");
    Mock::given(method("GET"))
        .and(path(USAGE))
        .and(query_param("begin_time", rfc3339(start + 60).as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "object": "list", "has_more": true, "next": next,
            "data": [{"object": "usage", "id": "u2", "merchant_tag": "other"}]
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(USAGE))
        .and(query_param("cursor", "abc"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "object": "list", "has_more": false, "data": []
        })))
        .expect(1)
        .mount(&server)
        .await;
    let missing_key = missing.idempotency_key.clone();
    Mock::given(method("POST"))
        .and(path(USAGE))
        .and(move |req: &Request| {
            let b: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
            b["merchant_tag"] == missing_key.as_str()
        })
        .respond_with(created())
        .expect(1)
        .mount(&server)
        .await;
    let out = provider(&server).report(&[held, missing]).await.unwrap();
    assert_eq!(out, vec![RecordOutcome::Accepted, RecordOutcome::Accepted]);
}

#[tokio::test]
async fn rate_limit_headers_and_errors() {
    let server = MockServer::start().await;
    let start = (now() / 60 - 2) * 60;
    Mock::given(method("POST"))
        .and(path(USAGE))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("X-RateLimit-Limit", "2000")
                .insert_header("X-RateLimit-Remaining", "0")
                .insert_header("X-RateLimit-Reset", (now() + 40).to_string().as_str())
                .set_body_json(serde_json::json!({"error": {"type": "rate_limited", "message": "Rate limit exceeded"}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    match provider(&server).report(&[record(start, 1)]).await {
        Err(ProviderError::Throttled {
            retry_after,
            message,
        }) => {
            assert!(
                retry_after > Duration::from_secs(30) && retry_after <= Duration::from_secs(40)
            );
            assert!(
                message.contains("rate_limited: Rate limit exceeded"),
                "{message}"
            );
        }
        o => panic!("{o:?}"),
    }

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(USAGE))
        .respond_with(ResponseTemplate::new(404).set_body_json(
            serde_json::json!({"error": {"type": "not_found", "message": "Couldn't find Subscription with uuid = sub1"}}),
        ))
        .mount(&server)
        .await;
    let mut unmapped = record(start, 1);
    unmapped.customer = CustomerId::new("nobody").unwrap();
    unmapped.idempotency_key = "mz1_nobodynobodynobodynobodynobodyno".into();
    let out = provider(&server)
        .report(&[record(start, 1), unmapped])
        .await
        .unwrap();
    assert!(
        matches!(&out[0], RecordOutcome::Rejected { reason } if reason.contains("not_found: Couldn't find Subscription"))
    );
    assert!(
        matches!(&out[1], RecordOutcome::Rejected { reason } if reason.contains("customer `nobody`"))
    );
}
