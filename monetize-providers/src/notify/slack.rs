//! Slack incoming webhooks: a Block Kit message (a header with the subject, a section with
//! the text, a context line naming customer, event and route) and `text` as the
//! notification fallback.
//!
//! | Answer | [`NotifyError`] |
//! |---|---|
//! | `200 ok` | delivered |
//! | 429 | `Throttled` after `Retry-After` |
//! | 5xx, network errors | `Retryable` |
//! | anything else (`400 invalid_payload`, `403 action_prohibited`, `404 channel_not_found`, `410 channel_is_archived`) | `Permanent`, with Slack's string |
//!
//! The webhook URL is a secret: it appears in no message and no `Debug`.

use async_trait::async_trait;
use monetize_core::{Event, Notification, Notifier, NotifyError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::client::{self, cut};

/// Posts notifications to a Slack incoming webhook.
pub struct SlackChannel {
    url: SecretString,
    client: reqwest::Client,
}

impl std::fmt::Debug for SlackChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackChannel")
            .field("url", &"[redacted]")
            .finish()
    }
}

impl SlackChannel {
    /// A channel posting to `webhook_url` (`https://hooks.slack.com/services/T…/B…/…`).
    pub fn new(webhook_url: SecretString) -> Self {
        Self {
            url: webhook_url,
            client: client::client(),
        }
    }

    /// The JSON body sent for `n`.
    pub fn payload(n: &Notification) -> Value {
        let who = n.event.customer.as_ref().map_or("-", |c| c.as_str());
        let fallback = cut(&format!("{}: {}", n.subject, n.text), 3000);
        json!({
            "text": fallback,
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": cut(&n.subject, 150)}},
                {"type": "section", "text": {"type": "mrkdwn", "text": cut(&n.text, 3000)}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(
                    &format!("customer `{who}` · event `{}` · route `{}`", n.event.kind.name(), n.route),
                    3000,
                )}]},
            ],
            "unfurl_links": false,
        })
    }
}

#[async_trait]
impl Notifier for SlackChannel {
    fn name(&self) -> &str {
        "slack"
    }

    async fn notify(&self, event: &Event) -> Result<(), NotifyError> {
        let subject = format!("{} event", event.kind.name());
        self.deliver(&Notification::new(
            "-",
            "slack",
            "-",
            event.clone(),
            subject,
            "",
        ))
        .await
    }

    async fn deliver(&self, n: &Notification) -> Result<(), NotifyError> {
        let request = self
            .client
            .post(self.url.expose_secret())
            .json(&Self::payload(n));
        let r = client::send("slack", request).await?;
        let status = r.status.as_u16();
        match status {
            200..=299 => Ok(()),
            429 => Err(NotifyError::Throttled {
                after: r.retry_after().unwrap_or(std::time::Duration::from_secs(1)),
                message: format!("slack 429 {}", r.excerpt()),
            }),
            500..=599 => Err(NotifyError::Retryable(format!(
                "slack {status}: {}",
                r.excerpt()
            ))),
            _ => Err(NotifyError::Permanent(format!(
                "slack {status}: {}",
                r.excerpt()
            ))),
        }
    }
}
