//! [`RecurlyWebhook`]: Recurly's signed JSON webhooks as a [`WebhookSource`].

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderMap;
use monetize_core::webhook::{Delivery, EventMap, Meaning, WebhookError, WebhookSource};
use monetize_core::{EventKind, PlanId, StateChange};
use secrecy::SecretString;
use serde_json::Value;

use crate::http::path_segment;
use crate::webhook::{CustomerMap, any_matches, check_time, header, opt_text, parse, text};
use crate::webhook_lookup::Lookup;

/// Recurly JSON webhooks: `recurly-signature: <unix ms>,<hex>[,<hex>...]`, HMAC-SHA256
/// over `"<ms>.<raw body>"`; accepted when any signature matches any configured secret
/// (constant time) and the timestamp is within the tolerance (5 minutes by default).
///
/// The event type is `<object_type>.<event_type>` (`charge_invoice.past_due`); the
/// ordering key is `event_time`; the dedup key is the object `id`, the type and the time
/// together. Recurly's JSON payloads are thin: the customer is the payload's
/// `account_code` when present, else, with [`lookup`](Self::lookup), the account code of
/// the object fetched from the API (`GET /invoices/{id}`, `/subscriptions/{id}`,
/// `/accounts/{id}`), mapped by the [`CustomerMap`]; without either the delivery is
/// acknowledged and ignored.
pub struct RecurlyWebhook {
    secrets: Vec<SecretString>,
    tolerance: Duration,
    events: EventMap,
    customers: CustomerMap,
    lookup: Option<Lookup>,
    max_body: usize,
    plans: HashMap<String, PlanId>,
}

impl std::fmt::Debug for RecurlyWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecurlyWebhook")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("tolerance", &self.tolerance)
            .field("lookup", &self.lookup.as_ref().map(|l| &l.base_url))
            .finish_non_exhaustive()
    }
}

impl RecurlyWebhook {
    /// Verifies with the endpoint's signature secret.
    pub fn new(secret: SecretString) -> Self {
        Self {
            secrets: vec![secret],
            tolerance: Duration::from_secs(300),
            events: Self::default_events(),
            customers: CustomerMap::Same,
            lookup: None,
            max_body: monetize_core::webhook::DEFAULT_MAX_BODY,
            plans: HashMap::new(),
        }
    }

    /// Moves the customer to our `plan` when a `subscription` event's subscription is on
    /// Recurly's plan `code` (read from `GET /subscriptions/{id}`: needs
    /// [`lookup`](Self::lookup)).
    pub fn plan(mut self, code: impl Into<String>, plan: PlanId) -> Self {
        self.plans.insert(code.into(), plan);
        self
    }

    /// Also accepts signatures made with `secret` (while rotating it).
    pub fn also_secret(mut self, secret: SecretString) -> Self {
        self.secrets.push(secret);
        self
    }

    /// How far the signature's timestamp may be from now (default 5 minutes).
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Which event types mean what (start from [`default_events`](Self::default_events)).
    pub fn events(mut self, events: EventMap) -> Self {
        self.events = events;
        self
    }

    /// How Recurly account codes map to our customers (default: the same).
    pub fn customers(mut self, customers: CustomerMap) -> Self {
        self.customers = customers;
        self
    }

    /// Finds the account of thin payloads through the API at `base_url`
    /// ([`DEFAULT_BASE_URL`](super::DEFAULT_BASE_URL)) with the API key.
    pub fn lookup(mut self, base_url: impl Into<String>, api_key: SecretString) -> Self {
        self.lookup = Some(Lookup::new(base_url, api_key, Some(super::ACCEPT)));
        self
    }

    /// The largest body accepted (default 256 KiB).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The defaults: `charge_invoice.past_due` overdue; `charge_invoice.failed` and
    /// `payment.failed` payment failed; `charge_invoice.paid` and `payment.succeeded`
    /// paid; `subscription.canceled` and `subscription.expired` cancelled;
    /// `subscription.paused` paused; `subscription.resumed` resumed;
    /// `subscription.reactivated` active; `subscription.updated` plan changed (with a
    /// mapped [`plan`](Self::plan); every `subscription` event carries its mapped plan).
    pub fn default_events() -> EventMap {
        EventMap::from_pairs([
            ("charge_invoice.past_due", Meaning::InvoiceOverdue),
            ("charge_invoice.failed", Meaning::PaymentFailed),
            ("payment.failed", Meaning::PaymentFailed),
            ("charge_invoice.paid", Meaning::Paid),
            ("payment.succeeded", Meaning::Paid),
            ("subscription.canceled", Meaning::Cancelled),
            ("subscription.expired", Meaning::Cancelled),
            ("subscription.paused", Meaning::Paused),
            ("subscription.resumed", Meaning::Resumed),
            ("subscription.reactivated", Meaning::Active),
            ("subscription.updated", Meaning::PlanChanged),
        ])
    }

    fn verify_signature(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), WebhookError> {
        let sig = header(headers, "recurly-signature")
            .ok_or_else(|| WebhookError::Unauthorized("no recurly-signature header".into()))?;
        let mut parts = sig.split(',').map(str::trim);
        let ms_text = parts.next().unwrap_or("");
        let ms: u64 = ms_text.parse().map_err(|_| {
            WebhookError::Unauthorized("recurly-signature timestamp is not a number".into())
        })?;
        let sigs: Vec<&str> = parts.filter(|s| !s.is_empty()).collect();
        if sigs.is_empty() {
            return Err(WebhookError::Unauthorized(
                "recurly-signature has no signature".into(),
            ));
        }
        if !any_matches(&self.secrets, ms_text, body, sigs.iter().copied()) {
            return Err(WebhookError::Unauthorized(
                "no signature matches the endpoint secret".into(),
            ));
        }
        check_time(ms, self.tolerance)
    }

    /// The object a thin payload is about, fetched from the API (`None` without a
    /// lookup, or for an object type it cannot fetch).
    async fn fetch(&self, v: &Value, object_type: &str) -> Result<Option<Value>, WebhookError> {
        let Some(lookup) = &self.lookup else {
            return Ok(None);
        };
        let id = text(v, "/id")?;
        let collection = match object_type {
            "charge_invoice" | "credit_invoice" | "invoice" => "invoices",
            "subscription" => "subscriptions",
            "account" => "accounts",
            _ => return Ok(None),
        };
        lookup
            .get(&format!("/{collection}/{}", path_segment(id)))
            .await
    }
}

#[async_trait]
impl WebhookSource for RecurlyWebhook {
    fn provider(&self) -> &str {
        "recurly"
    }

    fn max_body(&self) -> usize {
        self.max_body
    }

    async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
        self.verify_signature(headers, body)?;
        let v = parse(body)?;
        let id = text(&v, "/id")?;
        let object_type = text(&v, "/object_type")?;
        let event_type = text(&v, "/event_type")?;
        let time = text(&v, "/event_time")?;
        let at: jiff::Timestamp = time
            .parse()
            .map_err(|e| WebhookError::Malformed(format!("`event_time` {time:?}: {e}")))?;
        let version = u64::try_from(at.as_millisecond()).unwrap_or(0);
        let kind = format!("{object_type}.{event_type}");
        let meaning = self.events.meaning(&kind);
        let wants_plan = object_type == "subscription" && !self.plans.is_empty();
        let payload_code = opt_text(&v, "/account_code");
        let fetched = if meaning != Meaning::Ignored && (payload_code.is_none() || wants_plan) {
            self.fetch(&v, object_type).await?
        } else {
            None
        };
        let customer = if meaning == Meaning::Ignored {
            None
        } else {
            let pointer = if object_type == "account" {
                "/code"
            } else {
                "/account/code"
            };
            payload_code
                .or_else(|| fetched.as_ref().and_then(|o| opt_text(o, pointer)))
                .and_then(|c| self.customers.ours(&c))
        };
        let plan = fetched
            .as_ref()
            .filter(|_| wants_plan)
            .and_then(|o| opt_text(o, "/plan/code"))
            .and_then(|code| self.plans.get(&code).cloned());
        let invoice = object_type.ends_with("invoice").then(|| {
            v.get("invoice_number")
                .and_then(Value::as_u64)
                .map_or_else(|| id.to_owned(), |n| n.to_string())
        });
        let mut d = Delivery::new(
            "recurly",
            format!("{id}:{kind}:{time}"),
            kind,
            version,
            customer,
            meaning,
        );
        if let Some(plan) = plan {
            d = d.with_change(StateChange::Plan(plan));
        }
        match meaning {
            Meaning::PaymentFailed => {
                d = d.with_event(EventKind::PaymentFailed {
                    provider: "recurly".into(),
                    invoice,
                    amount_due: None,
                    currency: None,
                });
            }
            Meaning::InvoiceOverdue => {
                d = d.with_event(EventKind::InvoiceOverdue {
                    provider: "recurly".into(),
                    invoice,
                    amount_due: None,
                    currency: None,
                });
            }
            _ => {}
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::tests::sign;
    use monetize_core::CustomerId;
    use wiremock::matchers::{header as h, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const PAST_DUE: &[u8] =
        include_bytes!("../../../tests/fixtures/webhooks/recurly_charge_invoice.past_due.json");

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    fn signed(secret: &str, ms: u64, body: &[u8]) -> HeaderMap {
        let mut hm = HeaderMap::new();
        let v = format!("{ms},{}", sign(secret, &ms.to_string(), body));
        hm.insert("recurly-signature", v.parse().unwrap());
        hm
    }

    #[tokio::test]
    async fn looks_the_account_up_and_checks_signatures() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/invoices/t2zvqk4h0f5m"))
            .and(h("accept", super::super::ACCEPT))
            .and(h("authorization", "Basic a2V5Og=="))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "id": "t2zvqk4h0f5m", "object": "invoice", "account": {"id": "a1", "code": "acme"}
            })))
            .expect(1)
            .mount(&server)
            .await;
        let w = RecurlyWebhook::new("rs".into()).lookup(server.uri(), "key".into());
        let d = w
            .verify(&signed("rs", now_ms(), PAST_DUE), PAST_DUE)
            .await
            .unwrap();
        assert_eq!(d.customer, Some(CustomerId::new("acme").unwrap()));
        assert_eq!(d.meaning, Meaning::InvoiceOverdue);
        assert_eq!(d.event_type, "charge_invoice.past_due");
        assert_eq!(d.version, 1_793_322_007_000);
        assert!(
            matches!(d.event, Some(EventKind::InvoiceOverdue { ref invoice, .. }) if invoice.as_deref() == Some("1042"))
        );

        let status = |r: Result<Delivery, WebhookError>| {
            r.map(|_| 200).unwrap_or_else(|e| e.status().as_u16())
        };
        let plain = RecurlyWebhook::new("rs".into()).also_secret("rs2".into());
        assert_eq!(
            status(
                plain
                    .verify(&signed("rs2", now_ms(), PAST_DUE), PAST_DUE)
                    .await
            ),
            200
        );
        assert_eq!(
            status(
                plain
                    .verify(&signed("bad", now_ms(), PAST_DUE), PAST_DUE)
                    .await
            ),
            401
        );
        assert_eq!(
            status(
                plain
                    .verify(&signed("rs", now_ms() - 330_000, PAST_DUE), PAST_DUE)
                    .await
            ),
            401
        );
        assert_eq!(
            status(
                plain
                    .verify(&signed("rs", now_ms() + 330_000, PAST_DUE), PAST_DUE)
                    .await
            ),
            401
        );
        assert_eq!(
            status(plain.verify(&signed("rs", now_ms(), b"[1"), b"[1").await),
            400
        );
        let d = plain
            .verify(&signed("rs", now_ms(), PAST_DUE), PAST_DUE)
            .await
            .unwrap();
        assert_eq!(d.customer, None, "no account code and no lookup");
        let ms = now_ms();
        let mut two = HeaderMap::new();
        let v = format!(
            "{ms},{},{}",
            sign("old", &ms.to_string(), PAST_DUE),
            sign("rs", &ms.to_string(), PAST_DUE)
        );
        two.insert("recurly-signature", v.parse().unwrap());
        assert_eq!(status(plain.verify(&two, PAST_DUE).await), 200);
    }

    /// A thin `subscription.updated` payload shaped like the fixture's.
    fn sub_updated(id: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": id,
            "object_type": "subscription",
            "site_id": "q8n2x7k3c1vd",
            "event_type": "updated",
            "event_time": "2026-11-02T10:00:00Z",
            "uuid": "7e2a1d7f3c0b5f1a9d4c8b6e3f2a5d0c"
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn subscription_updated_carries_the_mapped_plan_from_the_api() {
        let server = MockServer::start().await;
        for (id, code) in [("s1", "gold"), ("s2", "bronze")] {
            Mock::given(method("GET"))
                .and(path(format!("/subscriptions/{id}")))
                .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                    "id": id, "object": "subscription", "state": "active",
                    "account": {"id": "a1", "object": "account", "code": "acme"},
                    "plan": {"id": "p1", "object": "plan", "code": code, "name": code}
                })))
                .expect(1)
                .mount(&server)
                .await;
        }
        let pro = PlanId::new("pro").unwrap();
        let w = RecurlyWebhook::new("rs".into())
            .lookup(server.uri(), "key".into())
            .plan("gold", pro.clone());
        let body = sub_updated("s1");
        let d = w
            .verify(&signed("rs", now_ms(), &body), &body)
            .await
            .unwrap();
        assert_eq!(d.event_type, "subscription.updated");
        assert_eq!(d.meaning, Meaning::PlanChanged);
        assert_eq!(d.customer, Some(CustomerId::new("acme").unwrap()));
        assert_eq!(d.carried, vec![StateChange::Plan(pro)]);
        // A plan code we do not map: nothing carried, nothing changes.
        let body = sub_updated("s2");
        let d = w
            .verify(&signed("rs", now_ms(), &body), &body)
            .await
            .unwrap();
        assert_eq!(d.customer, Some(CustomerId::new("acme").unwrap()));
        assert!(d.carried.is_empty());
        assert!(d.meaning.changes().is_empty());
    }
}
