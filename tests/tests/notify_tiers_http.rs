//! End to end through the HTTP stack: a customer's calls cross a usage tier (a burst of
//! concurrent requests over real TCP) and the `tier_reached` route delivers exactly one
//! email, with the tier in it, to a real SMTP server (aiosmtpd); a customer who hits its
//! quota two months in a row is announced to sales (Slack, wiremock) once, when the
//! second month ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use monetize_axum::RouterExt;
use monetize_core::Engine;
use monetize_core::config::{Config, MeterConfig, Period, PlanConfig, QuotaConfig, RuleConfig};
use monetize_core::notify::NotifyConfig;
use monetize_tests::http::{TestServer, api_key_layer};
use monetize_tests::notify::email_and_slack;
use monetize_tests::smtp::SmtpSink;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// 2026-11-01T00:00:00Z, and the next two month starts.
const NOV: u64 = 1_793_491_200;
const DEC: u64 = 1_796_083_200;
const JAN: u64 = 1_798_761_600;

fn engine(plan: PlanConfig, clock: Option<Arc<AtomicU64>>) -> Engine {
    let mut config = Config::builder()
        .meter(MeterConfig::count("api_calls").route("/v1/*").status("2xx"))
        .plan(plan)
        .default_plan("growth");
    for r in RuleConfig::defaults() {
        config = config.rule(r);
    }
    let mut b = Engine::builder(config.build());
    if let Some(c) = clock {
        b = b.wall_clock(move || c.load(Ordering::Relaxed));
    }
    b.build().unwrap()
}

fn notify_config() -> NotifyConfig {
    NotifyConfig::from_toml_str(
        r#"
        upgrade_link = "https://api.test/plans"
        [recipients]
        globex = "billing@globex.test"

        [[routes]]
        name = "tier-email"
        events = ["tier_reached"]
        channel = "email"
        template = "tier"
        to = "customer"

        [[routes]]
        name = "sales"
        events = ["upsell_candidate"]
        channel = "slack"
        template = "sales"

        [templates.tier]
        subject = "{{ customer }}: you passed {{ tier }} {{ meter }} this month"
        text = "Your usage is {{ usage }} {{ meter }}; from {{ tier }} on the next price applies. Plans: {{ upgrade_link }}"
        html = "<p>Your usage passed <b>{{ tier }}</b> {{ meter }}.</p>"

        [templates.sales]
        subject = "Upsell: {{ customer }} reached {{ allowance }} {{ meter }} {{ periods }} periods in a row"
        text = "Last period: {{ usage }} of {{ allowance }}."
        "#,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_crossing_a_tier_sends_one_email_with_the_tier() {
    let sink = SmtpSink::start(None);
    let engine = engine(
        PlanConfig::new("growth").tiers("api_calls", [5, 1_000]),
        None,
    );
    let (dispatcher, _dir) =
        email_and_slack(notify_config(), &sink, "http://127.0.0.1:9/unused".into());
    let _pump = dispatcher.pump(engine.clone(), Duration::from_millis(10));

    let app = Router::new()
        .route("/v1/hello", get(|| async { "hello" }))
        .monetize(api_key_layer(&engine, &["globex"]));
    let server = TestServer::start(app).await;
    let client = server.client();

    for _ in 0..2 {
        assert_eq!(client.get("/v1/hello", Some("globex")).await.status, 200);
    }
    // 12 concurrent calls take the usage from 2 to 14, past the tier of 5.
    let burst: Vec<_> = (0..12)
        .map(|_| {
            let client = server.client();
            tokio::spawn(async move { client.get("/v1/hello", Some("globex")).await.status })
        })
        .collect();
    for call in burst {
        assert_eq!(call.await.unwrap(), 200);
    }
    assert_eq!(
        monetize_tests::http::used(&engine, "globex", "api_calls"),
        14
    );

    let got = sink.wait_for(1);
    dispatcher.take_from(&engine);
    assert!(dispatcher.idle(Duration::from_secs(10)).await);
    let got_all = sink.received();
    assert_eq!(got_all.len(), 1, "one email for the tier: {got_all:?}");
    assert_eq!(got[0].to, ["billing@globex.test"]);
    assert!(
        got[0]
            .data
            .contains("Subject: globex: you passed 5 api_calls this month"),
        "{}",
        got[0].data
    );
    assert!(
        got[0]
            .data
            .contains("Your usage is 5 api_calls; from 5 on the next price applies."),
        "the usage the crossing call reached: {}",
        got[0].data
    );
    assert!(got[0].data.contains("Content-Type: text/html"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hitting_the_quota_two_months_in_a_row_tells_sales_once() {
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/T1/B1/sales"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&slack)
        .await;
    let now = Arc::new(AtomicU64::new(NOV + 3_600));
    let engine = engine(
        PlanConfig::new("growth")
            .quota(QuotaConfig::new("api_calls", 3, Period::Month))
            .upsell_after_periods(2),
        Some(now.clone()),
    );
    let sink = SmtpSink::start(None);
    let (dispatcher, _dir) = email_and_slack(
        notify_config(),
        &sink,
        format!("{}/services/T1/B1/sales", slack.uri()),
    );

    let app = Router::new()
        .route("/v1/hello", get(|| async { "hello" }))
        .monetize(api_key_layer(&engine, &["globex"]));
    let server = TestServer::start(app).await;
    let client = server.client();

    for next_month in [DEC, JAN] {
        // 3 calls pass, the 4th is refused: the quota stops usage at its limit.
        for expected in [200, 200, 200, 429] {
            assert_eq!(
                client.get("/v1/hello", Some("globex")).await.status,
                expected
            );
        }
        // What the reporter does every interval: checkpoint, then tick; the month ends.
        let _ = engine.checkpoint();
        now.store(next_month + 60, Ordering::Relaxed);
        engine.tick();
        dispatcher.take_from(&engine);
        assert!(dispatcher.idle(Duration::from_secs(10)).await);
    }
    let posts: Vec<Value> = slack
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(
        posts[0]["blocks"][0]["text"]["text"],
        "Upsell: globex reached 3 api_calls 2 periods in a row"
    );
    assert!(
        sink.received().is_empty(),
        "no tiers on this plan, so no email"
    );
    server.shutdown().await;
}
