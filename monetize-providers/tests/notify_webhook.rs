//! The signed webhook against wiremock, verified the way a receiver does (the
//! `standardwebhooks` crate), with a stable `webhook-id` and a fresh signature per try.
#![cfg(feature = "webhook")]

mod notify_common;

use std::sync::Arc;
use std::time::Duration;

use monetize_core::notify::{Dispatcher, NotifyConfig, RouteConfig};
use monetize_core::{Notifier, NotifyError};
use monetize_providers::notify::webhook::WebhookChannel;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

#[tokio::test]
async fn a_receiver_verifies_what_we_send_and_ids_stay_across_retries() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/hooks"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let hook = Arc::new(WebhookChannel::new(format!("{}/hooks", server.uri()), SECRET).unwrap());
    let config = NotifyConfig::new()
        .route(RouteConfig::new("hooks", ["quota_warning"], "hook"))
        .retries(3, 1, 5);
    let d = Dispatcher::builder(config)
        .channel("hook", hook)
        .start()
        .unwrap();
    d.dispatch(notify_common::warning().event);
    assert!(d.idle(Duration::from_secs(10)).await);
    assert_eq!(d.stats().sent, 1);

    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 2, "one 503, one retry");
    let receiver = standardwebhooks::Webhook::new(SECRET).unwrap();
    for r in &received {
        receiver.verify(&r.body, &r.headers).unwrap();
        // Tampering is caught: the check is real.
        let mut bad = r.body.clone();
        bad.push(b' ');
        assert!(receiver.verify(&bad, &r.headers).is_err());
    }
    let id = |i: usize| {
        received[i].headers["webhook-id"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(id(0), id(1), "the same id on every retry");
    assert!(id(0).starts_with("msg_") && !id(0).contains('.'));
    let body: Value = serde_json::from_slice(&received[1].body).unwrap();
    assert_eq!(body["type"], "quota.warning");
    assert_eq!(body["timestamp"], "2026-12-07T00:20:00Z");
    assert_eq!(
        body["data"]["event"],
        json!({"customer": "acme", "kind": "quota_warning", "meter": "api_calls", "used": 800, "limit": 1000})
    );
}

#[tokio::test]
async fn sorts_receiver_answers() {
    for (status, expected) in [
        (410, "permanent"),
        (429, "throttled"),
        (502, "throttled"),
        (504, "throttled"),
        (500, "retryable"),
        (400, "retryable"),
        (301, "retryable"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(status).insert_header("location", "https://elsewhere/"),
            )
            .mount(&server)
            .await;
        let hook = WebhookChannel::new(server.uri(), SECRET).unwrap();
        let e = hook.deliver(&notify_common::warning()).await.unwrap_err();
        let class = match &e {
            NotifyError::Permanent(_) => "permanent",
            NotifyError::Throttled { .. } => "throttled",
            NotifyError::Retryable(_) => "retryable",
            _ => "other",
        };
        assert_eq!(class, expected, "{status}: {e}");
        assert_eq!(
            server.received_requests().await.unwrap().len(),
            1,
            "no redirect followed"
        );
    }
}
