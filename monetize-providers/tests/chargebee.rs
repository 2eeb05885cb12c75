//! Chargebee's wire formats against a wiremock server: usage-event batches and classic
//! subscription usages.
#![cfg(feature = "chargebee")]

use std::sync::Arc;
use std::time::Duration;

use monetize_core::{
    BillingProvider, CustomerId, MeterId, ProviderError, RecordOutcome, UsageRecord,
};
use monetize_providers::chargebee::ChargebeeProvider;
use monetize_providers::{Mapping, MeterTarget};
use secrecy::SecretString;
use wiremock::matchers::{body_json, body_string, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

// base64("cb_key:")
const BASIC: &str = "Basic Y2Jfa2V5Og==";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn provider(server: &MockServer) -> ChargebeeProvider {
    ChargebeeProvider::builder(SecretString::from("cb_key"), "acme-test")
        .base_url(format!("{}/api/v2", server.uri()))
        .ingest_url(format!("{}/ingest/api/v2", server.uri()))
        .mapper(Arc::new(
            Mapping::new()
                .with_customer(CustomerId::new("acme").unwrap(), "sub_1")
                .with_meter(
                    MeterId::new("calls").unwrap(),
                    MeterTarget::new("calls-USD-monthly"),
                )
                .with_meter(
                    MeterId::new("seats").unwrap(),
                    MeterTarget::new("seats-USD-monthly"),
                ),
        ))
        .classic_meter(MeterId::new("seats").unwrap())
        .build()
        .unwrap()
}

fn record(meter: &str, window_start: u64, quantity: u64) -> UsageRecord {
    UsageRecord::new(
        "i",
        "chargebee",
        MeterId::new(meter).unwrap(),
        CustomerId::new("acme").unwrap(),
        window_start,
        60,
        0,
        quantity,
    )
}

#[tokio::test]
async fn usage_events_batch_maps_failed_events_per_record() {
    let server = MockServer::start().await;
    let start = (now() / 60 - 3) * 60;
    let (a, b) = (record("calls", start, 5), record("calls", start + 60, 6));
    let event = |r: &UsageRecord| {
        serde_json::json!({
            "deduplication_id": r.idempotency_key,
            "subscription_id": "sub_1",
            "usage_timestamp": r.timestamp() * 1000,
            "properties": {"meter": "calls-USD-monthly", "quantity": r.quantity},
        })
    };
    Mock::given(method("POST"))
        .and(path("/ingest/api/v2/batch/usage_events"))
        .and(header("authorization", BASIC))
        .and(header("content-type", "application/json"))
        .and(body_json(serde_json::json!({"events": [event(&a), event(&b)]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "batch_id": "batch_1",
            "failed_events": [{"deduplication_id": b.idempotency_key, "error_code": "invalid_subscription", "error_message": "Subscription sub_1 is cancelled"}]
        })))
        .expect(1)
        .mount(&server)
        .await;
    let mut old = record("calls", start - 13 * 3600, 1);
    old.idempotency_key = "mz1_oldoldoldoldoldoldoldoldoldoldol".into();
    let out = provider(&server).report(&[a, b, old]).await.unwrap();
    assert_eq!(out[0], RecordOutcome::Accepted);
    assert!(
        matches!(&out[1], RecordOutcome::Rejected { reason } if reason.contains("Subscription sub_1 is cancelled")),
        "{:?}",
        out[1]
    );
    assert!(matches!(&out[2], RecordOutcome::Rejected { reason } if reason.contains("12-hour")));
}

#[tokio::test]
async fn batches_hold_at_most_500_events() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/ingest/api/v2/batch/usage_events"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"batch_id": "b", "failed_events": []})),
        )
        .expect(2)
        .mount(&server)
        .await;
    let start = (now() / 60 - 700) * 60;
    let records: Vec<UsageRecord> = (0..600)
        .map(|i| record("calls", start + i * 60, 1))
        .collect();
    let p = provider(&server);
    assert_eq!(p.max_batch(), 500);
    let out = p.report(&records).await.unwrap();
    assert!(out.iter().all(|o| *o == RecordOutcome::Accepted));
    let sizes: Vec<usize> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["events"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(sizes, vec![500, 100]);
}

#[tokio::test]
async fn classic_usage_is_form_encoded_with_idempotency_key() {
    let server = MockServer::start().await;
    let start = (now() / 60 - 2) * 60;
    let r = record("seats", start, 9);
    Mock::given(method("POST"))
        .and(path("/api/v2/subscriptions/sub_1/usages"))
        .and(header("authorization", BASIC))
        .and(header(
            "chargebee-idempotency-key",
            r.idempotency_key.as_str(),
        ))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(format!(
            "id={}&item_price_id=seats-USD-monthly&quantity=9&usage_date={}",
            r.idempotency_key,
            start + 59
        )))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"usage": {"id": r.idempotency_key}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    // a record already sent once is looked up by id first: this one is held already
    let mut again = record("seats", start - 60, 2);
    again.attempts = 1;
    Mock::given(method("GET"))
        .and(path("/api/v2/subscriptions/sub_1/usages"))
        .and(query_param("id", again.idempotency_key.as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"usage": {"id": again.idempotency_key}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let out = provider(&server).report(&[r, again]).await.unwrap();
    assert_eq!(out, vec![RecordOutcome::Accepted, RecordOutcome::Accepted]);
}

#[tokio::test]
async fn throttle_and_auth_errors() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "12")
                .set_body_json(serde_json::json!({"message": "Sorry, access has been blocked temporarily due to request count exceeding acceptable limits.", "type": "operation_failed", "api_error_code": "api_request_limit_exceeded"})),
        )
        .mount(&server)
        .await;
    let start = (now() / 60 - 2) * 60;
    match provider(&server).report(&[record("calls", start, 1)]).await {
        Err(ProviderError::Throttled {
            retry_after,
            message,
        }) => {
            assert_eq!(retry_after, Duration::from_secs(12));
            assert!(message.contains("api_request_limit_exceeded"), "{message}");
        }
        o => panic!("{o:?}"),
    }
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({"message": "Sorry, authentication failed. Invalid api key", "api_error_code": "api_authentication_failed"})))
        .mount(&server)
        .await;
    assert!(matches!(
        provider(&server).report(&[record("calls", start, 1)]).await,
        Err(ProviderError::Unauthorized { .. })
    ));
}
