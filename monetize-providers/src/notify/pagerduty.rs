//! PagerDuty Events API v2: a notification triggers an alert with a stable `dedup_key`
//! (`monetize/<event>/<customer>`: retries and repeats update the same alert), and an
//! event configured as resolving another (`payment_recovered` resolves `payment_failed`)
//! resolves it with the same key.
//!
//! | Answer | [`NotifyError`] |
//! |---|---|
//! | 202 | delivered |
//! | 400 `invalid event` | `Permanent`, with PagerDuty's `errors` |
//! | 429 (~120 events/min per key) | `Throttled`, after `Retry-After` or 60 s |
//! | 5xx, network errors | `Retryable` |

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use monetize_core::{Event, Notification, Notifier, NotifyError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::client::{self, cut};

/// The US endpoint (EU accounts: `https://events.eu.pagerduty.com/v2/enqueue`).
pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Sends notifications to a PagerDuty service as Events API v2 alerts.
pub struct PagerDutyChannel {
    url: String,
    routing_key: SecretString,
    source: String,
    severity: String,
    resolves: BTreeMap<String, String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for PagerDutyChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagerDutyChannel")
            .field("url", &self.url)
            .field("routing_key", &"[redacted]")
            .field("severity", &self.severity)
            .field("resolves", &self.resolves)
            .finish()
    }
}

impl PagerDutyChannel {
    /// A channel for the integration `routing_key`, severity `error`, source `monetize`,
    /// and `payment_recovered` resolving `payment_failed` and `invoice_overdue`.
    pub fn new(routing_key: SecretString) -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            routing_key,
            source: "monetize".to_owned(),
            severity: "error".to_owned(),
            resolves: BTreeMap::from([(
                "payment_recovered".to_owned(),
                "payment_failed".to_owned(),
            )]),
            client: client::client(),
        }
    }

    /// Sends to another endpoint (the EU one, or a test server).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Sets the `payload.source` (default `monetize`).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Sets the severity: `critical`, `error`, `warning` or `info`.
    pub fn severity(mut self, severity: impl Into<String>) -> Self {
        self.severity = severity.into();
        self
    }

    /// Events named `event` resolve the alert that `resolved` events opened.
    pub fn resolves(mut self, event: impl Into<String>, resolved: impl Into<String>) -> Self {
        self.resolves.insert(event.into(), resolved.into());
        self
    }

    /// The stable alert key of an event name and customer.
    pub fn dedup_key(event: &str, n: &Notification) -> String {
        let who = n.event.customer.as_ref().map_or("-", |c| c.as_str());
        cut(&format!("monetize/{event}/{who}"), 255)
    }

    /// The JSON body sent for `n`.
    pub fn payload(&self, n: &Notification) -> Value {
        let name = n.event.kind.name();
        if let Some(resolved) = self.resolves.get(name) {
            return json!({
                "routing_key": self.routing_key.expose_secret(),
                "event_action": "resolve",
                "dedup_key": Self::dedup_key(resolved, n),
            });
        }
        let ts = n
            .event
            .at
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| jiff::Timestamp::from_second(d.as_secs() as i64).ok())
            .map(|t| t.to_string());
        let mut payload = json!({
            "summary": cut(&n.subject, 1024),
            "source": self.source,
            "severity": self.severity,
            "component": "monetize",
            "class": name,
            "custom_details": n.event,
        });
        if let Some(c) = &n.event.customer {
            payload["group"] = c.as_str().into();
        }
        if let Some(ts) = ts {
            payload["timestamp"] = ts.into();
        }
        json!({
            "routing_key": self.routing_key.expose_secret(),
            "event_action": "trigger",
            "dedup_key": Self::dedup_key(name, n),
            "payload": payload,
            "client": "monetize",
        })
    }
}

#[async_trait]
impl Notifier for PagerDutyChannel {
    fn name(&self) -> &str {
        "pagerduty"
    }

    async fn notify(&self, event: &Event) -> Result<(), NotifyError> {
        let subject = format!("{} event", event.kind.name());
        self.deliver(&Notification::new(
            "-",
            "pagerduty",
            "-",
            event.clone(),
            subject,
            "",
        ))
        .await
    }

    async fn deliver(&self, n: &Notification) -> Result<(), NotifyError> {
        let request = self.client.post(&self.url).json(&self.payload(n));
        let r = client::send("pagerduty", request).await?;
        let status = r.status.as_u16();
        match status {
            200..=299 => Ok(()),
            429 => Err(NotifyError::Throttled {
                after: r.retry_after().unwrap_or(Duration::from_secs(60)),
                message: "pagerduty 429: event not ingested".to_owned(),
            }),
            500..=599 => Err(NotifyError::Retryable(format!(
                "pagerduty {status}: {}",
                r.excerpt()
            ))),
            _ => {
                let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
                let errors = v["errors"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_else(|| r.excerpt());
                Err(NotifyError::Permanent(format!(
                    "pagerduty {status} {}: {errors}",
                    v["message"].as_str().unwrap_or("")
                )))
            }
        }
    }
}
