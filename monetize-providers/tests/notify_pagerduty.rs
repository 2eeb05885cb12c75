//! PagerDuty Events API v2 against wiremock: the exact trigger and resolve bodies with one
//! stable dedup_key, and PagerDuty's answers.
#![cfg(feature = "pagerduty")]

mod notify_common;

use monetize_core::{CustomerId, Event, EventKind, Notification, Notifier, NotifyError};
use monetize_providers::notify::pagerduty::PagerDutyChannel;
use secrecy::SecretString;
use serde_json::json;
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "R0UT1NGKEY0000000000000000000000";

fn channel(server: &MockServer) -> PagerDutyChannel {
    PagerDutyChannel::new(SecretString::from(KEY))
        .url(format!("{}/v2/enqueue", server.uri()))
        .severity("warning")
}

fn accepted() -> ResponseTemplate {
    ResponseTemplate::new(202).set_body_json(json!({
        "status": "success", "message": "Event processed", "dedup_key": "monetize/payment_failed/acme"
    }))
}

fn payment(kind: EventKind) -> Notification {
    let e = Event::new(Some(CustomerId::new("acme").unwrap()), kind)
        .at(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_602_800));
    Notification::new("finance", "pagerduty", "k", e, "acme: payment failed", "")
}

#[tokio::test]
async fn triggers_then_resolves_with_the_same_dedup_key() {
    let server = MockServer::start().await;
    let failed = payment(EventKind::PaymentFailed {
        provider: "stripe".into(),
        invoice: Some("in_1".into()),
        amount_due: Some(4200),
        currency: Some("usd".into()),
    });
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .and(body_json(json!({
            "routing_key": KEY,
            "event_action": "trigger",
            "dedup_key": "monetize/payment_failed/acme",
            "payload": {
                "summary": "acme: payment failed",
                "source": "monetize",
                "severity": "warning",
                "timestamp": "2026-12-07T00:20:00Z",
                "component": "monetize",
                "group": "acme",
                "class": "payment_failed",
                "custom_details": {
                    "customer": "acme", "kind": "payment_failed", "provider": "stripe",
                    "invoice": "in_1", "amount_due": 4200, "currency": "usd"
                },
            },
            "client": "monetize",
        })))
        .respond_with(accepted())
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .and(body_json(json!({
            "routing_key": KEY,
            "event_action": "resolve",
            "dedup_key": "monetize/payment_failed/acme",
        })))
        .respond_with(accepted())
        .expect(1)
        .mount(&server)
        .await;
    let pd = channel(&server);
    // A retried trigger carries the same key (PagerDuty folds it into the open alert).
    pd.deliver(&failed).await.unwrap();
    pd.deliver(&failed).await.unwrap();
    pd.deliver(&payment(EventKind::PaymentRecovered {
        provider: "stripe".into(),
        invoice: Some("in_1".into()),
    }))
    .await
    .unwrap();
    assert!(!format!("{pd:?}").contains(KEY));
}

#[tokio::test]
async fn sorts_pagerduty_answers() {
    let invalid = ResponseTemplate::new(400).set_body_json(json!({
        "status": "invalid event", "message": "Event object is invalid",
        "errors": ["'payload.summary' is missing or blank"]
    }));
    for (answer, expected) in [
        (invalid, "permanent"),
        (ResponseTemplate::new(429), "throttled"),
        (ResponseTemplate::new(500), "retryable"),
        (ResponseTemplate::new(503), "retryable"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(answer)
            .mount(&server)
            .await;
        let e = channel(&server)
            .deliver(&notify_common::warning())
            .await
            .unwrap_err();
        let class = match &e {
            NotifyError::Permanent(m) => {
                assert!(m.contains("'payload.summary' is missing or blank"), "{m}");
                "permanent"
            }
            NotifyError::Throttled { after, .. } => {
                assert_eq!(after.as_secs(), 60, "minutes, as PagerDuty says");
                "throttled"
            }
            NotifyError::Retryable(_) => "retryable",
            _ => "other",
        };
        assert_eq!(class, expected, "{e}");
    }
}
