//! Stripe Billing: meter events (v1 form-encoded, v2 JSON, the v2 high-volume stream),
//! meter event adjustments, reconciliation against meter event summaries, and legacy
//! usage records as an opt-in.
//!
//! Every event carries the record's idempotency key twice: as `identifier` (Stripe
//! refuses a second event with it for at least 24 h) and as the `Idempotency-Key` header
//! (a retry gets the first answer back). Its `timestamp` is the record's
//! [`UsageRecord::timestamp`] (the window's last second), or now when that is still
//! ahead, so it always falls inside the report window; a record older than Stripe's
//! 35-day limit is refused and reaches the dead letter list.

mod reconcile;
mod stream;
mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use monetize_core::meter::Aggregation;
use monetize_core::{
    BillingProvider, CustomerId, MeterId, ProviderError, RecordOutcome, UsageRecord,
};
use reqwest::{Method, RequestBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub use reconcile::{Difference, Reconciliation};
pub use webhook::StripeWebhook;

use crate::batch::{ThrottleGate, per_record, too_old};
use crate::error::ProvidersError;
use crate::http::{Answer, HttpClient, HttpSettings, form, rfc3339, unix_now};
use crate::mapping::{Formula, IdMapper, Mapping, MeterTarget, no_customer, no_meter};

/// Stripe's production API.
pub const DEFAULT_BASE_URL: &str = "https://api.stripe.com";
/// The host of the v2 meter event stream.
pub const DEFAULT_STREAM_URL: &str = "https://meter-events.stripe.com";
/// How far back a meter event's timestamp may be.
pub const MAX_EVENT_AGE: Duration = Duration::from_secs(35 * 24 * 3600);
/// Events per meter event stream request.
pub const STREAM_BATCH: usize = 100;

/// Which Stripe API usage goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StripeApi {
    /// `POST /v1/billing/meter_events`, form-encoded, one event per call.
    MeterEventsV1,
    /// `POST /v2/billing/meter_events`, JSON, validated synchronously, one event per call.
    #[default]
    MeterEventsV2,
    /// `POST /v2/billing/meter_event_stream` with a session token, 100 events per call,
    /// validated asynchronously (for volume).
    MeterEventStream,
    /// Legacy `POST /v1/subscription_items/{si}/usage_records` with `action=increment`:
    /// only for accounts on API versions before 2025-03-31.basil.
    UsageRecords,
}

impl StripeApi {
    /// Parses a configuration name (`meter_events_v2`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "meter_events_v1" => Self::MeterEventsV1,
            "meter_events_v2" => Self::MeterEventsV2,
            "meter_event_stream" => Self::MeterEventStream,
            "usage_records" => Self::UsageRecords,
            _ => return None,
        })
    }
}

/// Builds a [`StripeProvider`].
#[must_use]
pub struct StripeBuilder {
    name: String,
    api: StripeApi,
    key: SecretString,
    base_url: String,
    stream_url: String,
    http: HttpSettings,
    mapper: Arc<dyn IdMapper>,
    customer_key: String,
    value_key: String,
    stripe_version: Option<String>,
    lanes: usize,
    subscription_items: HashMap<(CustomerId, MeterId), String>,
}

impl std::fmt::Debug for StripeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeBuilder")
            .field("name", &self.name)
            .field("api", &self.api)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl StripeBuilder {
    /// Sets the provider's name (default `stripe`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Chooses the API (default [`StripeApi::MeterEventsV2`]).
    pub fn api(mut self, api: StripeApi) -> Self {
        self.api = api;
        self
    }

    /// Sets the API base URL (default [`DEFAULT_BASE_URL`]).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into().trim_end_matches('/').to_owned();
        self
    }

    /// Sets the meter event stream's base URL (default [`DEFAULT_STREAM_URL`]).
    pub fn stream_url(mut self, url: impl Into<String>) -> Self {
        self.stream_url = url.into().trim_end_matches('/').to_owned();
        self
    }

    /// Sets timeouts and the client-side rate limit (default: Stripe's documented
    /// limits, 1,000 meter events a second, 10,000 stream calls a second, 100 calls a
    /// second for legacy usage records).
    pub fn http(mut self, http: HttpSettings) -> Self {
        self.http = http;
        self
    }

    /// Sets the id mapping.
    pub fn mapper(mut self, mapper: Arc<dyn IdMapper>) -> Self {
        self.mapper = mapper;
        self
    }

    /// Sets the payload keys of the customer and the value (defaults
    /// `stripe_customer_id`, `value`: the meter's `customer_mapping.event_payload_key`
    /// and `value_settings.event_payload_key`).
    pub fn payload_keys(mut self, customer: impl Into<String>, value: impl Into<String>) -> Self {
        self.customer_key = customer.into();
        self.value_key = value.into();
        self
    }

    /// Sends a `Stripe-Version` header.
    pub fn stripe_version(mut self, version: impl Into<String>) -> Self {
        self.stripe_version = Some(version.into());
        self
    }

    /// How many calls run in parallel (default 8; one customer and meter is always sent
    /// one call at a time, as Stripe asks).
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    /// Legacy usage records: the subscription item billed for a customer and meter.
    pub fn subscription_item(
        mut self,
        customer: CustomerId,
        meter: MeterId,
        item: impl Into<String>,
    ) -> Self {
        self.subscription_items
            .insert((customer, meter), item.into());
        self
    }

    /// Builds the provider.
    pub fn build(self) -> Result<StripeProvider, ProvidersError> {
        let mut http = self.http;
        if http.rate_per_minute.is_none() {
            http.rate_per_minute = Some(match self.api {
                StripeApi::MeterEventsV1 | StripeApi::MeterEventsV2 => 60_000,
                StripeApi::MeterEventStream => 600_000,
                StripeApi::UsageRecords => 6_000,
            });
        }
        let client = HttpClient::new(&self.name, &http, 1)?;
        Ok(StripeProvider {
            inner: Arc::new(Inner {
                name: self.name,
                api: self.api,
                key: self.key,
                base_url: self.base_url,
                stream_url: self.stream_url,
                client,
                mapper: self.mapper,
                customer_key: self.customer_key,
                value_key: self.value_key,
                stripe_version: self.stripe_version,
                lanes: self.lanes,
                subscription_items: self.subscription_items,
                gate: ThrottleGate::default(),
                session: stream::SessionCache::default(),
            }),
        })
    }
}

/// The Stripe provider (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct StripeProvider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StripeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeProvider")
            .field("name", &self.inner.name)
            .field("api", &self.inner.api)
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

struct Inner {
    name: String,
    api: StripeApi,
    key: SecretString,
    base_url: String,
    stream_url: String,
    client: HttpClient,
    mapper: Arc<dyn IdMapper>,
    customer_key: String,
    value_key: String,
    stripe_version: Option<String>,
    lanes: usize,
    subscription_items: HashMap<(CustomerId, MeterId), String>,
    gate: ThrottleGate,
    session: stream::SessionCache,
}

/// A record ready for the wire.
pub(crate) struct Event {
    event_name: String,
    customer: String,
    value: String,
    identifier: String,
    timestamp: u64,
}

/// One meter event on the wire of the v2 stream.
#[derive(serde::Serialize)]
pub(crate) struct StreamEvent<'a> {
    event_name: &'a str,
    identifier: &'a str,
    payload: Payload<'a>,
    timestamp: String,
}

/// An event's payload: the customer and the value under their configured keys.
pub(crate) struct Payload<'a> {
    customer_key: &'a str,
    customer: &'a str,
    value_key: &'a str,
    value: &'a str,
}

impl serde::Serialize for Payload<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry(self.customer_key, self.customer)?;
        m.serialize_entry(self.value_key, self.value)?;
        m.end()
    }
}

/// A Stripe meter (`GET /v1/billing/meters`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct StripeMeter {
    /// `mtr_...`.
    pub id: String,
    /// The event name events are sent with.
    pub event_name: String,
    /// `active` or `inactive`.
    pub status: String,
    /// `sum`, `count` or `last`.
    pub formula: String,
}

#[derive(Deserialize)]
struct MeterWire {
    id: String,
    event_name: String,
    status: String,
    default_aggregation: FormulaWire,
}

#[derive(Deserialize)]
struct FormulaWire {
    formula: String,
}

#[derive(Deserialize)]
struct ListWire<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
}

impl StripeProvider {
    /// A builder with the secret key (`sk_...` or a restricted `rk_...`).
    pub fn builder(key: SecretString) -> StripeBuilder {
        StripeBuilder {
            name: "stripe".into(),
            api: StripeApi::default(),
            key,
            base_url: DEFAULT_BASE_URL.into(),
            stream_url: DEFAULT_STREAM_URL.into(),
            http: HttpSettings::default(),
            mapper: Arc::new(Mapping::new()),
            customer_key: "stripe_customer_id".into(),
            value_key: "value".into(),
            stripe_version: None,
            lanes: 8,
            subscription_items: HashMap::new(),
        }
    }

    fn authed(&self, method: Method, url: &str) -> RequestBuilder {
        let i = &self.inner;
        let mut req = i
            .client
            .request(method, url)
            .bearer_auth(i.key.expose_secret());
        if let Some(v) = &i.stripe_version {
            req = req.header("Stripe-Version", v);
        }
        req
    }

    /// Maps a record to an event, or says why it must be refused. `Ok(None)`: nothing to
    /// send (a zero quantity on a summing meter).
    fn event(&self, r: &UsageRecord, now: u64) -> Result<Option<Event>, String> {
        let i = &self.inner;
        let target = i
            .mapper
            .meter(&r.meter)
            .ok_or_else(|| no_meter(&i.name, &r.meter))?;
        let customer = i
            .mapper
            .customer(&r.customer)
            .ok_or_else(|| no_customer(&i.name, &r.customer))?;
        target.formula.accepts(r.aggregation)?;
        if r.quantity == 0 {
            return match target.formula {
                Formula::Sum => Ok(None),
                _ => Err("Stripe meter event values must be positive whole numbers; a gauge of 0 cannot be sent".into()),
            };
        }
        // inside the window, never ahead of now (Stripe takes at most 5 minutes ahead)
        let timestamp = r.timestamp().min(now.max(r.window_start));
        if too_old(timestamp, now, MAX_EVENT_AGE) {
            return Err(format!(
                "usage dated {} is older than Stripe's 35-day limit for meter events",
                rfc3339(timestamp)
            ));
        }
        Ok(Some(Event {
            event_name: target.id,
            customer,
            value: r.quantity.to_string(),
            identifier: r.idempotency_key.clone(),
            timestamp,
        }))
    }

    /// An event as the stream takes it, serialized straight from `e` (no JSON tree, no
    /// copy of its strings).
    fn stream_event<'a>(&'a self, e: &'a Event) -> StreamEvent<'a> {
        let i = &self.inner;
        StreamEvent {
            event_name: &e.event_name,
            identifier: &e.identifier,
            payload: Payload {
                customer_key: &i.customer_key,
                customer: &e.customer,
                value_key: &i.value_key,
                value: &e.value,
            },
            timestamp: rfc3339(e.timestamp),
        }
    }

    fn event_json(&self, e: &Event) -> serde_json::Value {
        let i = &self.inner;
        let mut payload = serde_json::Map::new();
        payload.insert(i.customer_key.clone(), e.customer.clone().into());
        payload.insert(i.value_key.clone(), e.value.clone().into());
        serde_json::json!({
            "event_name": e.event_name,
            "identifier": e.identifier,
            "payload": payload,
            "timestamp": rfc3339(e.timestamp),
        })
    }

    /// One meter event, v1 or v2.
    async fn send_event(&self, r: &UsageRecord) -> Result<RecordOutcome, ProviderError> {
        let e = match self.event(r, unix_now()) {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(RecordOutcome::Accepted),
            Err(reason) => return Ok(RecordOutcome::Rejected { reason }),
        };
        let i = &self.inner;
        let req = if i.api == StripeApi::MeterEventsV1 {
            let customer_field = format!("payload[{}]", i.customer_key);
            let value_field = format!("payload[{}]", i.value_key);
            let ts = e.timestamp.to_string();
            let body = form(&[
                ("event_name", &e.event_name),
                ("identifier", &e.identifier),
                (&customer_field, &e.customer),
                (&value_field, &e.value),
                ("timestamp", &ts),
            ]);
            self.authed(
                Method::POST,
                &format!("{}/v1/billing/meter_events", i.base_url),
            )
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
        } else {
            self.authed(
                Method::POST,
                &format!("{}/v2/billing/meter_events", i.base_url),
            )
            .json(&self.event_json(&e))
        };
        let answer = i
            .client
            .send(req.header("Idempotency-Key", &e.identifier), 1)
            .await?;
        self.record_outcome(&answer)
    }

    /// Legacy usage record.
    async fn send_usage_record(&self, r: &UsageRecord) -> Result<RecordOutcome, ProviderError> {
        let i = &self.inner;
        let Some(item) = i
            .subscription_items
            .get(&(r.customer.clone(), r.meter.clone()))
        else {
            return Ok(RecordOutcome::Rejected {
                reason: format!(
                    "no Stripe subscription item is mapped for customer `{}` and meter `{}`: add `\"{}/{}\"` to `subscription_items`",
                    r.customer, r.meter, r.customer, r.meter
                ),
            });
        };
        if r.aggregation != Aggregation::Count && r.aggregation != Aggregation::Sum {
            return Ok(RecordOutcome::Rejected {
                reason: format!(
                    "legacy usage records increment: a `{}` meter cannot be sent",
                    r.aggregation.as_str()
                ),
            });
        }
        let now = unix_now();
        let timestamp = r.timestamp().min(now.max(r.window_start)).to_string();
        let quantity = r.quantity.to_string();
        let body = form(&[
            ("quantity", &quantity),
            ("timestamp", &timestamp),
            ("action", "increment"),
        ]);
        let req = self
            .authed(
                Method::POST,
                &format!(
                    "{}/v1/subscription_items/{}/usage_records",
                    i.base_url,
                    crate::path_segment(item)
                ),
            )
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Idempotency-Key", &r.idempotency_key)
            .body(body);
        let answer = i.client.send(req, 1).await?;
        self.record_outcome(&answer)
    }

    /// 2xx: accepted; `duplicate_meter_event`: accepted (Stripe already holds it); other
    /// permanent failures: this record is refused; the rest are call errors.
    fn record_outcome(&self, answer: &Answer) -> Result<RecordOutcome, ProviderError> {
        if answer.status.is_success() {
            return Ok(RecordOutcome::Accepted);
        }
        let fault = answer.fault();
        if fault.code.as_deref() == Some("duplicate_meter_event") {
            return Ok(RecordOutcome::Accepted);
        }
        match answer.error(&self.inner.name) {
            ProviderError::Permanent { message } => Ok(RecordOutcome::Rejected { reason: message }),
            e => Err(e),
        }
    }

    /// Cancels a meter event by its identifier (`POST /v1/billing/meter_event_adjustments`,
    /// `type=cancel`): the API for corrections. Stripe accepts it within 24 h of the event.
    pub async fn cancel_event(
        &self,
        event_name: &str,
        identifier: &str,
    ) -> Result<(), ProviderError> {
        let i = &self.inner;
        let body = form(&[
            ("event_name", event_name),
            ("type", "cancel"),
            ("cancel[identifier]", identifier),
        ]);
        let req = self
            .authed(
                Method::POST,
                &format!("{}/v1/billing/meter_event_adjustments", i.base_url),
            )
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Idempotency-Key", format!("cancel_{identifier}"))
            .body(body);
        let answer = i.client.send(req, 1).await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(answer.error(&i.name))
        }
    }

    /// Cancels the meter event a record was sent as.
    pub async fn cancel_record(&self, record: &UsageRecord) -> Result<(), ProviderError> {
        let target =
            self.inner
                .mapper
                .meter(&record.meter)
                .ok_or_else(|| ProviderError::Permanent {
                    message: no_meter(&self.inner.name, &record.meter),
                })?;
        self.cancel_event(&target.id, &record.idempotency_key).await
    }

    /// Every meter of the account (`GET /v1/billing/meters`, paged while `has_more`).
    pub async fn meters(&self) -> Result<Vec<StripeMeter>, ProviderError> {
        let i = &self.inner;
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = reqwest::Url::parse(&format!("{}/v1/billing/meters", i.base_url))
                .map_err(|e| ProviderError::Permanent {
                    message: format!("bad base URL: {e}"),
                })?;
            url.query_pairs_mut().append_pair("limit", "100");
            if let Some(a) = &after {
                url.query_pairs_mut().append_pair("starting_after", a);
            }
            let answer = i
                .client
                .send(self.authed(Method::GET, url.as_str()), 1)
                .await?;
            if !answer.status.is_success() {
                return Err(answer.error(&i.name));
            }
            let page: ListWire<MeterWire> = answer.json(&i.name)?;
            after = page.data.last().map(|m| m.id.clone());
            out.extend(page.data.into_iter().map(|m| StripeMeter {
                id: m.id,
                event_name: m.event_name,
                status: m.status,
                formula: m.default_aggregation.formula,
            }));
            if !page.has_more || after.is_none() {
                return Ok(out);
            }
        }
    }

    /// Checks the account's meters against the mapping: every mapped event name must
    /// belong to an active meter whose formula is the one configured. Returns the
    /// problems found (empty when all is well).
    pub async fn verify_meters(&self, meters: &[MeterId]) -> Result<Vec<String>, ProviderError> {
        let remote = self.meters().await?;
        let mut problems = Vec::new();
        for m in meters {
            let Some(target) = self.inner.mapper.meter(m) else {
                problems.push(no_meter(&self.inner.name, m));
                continue;
            };
            match remote.iter().find(|r| r.event_name == target.id) {
                None => problems.push(format!(
                    "meter `{m}`: Stripe has no meter with event_name `{}`",
                    target.id
                )),
                Some(r) if r.status != "active" => problems.push(format!(
                    "meter `{m}`: Stripe meter {} is {}: it accepts no events",
                    r.id, r.status
                )),
                Some(r) if r.formula != target.formula.as_str() => problems.push(format!(
                    "meter `{m}`: Stripe meter {} aggregates by `{}`, configured `{}`",
                    r.id, r.formula, target.formula
                )),
                Some(_) => {}
            }
        }
        Ok(problems)
    }
}

#[async_trait]
impl BillingProvider for StripeProvider {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn max_batch(&self) -> usize {
        match self.inner.api {
            // One call carries 100 events; a batch fills every lane.
            StripeApi::MeterEventStream => STREAM_BATCH * self.inner.lanes.max(1),
            _ => 100,
        }
    }

    fn check_meter(&self, meter: &MeterId, aggregation: Aggregation) -> Result<(), String> {
        if self.inner.api == StripeApi::UsageRecords {
            return match aggregation {
                Aggregation::Count | Aggregation::Sum => Ok(()),
                a => Err(format!(
                    "legacy usage records increment; a `{}` meter cannot be sent",
                    a.as_str()
                )),
            };
        }
        let target: MeterTarget = self
            .inner
            .mapper
            .meter(meter)
            .ok_or_else(|| no_meter(&self.inner.name, meter))?;
        if target.formula == Formula::Max {
            return Err("Stripe meters have no `max` formula".into());
        }
        target.formula.accepts(aggregation)
    }

    async fn report(&self, records: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
        let i = &self.inner;
        match i.api {
            StripeApi::MeterEventsV1 | StripeApi::MeterEventsV2 => {
                per_record(&i.name, records, i.lanes, &i.gate, |r| self.send_event(r)).await
            }
            StripeApi::UsageRecords => {
                per_record(&i.name, records, i.lanes, &i.gate, |r| {
                    self.send_usage_record(r)
                })
                .await
            }
            StripeApi::MeterEventStream => self.send_stream(records).await,
        }
    }
}
