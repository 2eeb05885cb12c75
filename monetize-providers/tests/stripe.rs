//! Stripe's wire format, checked call by call against a wiremock server: method, path,
//! auth, idempotency header and body encoding of every endpoint the client uses.
#![cfg(feature = "stripe")]

use std::sync::Arc;
use std::time::Duration;

use monetize_core::meter::Aggregation;
use monetize_core::report::Acknowledged;
use monetize_core::{
    BillingProvider, CustomerId, MeterId, ProviderError, RecordOutcome, UsageRecord,
};
use monetize_providers::http::HttpSettings;
use monetize_providers::stripe::{StripeApi, StripeProvider};
use monetize_providers::{Formula, Mapping, MeterTarget};
use secrecy::SecretString;
use wiremock::matchers::{body_json, body_string, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "sk_test_51abc";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mapping() -> Mapping {
    Mapping::new()
        .with_customer(CustomerId::new("acme").unwrap(), "cus_123")
        .with_meter(
            MeterId::new("api_calls").unwrap(),
            MeterTarget::new("api_requests"),
        )
        .with_meter(
            MeterId::new("seats").unwrap(),
            MeterTarget::new("seats").with_formula(Formula::Last),
        )
}

fn provider(server: &MockServer, api: StripeApi) -> StripeProvider {
    StripeProvider::builder(SecretString::from(KEY))
        .api(api)
        .base_url(server.uri())
        .stream_url(format!("{}/stream", server.uri()))
        .mapper(Arc::new(mapping()))
        .http(HttpSettings::default().with_timeout(Duration::from_secs(5)))
        .build()
        .unwrap()
}

/// A closed window ending a minute ago.
fn record(customer: &str, quantity: u64) -> UsageRecord {
    let start = (now() / 60 - 2) * 60;
    UsageRecord::new(
        "i",
        "stripe",
        MeterId::new("api_calls").unwrap(),
        CustomerId::new(customer).unwrap(),
        start,
        60,
        0,
        quantity,
    )
}

#[tokio::test]
async fn v1_meter_event_is_form_encoded_with_identifier_and_idempotency_key() {
    let server = MockServer::start().await;
    let r = record("acme", 42);
    let body = format!(
        "event_name=api_requests&identifier={k}&payload%5Bstripe_customer_id%5D=cus_123&payload%5Bvalue%5D=42&timestamp={t}",
        k = r.idempotency_key,
        t = r.timestamp()
    );
    Mock::given(method("POST"))
        .and(path("/v1/billing/meter_events"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("idempotency-key", r.idempotency_key.as_str()))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(body))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"object":"billing.meter_event"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let out = provider(&server, StripeApi::MeterEventsV1)
        .report(&[r])
        .await
        .unwrap();
    assert_eq!(out, vec![RecordOutcome::Accepted]);
}

#[tokio::test]
async fn v2_meter_event_is_json_with_rfc3339_timestamp() {
    let server = MockServer::start().await;
    let r = record("acme", 7);
    let ts = jiff::Timestamp::from_second(r.timestamp() as i64)
        .unwrap()
        .to_string();
    Mock::given(method("POST"))
        .and(path("/v2/billing/meter_events"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("idempotency-key", r.idempotency_key.as_str()))
        .and(header("content-type", "application/json"))
        .and(body_json(serde_json::json!({
            "event_name": "api_requests",
            "identifier": r.idempotency_key,
            "payload": {"stripe_customer_id": "cus_123", "value": "7"},
            "timestamp": ts,
        })))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"object":"v2.billing.meter_event"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let out = provider(&server, StripeApi::MeterEventsV2)
        .report(&[r])
        .await
        .unwrap();
    assert_eq!(out, vec![RecordOutcome::Accepted]);
}

#[tokio::test]
async fn errors_are_classified_with_stripes_code_and_message() {
    let server = MockServer::start().await;
    let err = |code: &str| serde_json::json!({"error": {"type": "invalid_request_error", "code": code, "message": format!("{code} happened")}});
    let (a, b, c) = (record("acme", 1), record("acme", 2), record("acme", 3));
    let mut c = c;
    c.window_start -= 60; // a distinct key
    c.idempotency_key = "mz1_cccccccccccccccccccccccccccccccc".into();
    let mut b = b;
    b.idempotency_key = "mz1_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".into();
    for (r, status, body) in [
        (&a, 400, err("archived_meter")),
        (&b, 400, err("duplicate_meter_event")),
        (&c, 500, err("api_error")),
    ] {
        Mock::given(method("POST"))
            .and(path("/v2/billing/meter_events"))
            .and(header("idempotency-key", r.idempotency_key.as_str()))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .mount(&server)
            .await;
    }
    let p = provider(&server, StripeApi::MeterEventsV2);
    let unmapped = record("nobody", 1);
    let mut old = record("acme", 1);
    old.window_start -= 36 * 86_400;
    old.idempotency_key = "mz1_oooooooooooooooooooooooooooooooo".into();
    let out = p.report(&[a, b, c.clone(), unmapped, old]).await.unwrap();
    match &out[0] {
        RecordOutcome::Rejected { reason } => {
            assert!(
                reason.contains("archived_meter: archived_meter happened"),
                "{reason}"
            )
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(
        out[1],
        RecordOutcome::Accepted,
        "a duplicate is already billed"
    );
    assert!(matches!(&out[2], RecordOutcome::Retry { reason } if reason.contains("500")));
    assert!(
        matches!(&out[3], RecordOutcome::Rejected { reason } if reason.contains("customer `nobody`"))
    );
    assert!(matches!(&out[4], RecordOutcome::Rejected { reason } if reason.contains("35-day")));
    // a call where nothing got through is an error of the call
    assert!(matches!(
        p.report(&[c]).await,
        Err(ProviderError::Retryable { .. })
    ));
}

#[tokio::test]
async fn throttle_honours_retry_after_and_stops_sending() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/billing/meter_events"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "30")
                .set_body_json(
                    serde_json::json!({"error":{"code":"rate_limit","message":"Too many"}}),
                ),
        )
        .expect(1)
        .mount(&server)
        .await;
    let p = StripeProvider::builder(SecretString::from(KEY))
        .base_url(server.uri())
        .mapper(Arc::new(mapping()))
        .lanes(1)
        .build()
        .unwrap();
    let mut records = vec![record("acme", 1)];
    let mut second = record("acme", 2);
    second.idempotency_key = "mz1_2222222222222222222222222222222".into();
    records.push(second);
    match p.report(&records).await {
        Err(ProviderError::Throttled {
            retry_after,
            message,
        }) => {
            assert_eq!(retry_after, Duration::from_secs(30));
            assert!(message.contains("rate_limit"), "{message}");
        }
        o => panic!("{o:?}"),
    }
    // the gate stays closed: no second call reaches Stripe
    assert!(matches!(
        p.report(&records).await,
        Err(ProviderError::Throttled { .. })
    ));
}

#[tokio::test]
async fn unauthorized_is_its_own_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            serde_json::json!({"error":{"type":"invalid_request_error","message":"Invalid API Key provided: sk_test_****abc"}}),
        ))
        .mount(&server)
        .await;
    let p = provider(&server, StripeApi::MeterEventsV2);
    assert!(matches!(
        p.report(&[record("acme", 1)]).await,
        Err(ProviderError::Unauthorized { .. })
    ));
    // the key is never in Debug
    assert!(!format!("{p:?}").contains(KEY));
}

#[tokio::test]
async fn stream_reuses_the_session_and_recreates_it_when_expired() {
    let server = MockServer::start().await;
    let expires = jiff::Timestamp::from_second(now() as i64 + 900)
        .unwrap()
        .to_string();
    let sessions = std::sync::atomic::AtomicUsize::new(0);
    let sessions = Arc::new(sessions);
    let s2 = Arc::clone(&sessions);
    Mock::given(method("POST"))
        .and(path("/v2/billing/meter_event_session"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(move |_: &Request| {
            let n = s2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "id": format!("mes_{n}"), "object": "v2.billing.meter_event_session",
                "authentication_token": format!("tok_{n}"), "expires_at": expires,
                "created": "2026-01-01T00:00:00Z", "livemode": false
            }))
        })
        .mount(&server)
        .await;
    // token 0 works twice, then expires; token 1 works
    Mock::given(method("POST"))
        .and(path("/stream/v2/billing/meter_event_stream"))
        .and(header("authorization", "Bearer tok_0"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({})))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/stream/v2/billing/meter_event_stream"))
        .and(header("authorization", "Bearer tok_0"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(serde_json::json!({"error":{
            "type":"temporary_session_expired","code":"billing_meter_event_session_expired",
            "message":"Session expired","doc_url":"https://docs.stripe.com"}})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/stream/v2/billing/meter_event_stream"))
        .and(header("authorization", "Bearer tok_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({})))
        .mount(&server)
        .await;
    let p = provider(&server, StripeApi::MeterEventStream);
    assert_eq!(p.max_batch(), 800, "100 events a call, 8 calls at once");
    let batch = |n: u64| -> Vec<UsageRecord> {
        (0..100)
            .map(|i| {
                let mut r = record("acme", 1);
                r.idempotency_key = format!("mz1_{n:04}{i:028}");
                r
            })
            .collect()
    };
    for n in 0..3 {
        let out = p.report(&batch(n)).await.unwrap();
        assert!(out.iter().all(|o| *o == RecordOutcome::Accepted));
    }
    assert_eq!(sessions.load(std::sync::atomic::Ordering::SeqCst), 2);
    let calls: Vec<Request> = server.received_requests().await.unwrap();
    let stream: Vec<&Request> = calls
        .iter()
        .filter(|r| r.url.path().ends_with("meter_event_stream"))
        .collect();
    assert_eq!(stream.len(), 4, "two calls, one expired, one resent");
    let body: serde_json::Value = serde_json::from_slice(&stream[3].body).unwrap();
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 100);
    assert_eq!(events[0]["payload"]["stripe_customer_id"], "cus_123");
    assert_eq!(events[0]["identifier"], format!("mz1_0002{:028}", 0));
    // the resend carries exactly what the expired call carried
    assert_eq!(stream[2].body, stream[3].body);
}

/// A batch larger than one call goes out in calls of at most 100 events, all of them
/// accepted, no identifier in two calls.
#[tokio::test]
async fn a_stream_batch_is_split_into_calls_of_100() {
    let server = MockServer::start().await;
    let expires = jiff::Timestamp::from_second(now() as i64 + 900)
        .unwrap()
        .to_string();
    Mock::given(method("POST"))
        .and(path("/v2/billing/meter_event_session"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": "mes_0", "object": "v2.billing.meter_event_session",
            "authentication_token": "tok_0", "expires_at": expires,
            "created": "2026-01-01T00:00:00Z", "livemode": false
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/stream/v2/billing/meter_event_stream"))
        .and(header("authorization", "Bearer tok_0"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({})))
        .mount(&server)
        .await;
    let p = provider(&server, StripeApi::MeterEventStream);
    let records: Vec<UsageRecord> = (0..750)
        .map(|i| {
            let mut r = record("acme", 1);
            r.idempotency_key = format!("mz1_{i:032}");
            r
        })
        .collect();
    let out = p.report(&records).await.unwrap();
    assert!(out.iter().all(|o| *o == RecordOutcome::Accepted));
    let calls: Vec<Request> = server.received_requests().await.unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut sizes = Vec::new();
    for c in calls
        .iter()
        .filter(|r| r.url.path().ends_with("meter_event_stream"))
    {
        let body: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
        let events = body["events"].as_array().unwrap();
        sizes.push(events.len());
        for e in events {
            assert!(seen.insert(e["identifier"].as_str().unwrap().to_owned()));
        }
    }
    sizes.sort_unstable();
    assert_eq!(sizes, [50, 100, 100, 100, 100, 100, 100, 100]);
    assert_eq!(seen.len(), 750);
}

#[tokio::test]
async fn adjustment_cancels_by_identifier() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/billing/meter_event_adjustments"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(
            "event_name=api_requests&type=cancel&cancel%5Bidentifier%5D=mz1_abc",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"object":"billing.meter_event_adjustment","status":"pending"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, StripeApi::MeterEventsV1);
    p.cancel_event("api_requests", "mz1_abc").await.unwrap();
}

#[tokio::test]
async fn legacy_usage_records_increment_with_idempotency_key() {
    let server = MockServer::start().await;
    let r = record("acme", 5);
    Mock::given(method("POST"))
        .and(path("/v1/subscription_items/si_1/usage_records"))
        .and(header("idempotency-key", r.idempotency_key.as_str()))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(format!(
            "quantity=5&timestamp={}&action=increment",
            r.timestamp()
        )))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"object":"usage_record"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let p = StripeProvider::builder(SecretString::from(KEY))
        .api(StripeApi::UsageRecords)
        .base_url(server.uri())
        .subscription_item(
            CustomerId::new("acme").unwrap(),
            MeterId::new("api_calls").unwrap(),
            "si_1",
        )
        .build()
        .unwrap();
    let out = p.report(&[r, record("other", 1)]).await.unwrap();
    assert_eq!(out[0], RecordOutcome::Accepted);
    assert!(
        matches!(&out[1], RecordOutcome::Rejected { reason } if reason.contains("subscription item"))
    );
}

#[test]
fn check_meter_maps_aggregations_honestly() {
    let p = StripeProvider::builder(SecretString::from(KEY))
        .mapper(Arc::new(mapping()))
        .build()
        .unwrap();
    let api = MeterId::new("api_calls").unwrap();
    let seats = MeterId::new("seats").unwrap();
    assert!(p.check_meter(&api, Aggregation::Count).is_ok());
    assert!(p.check_meter(&api, Aggregation::Sum).is_ok());
    assert!(p.check_meter(&api, Aggregation::Max).is_err());
    assert!(p.check_meter(&api, Aggregation::UniqueCount).is_err());
    assert!(p.check_meter(&seats, Aggregation::Latest).is_ok());
    assert!(p.check_meter(&seats, Aggregation::Sum).is_err());
    assert!(
        p.check_meter(&MeterId::new("unmapped").unwrap(), Aggregation::Sum)
            .is_err()
    );
}

#[tokio::test]
async fn reconciliation_reports_every_day_that_differs() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/billing/meters"))
        .and(query_param("limit", "100"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "object": "list", "url": "/v1/billing/meters", "has_more": false,
            "data": [{"id": "mtr_1", "object": "billing.meter", "event_name": "api_requests", "status": "active",
                      "default_aggregation": {"formula": "sum"},
                      "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
                      "value_settings": {"event_payload_key": "value"}}]
        })))
        .mount(&server)
        .await;
    let day = 86_400;
    let d0 = (now() / day - 3) * day;
    Mock::given(method("GET"))
        .and(path("/v1/billing/meters/mtr_1/event_summaries"))
        .and(query_param("customer", "cus_123"))
        .and(query_param("start_time", d0.to_string().as_str()))
        .and(query_param("end_time", (d0 + 2 * day).to_string().as_str()))
        .and(query_param("value_grouping_window", "day"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "object": "list", "has_more": false, "url": "/v1/billing/meters/mtr_1/event_summaries",
            "data": [
                {"id": "mes_a", "object": "billing.meter_event_summary", "meter": "mtr_1", "livemode": false,
                 "start_time": d0, "end_time": d0 + day, "aggregated_value": 10.0},
                {"id": "mes_b", "object": "billing.meter_event_summary", "meter": "mtr_1", "livemode": false,
                 "start_time": d0 + day, "end_time": d0 + 2 * day, "aggregated_value": 4.0}
            ]
        })))
        .expect(1)
        .mount(&server)
        .await;
    let rec = |start: u64, q: u64| {
        let r = UsageRecord::new(
            "i",
            "stripe",
            MeterId::new("api_calls").unwrap(),
            CustomerId::new("acme").unwrap(),
            start,
            60,
            0,
            q,
        );
        serde_json::from_value::<Acknowledged>(
            serde_json::json!({"record": r, "at_unix": start + 60}),
        )
        .unwrap()
    };
    let acks = vec![rec(d0, 6), rec(d0 + 60, 4), rec(d0 + day, 5)];
    let p = provider(&server, StripeApi::MeterEventsV2);
    let report = p.reconcile(&acks, now() - day).await.unwrap();
    assert_eq!(report.compared, 2);
    assert_eq!(report.differences.len(), 1);
    let d = &report.differences[0];
    assert_eq!((d.day_start, d.acknowledged, d.stripe), (d0 + day, 5, 4.0));
    // Each difference is raised as an event for the team's notifications.
    let engine = monetize_core::Engine::new(
        monetize_core::config::Config::builder()
            .meter(monetize_core::config::MeterConfig::count("api_calls"))
            .build(),
    )
    .unwrap();
    assert_eq!(report.raise(&engine, "stripe"), 1);
    let events = engine.drain_events(10);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].customer.as_ref().map(|c| c.as_str()),
        Some("acme")
    );
    assert_eq!(
        events[0].kind,
        monetize_core::EventKind::ReconciliationDifference {
            provider: "stripe".into(),
            meter: MeterId::new("api_calls").unwrap(),
            day_start: d0 + day,
            acknowledged: 5,
            provider_quantity: 4,
        }
    );
}
