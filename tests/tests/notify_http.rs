//! End to end through the HTTP stack: a prepaid customer spends its credits over real
//! HTTP; the engine's events go through the notification dispatcher to a real SMTP server
//! (aiosmtpd) and to Slack (wiremock): the low-credit email, then the exhausted email,
//! and the finance alert only when the customer calls again after being refused, once.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use monetize_axum::RouterExt;
use monetize_core::Engine;
use monetize_core::config::{Config, MeterConfig, PlanConfig, RuleConfig};
use monetize_core::notify::NotifyConfig;
use monetize_tests::http::{TestServer, api_key_layer, eventually};
use monetize_tests::notify::email_and_slack;
use monetize_tests::smtp::SmtpSink;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn engine() -> Engine {
    let mut config = Config::builder()
        .meter(MeterConfig::count("api_calls").route("/v1/*").status("2xx"))
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(3_000)
                .credits_low_at(1_000)
                .price("api_calls", 1_000),
        )
        .default_plan("prepaid");
    for r in RuleConfig::defaults() {
        config = config.rule(r);
    }
    Engine::new(config.build()).unwrap()
}

fn notify_config() -> NotifyConfig {
    NotifyConfig::from_toml_str(
        r#"
        upgrade_link = "https://api.test/top-up"
        [recipients]
        globex = "billing@globex.test"

        [[routes]]
        name = "credits"
        events = ["credits_low", "credits_exhausted"]
        channel = "email"
        template = "credits"
        to = "customer"

        [[routes]]
        name = "finance"
        events = ["blocked"]
        channel = "slack"
        template = "finance"

        [templates.credits]
        subject = "{% if kind == 'credits_low' %}Credits low{% else %}Credits used up{% endif %}: {{ customer }}"
        text = "Balance {{ balance }}. Top up at {{ upgrade_link }}"
        html = "<p>Balance <b>{{ balance }}</b></p>"

        [templates.finance]
        subject = "{{ customer }} keeps calling while refused ({{ rule }})"
        text = "Refused by `{{ rule }}` and still calling."
        "#,
    )
    .unwrap()
}

async fn slack_posts(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepaid_customer_gets_low_then_exhausted_emails_and_finance_hears_when_it_calls_again() {
    let sink = SmtpSink::start(None);
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/T1/B1/x"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&slack)
        .await;

    let engine = engine();
    engine.register("globex", "prepaid").unwrap();
    let (dispatcher, _dir) = email_and_slack(
        notify_config(),
        &sink,
        format!("{}/services/T1/B1/x", slack.uri()),
    );
    let _pump = dispatcher.pump(engine.clone(), Duration::from_millis(10));

    let app = Router::new()
        .route("/v1/hello", get(|| async { "hello" }))
        .monetize(api_key_layer(&engine, &["globex"]));
    let server = TestServer::start(app).await;
    let client = server.client();

    // 3,000 → 2,000: nothing yet.
    assert_eq!(client.get("/v1/hello", Some("globex")).await.status, 200);
    // 2,000 → 1,000: at the low mark.
    assert_eq!(client.get("/v1/hello", Some("globex")).await.status, 200);
    let got = sink.wait_for(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].to, ["billing@globex.test"]);
    assert!(
        got[0].data.contains("Subject: Credits low: globex"),
        "{}",
        got[0].data
    );
    assert!(
        got[0]
            .data
            .contains("Balance 1000. Top up at https://api.test/top-up")
    );
    assert!(got[0].data.contains("Content-Type: text/html"));

    // 1,000 → 0: used up.
    assert_eq!(client.get("/v1/hello", Some("globex")).await.status, 200);
    let got = sink.wait_for(2);
    assert_eq!(got.len(), 2);
    assert!(
        got[1].data.contains("Subject: Credits used up: globex"),
        "{}",
        got[1].data
    );
    assert!(dispatcher.idle(Duration::from_secs(10)).await);
    assert!(
        slack_posts(&slack).await.is_empty(),
        "no alert before it calls again"
    );

    // It calls again: 402, and finance hears of it, once however often it calls.
    for _ in 0..3 {
        assert_eq!(client.get("/v1/hello", Some("globex")).await.status, 402);
    }
    eventually("the finance alert", || {
        futures_util::FutureExt::now_or_never(slack.received_requests())
            .flatten()
            .is_some_and(|r| !r.is_empty())
    })
    .await;
    dispatcher.take_from(&engine);
    assert!(dispatcher.idle(Duration::from_secs(10)).await);
    let posts = slack_posts(&slack).await;
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(
        posts[0]["blocks"][0]["text"]["text"],
        "globex keeps calling while refused (credits_exhausted)"
    );
    assert_eq!(sink.received().len(), 2, "no more emails");
    server.shutdown().await;
}
