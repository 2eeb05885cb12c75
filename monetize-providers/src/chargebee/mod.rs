//! Chargebee (API v2, Product Catalog 2.0): the usage-events batch ingest API and the
//! classic subscription usages API, chosen per meter.
//!
//! - **Usage events** (default): `POST https://{site}.ingest.chargebee.com/api/v2/batch/usage_events`,
//!   JSON, up to 500 events a call, each with `deduplication_id` = the record's key,
//!   `subscription_id`, `usage_timestamp` (epoch ms, inside the window; Chargebee takes
//!   the last 12 hours only, older records are refused to the dead letter list) and flat
//!   `properties` (`meter` = the mapped id, and the quantity under `value_key`). Every
//!   entry of `failed_events` refuses its record; the others are accepted.
//! - **Classic usages** (`api = "usages"`): `POST /subscriptions/{id}/usages`,
//!   form-encoded `id` (the record's key), `item_price_id`, `quantity`, `usage_date`, with
//!   `chargebee-idempotency-key`. Chargebee keeps one usage per subscription, item price
//!   and `usage_date`, so a window's later parts are dated one second earlier each
//!   (still inside the window). Before re-sending a record with an unknown outcome the
//!   usage is looked up by its `id`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use monetize_core::meter::Aggregation;
use monetize_core::{BillingProvider, MeterId, ProviderError, RecordOutcome, UsageRecord};
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use crate::batch::{ThrottleGate, per_record, too_old, unique_keys, worst};
use crate::error::ProvidersError;
use crate::http::{Answer, HttpClient, HttpSettings, form, unix_now};
use crate::mapping::{Formula, IdMapper, Mapping, no_customer, no_meter};

mod webhook;
pub use webhook::{ChargebeeWebhook, DEFAULT_DUNNING_STATUSES};

/// Events per batch ingest call.
pub const EVENT_BATCH: usize = 500;
/// How old a usage event may be.
pub const MAX_EVENT_AGE: Duration = Duration::from_secs(12 * 3600);

/// Builds a [`ChargebeeProvider`].
#[must_use]
pub struct ChargebeeBuilder {
    name: String,
    key: SecretString,
    base_url: String,
    ingest_url: String,
    http: HttpSettings,
    classic_rate_per_minute: u32,
    mapper: Arc<dyn IdMapper>,
    classic: HashSet<MeterId>,
    value_key: String,
    lanes: usize,
}

impl std::fmt::Debug for ChargebeeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChargebeeBuilder")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ChargebeeBuilder {
    /// Sets the provider's name (default `chargebee`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the API base URL (default `https://{site}.chargebee.com/api/v2`).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into().trim_end_matches('/').to_owned();
        self
    }

    /// Sets the ingest base URL (default `https://{site}.ingest.chargebee.com/api/v2`).
    pub fn ingest_url(mut self, url: impl Into<String>) -> Self {
        self.ingest_url = url.into().trim_end_matches('/').to_owned();
        self
    }

    /// Sets timeouts and the usage-event rate limit in events a minute (default 10,000).
    pub fn http(mut self, http: HttpSettings) -> Self {
        self.http = http;
        self
    }

    /// Sets the classic API's rate limit in calls a minute (default 150, a test site's).
    pub fn classic_rate_per_minute(mut self, per_minute: u32) -> Self {
        self.classic_rate_per_minute = per_minute.max(1);
        self
    }

    /// Sets the id mapping: customer to subscription, meter to item price.
    pub fn mapper(mut self, mapper: Arc<dyn IdMapper>) -> Self {
        self.mapper = mapper;
        self
    }

    /// Sends this meter through the classic subscription usages API.
    pub fn classic_meter(mut self, meter: MeterId) -> Self {
        self.classic.insert(meter);
        self
    }

    /// The usage-event property holding the quantity (default `quantity`).
    pub fn value_key(mut self, key: impl Into<String>) -> Self {
        self.value_key = key.into();
        self
    }

    /// Builds the provider.
    pub fn build(self) -> Result<ChargebeeProvider, ProvidersError> {
        let mut events_http = self.http.clone();
        if events_http.rate_per_minute.is_none() {
            events_http.rate_per_minute = Some(10_000);
        }
        let events = HttpClient::new(&self.name, &events_http, EVENT_BATCH as u32)?;
        let mut classic_http = self.http;
        classic_http.rate_per_minute = Some(self.classic_rate_per_minute);
        classic_http.burst = Some(1);
        let classic_client = HttpClient::new(&self.name, &classic_http, 1)?;
        Ok(ChargebeeProvider {
            inner: Arc::new(Inner {
                name: self.name,
                key: self.key,
                base_url: self.base_url,
                ingest_url: self.ingest_url,
                events,
                classic_client,
                mapper: self.mapper,
                classic: self.classic,
                value_key: self.value_key,
                lanes: self.lanes,
                gate: ThrottleGate::default(),
            }),
        })
    }
}

/// The Chargebee provider (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct ChargebeeProvider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ChargebeeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChargebeeProvider")
            .field("name", &self.inner.name)
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

struct Inner {
    name: String,
    key: SecretString,
    base_url: String,
    ingest_url: String,
    events: HttpClient,
    classic_client: HttpClient,
    mapper: Arc<dyn IdMapper>,
    classic: HashSet<MeterId>,
    value_key: String,
    lanes: usize,
    gate: ThrottleGate,
}

impl ChargebeeProvider {
    /// A builder for a site (`acme-test`) with its API key.
    pub fn builder(key: SecretString, site: &str) -> ChargebeeBuilder {
        ChargebeeBuilder {
            name: "chargebee".into(),
            key,
            base_url: format!("https://{site}.chargebee.com/api/v2"),
            ingest_url: format!("https://{site}.ingest.chargebee.com/api/v2"),
            http: HttpSettings::default(),
            classic_rate_per_minute: 150,
            mapper: Arc::new(Mapping::new()),
            classic: HashSet::new(),
            value_key: "quantity".into(),
            lanes: 2,
        }
    }

    fn authed(&self, client: &HttpClient, method: Method, url: &str) -> RequestBuilder {
        client
            .request(method, url)
            .basic_auth(self.inner.key.expose_secret(), Some(""))
    }

    /// (subscription, item price, formula) of a record, or why it is refused.
    fn target(&self, r: &UsageRecord) -> Result<(String, String), String> {
        let i = &self.inner;
        let sub = i
            .mapper
            .customer(&r.customer)
            .ok_or_else(|| no_customer(&i.name, &r.customer))?;
        let target = i
            .mapper
            .meter(&r.meter)
            .ok_or_else(|| no_meter(&i.name, &r.meter))?;
        target.formula.accepts(r.aggregation)?;
        Ok((sub, target.id))
    }

    /// The batch ingest of usage events.
    async fn send_events(
        &self,
        records: &[&UsageRecord],
        outcomes: &mut HashMap<String, RecordOutcome>,
    ) -> Vec<ProviderError> {
        let i = &self.inner;
        let now = unix_now();
        let mut events = Vec::new();
        for r in records {
            let (sub, item) = match self.target(r) {
                Ok(t) => t,
                Err(reason) => {
                    outcomes.insert(
                        r.idempotency_key.clone(),
                        RecordOutcome::Rejected { reason },
                    );
                    continue;
                }
            };
            let ts = r.timestamp().min(now.max(r.window_start));
            if too_old(ts, now, MAX_EVENT_AGE) {
                outcomes.insert(
                    r.idempotency_key.clone(),
                    RecordOutcome::Rejected {
                        reason: "usage older than Chargebee's 12-hour ingest window: report more often, or send this meter through api = \"usages\"".into(),
                    },
                );
                continue;
            }
            let mut properties = serde_json::Map::new();
            properties.insert("meter".into(), item.into());
            properties.insert(i.value_key.clone(), r.quantity.into());
            events.push((
                r.idempotency_key.clone(),
                serde_json::json!({
                    "deduplication_id": r.idempotency_key,
                    "subscription_id": sub,
                    "usage_timestamp": ts * 1000,
                    "properties": properties,
                }),
            ));
        }
        let mut errors = Vec::new();
        for chunk in events.chunks(EVENT_BATCH) {
            let body = serde_json::json!({
                "events": chunk.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>()
            });
            let req = self
                .authed(
                    &i.events,
                    Method::POST,
                    &format!("{}/batch/usage_events", i.ingest_url),
                )
                .json(&body);
            let result = i.events.send(req, chunk.len() as u32).await;
            let keys = chunk.iter().map(|(k, _)| k.clone());
            match result {
                Ok(a) if a.status.is_success() || is_batch_failure(&a) => {
                    self.failed_events(&a, keys, outcomes)
                }
                Ok(a) => {
                    let e = a.error(&i.name);
                    i.gate.note(&e);
                    let outcome = match &e {
                        ProviderError::Permanent { message } => RecordOutcome::Rejected {
                            reason: message.clone(),
                        },
                        e => RecordOutcome::Retry {
                            reason: e.to_string(),
                        },
                    };
                    for k in keys {
                        outcomes.insert(k, outcome.clone());
                    }
                    let stop = !matches!(e, ProviderError::Permanent { .. });
                    errors.push(e);
                    if stop {
                        break;
                    }
                }
                Err(e) => {
                    for k in keys {
                        outcomes.insert(
                            k,
                            RecordOutcome::Retry {
                                reason: e.to_string(),
                            },
                        );
                    }
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Maps `failed_events` to records: each entry refuses the record with its
    /// `deduplication_id`; the rest are accepted on a 200 and retried after a 400 (they
    /// were not ingested; the deduplication id makes the retry safe). Entries that name
    /// no record leave every record of the call to retry.
    fn failed_events(
        &self,
        a: &Answer,
        keys: impl Iterator<Item = String>,
        outcomes: &mut HashMap<String, RecordOutcome>,
    ) {
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
        let failed = v
            .get("failed_events")
            .and_then(|f| f.as_array())
            .cloned()
            .unwrap_or_default();
        let mut refused: HashMap<String, String> = HashMap::new();
        let mut unattributed = false;
        for f in &failed {
            let event = f.get("event").or_else(|| f.get("usage_event")).unwrap_or(f);
            let id = event
                .get("deduplication_id")
                .or_else(|| f.get("deduplication_id"))
                .and_then(|x| x.as_str());
            let text = |k: &str| f.get(k).and_then(|x| x.as_str());
            let reason = [
                text("error_message"),
                text("message"),
                text("error_code"),
                text("api_error_code"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
            match id {
                Some(id) => {
                    refused.insert(
                        id.to_owned(),
                        format!(
                            "{} refused the usage event: {}",
                            self.inner.name,
                            if reason.is_empty() {
                                f.to_string()
                            } else {
                                reason
                            }
                        ),
                    );
                }
                None => unattributed = true,
            }
        }
        let ok = a.status.is_success() && !unattributed;
        for k in keys {
            let outcome = match refused.remove(&k) {
                Some(reason) => RecordOutcome::Rejected { reason },
                None if ok => RecordOutcome::Accepted,
                None => RecordOutcome::Retry {
                    reason: format!("{} did not ingest the batch", self.inner.name),
                },
            };
            outcomes.insert(k, outcome);
        }
    }

    /// One classic usage.
    async fn send_usage(&self, r: &UsageRecord) -> Result<RecordOutcome, ProviderError> {
        let i = &self.inner;
        let (sub, item) = match self.target(r) {
            Ok(t) => t,
            Err(reason) => return Ok(RecordOutcome::Rejected { reason }),
        };
        let usages = format!(
            "{}/subscriptions/{}/usages",
            i.base_url,
            crate::path_segment(&sub)
        );
        if r.attempts > 0 {
            let mut url = reqwest::Url::parse(&usages).map_err(|e| ProviderError::Permanent {
                message: format!("bad base URL: {e}"),
            })?;
            url.query_pairs_mut().append_pair("id", &r.idempotency_key);
            let a = i
                .classic_client
                .send(self.authed(&i.classic_client, Method::GET, url.as_str()), 1)
                .await?;
            if a.status.is_success() {
                return Ok(RecordOutcome::Accepted);
            }
            if a.status != StatusCode::NOT_FOUND {
                return Err(a.error(&i.name));
            }
        }
        let now = unix_now();
        // one usage per subscription, item price and date: later parts go a second earlier
        let date = r
            .timestamp()
            .saturating_sub(u64::from(r.part))
            .max(r.window_start)
            .min(now.max(r.window_start));
        let quantity = r.quantity.to_string();
        let date = date.to_string();
        let body = form(&[
            ("id", &r.idempotency_key),
            ("item_price_id", &item),
            ("quantity", &quantity),
            ("usage_date", &date),
        ]);
        let req = self
            .authed(&i.classic_client, Method::POST, &usages)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("chargebee-idempotency-key", &r.idempotency_key)
            .body(body);
        let a = i.classic_client.send(req, 1).await?;
        if a.status.is_success() {
            return Ok(RecordOutcome::Accepted);
        }
        match a.error(&i.name) {
            ProviderError::Permanent { message } => Ok(RecordOutcome::Rejected { reason: message }),
            e => Err(e),
        }
    }
}

/// A 400 that lists the events it refused (`type: ubb_batch_ingestion_invalid_request`).
fn is_batch_failure(a: &Answer) -> bool {
    if a.status != StatusCode::BAD_REQUEST {
        return false;
    }
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
    v.get("type").and_then(|t| t.as_str()) == Some("ubb_batch_ingestion_invalid_request")
        || v.get("failed_events").is_some_and(|f| f.is_array())
}

#[async_trait]
impl BillingProvider for ChargebeeProvider {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn max_batch(&self) -> usize {
        EVENT_BATCH
    }

    fn check_meter(&self, meter: &MeterId, aggregation: Aggregation) -> Result<(), String> {
        let target = self
            .inner
            .mapper
            .meter(meter)
            .ok_or_else(|| no_meter(&self.inner.name, meter))?;
        if target.formula == Formula::Count {
            return Err("Chargebee has no event-count formula for our records".into());
        }
        target.formula.accepts(aggregation)
    }

    async fn report(&self, records: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
        let i = &self.inner;
        i.gate.check(&i.name)?;
        let (unique, owner) = unique_keys(records);
        let (classic, events): (Vec<usize>, Vec<usize>) = unique
            .into_iter()
            .partition(|&k| i.classic.contains(&records[k].meter));
        let mut outcomes: HashMap<String, RecordOutcome> = HashMap::new();
        let event_records: Vec<&UsageRecord> = events.iter().map(|&k| &records[k]).collect();
        let mut errors = self.send_events(&event_records, &mut outcomes).await;
        if !classic.is_empty() {
            let classic_records: Vec<UsageRecord> =
                classic.iter().map(|&k| records[k].clone()).collect();
            match per_record(&i.name, &classic_records, i.lanes, &i.gate, |r| {
                self.send_usage(r)
            })
            .await
            {
                Ok(out) => {
                    for (r, o) in classic_records.iter().zip(out) {
                        outcomes.insert(r.idempotency_key.clone(), o);
                    }
                }
                Err(e) => {
                    for r in &classic_records {
                        outcomes.insert(
                            r.idempotency_key.clone(),
                            RecordOutcome::Retry {
                                reason: e.to_string(),
                            },
                        );
                    }
                    errors.push(e);
                }
            }
        }
        let decided = outcomes
            .values()
            .any(|o| !matches!(o, RecordOutcome::Retry { .. }));
        if !decided && let Some(e) = worst(errors.into_iter()) {
            return Err(e);
        }
        Ok(owner
            .iter()
            .map(|&o| {
                outcomes
                    .get(&records[o].idempotency_key)
                    .cloned()
                    .unwrap_or(RecordOutcome::Retry {
                        reason: format!("{}: not sent", i.name),
                    })
            })
            .collect())
    }
}
