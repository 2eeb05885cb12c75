//! The signed webhook against wiremock, verified the way a receiver does (the
//! `standardwebhooks` crate), with a stable `webhook-id` and a fresh signature per try;
//! the Standard Webhooks retry schedule under paused tokio time, then the endpoint
//! disabled.
#![cfg(feature = "webhook")]

mod notify_common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use monetize_core::notify::{ChannelStats, Dispatcher, NotifyConfig, RetryPolicy, RouteConfig};
use monetize_core::{Event, EventKind, MemoryNotifier, Notification, Notifier, NotifyError};
use monetize_providers::notify::webhook::WebhookChannel;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
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
    let hook = Arc::new(
        WebhookChannel::new(format!("{}/hooks", server.uri()), SECRET)
            .unwrap()
            .retries(RetryPolicy::schedule([Duration::from_millis(1)])),
    );
    let config = NotifyConfig::new().route(RouteConfig::new("hooks", ["quota_warning"], "hook"));
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

/// The webhook channel, recording the paused time of each attempt and signalling after it.
struct Timed {
    hook: WebhookChannel,
    at: Mutex<Vec<Instant>>,
    done: Notify,
}

#[async_trait]
impl Notifier for Timed {
    fn name(&self) -> &str {
        "timed"
    }
    async fn notify(&self, _: &Event) -> Result<(), NotifyError> {
        unreachable!("the dispatcher calls deliver")
    }
    async fn deliver(&self, n: &Notification) -> Result<(), NotifyError> {
        self.at.lock().unwrap().push(Instant::now());
        let r = self.hook.deliver(n).await;
        self.done.notify_one();
        r
    }
    fn retry_policy(&self) -> Option<RetryPolicy> {
        self.hook.retry_policy()
    }
}

/// A webhook channel to `server` whose timestamps follow paused tokio time, and whose
/// HTTP client has no timers (under paused time, tokio would jump to a pending timeout
/// while the request is on the wire).
fn timed(server: &MockServer) -> Arc<Timed> {
    let start = Instant::now();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(None)
        .build()
        .unwrap();
    let hook = WebhookChannel::new(format!("{}/hooks", server.uri()), SECRET)
        .unwrap()
        .http_client(client)
        .clock(Arc::new(move || 1_796_602_800 + start.elapsed().as_secs()));
    Arc::new(Timed {
        hook,
        at: Mutex::new(Vec::new()),
        done: Notify::new(),
    })
}

/// A dispatcher sending quota warnings to `hook` and failures to `team`; `gave_up` is
/// signalled when a notification fails for good.
fn dispatcher(hook: Arc<Timed>, team: Arc<MemoryNotifier>, gave_up: Arc<Notify>) -> Dispatcher {
    let config = NotifyConfig::new()
        .route(RouteConfig::new("hooks", ["quota_warning"], "hook"))
        .route(RouteConfig::new(
            "failures",
            ["notification_failed"],
            "team",
        ));
    Dispatcher::builder(config)
        .channel("hook", hook)
        .channel("team", team)
        .on_failure(Arc::new(move |_| gave_up.notify_one()))
        .start()
        .unwrap()
}

/// The requests' timestamps, after checking each signature as a receiver computes it
/// (its own tolerance check aside: these timestamps are in paused time).
async fn signed_timestamps(server: &MockServer) -> Vec<i64> {
    let receiver = standardwebhooks::Webhook::new(SECRET).unwrap();
    let mut out = Vec::new();
    let mut signatures = Vec::new();
    for r in server.received_requests().await.unwrap() {
        let h = |name: &str| r.headers[name].to_str().unwrap().to_owned();
        let ts: i64 = h("webhook-timestamp").parse().unwrap();
        assert_eq!(
            receiver.sign(&h("webhook-id"), ts, &r.body).unwrap(),
            h("webhook-signature")
        );
        signatures.push(h("webhook-signature"));
        out.push(ts);
    }
    signatures.dedup();
    assert_eq!(signatures.len(), out.len(), "a new signature per try");
    out
}

const SCHEDULE: [u64; 9] = [5, 300, 1800, 7200, 18_000, 36_000, 50_400, 72_000, 86_400];

fn within_jitter(gap: Duration, secs: u64) -> bool {
    let s = Duration::from_secs(secs);
    gap >= s.mul_f64(0.9) && gap <= s.mul_f64(1.1) + Duration::from_millis(1)
}

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_is_retried_on_the_standard_webhooks_schedule_then_disabled() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let hook = timed(&server);
    let team = Arc::new(MemoryNotifier::new());
    let gave_up = Arc::new(Notify::new());
    let d = dispatcher(hook.clone(), team.clone(), gave_up.clone());
    d.dispatch(notify_common::warning().event);
    gave_up.notified().await;
    assert!(d.idle(Duration::from_secs(10)).await);

    let at = hook.at.lock().unwrap().clone();
    assert_eq!(at.len(), 10, "immediately, then nine retries");
    for (w, secs) in at.windows(2).zip(SCHEDULE) {
        let gap = w[1].duration_since(w[0]);
        assert!(within_jitter(gap, secs), "{gap:?} for {secs} s");
    }
    let stamps = signed_timestamps(&server).await;
    assert_eq!(stamps.len(), 10);
    for (w, secs) in stamps.windows(2).zip(SCHEDULE) {
        let gap = (w[1] - w[0]) as f64;
        let secs = secs as f64;
        assert!(
            gap >= secs * 0.9 - 1.0 && gap <= secs * 1.1 + 1.0,
            "{gap} for {secs}"
        );
    }
    let s = &d.stats().channels["hook"];
    assert_eq!((s.sent, s.retried, s.failed, s.disabled), (0, 9, 1, true));
    let alerts = team.notifications();
    assert_eq!(alerts.len(), 1, "the failure is raised once");
    assert!(matches!(
        &alerts[0].event.kind,
        EventKind::NotificationFailed { channel, reason, .. }
            if channel == "hook" && reason.contains("disabled")
    ));

    // Disabled: the next notification is not sent.
    let mut next = notify_common::warning().event;
    next.customer = Some(monetize_core::CustomerId::new("globex").unwrap());
    d.dispatch(next);
    assert!(d.idle(Duration::from_secs(10)).await);
    assert_eq!(server.received_requests().await.unwrap().len(), 10);
    assert_eq!(d.stats().channels["hook"].skipped, 1);
    assert_eq!(team.notifications().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_2xx_on_the_third_attempt_is_delivered() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/hooks"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let hook = timed(&server);
    let team = Arc::new(MemoryNotifier::new());
    let d = dispatcher(hook.clone(), team.clone(), Arc::new(Notify::new()));
    d.dispatch(notify_common::warning().event);
    for _ in 0..3 {
        hook.done.notified().await;
    }
    assert!(d.idle(Duration::from_secs(10)).await);
    let s: ChannelStats = d.stats().channels["hook"].clone();
    assert_eq!(
        (
            s.sent, s.retried, s.failed, s.dropped, s.skipped, s.disabled
        ),
        (1, 2, 0, 0, 0, false)
    );
    let at = hook.at.lock().unwrap().clone();
    assert!(within_jitter(at[1].duration_since(at[0]), 5));
    assert!(within_jitter(at[2].duration_since(at[1]), 300));
    let stamps = signed_timestamps(&server).await;
    assert_eq!(stamps.len(), 3);
    assert!(stamps[0] < stamps[1] && stamps[1] < stamps[2], "{stamps:?}");
    assert!(team.notifications().is_empty());
}

#[tokio::test]
async fn a_410_disables_the_endpoint_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&server)
        .await;
    let hook = Arc::new(WebhookChannel::new(format!("{}/hooks", server.uri()), SECRET).unwrap());
    let team = Arc::new(MemoryNotifier::new());
    let config = NotifyConfig::new()
        .route(RouteConfig::new("hooks", ["quota_warning"], "hook"))
        .route(RouteConfig::new(
            "failures",
            ["notification_failed"],
            "team",
        ));
    let d = Dispatcher::builder(config)
        .channel("hook", hook)
        .channel("team", team.clone())
        .start()
        .unwrap();
    d.dispatch(notify_common::warning().event);
    assert!(d.idle(Duration::from_secs(10)).await);
    let mut next = notify_common::warning().event;
    next.customer = Some(monetize_core::CustomerId::new("globex").unwrap());
    d.dispatch(next);
    assert!(d.idle(Duration::from_secs(10)).await);
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    let s = &d.stats().channels["hook"];
    assert_eq!(
        (s.retried, s.failed, s.skipped, s.disabled),
        (0, 1, 1, true)
    );
    assert_eq!(team.notifications().len(), 1);
}
