//! Recurly (API v3, version v2021-02-25): usage on a subscription's usage add-on.
//!
//! `POST /subscriptions/{subscription_id}/add_ons/{add_on_id}/usage` with `amount`,
//! `merchant_tag` (the record's idempotency key), `usage_timestamp` (inside the report
//! window) and `recording_timestamp`. Recurly neither takes an idempotency header nor
//! keeps `merchant_tag` unique, so a record whose earlier attempt has an unknown outcome
//! (`attempts > 0`) is first looked for: the add-on's usage over the window is listed
//! (`begin_time`/`end_time`, `sort=usage_timestamp`, paged through `next`) and the record
//! is sent only when no usage carries its key. The provider therefore answers
//! [`Duration::MAX`] for its deduplication horizon.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use monetize_core::meter::Aggregation;
use monetize_core::{BillingProvider, MeterId, ProviderError, RecordOutcome, UsageRecord};
use reqwest::{Method, RequestBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::batch::{ThrottleGate, per_record};
use crate::error::ProvidersError;
use crate::http::{Answer, HttpClient, HttpSettings, rfc3339, unix_now};
use crate::mapping::{Formula, IdMapper, Mapping, no_customer, no_meter};

mod webhook;
pub use webhook::RecurlyWebhook;

/// Recurly's US API.
pub const DEFAULT_BASE_URL: &str = "https://v3.recurly.com";
/// The `Accept` header choosing the API version (without it Recurly answers 406).
pub const ACCEPT: &str = "application/vnd.recurly.v2021-02-25+json";

/// Builds a [`RecurlyProvider`].
#[must_use]
pub struct RecurlyBuilder {
    name: String,
    key: SecretString,
    base_url: String,
    http: HttpSettings,
    mapper: Arc<dyn IdMapper>,
    lanes: usize,
}

impl std::fmt::Debug for RecurlyBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecurlyBuilder")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl RecurlyBuilder {
    /// Sets the provider's name (default `recurly`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the base URL (default [`DEFAULT_BASE_URL`]; EU: `https://v3.eu.recurly.com`).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into().trim_end_matches('/').to_owned();
        self
    }

    /// Sets timeouts and the client-side rate limit (default 400 calls a minute; Recurly's
    /// `X-RateLimit-*` headers are honoured on top).
    pub fn http(mut self, http: HttpSettings) -> Self {
        self.http = http;
        self
    }

    /// Sets the id mapping: customer to subscription (`uuid-...` or id), meter to
    /// add-on (`code-...` or id).
    pub fn mapper(mut self, mapper: Arc<dyn IdMapper>) -> Self {
        self.mapper = mapper;
        self
    }

    /// How many calls run in parallel (default 4).
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    /// Builds the provider.
    pub fn build(self) -> Result<RecurlyProvider, ProvidersError> {
        let mut http = self.http;
        if http.rate_per_minute.is_none() {
            http.rate_per_minute = Some(400);
        }
        let client = HttpClient::new(&self.name, &http, 1)?;
        Ok(RecurlyProvider {
            inner: Arc::new(Inner {
                name: self.name,
                key: self.key,
                base_url: self.base_url,
                client,
                mapper: self.mapper,
                lanes: self.lanes,
                gate: ThrottleGate::default(),
            }),
        })
    }
}

/// The Recurly provider (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct RecurlyProvider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RecurlyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecurlyProvider")
            .field("name", &self.inner.name)
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

struct Inner {
    name: String,
    key: SecretString,
    base_url: String,
    client: HttpClient,
    mapper: Arc<dyn IdMapper>,
    lanes: usize,
    gate: ThrottleGate,
}

#[derive(Deserialize)]
struct UsageList {
    data: Vec<UsageWire>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct UsageWire {
    #[serde(default)]
    merchant_tag: Option<String>,
}

impl RecurlyProvider {
    /// A builder with the private API key.
    pub fn builder(key: SecretString) -> RecurlyBuilder {
        RecurlyBuilder {
            name: "recurly".into(),
            key,
            base_url: DEFAULT_BASE_URL.into(),
            http: HttpSettings::default(),
            mapper: Arc::new(Mapping::new()),
            lanes: 4,
        }
    }

    fn authed(&self, method: Method, url: &str) -> RequestBuilder {
        self.inner
            .client
            .request(method, url)
            .basic_auth(self.inner.key.expose_secret(), Some(""))
            .header("Accept", ACCEPT)
    }

    async fn call(&self, req: RequestBuilder) -> Result<Answer, ProviderError> {
        let answer = self.inner.client.send(req, 1).await?;
        // out of calls: wait until the reset before the next one
        if answer.header("x-ratelimit-remaining").map(str::trim) == Some("0") {
            self.inner.gate.note(&ProviderError::Throttled {
                retry_after: answer.retry_after(SystemTime::now()),
                message: String::new(),
            });
        }
        Ok(answer)
    }

    /// Whether the add-on already holds a usage tagged with the record's key.
    async fn holds(&self, usage_path: &str, r: &UsageRecord) -> Result<bool, ProviderError> {
        let i = &self.inner;
        let mut url = reqwest::Url::parse(&format!("{}{usage_path}", i.base_url)).map_err(|e| {
            ProviderError::Permanent {
                message: format!("bad base URL: {e}"),
            }
        })?;
        url.query_pairs_mut()
            .append_pair("begin_time", &rfc3339(r.window_start))
            .append_pair(
                "end_time",
                &rfc3339(r.window_start + r.window_secs.saturating_sub(1)),
            )
            .append_pair("sort", "usage_timestamp")
            .append_pair("order", "asc")
            .append_pair("limit", "200");
        let mut next = Some(url.to_string());
        while let Some(u) = next.take() {
            let answer = self.call(self.authed(Method::GET, &u)).await?;
            if !answer.status.is_success() {
                return Err(answer.error(&i.name));
            }
            let page: UsageList = answer.json(&i.name)?;
            if page
                .data
                .iter()
                .any(|u| u.merchant_tag.as_deref() == Some(r.idempotency_key.as_str()))
            {
                return Ok(true);
            }
            if page.has_more {
                next = page.next.map(|n| format!("{}{n}", i.base_url));
            }
        }
        Ok(false)
    }

    async fn send(&self, r: &UsageRecord) -> Result<RecordOutcome, ProviderError> {
        let i = &self.inner;
        let Some(subscription) = i.mapper.customer(&r.customer) else {
            return Ok(RecordOutcome::Rejected {
                reason: no_customer(&i.name, &r.customer),
            });
        };
        let Some(add_on) = i.mapper.meter(&r.meter) else {
            return Ok(RecordOutcome::Rejected {
                reason: no_meter(&i.name, &r.meter),
            });
        };
        if let Err(reason) = add_on.formula.accepts(r.aggregation) {
            return Ok(RecordOutcome::Rejected { reason });
        }
        let usage_path = format!(
            "/subscriptions/{}/add_ons/{}/usage",
            crate::path_segment(&subscription),
            crate::path_segment(&add_on.id)
        );
        if r.attempts > 0 && self.holds(&usage_path, r).await? {
            tracing::debug!(provider = %i.name, key = %r.idempotency_key, "already held by Recurly; not resent");
            return Ok(RecordOutcome::Accepted);
        }
        let now = unix_now();
        let body = serde_json::json!({
            "amount": r.quantity,
            "merchant_tag": r.idempotency_key,
            "usage_timestamp": rfc3339(r.timestamp().min(now.max(r.window_start))),
            "recording_timestamp": rfc3339(now),
        });
        let answer = self
            .call(
                self.authed(Method::POST, &format!("{}{usage_path}", i.base_url))
                    .json(&body),
            )
            .await?;
        if answer.status.is_success() {
            return Ok(RecordOutcome::Accepted);
        }
        match answer.error(&i.name) {
            ProviderError::Permanent { message } => Ok(RecordOutcome::Rejected { reason: message }),
            e => Err(e),
        }
    }
}

#[async_trait]
impl BillingProvider for RecurlyProvider {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn max_batch(&self) -> usize {
        50
    }

    /// Recurly checks what it holds before a resend: no horizon.
    fn dedup_horizon(&self) -> Duration {
        Duration::MAX
    }

    fn check_meter(&self, meter: &MeterId, aggregation: Aggregation) -> Result<(), String> {
        let target = self
            .inner
            .mapper
            .meter(meter)
            .ok_or_else(|| no_meter(&self.inner.name, meter))?;
        if target.formula != Formula::Sum {
            return Err("Recurly usage add-ons sum usage: only `sum` is supported".into());
        }
        target.formula.accepts(aggregation)
    }

    async fn report(&self, records: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
        let i = &self.inner;
        per_record(&i.name, records, i.lanes, &i.gate, |r| self.send(r)).await
    }
}
