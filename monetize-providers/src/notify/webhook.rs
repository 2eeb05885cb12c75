//! A generic outgoing webhook signed as Standard Webhooks 1.0 (Svix's format, which
//! receivers verify with the `standardwebhooks` libraries).
//!
//! `POST` JSON `{"type":"quota.warning","timestamp":"<ISO 8601>","data":{…}}` with
//! `webhook-id` (from the dedup key: the same on every retry), `webhook-timestamp` (unix
//! seconds of this attempt) and `webhook-signature`: `v1,` + base64 of HMAC-SHA256 over
//! `{id}.{timestamp}.{body}` with the secret's decoded bytes (`whsec_` + base64).
//!
//! | Answer | [`NotifyError`] |
//! |---|---|
//! | 2xx | delivered |
//! | 410 | `Permanent`: the receiver disabled the endpoint |
//! | 429, 502, 504 | `Throttled`, after `Retry-After` or 5 s |
//! | anything else (3xx: no redirects followed), network errors | `Retryable` (a new timestamp and signature per try) |
//!
//! Retries follow the Standard Webhooks sender schedule ([`RetryPolicy::standard_webhooks`]:
//! immediately, then after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h, with
//! jitter, or later when `Retry-After` says so); when a notification fails for good (410,
//! or the schedule is used up) the dispatcher disables the channel, raises
//! `notification_failed` once and logs it. Pending retries are kept in memory: a restart
//! forgets them. [`WebhookChannel::retries`] sets another policy.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use monetize_core::notify::RetryPolicy;
use monetize_core::{Event, Notification, Notifier, NotifyError};
use secrecy::{ExposeSecret, SecretBox};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::client;

/// A webhook secret that is not `whsec_` + base64.
#[derive(Debug, thiserror::Error)]
#[error("webhook secret must be `whsec_` followed by base64 (24 to 64 bytes): {0}")]
pub struct BadSecret(String);

/// A clock giving unix seconds (`webhook-timestamp`).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Posts notifications to a URL, signed as Standard Webhooks.
pub struct WebhookChannel {
    url: String,
    key: SecretBox<Vec<u8>>,
    client: reqwest::Client,
    policy: RetryPolicy,
    clock: Clock,
}

impl std::fmt::Debug for WebhookChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookChannel")
            .field("url", &self.url)
            .field("key", &"[redacted]")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Decodes a `whsec_…` secret into its key bytes.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, BadSecret> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = STANDARD.decode(b64).map_err(|e| BadSecret(e.to_string()))?;
    if key.is_empty() || key.len() > 64 {
        return Err(BadSecret(format!("{} bytes", key.len())));
    }
    Ok(key)
}

/// `v1,` + base64(HMAC-SHA256(key, `{id}.{timestamp}.{body}`)).
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length: new_from_slice never fails for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-id` of a notification: `msg_` + the first 32 hex digits of SHA-256 of
/// its dedup key (stable across retries, no `.`).
pub fn message_id(dedup_key: &str) -> String {
    let digest = Sha256::digest(dedup_key.as_bytes());
    format!("msg_{}", &hex::encode(digest)[..32])
}

impl WebhookChannel {
    /// A channel posting to `url`, signing with `secret` (`whsec_` + base64).
    pub fn new(url: impl Into<String>, secret: &str) -> Result<Self, BadSecret> {
        Ok(Self {
            url: url.into(),
            key: SecretBox::new(Box::new(decode_secret(secret)?)),
            client: client::client(),
            policy: RetryPolicy::standard_webhooks(),
            clock: Arc::new(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            }),
        })
    }

    /// Retries by `policy` instead of the Standard Webhooks schedule.
    pub fn retries(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sends with `client` (a proxy, other timeouts; tests under paused time use one
    /// without timers). Keep redirects off: Standard Webhooks treats 3xx as a failure.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }

    /// Takes `webhook-timestamp` from `clock` (unix seconds) instead of the system clock.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The JSON body sent for `n`: `type` is the event name with `.` for `_`.
    pub fn body(n: &Notification) -> Vec<u8> {
        let ts = n
            .event
            .at
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| jiff::Timestamp::from_second(d.as_secs() as i64).ok())
            .map(|t| t.to_string());
        let v = json!({
            "type": n.event.kind.name().replace('_', "."),
            "timestamp": ts,
            "data": {
                "event": n.event,
                "route": n.route,
                "subject": n.subject,
                "text": n.text,
            },
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

#[async_trait]
impl Notifier for WebhookChannel {
    fn name(&self) -> &str {
        "webhook"
    }

    fn retry_policy(&self) -> Option<RetryPolicy> {
        Some(self.policy.clone())
    }

    async fn notify(&self, event: &Event) -> Result<(), NotifyError> {
        let key = format!("{:?}/{:?}", event.at, event.kind);
        let subject = format!("{} event", event.kind.name());
        self.deliver(&Notification::new(
            "-",
            "webhook",
            key,
            event.clone(),
            subject,
            "",
        ))
        .await
    }

    async fn deliver(&self, n: &Notification) -> Result<(), NotifyError> {
        let body = Self::body(n);
        let id = message_id(&n.dedup_key);
        let now = (self.clock)();
        let signature = sign(self.key.expose_secret(), &id, now, &body);
        let request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature)
            .body(body);
        let r = client::send("webhook", request).await?;
        let status = r.status.as_u16();
        match status {
            200..=299 => Ok(()),
            410 => Err(NotifyError::Permanent(
                "webhook 410: the receiver disabled this endpoint".into(),
            )),
            429 | 502 | 504 => Err(NotifyError::Throttled {
                after: r.retry_after().unwrap_or(Duration::from_secs(5)),
                message: format!("webhook {status}"),
            }),
            _ => Err(NotifyError::Retryable(format!(
                "webhook {status}: {}",
                r.excerpt()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let key = decode_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        assert!(decode_secret("whsec_not base64!").is_err());
    }
}
