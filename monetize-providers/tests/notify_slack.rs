//! Slack incoming webhooks against wiremock: the exact Block Kit payload, and each of
//! Slack's answers sorted into the right error class.
#![cfg(feature = "slack")]

mod notify_common;

use monetize_core::{Notifier, NotifyError};
use monetize_providers::notify::slack::SlackChannel;
use secrecy::SecretString;
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const HOOK: &str = "/services/T000/B000/XXXXSECRETXXXX";

async fn channel(server: &MockServer) -> SlackChannel {
    SlackChannel::new(SecretString::from(format!("{}{HOOK}", server.uri())))
}

#[tokio::test]
async fn posts_block_kit_with_a_text_fallback() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(HOOK))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "text": "acme used 80 % of api_calls: 800 of 1000 calls this month",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "acme used 80 % of api_calls"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": "800 of 1000 calls this month"}},
                {"type": "context", "elements": [{"type": "mrkdwn",
                    "text": "customer `acme` · event `quota_warning` · route `quota-team`"}]},
            ],
            "unfurl_links": false,
        })))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .expect(1)
        .mount(&server)
        .await;
    channel(&server)
        .await
        .deliver(&notify_common::warning())
        .await
        .unwrap();
}

#[tokio::test]
async fn sorts_slack_answers_and_keeps_the_url_secret() {
    for (status, body, retry_after, expected) in [
        (400, "invalid_payload", None, "permanent"),
        (403, "action_prohibited", None, "permanent"),
        (404, "channel_not_found", None, "permanent"),
        (410, "channel_is_archived", None, "permanent"),
        (500, "rollup_error", None, "retryable"),
        (503, "<html>unavailable</html>", None, "retryable"),
        (429, "rate_limited", Some("30"), "throttled"),
    ] {
        let server = MockServer::start().await;
        let mut answer = ResponseTemplate::new(status).set_body_string(body);
        if let Some(r) = retry_after {
            answer = answer.insert_header("retry-after", r);
        }
        Mock::given(method("POST"))
            .respond_with(answer)
            .mount(&server)
            .await;
        let slack = channel(&server).await;
        let e = slack.deliver(&notify_common::warning()).await.unwrap_err();
        let class = match &e {
            NotifyError::Permanent(_) => "permanent",
            NotifyError::Retryable(_) => "retryable",
            NotifyError::Throttled { after, .. } => {
                assert_eq!(after.as_secs(), 30);
                "throttled"
            }
            _ => "other",
        };
        assert_eq!(class, expected, "{status} {body}: {e}");
        assert!(e.to_string().contains(body) || status == 429, "{e}");
        assert!(!e.to_string().contains("SECRET"), "{e}");
        assert!(!format!("{slack:?}").contains("SECRET"));
    }
    // A refused connection is transient, and its message has no URL either.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let slack = SlackChannel::new(SecretString::from(format!("http://127.0.0.1:{port}{HOOK}")));
    let e = slack.deliver(&notify_common::warning()).await.unwrap_err();
    assert!(matches!(e, NotifyError::Retryable(_)), "{e}");
    assert!(!e.to_string().contains("SECRET"), "{e}");
}
