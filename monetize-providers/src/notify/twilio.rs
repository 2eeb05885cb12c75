//! Twilio Programmable Messaging: one SMS per notification (subject and text, cut to
//! 1,600 characters), form-encoded, HTTP Basic auth (API key SID `SK…` and secret, or
//! Account SID and Auth Token).
//!
//! | Answer | [`NotifyError`] |
//! |---|---|
//! | 201 | delivered (queued) |
//! | 429 / code 20429 | `Throttled`, after `Retry-After` or 1 s |
//! | 5xx, network errors | `Retryable` (Twilio has no idempotency key: a retry after a timeout may send twice) |
//! | other 4xx (21211 invalid `To`, 21610 recipient sent STOP, 21608 unverified number) | `Permanent`, with Twilio's code |

use std::time::Duration;

use async_trait::async_trait;
use monetize_core::{Event, Notification, Notifier, NotifyError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::client::{self, cut};

/// Twilio's API.
pub const DEFAULT_BASE: &str = "https://api.twilio.com";

/// Who the SMS comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sender {
    /// A Twilio phone number (E.164): `From`.
    From(String),
    /// A Messaging Service (`MG…`): `MessagingServiceSid`.
    MessagingService(String),
}

/// Sends notifications as SMS through Twilio.
pub struct TwilioChannel {
    base: String,
    account_sid: String,
    username: String,
    secret: SecretString,
    sender: Sender,
    to: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for TwilioChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioChannel")
            .field("base", &self.base)
            .field("account_sid", &self.account_sid)
            .field("username", &self.username)
            .field("secret", &"[redacted]")
            .field("sender", &self.sender)
            .field("to", &self.to)
            .finish()
    }
}

impl TwilioChannel {
    /// A channel for `account_sid`, authenticating as `username` (an API key SID or the
    /// Account SID) with `secret`, sending from `sender`.
    pub fn new(
        account_sid: impl Into<String>,
        username: impl Into<String>,
        secret: SecretString,
        sender: Sender,
    ) -> Self {
        Self {
            base: DEFAULT_BASE.to_owned(),
            account_sid: account_sid.into(),
            username: username.into(),
            secret,
            sender,
            to: None,
            client: client::client(),
        }
    }

    /// Sends to another base URL (a test server).
    pub fn base_url(mut self, base: impl Into<String>) -> Self {
        self.base = base.into().trim_end_matches('/').to_owned();
        self
    }

    /// The number (E.164) used when a route names no recipient.
    pub fn to(mut self, number: impl Into<String>) -> Self {
        self.to = Some(number.into());
        self
    }

    /// The form fields sent for `n` to `to`.
    pub fn form(&self, n: &Notification, to: &str) -> Vec<(&'static str, String)> {
        let body = if n.text.is_empty() {
            n.subject.clone()
        } else {
            format!("{}\n{}", n.subject, n.text)
        };
        let from = match &self.sender {
            Sender::From(f) => ("From", f.clone()),
            Sender::MessagingService(m) => ("MessagingServiceSid", m.clone()),
        };
        vec![("To", to.to_owned()), from, ("Body", cut(&body, 1600))]
    }
}

#[async_trait]
impl Notifier for TwilioChannel {
    fn name(&self) -> &str {
        "twilio"
    }

    async fn notify(&self, event: &Event) -> Result<(), NotifyError> {
        let subject = format!("{} event", event.kind.name());
        self.deliver(&Notification::new(
            "-",
            "twilio",
            "-",
            event.clone(),
            subject,
            "",
        ))
        .await
    }

    async fn deliver(&self, n: &Notification) -> Result<(), NotifyError> {
        let Some(to) = n.to.as_deref().or(self.to.as_deref()) else {
            return Err(NotifyError::Permanent(
                "twilio: no recipient (route `to` or the channel's number)".into(),
            ));
        };
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base,
            crate::path_segment(&self.account_sid)
        );
        let request = self
            .client
            .post(url)
            .basic_auth(&self.username, Some(self.secret.expose_secret()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(self.form(n, to)).unwrap_or_default());
        let r = client::send("twilio", request).await?;
        let status = r.status.as_u16();
        if r.status.is_success() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
        let code = v["code"].as_u64();
        let message = format!(
            "twilio {status} {}: {}",
            code.map_or_else(String::new, |c| c.to_string()),
            v["message"]
                .as_str()
                .map_or_else(|| r.excerpt(), str::to_owned)
        );
        match (status, code) {
            (429, _) | (_, Some(20429)) => Err(NotifyError::Throttled {
                after: r.retry_after().unwrap_or(Duration::from_secs(1)),
                message,
            }),
            (500..=599, _) => Err(NotifyError::Retryable(message)),
            _ => Err(NotifyError::Permanent(message)),
        }
    }
}
