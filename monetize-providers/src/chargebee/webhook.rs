//! [`ChargebeeWebhook`]: Chargebee's webhooks (HTTP Basic auth, optional confirmation)
//! as a [`WebhookSource`].

use std::collections::HashMap;

use async_trait::async_trait;
use base64::Engine as _;
use http::HeaderMap;
use monetize_core::webhook::{Delivery, EventMap, Meaning, WebhookError, WebhookSource};
use monetize_core::{EventKind, PlanId, StateChange};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::http::path_segment;
use crate::webhook::{CustomerMap, granted_credits, header, opt_text, parse, text};
use crate::webhook_lookup::Lookup;

/// Chargebee webhooks. Chargebee signs nothing: the endpoint is protected by HTTP Basic
/// auth (the user and password set on the webhook in Chargebee), compared in constant
/// time; with [`confirm`](Self::confirm) every delivery is also fetched back with
/// `GET /events/{id}` and the provider's copy is what gets applied (an id Chargebee does
/// not know is refused with 401).
///
/// Deliveries are deduplicated on `id` and ordered by the `resource_version` of the
/// object the event is about (the subscription for `subscription_*` events, else the
/// invoice, else the transaction), else `occurred_at`. The customer is
/// `content.subscription.customer_id`, `content.invoice.customer_id`,
/// `content.customer.id` or `content.transaction.customer_id`; with a
/// [`CustomerMap::Mapping`] the subscription id (what the provider client maps our
/// customers to) is tried first.
pub struct ChargebeeWebhook {
    user: SecretString,
    password: SecretString,
    events: EventMap,
    customers: CustomerMap,
    confirm: Option<Lookup>,
    max_body: usize,
    dunning: Vec<String>,
    plans: HashMap<String, PlanId>,
    micro_credits_per_unit: Option<i64>,
}

/// The invoice dunning statuses with which `payment_failed` makes the customer
/// delinquent by default: dunning is running (`in_progress`), or ran out of retries
/// (`exhausted`, the invoice stays unpaid).
pub const DEFAULT_DUNNING_STATUSES: [&str; 2] = ["in_progress", "exhausted"];

impl std::fmt::Debug for ChargebeeWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChargebeeWebhook")
            .field("credentials", &"[redacted]")
            .field("confirm", &self.confirm.as_ref().map(|l| &l.base_url))
            .finish_non_exhaustive()
    }
}

impl ChargebeeWebhook {
    /// Accepts deliveries carrying these Basic-auth credentials.
    pub fn new(user: SecretString, password: SecretString) -> Self {
        Self {
            user,
            password,
            events: Self::default_events(),
            customers: CustomerMap::Same,
            confirm: None,
            max_body: monetize_core::webhook::DEFAULT_MAX_BODY,
            dunning: DEFAULT_DUNNING_STATUSES.map(String::from).to_vec(),
            plans: HashMap::new(),
            micro_credits_per_unit: None,
        }
    }

    /// Grants credits for `promotional_credits_added`: `content.promotional_credit.amount`
    /// (minor currency units) times `micro_credits` (without this, credit grants are
    /// ignored).
    pub fn credits_per_minor_unit(mut self, micro_credits: i64) -> Self {
        self.micro_credits_per_unit = Some(micro_credits);
        self
    }

    /// Moves the customer to our `plan` when a `subscription_*` event's subscription is on
    /// Chargebee's `plan` (its `plan_id`, or the `item_price_id` of its `plan` item).
    pub fn plan(mut self, theirs: impl Into<String>, plan: PlanId) -> Self {
        self.plans.insert(theirs.into(), plan);
        self
    }

    /// Our plan for a subscription, when its Chargebee plan is mapped.
    fn plan_of(&self, subscription: &Value) -> Option<&PlanId> {
        let items = subscription
            .get("subscription_items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|i| i.get("item_type").and_then(Value::as_str) == Some("plan"))
            .filter_map(|i| i.get("item_price_id").and_then(Value::as_str));
        subscription
            .get("plan_id")
            .and_then(Value::as_str)
            .into_iter()
            .chain(items)
            .find_map(|p| self.plans.get(p))
    }

    /// The invoice dunning statuses (`content.invoice.dunning_status`) with which a
    /// `payment_failed` delivery makes the customer delinquent (default
    /// [`DEFAULT_DUNNING_STATUSES`]). A `payment_failed` whose invoice is not in one of
    /// them (dunning `stopped` or `success`, no dunning, or no invoice: a one-off charge)
    /// is acknowledged and changes nothing. An empty list marks every `payment_failed`.
    pub fn dunning_statuses<S: Into<String>>(
        mut self,
        statuses: impl IntoIterator<Item = S>,
    ) -> Self {
        self.dunning = statuses.into_iter().map(Into::into).collect();
        self
    }

    /// Confirms each delivery with `GET {base_url}/events/{id}` (`base_url` like
    /// `https://acme-test.chargebee.com/api/v2`) using the API key.
    pub fn confirm(mut self, base_url: impl Into<String>, api_key: SecretString) -> Self {
        self.confirm = Some(Lookup::new(base_url, api_key, None));
        self
    }

    /// Which event types mean what (start from [`default_events`](Self::default_events)).
    pub fn events(mut self, events: EventMap) -> Self {
        self.events = events;
        self
    }

    /// How Chargebee ids map to our customers (default: the customer id is ours).
    pub fn customers(mut self, customers: CustomerMap) -> Self {
        self.customers = customers;
        self
    }

    /// The largest body accepted (default 256 KiB).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The defaults: `payment_failed` payment failed (only while the invoice is in
    /// dunning: see [`dunning_statuses`](Self::dunning_statuses)); `payment_succeeded` paid;
    /// `subscription_cancelled` cancelled; `subscription_paused` paused;
    /// `subscription_resumed` resumed; `subscription_reactivated` and
    /// `subscription_activated` active; `subscription_changed` plan changed (with a
    /// mapped [`plan`](Self::plan); every `subscription_*` event carries its mapped plan);
    /// `promotional_credits_added` credits granted (with
    /// [`credits_per_minor_unit`](Self::credits_per_minor_unit)).
    pub fn default_events() -> EventMap {
        EventMap::from_pairs([
            ("payment_failed", Meaning::PaymentFailed),
            ("payment_succeeded", Meaning::Paid),
            ("subscription_cancelled", Meaning::Cancelled),
            ("subscription_paused", Meaning::Paused),
            ("subscription_resumed", Meaning::Resumed),
            ("subscription_reactivated", Meaning::Active),
            ("subscription_activated", Meaning::Active),
            ("subscription_changed", Meaning::PlanChanged),
            ("promotional_credits_added", Meaning::CreditsGranted),
        ])
    }

    fn check_auth(&self, headers: &HeaderMap) -> Result<(), WebhookError> {
        let refused = || WebhookError::Unauthorized("Basic credentials do not match".into());
        let given = header(headers, "authorization")
            .ok_or_else(|| WebhookError::Unauthorized("no Authorization header".into()))?;
        let (scheme, encoded) = given.trim().split_once(' ').ok_or_else(refused)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(refused());
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| refused())?;
        let expected = format!(
            "{}:{}",
            self.user.expose_secret(),
            self.password.expose_secret()
        );
        if bool::from(decoded.as_slice().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(refused())
        }
    }

    /// Whether the invoice of a `payment_failed` is in one of the dunning statuses that
    /// make the customer delinquent.
    fn in_dunning(&self, content: &Value) -> bool {
        if self.dunning.is_empty() {
            return true;
        }
        opt_text(content, "/invoice/dunning_status").is_some_and(|s| self.dunning.contains(&s))
    }

    fn customer(&self, content: &Value) -> Option<monetize_core::CustomerId> {
        if let CustomerMap::Mapping(_) = self.customers {
            let sub = opt_text(content, "/subscription/id")
                .or_else(|| opt_text(content, "/invoice/subscription_id"));
            if let Some(c) = sub.and_then(|s| self.customers.ours(&s)) {
                return Some(c);
            }
        }
        [
            "/subscription/customer_id",
            "/invoice/customer_id",
            "/customer/id",
            "/transaction/customer_id",
            "/promotional_credit/customer_id",
        ]
        .iter()
        .find_map(|p| opt_text(content, p))
        .and_then(|c| self.customers.ours(&c))
    }
}

#[async_trait]
impl WebhookSource for ChargebeeWebhook {
    fn provider(&self) -> &str {
        "chargebee"
    }

    fn max_body(&self) -> usize {
        self.max_body
    }

    async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
        self.check_auth(headers)?;
        let mut v = parse(body)?;
        let id = text(&v, "/id")?.to_owned();
        if let Some(api) = &self.confirm {
            let fetched = api
                .get(&format!("/events/{}", path_segment(&id)))
                .await?
                .ok_or_else(|| {
                    WebhookError::Unauthorized(format!("Chargebee knows no event `{id}`"))
                })?;
            let event = fetched.get("event").cloned().ok_or_else(|| {
                WebhookError::Unavailable("GET /events answered without `event`".into())
            })?;
            if opt_text(&event, "/id").as_deref() != Some(id.as_str())
                || event.get("event_type") != v.get("event_type")
            {
                return Err(WebhookError::Unauthorized(format!(
                    "the delivery does not match Chargebee's event `{id}`"
                )));
            }
            v = event;
        }
        let kind = text(&v, "/event_type")?;
        let content = v
            .get("content")
            .filter(|c| c.is_object())
            .ok_or_else(|| WebhookError::Malformed("missing object `content`".into()))?;
        let occurred = v
            .get("occurred_at")
            .and_then(Value::as_u64)
            .ok_or_else(|| WebhookError::Malformed("missing number field `occurred_at`".into()))?;
        let primary: &[&str] = if kind.starts_with("subscription_") {
            &["/subscription/resource_version"]
        } else {
            &["/invoice/resource_version", "/transaction/resource_version"]
        };
        let version = primary
            .iter()
            .find_map(|p| content.pointer(p).and_then(Value::as_u64))
            .unwrap_or(occurred.saturating_mul(1000));
        let mut meaning = self.events.meaning(kind);
        if kind == "payment_failed"
            && meaning == Meaning::PaymentFailed
            && !self.in_dunning(content)
        {
            // A failed attempt Chargebee is not dunning for: nothing to hold against
            // the customer.
            meaning = Meaning::Ignored;
        }
        let mut d = Delivery::new(
            "chargebee",
            id.as_str(),
            kind,
            version,
            self.customer(content),
            meaning,
        );
        if kind.starts_with("subscription_")
            && let Some(plan) = content.get("subscription").and_then(|s| self.plan_of(s))
        {
            d = d.with_change(StateChange::Plan(plan.clone()));
        }
        if meaning == Meaning::CreditsGranted
            && let Some(rate) = self.micro_credits_per_unit
        {
            d = d.with_change(granted_credits(
                content,
                "/promotional_credit/amount",
                rate,
            )?);
        }
        if meaning == Meaning::PaymentFailed {
            d = d.with_event(EventKind::PaymentFailed {
                provider: "chargebee".into(),
                invoice: opt_text(content, "/invoice/id")
                    .or_else(|| opt_text(content, "/transaction/id")),
                amount_due: content
                    .pointer("/invoice/amount_due")
                    .or_else(|| content.pointer("/transaction/amount"))
                    .and_then(Value::as_i64),
                currency: opt_text(content, "/invoice/currency_code")
                    .or_else(|| opt_text(content, "/transaction/currency_code"))
                    .map(|c| c.to_ascii_lowercase()),
            });
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monetize_core::CustomerId;
    use wiremock::matchers::{header as h, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const FAILED: &[u8] =
        include_bytes!("../../../tests/fixtures/webhooks/chargebee_payment_failed.json");
    const CANCELLED: &[u8] =
        include_bytes!("../../../tests/fixtures/webhooks/chargebee_subscription_cancelled.json");

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let mut hm = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        hm.insert("authorization", format!("Basic {v}").parse().unwrap());
        hm
    }

    fn status(r: Result<Delivery, WebhookError>) -> u16 {
        r.map(|_| 200).unwrap_or_else(|e| e.status().as_u16())
    }

    #[tokio::test]
    async fn basic_auth_and_parsing() {
        let w = ChargebeeWebhook::new("hook".into(), "s3cret".into());
        let d = w.verify(&basic("hook", "s3cret"), FAILED).await.unwrap();
        assert_eq!(d.event_id, "ev_AzZTwBV1kR4Gh5Lw");
        assert_eq!(
            d.version, 1_793_145_662_012,
            "the invoice's resource_version"
        );
        assert_eq!(
            d.customer,
            Some(CustomerId::new("AzZTwBV1kR1Ww2Ln").unwrap())
        );
        assert_eq!(d.meaning, Meaning::PaymentFailed);
        assert!(matches!(
            d.event,
            Some(EventKind::PaymentFailed {
                amount_due: Some(4250),
                ..
            })
        ));
        let d = w.verify(&basic("hook", "s3cret"), CANCELLED).await.unwrap();
        assert_eq!(
            (d.meaning, d.version),
            (Meaning::Cancelled, 1_794_960_000_789)
        );
        assert_eq!(status(w.verify(&basic("hook", "wrong"), FAILED).await), 401);
        assert_eq!(status(w.verify(&basic("hoo", "s3cret"), FAILED).await), 401);
        assert_eq!(status(w.verify(&HeaderMap::new(), FAILED).await), 401);
        assert_eq!(status(w.verify(&basic("hook", "s3cret"), b"{]").await), 400);
        let mapped =
            ChargebeeWebhook::new("hook".into(), "s3cret".into()).customers(CustomerMap::Mapping(
                crate::Mapping::new()
                    .with_customer(CustomerId::new("acme").unwrap(), "AzZTwBV1kR1Xy2Lp"),
            ));
        let d = mapped
            .verify(&basic("hook", "s3cret"), FAILED)
            .await
            .unwrap();
        assert_eq!(
            d.customer,
            Some(CustomerId::new("acme").unwrap()),
            "by subscription id"
        );
        assert!(!format!("{w:?}").contains("s3cret"));
    }

    /// `FAILED` with its invoice's dunning status changed (`None`: removed), or without
    /// an invoice at all.
    fn failed_with(dunning: Option<&str>, invoice: bool) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(FAILED).unwrap();
        let content = v["content"].as_object_mut().unwrap();
        if invoice {
            let inv = content["invoice"].as_object_mut().unwrap();
            match dunning {
                Some(s) => inv.insert("dunning_status".into(), s.into()),
                None => inv.remove("dunning_status"),
            };
        } else {
            content.remove("invoice");
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[tokio::test]
    async fn payment_failed_makes_delinquent_only_while_the_invoice_is_in_dunning() {
        let w = ChargebeeWebhook::new("hook".into(), "s3cret".into());
        let auth = basic("hook", "s3cret");
        let meaning = |d: Result<Delivery, WebhookError>| d.unwrap().meaning;
        // The fixture as Chargebee sends it: dunning in progress.
        assert_eq!(
            meaning(w.verify(&auth, FAILED).await),
            Meaning::PaymentFailed
        );
        assert_eq!(
            meaning(w.verify(&auth, &failed_with(Some("exhausted"), true)).await),
            Meaning::PaymentFailed
        );
        for (case, body) in [
            ("dunning stopped", failed_with(Some("stopped"), true)),
            ("dunning succeeded", failed_with(Some("success"), true)),
            ("no dunning", failed_with(None, true)),
            ("no invoice", failed_with(None, false)),
        ] {
            let d = w.verify(&auth, &body).await.unwrap();
            assert_eq!(d.meaning, Meaning::Ignored, "{case}");
            assert!(d.meaning.changes().is_empty(), "{case}");
            assert!(d.event.is_none(), "{case}: no PaymentFailed event");
            assert_eq!(d.event_id, "ev_AzZTwBV1kR4Gh5Lw", "{case}: still parsed");
        }
        // Configurable: only `exhausted`, or every failure.
        let strict =
            ChargebeeWebhook::new("hook".into(), "s3cret".into()).dunning_statuses(["exhausted"]);
        assert_eq!(
            meaning(strict.verify(&auth, FAILED).await),
            Meaning::Ignored
        );
        let any = ChargebeeWebhook::new("hook".into(), "s3cret".into())
            .dunning_statuses(Vec::<String>::new());
        assert_eq!(
            meaning(any.verify(&auth, &failed_with(None, false)).await),
            Meaning::PaymentFailed
        );
    }

    /// A `promotional_credits_added` delivery, shaped like Chargebee's documented sample
    /// (the customer in `content.customer`, the credit in `content.promotional_credit`).
    fn credits_added(amount: Option<i64>) -> Vec<u8> {
        let mut credit = serde_json::json!({
            "id": "pc_XpbG6hnQqGGhct4Y",
            "customer_id": "acme",
            "type": "increment",
            "description": "add promotional credits",
            "credit_type": "general",
            "closing_balance": 300,
            "created_at": 1_368_301_434,
            "object": "promotional_credit",
            "currency_code": "USD"
        });
        if let Some(a) = amount {
            credit["amount"] = a.into();
        }
        serde_json::to_vec(&serde_json::json!({
            "id": "ev_XpbG6hnQqGGhdl4a",
            "occurred_at": 1_368_301_434,
            "source": "api",
            "object": "event",
            "api_version": "v2",
            "event_type": "promotional_credits_added",
            "webhook_status": "scheduled",
            "content": {
                "customer": {"id": "acme", "object": "customer", "promotional_credits": 0},
                "promotional_credit": credit
            }
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn promotional_credits_added_grants_credits_at_the_configured_rate() {
        let auth = basic("hook", "s3cret");
        let plain = ChargebeeWebhook::new("hook".into(), "s3cret".into());
        let d = plain
            .verify(&auth, &credits_added(Some(300)))
            .await
            .unwrap();
        assert_eq!(d.meaning, Meaning::CreditsGranted);
        assert!(d.carried.is_empty(), "no rate configured: nothing granted");
        let paying =
            ChargebeeWebhook::new("hook".into(), "s3cret".into()).credits_per_minor_unit(10_000);
        let d = paying
            .verify(&auth, &credits_added(Some(300)))
            .await
            .unwrap();
        assert_eq!(d.customer, Some(CustomerId::new("acme").unwrap()));
        assert_eq!(d.carried, vec![StateChange::GrantCredits(3_000_000)]);
        let err = paying
            .verify(&auth, &credits_added(None))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("/promotional_credit/amount"),
            "{err}"
        );
        assert_eq!(status(Err(err)), 400);
    }

    #[tokio::test]
    async fn subscription_changed_carries_the_mapped_plan() {
        let auth = basic("hook", "s3cret");
        let pro = PlanId::new("pro").unwrap();
        // The cancelled fixture's subscription, changed: its plan item is
        // `api-calls-USD-Monthly`.
        let mut v: Value = serde_json::from_slice(CANCELLED).unwrap();
        v["event_type"] = "subscription_changed".into();
        v["content"]["subscription"]["status"] = "active".into();
        let changed = serde_json::to_vec(&v).unwrap();
        let w = ChargebeeWebhook::new("hook".into(), "s3cret".into())
            .plan("api-calls-USD-Monthly", pro.clone());
        let d = w.verify(&auth, &changed).await.unwrap();
        assert_eq!(d.meaning, Meaning::PlanChanged);
        assert_eq!(d.carried, vec![StateChange::Plan(pro.clone())]);
        assert_eq!(d.version, 1_794_960_000_789, "the subscription's version");
        // An older catalog's `plan_id` is read too.
        v["content"]["subscription"]["plan_id"] = "gold".into();
        let gold = ChargebeeWebhook::new("hook".into(), "s3cret".into()).plan("gold", pro.clone());
        let d = gold
            .verify(&auth, &serde_json::to_vec(&v).unwrap())
            .await
            .unwrap();
        assert_eq!(d.carried, vec![StateChange::Plan(pro)]);
        // Without a mapping, nothing is carried: the delivery changes nothing.
        let plain = ChargebeeWebhook::new("hook".into(), "s3cret".into());
        let d = plain.verify(&auth, &changed).await.unwrap();
        assert!(d.carried.is_empty());
        assert!(d.meaning.changes().is_empty());
    }

    #[tokio::test]
    async fn confirms_with_the_events_api() {
        let server = MockServer::start().await;
        let event: Value = serde_json::from_slice(FAILED).unwrap();
        Mock::given(method("GET"))
            .and(path("/events/ev_AzZTwBV1kR4Gh5Lw"))
            .and(h("authorization", "Basic a2V5Og=="))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(serde_json::json!({ "event": event })),
            )
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/events/ev_AzZTwBV1kS9Qp6Mx"))
            .respond_with(ResponseTemplate::new(404).set_body_json(serde_json::json!({
                "message": "not found", "api_error_code": "resource_not_found"
            })))
            .mount(&server)
            .await;
        let w = ChargebeeWebhook::new("hook".into(), "s3cret".into())
            .confirm(server.uri(), "key".into());
        assert_eq!(
            status(w.verify(&basic("hook", "s3cret"), FAILED).await),
            200
        );
        assert_eq!(
            status(w.verify(&basic("hook", "s3cret"), CANCELLED).await),
            401,
            "unknown to Chargebee"
        );
        let down = ChargebeeWebhook::new("hook".into(), "s3cret".into())
            .confirm("http://127.0.0.1:9", "key".into());
        assert_eq!(
            status(down.verify(&basic("hook", "s3cret"), FAILED).await),
            503
        );
    }
}
