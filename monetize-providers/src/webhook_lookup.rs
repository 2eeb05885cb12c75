//! A small authenticated GET for webhook sources that must ask the provider (Recurly's
//! thin payloads, Chargebee's optional event confirmation).

use std::time::Duration;

use monetize_core::webhook::WebhookError;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// An API the webhook source may call: base URL, Basic-auth key (empty password), and
/// the headers it needs.
pub(crate) struct Lookup {
    pub(crate) base_url: String,
    pub(crate) key: SecretString,
    pub(crate) accept: Option<&'static str>,
    pub(crate) client: reqwest::Client,
}

impl Lookup {
    pub(crate) fn new(
        base_url: impl Into<String>,
        key: SecretString,
        accept: Option<&'static str>,
    ) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            key,
            accept,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// `GET {base}{path}`: `Ok(None)` on 404, the JSON on 2xx, `Unavailable` otherwise
    /// (the delivery is refused with 503 and the provider retries it).
    pub(crate) async fn get(&self, path: &str) -> Result<Option<Value>, WebhookError> {
        let mut req = self
            .client
            .get(format!("{}{path}", self.base_url))
            .basic_auth(self.key.expose_secret(), Some(""));
        if let Some(a) = self.accept {
            req = req.header("accept", a);
        }
        let res = req
            .send()
            .await
            .map_err(|e| WebhookError::Unavailable(format!("GET {path}: {e}")))?;
        let status = res.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(WebhookError::Unavailable(format!(
                "GET {path} answered {status}"
            )));
        }
        res.json()
            .await
            .map(Some)
            .map_err(|e| WebhookError::Unavailable(format!("GET {path}: {e}")))
    }
}
