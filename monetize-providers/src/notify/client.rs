//! The HTTP side shared by the notification channels: one client with timeouts and no
//! redirects, network errors as transient, and `Retry-After`.

use std::time::Duration;

use monetize_core::NotifyError;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};

/// A client with a 15 s timeout (Standard Webhooks asks for 15–30 s), no redirects.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// An answer: status, headers, body as text.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Reply {
    /// `Retry-After` in seconds, if given.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(reqwest::header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
            .map(|s| Duration::from_secs(s.min(3600)))
    }

    /// The first 300 characters of the body, for messages.
    pub(crate) fn excerpt(&self) -> String {
        self.body.chars().take(300).collect()
    }
}

/// Sends a request; a network error (refused, reset, timeout) is transient. The URL is
/// left out of the message: it may be a secret (Slack).
pub(crate) async fn send(service: &str, request: RequestBuilder) -> Result<Reply, NotifyError> {
    let response = request
        .send()
        .await
        .map_err(|e| NotifyError::Retryable(format!("{service}: {}", e.without_url())))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .text()
        .await
        .map_err(|e| NotifyError::Retryable(format!("{service}: {}", e.without_url())))?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Cuts `s` to at most `max` characters.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}
