//! The one HTTP client every provider shares: reqwest with rustls, timeouts, a `governor`
//! rate limiter, and the error taxonomy the reporter acts on.
//!
//! | Answer | [`ProviderError`] |
//! |---|---|
//! | connect error, timeout, connection dropped (before or after sending), unreadable body | `Retryable` (outcome unknown: the retry reuses the record keys) |
//! | 5xx, 409 | `Retryable` |
//! | 429 | `Throttled`, delay from `Retry-After` (seconds or HTTP date), else `X-RateLimit-Reset` (epoch seconds), else 1 s |
//! | 401, 403 | `Unauthorized` (retried, alert raised: keys get rotated) |
//! | other 4xx | `Permanent` |
//!
//! `Stripe-Should-Retry: true` makes any answer retryable and `false` makes it permanent.
//! Every message carries the provider's own error code and message.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use monetize_core::ProviderError;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ProvidersError;

/// Delay used when a 429 carries no hint.
const DEFAULT_THROTTLE: Duration = Duration::from_secs(1);
/// The longest delay taken from a provider hint (a clock gone wrong must not stall us).
const MAX_THROTTLE: Duration = Duration::from_secs(3600);

/// Timeouts and client-side rate limit of one provider.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpSettings {
    /// The longest a whole call may take (default 10 s).
    pub timeout: Duration,
    /// The longest a connection may take to open (default 5 s).
    pub connect_timeout: Duration,
    /// The most units (requests, or events where the provider counts events) per minute;
    /// `None`: no client-side limit.
    pub rate_per_minute: Option<u32>,
    /// How many units may go at once after an idle spell (at least one call's worth).
    pub burst: Option<u32>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            rate_per_minute: None,
            burst: None,
        }
    }
}

impl HttpSettings {
    /// Sets [`Self::timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`Self::connect_timeout`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the client-side rate limit, in units per minute, and its burst.
    pub fn with_rate_limit(mut self, per_minute: u32, burst: u32) -> Self {
        self.rate_per_minute = Some(per_minute);
        self.burst = Some(burst);
        self
    }
}

/// A received answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// Parses a success body; an unreadable body is an unknown outcome (retryable).
    #[cfg_attr(not(any(feature = "stripe", feature = "recurly")), allow(dead_code))]
    pub(crate) fn json<T: DeserializeOwned>(&self, provider: &str) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| ProviderError::Retryable {
            message: format!(
                "{provider} answered {} with a body that cannot be read: {e}",
                self.status
            ),
        })
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The provider's own error code and message, from any of the three envelopes:
    /// `{"error":{"code"|"type","message"}}` (Stripe, Recurly) or
    /// `{"api_error_code","message"}` (Chargebee).
    pub(crate) fn fault(&self) -> ApiFault {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        let inner = v.get("error").filter(|e| e.is_object()).unwrap_or(&v);
        let s = |k: &str| inner.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let code = s("code")
            .or_else(|| s("api_error_code"))
            .or_else(|| s("type"));
        let message = s("message").unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&self.body);
            text.chars().take(200).collect()
        });
        ApiFault { code, message }
    }

    /// Classifies a non-success answer (see the module docs).
    pub(crate) fn error(&self, provider: &str) -> ProviderError {
        let fault = self.fault();
        let message = format!("{provider} {}: {fault}", self.status.as_u16());
        let should_retry = self.header("stripe-should-retry");
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            return ProviderError::Throttled {
                retry_after: self.retry_after(SystemTime::now()),
                message,
            };
        }
        match should_retry {
            Some("true") => return ProviderError::Retryable { message },
            Some("false") => return ProviderError::Permanent { message },
            _ => {}
        }
        match self.status.as_u16() {
            401 | 403 => ProviderError::Unauthorized { message },
            409 => ProviderError::Retryable { message },
            s if s >= 500 => ProviderError::Retryable { message },
            _ => ProviderError::Permanent { message },
        }
    }

    /// The delay a throttled answer asks for.
    pub(crate) fn retry_after(&self, now: SystemTime) -> Duration {
        if let Some(v) = self.header("retry-after") {
            if let Ok(secs) = v.trim().parse::<f64>()
                && secs.is_finite()
                && secs >= 0.0
            {
                return Duration::from_secs_f64(secs).min(MAX_THROTTLE);
            }
            if let Ok(at) = httpdate::parse_http_date(v.trim()) {
                return at.duration_since(now).unwrap_or_default().min(MAX_THROTTLE);
            }
        }
        if let Some(reset) = self
            .header("x-ratelimit-reset")
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            let at = UNIX_EPOCH + Duration::from_secs(reset);
            return at.duration_since(now).unwrap_or_default().min(MAX_THROTTLE);
        }
        DEFAULT_THROTTLE
    }
}

/// A provider's own error code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiFault {
    pub code: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ApiFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The shared client of one provider.
#[derive(Clone, Debug)]
pub(crate) struct HttpClient {
    provider: Arc<str>,
    client: reqwest::Client,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    burst: u32,
}

impl HttpClient {
    pub(crate) fn new(
        provider: &str,
        settings: &HttpSettings,
        min_burst: u32,
    ) -> Result<Self, ProvidersError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("monetize/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProvidersError::Client(e.to_string()))?;
        let mut burst = 1;
        let limiter = match settings.rate_per_minute.and_then(NonZeroU32::new) {
            None => None,
            Some(per_minute) => {
                let per_second = per_minute.get().div_ceil(60);
                burst = settings.burst.unwrap_or(per_second).max(min_burst).max(1);
                let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::with_period(Duration::from_secs(60) / per_minute.get())
                    .unwrap_or_else(|| Quota::per_minute(per_minute))
                    .allow_burst(burst_nz);
                Some(Arc::new(RateLimiter::direct(quota)))
            }
        };
        Ok(Self {
            provider: provider.into(),
            client,
            limiter,
            burst,
        })
    }

    pub(crate) fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.client.request(method, url)
    }

    /// Waits until `units` may go under the rate limit.
    pub(crate) async fn acquire(&self, units: u32) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        let mut left = units.max(1);
        while left > 0 {
            let take = left.min(self.burst.max(1));
            if let Some(n) = NonZeroU32::new(take) {
                // `take` never exceeds the burst, so capacity is always sufficient.
                let _ = limiter.until_n_ready(n).await;
            }
            left -= take;
        }
    }

    /// Sends after taking `units` from the rate limiter; transport failures are retryable
    /// (the request may have been received: the retry reuses the keys).
    pub(crate) async fn send(
        &self,
        request: RequestBuilder,
        units: u32,
    ) -> Result<Answer, ProviderError> {
        self.acquire(units).await;
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport(&e))?
            .to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn transport(&self, e: &reqwest::Error) -> ProviderError {
        let what = if e.is_timeout() {
            "timed out (the provider may have received the request)"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "connection failed (the provider may have received the request)"
        };
        // reqwest errors carry the URL only, never headers: no credential is printed.
        ProviderError::Retryable {
            message: format!("{} {what}: {e}", self.provider),
        }
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 UTC (`2026-01-02T03:04:05Z`) for unix seconds.
#[cfg_attr(not(any(feature = "stripe", feature = "recurly")), allow(dead_code))]
pub(crate) fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Form-encodes ordered pairs (bracket keys such as `payload[value]` are kept as written
/// and percent-encoded as Stripe's own clients do).
#[cfg_attr(not(any(feature = "stripe", feature = "chargebee")), allow(dead_code))]
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// Percent-encodes one path segment (`cus 1/x` to `cus%201%2Fx`).
pub(crate) fn path_segment(s: &str) -> String {
    let mut url = match reqwest::Url::parse("http://x/") {
        Ok(u) => u,
        Err(_) => return s.to_owned(),
    };
    if let Ok(mut segs) = url.path_segments_mut() {
        segs.push(s);
    }
    url.path().trim_start_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Answer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn taxonomy() {
        let stripe =
            r#"{"error":{"type":"invalid_request_error","code":"no_meter","message":"No meter"}}"#;
        match answer(400, &[], stripe).error("stripe") {
            ProviderError::Permanent { message } => {
                assert_eq!(message, "stripe 400: no_meter: No meter")
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            answer(503, &[], "oops").error("x"),
            ProviderError::Retryable { .. }
        ));
        assert!(matches!(
            answer(409, &[], "{}").error("x"),
            ProviderError::Retryable { .. }
        ));
        assert!(matches!(
            answer(401, &[], "{}").error("x"),
            ProviderError::Unauthorized { .. }
        ));
        assert!(matches!(
            answer(400, &[("stripe-should-retry", "true")], "{}").error("x"),
            ProviderError::Retryable { .. }
        ));
        assert!(matches!(
            answer(500, &[("stripe-should-retry", "false")], "{}").error("x"),
            ProviderError::Permanent { .. }
        ));
        let cb =
            r#"{"message":"Sorry","type":"invalid_request","api_error_code":"resource_not_found"}"#;
        assert_eq!(
            answer(404, &[], cb).fault(),
            ApiFault {
                code: Some("resource_not_found".into()),
                message: "Sorry".into()
            }
        );
        let recurly = r#"{"error":{"type":"not_found","message":"Couldn't find Subscription"}}"#;
        assert_eq!(
            answer(404, &[], recurly).fault().code.as_deref(),
            Some("not_found")
        );
    }

    #[test]
    fn throttle_delays() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = |h: &[(&'static str, &str)]| answer(429, h, "{}").retry_after(now);
        assert_eq!(t(&[("retry-after", "7")]), Duration::from_secs(7));
        assert_eq!(
            t(&[(
                "retry-after",
                &httpdate::fmt_http_date(now + Duration::from_secs(30))
            )]),
            Duration::from_secs(30)
        );
        assert_eq!(
            t(&[("x-ratelimit-reset", "1000012")]),
            Duration::from_secs(12)
        );
        assert_eq!(t(&[]), DEFAULT_THROTTLE);
        match answer(429, &[("retry-after", "2")], "{}").error("x") {
            ProviderError::Throttled { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(2))
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn formats() {
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(
            form(&[("payload[value]", "3"), ("event_name", "a b")]),
            "payload%5Bvalue%5D=3&event_name=a+b"
        );
    }

    #[tokio::test]
    async fn limiter_never_goes_faster_than_allowed() {
        let settings = HttpSettings::default().with_rate_limit(6_000, 1);
        let client = HttpClient::new("x", &settings, 1).unwrap();
        // 100 units a second, burst 1: eleven units cannot all go within 100 ms
        let start = std::time::Instant::now();
        for _ in 0..11 {
            client.acquire(1).await;
        }
        assert!(start.elapsed() >= Duration::from_millis(95));
    }
}
