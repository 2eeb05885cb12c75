//! Twilio Messages against wiremock: the exact form body and Basic auth, and Twilio's
//! error answers.
#![cfg(feature = "twilio")]

mod notify_common;

use monetize_core::{Notifier, NotifyError};
use monetize_providers::notify::twilio::{Sender, TwilioChannel};
use secrecy::SecretString;
use serde_json::json;
use wiremock::matchers::{body_string, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SID: &str = "AC00000000000000000000000000000000";

fn channel(server: &MockServer) -> TwilioChannel {
    TwilioChannel::new(
        SID,
        "SK00000000000000000000000000000000",
        SecretString::from("s3cret"),
        Sender::From("+15005550006".into()),
    )
    .base_url(server.uri())
    .to("+15551234567")
}

#[tokio::test]
async fn posts_a_form_with_basic_auth() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/2010-04-01/Accounts/{SID}/Messages.json")))
        // base64("SK00000000000000000000000000000000:s3cret")
        .and(header(
            "authorization",
            "Basic U0swMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDpzM2NyZXQ=",
        ))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(
            "To=%2B15551234567&From=%2B15005550006&Body=acme+used+80+%25+of+api_calls%0A800+of+1000+calls+this+month",
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "sid": "SM00000000000000000000000000000000", "status": "queued",
            "error_code": null, "num_segments": "1"
        })))
        .expect(1)
        .mount(&server)
        .await;
    channel(&server)
        .deliver(&notify_common::warning())
        .await
        .unwrap();
}

#[tokio::test]
async fn sorts_twilio_errors() {
    let err = |status: u16, code: u32, message: &str| {
        ResponseTemplate::new(status).set_body_json(json!({
            "code": code, "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status
        }))
    };
    for (answer, expected, code) in [
        (
            err(400, 21211, "The 'To' number is not a valid phone number."),
            "permanent",
            "21211",
        ),
        (
            err(400, 21610, "Attempt to send to unsubscribed recipient"),
            "permanent",
            "21610",
        ),
        (
            err(400, 21608, "The number is unverified."),
            "permanent",
            "21608",
        ),
        (err(429, 20429, "Too Many Requests"), "throttled", "20429"),
        (ResponseTemplate::new(500), "retryable", ""),
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
            NotifyError::Permanent(_) => "permanent",
            NotifyError::Throttled { .. } => "throttled",
            NotifyError::Retryable(_) => "retryable",
            _ => "other",
        };
        assert_eq!(class, expected, "{e}");
        assert!(e.to_string().contains(code), "{e}");
        assert!(!e.to_string().contains("s3cret"));
    }
}
