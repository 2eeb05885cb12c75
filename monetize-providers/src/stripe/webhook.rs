//! [`StripeWebhook`]: Stripe's signed webhooks as a [`WebhookSource`].

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderMap;
use monetize_core::webhook::{Delivery, EventMap, Meaning, WebhookError, WebhookSource};
use monetize_core::{EventKind, PlanId, StateChange};
use secrecy::SecretString;
use serde_json::Value;

use crate::webhook::{
    CustomerMap, any_matches, check_time, granted_credits, header, opt_text, parse, text,
};

/// Stripe webhooks: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`, HMAC-SHA256 over
/// `"<t>.<raw body>"` with the endpoint secret. A delivery is accepted when any `v1`
/// matches any configured secret (so a rolled secret keeps working while both are
/// configured, and Stripe's several `v1` values during a roll are each tried), compared
/// in constant time, and `t` is within the tolerance (300 s by default) of now, in the
/// past or the future.
///
/// The customer is `data.object.customer`, mapped by the [`CustomerMap`]; deliveries
/// are deduplicated on `id` and ordered by `created`. Which event types mean what:
/// [`StripeWebhook::default_events`].
pub struct StripeWebhook {
    secrets: Vec<SecretString>,
    tolerance: Duration,
    events: EventMap,
    customers: CustomerMap,
    max_body: usize,
    plans: HashMap<String, PlanId>,
    micro_credits_per_unit: Option<i64>,
}

impl std::fmt::Debug for StripeWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeWebhook")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl StripeWebhook {
    /// Verifies with the endpoint's signing secret (`whsec_...`).
    pub fn new(secret: SecretString) -> Self {
        Self {
            secrets: vec![secret],
            tolerance: Duration::from_secs(300),
            events: Self::default_events(),
            customers: CustomerMap::Same,
            max_body: monetize_core::webhook::DEFAULT_MAX_BODY,
            plans: HashMap::new(),
            micro_credits_per_unit: None,
        }
    }

    /// Maps a Stripe price (its id `price_...` or its `lookup_key`) to our plan: a
    /// subscription event whose first item has that price moves the customer to `plan`
    /// (ordered like every field: an older event never overrides a newer plan).
    pub fn plan(mut self, price: impl Into<String>, plan: PlanId) -> Self {
        self.plans.insert(price.into(), plan);
        self
    }

    /// Grants credits for `billing.credit_grant.created`: `amount.monetary.value` (minor
    /// currency units) times `micro_credits` (without this, credit grants are ignored).
    pub fn credits_per_minor_unit(mut self, micro_credits: i64) -> Self {
        self.micro_credits_per_unit = Some(micro_credits);
        self
    }

    /// Also accepts signatures made with `secret` (while rolling the endpoint secret).
    pub fn also_secret(mut self, secret: SecretString) -> Self {
        self.secrets.push(secret);
        self
    }

    /// How far the signature's timestamp may be from now (default 300 s).
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Which event types mean what (start from [`default_events`](Self::default_events)).
    pub fn events(mut self, events: EventMap) -> Self {
        self.events = events;
        self
    }

    /// How Stripe customer ids map to ours (default: the same).
    pub fn customers(mut self, customers: CustomerMap) -> Self {
        self.customers = customers;
        self
    }

    /// The largest body accepted (default 256 KiB).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The defaults: `invoice.payment_failed` payment failed; `invoice.overdue` overdue;
    /// `invoice.marked_uncollectible` delinquent; `invoice.paid` and
    /// `invoice.payment_succeeded` paid; `customer.subscription.updated` by its status
    /// (`past_due`/`unpaid` delinquent, `active`/`trialing` active, `canceled` cancelled,
    /// `paused` paused); `customer.subscription.deleted` cancelled;
    /// `customer.subscription.paused` paused; `customer.subscription.resumed` resumed;
    /// `billing.credit_grant.created` credits granted (with
    /// [`credits_per_minor_unit`](Self::credits_per_minor_unit)). Subscription events also
    /// change the plan when their price is mapped ([`plan`](Self::plan)).
    pub fn default_events() -> EventMap {
        EventMap::from_pairs([
            ("invoice.payment_failed", Meaning::PaymentFailed),
            ("invoice.overdue", Meaning::InvoiceOverdue),
            ("invoice.marked_uncollectible", Meaning::Delinquent),
            ("invoice.paid", Meaning::Paid),
            ("invoice.payment_succeeded", Meaning::Paid),
            ("customer.subscription.updated", Meaning::SubscriptionStatus),
            ("customer.subscription.deleted", Meaning::Cancelled),
            ("customer.subscription.paused", Meaning::Paused),
            ("customer.subscription.resumed", Meaning::Resumed),
            ("billing.credit_grant.created", Meaning::CreditsGranted),
        ])
    }

    fn verify_signature(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), WebhookError> {
        let sig = header(headers, "stripe-signature")
            .ok_or_else(|| WebhookError::Unauthorized("no Stripe-Signature header".into()))?;
        let mut t = None;
        let mut v1 = Vec::new();
        for part in sig.split(',') {
            match part.trim().split_once('=') {
                Some(("t", v)) => t = Some(v),
                Some(("v1", v)) => v1.push(v),
                _ => {}
            }
        }
        let t = t.ok_or_else(|| {
            WebhookError::Unauthorized("Stripe-Signature has no timestamp `t`".into())
        })?;
        let secs: u64 = t.parse().map_err(|_| {
            WebhookError::Unauthorized("Stripe-Signature timestamp is not a number".into())
        })?;
        if v1.is_empty() {
            return Err(WebhookError::Unauthorized(
                "Stripe-Signature has no `v1` signature".into(),
            ));
        }
        if !any_matches(&self.secrets, t, body, v1.iter().copied()) {
            return Err(WebhookError::Unauthorized(
                "no `v1` signature matches the endpoint secret".into(),
            ));
        }
        check_time(secs.saturating_mul(1000), self.tolerance)
    }
}

#[async_trait]
impl WebhookSource for StripeWebhook {
    fn provider(&self) -> &str {
        "stripe"
    }

    fn max_body(&self) -> usize {
        self.max_body
    }

    async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError> {
        self.verify_signature(headers, body)?;
        let v = parse(body)?;
        let id = text(&v, "/id")?;
        let kind = text(&v, "/type")?;
        let created = v
            .get("created")
            .and_then(Value::as_u64)
            .ok_or_else(|| WebhookError::Malformed("missing number field `created`".into()))?;
        let object = v
            .pointer("/data/object")
            .filter(|o| o.is_object())
            .ok_or_else(|| WebhookError::Malformed("missing object `data.object`".into()))?;
        let mut meaning = self.events.meaning(kind);
        if meaning == Meaning::SubscriptionStatus {
            meaning = Meaning::of_subscription_status(
                object.get("status").and_then(Value::as_str).unwrap_or(""),
            );
        }
        // `customer` is an id, or an expanded customer object.
        let theirs = opt_text(object, "/customer").or_else(|| opt_text(object, "/customer/id"));
        let customer = theirs.as_deref().and_then(|c| self.customers.ours(c));
        let mut d = Delivery::new(
            "stripe",
            id,
            kind,
            created.saturating_mul(1000),
            customer,
            meaning,
        );
        let kind_of_object = object.get("object").and_then(Value::as_str);
        if kind_of_object == Some("subscription") && !self.plans.is_empty() {
            let price = object.pointer("/items/data/0/price");
            let plan = ["/lookup_key", "/id"]
                .iter()
                .filter_map(|p| price.and_then(|v| v.pointer(p)).and_then(Value::as_str))
                .find_map(|k| self.plans.get(k));
            if let Some(plan) = plan {
                d = d.with_change(StateChange::Plan(plan.clone()));
            }
        }
        if meaning == Meaning::CreditsGranted
            && let Some(rate) = self.micro_credits_per_unit
        {
            d = d.with_change(granted_credits(object, "/amount/monetary/value", rate)?);
        }
        let is_invoice = kind_of_object == Some("invoice");
        let invoice = is_invoice.then(|| opt_text(object, "/id")).flatten();
        let amount_due = object.get("amount_due").and_then(Value::as_i64);
        let currency = opt_text(object, "/currency");
        match meaning {
            Meaning::PaymentFailed => {
                d = d.with_event(EventKind::PaymentFailed {
                    provider: "stripe".into(),
                    invoice,
                    amount_due,
                    currency,
                });
            }
            Meaning::InvoiceOverdue => {
                d = d.with_event(EventKind::InvoiceOverdue {
                    provider: "stripe".into(),
                    invoice,
                    amount_due,
                    currency,
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

    const FAILED: &[u8] =
        include_bytes!("../../../tests/fixtures/webhooks/stripe_invoice.payment_failed.json");
    const PAST_DUE: &[u8] = include_bytes!(
        "../../../tests/fixtures/webhooks/stripe_customer.subscription.updated.past_due.json"
    );

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn headers(value: String) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("stripe-signature", value.parse().unwrap());
        h
    }

    fn signed(secret: &str, t: u64, body: &[u8]) -> HeaderMap {
        headers(format!("t={t},v1={}", sign(secret, &t.to_string(), body)))
    }

    #[tokio::test]
    async fn parses_the_fixtures() {
        let w = StripeWebhook::new("whsec_a".into());
        let d = w
            .verify(&signed("whsec_a", now(), FAILED), FAILED)
            .await
            .unwrap();
        assert_eq!(d.event_id, "evt_1SQv2hB7WZ01zgkWpFa1lD9x");
        assert_eq!(d.version, 1_793_149_209_000);
        assert_eq!(
            d.customer,
            Some(CustomerId::new("cus_TAb3kZ9wQ1xY2z").unwrap())
        );
        assert_eq!(d.meaning, Meaning::PaymentFailed);
        assert_eq!(
            d.event,
            Some(EventKind::PaymentFailed {
                provider: "stripe".into(),
                invoice: Some("in_1SQv2aB7WZ01zgkW3QnZt8Yc".into()),
                amount_due: Some(4250),
                currency: Some("usd".into()),
            })
        );
        let d = w
            .verify(&signed("whsec_a", now(), PAST_DUE), PAST_DUE)
            .await
            .unwrap();
        assert_eq!(
            d.meaning,
            Meaning::Delinquent,
            "subscription status past_due"
        );
        assert!(d.carried.is_empty(), "no plan mapped");
        let pro = PlanId::new("pro").unwrap();
        let planned = StripeWebhook::new("whsec_a".into()).plan("api_calls_monthly", pro.clone());
        let d = planned
            .verify(&signed("whsec_a", now(), PAST_DUE), PAST_DUE)
            .await
            .unwrap();
        assert_eq!(
            d.carried,
            vec![StateChange::Plan(pro)],
            "by the price's lookup_key"
        );
        let grant = br#"{"id":"evt_g","type":"billing.credit_grant.created","created":1793149300,
            "data":{"object":{"id":"credgr_1","object":"billing.credit_grant","customer":"cus_1",
            "amount":{"type":"monetary","monetary":{"currency":"usd","value":500}}}}}"#;
        let d = w
            .verify(&signed("whsec_a", now(), grant), grant)
            .await
            .unwrap();
        assert_eq!(
            (d.meaning, d.carried.len()),
            (Meaning::CreditsGranted, 0),
            "no rate: nothing granted"
        );
        let paying = StripeWebhook::new("whsec_a".into()).credits_per_minor_unit(10_000);
        let d = paying
            .verify(&signed("whsec_a", now(), grant), grant)
            .await
            .unwrap();
        assert_eq!(d.carried, vec![StateChange::GrantCredits(5_000_000)]);
        let mapped = StripeWebhook::new("whsec_a".into()).customers(CustomerMap::Mapping(
            crate::Mapping::new()
                .with_customer(CustomerId::new("acme").unwrap(), "cus_TAb3kZ9wQ1xY2z"),
        ));
        let d = mapped
            .verify(&signed("whsec_a", now(), FAILED), FAILED)
            .await
            .unwrap();
        assert_eq!(d.customer, Some(CustomerId::new("acme").unwrap()));
    }

    #[tokio::test]
    async fn refuses_bad_signatures_and_times() {
        let w = StripeWebhook::new("whsec_a".into()).also_secret("whsec_b".into());
        let status = |r: Result<Delivery, WebhookError>| {
            r.map(|_| 200).unwrap_or_else(|e| e.status().as_u16())
        };
        assert_eq!(
            status(w.verify(&signed("whsec_b", now(), FAILED), FAILED).await),
            200
        );
        assert_eq!(
            status(w.verify(&signed("whsec_x", now(), FAILED), FAILED).await),
            401
        );
        assert_eq!(
            status(
                w.verify(&signed("whsec_a", now() - 330, FAILED), FAILED)
                    .await
            ),
            401
        );
        assert_eq!(
            status(
                w.verify(&signed("whsec_a", now() + 330, FAILED), FAILED)
                    .await
            ),
            401
        );
        assert_eq!(status(w.verify(&HeaderMap::new(), FAILED).await), 401);
        let t = now();
        let rotated = headers(format!(
            "t={t},v1={},v1={}",
            sign("whsec_old", &t.to_string(), FAILED),
            sign("whsec_a", &t.to_string(), FAILED)
        ));
        assert_eq!(status(w.verify(&rotated, FAILED).await), 200);
        let tampered = [FAILED, b" "].concat();
        assert_eq!(
            status(w.verify(&signed("whsec_a", t, FAILED), &tampered).await),
            401
        );
        assert_eq!(
            status(w.verify(&signed("whsec_a", t, b"{nope"), b"{nope").await),
            400
        );
        let wide = StripeWebhook::new("whsec_a".into()).tolerance(Duration::from_secs(3600));
        assert_eq!(
            status(
                wide.verify(&signed("whsec_a", now() - 600, FAILED), FAILED)
                    .await
            ),
            200
        );
        assert!(
            !format!("{w:?}").contains("whsec"),
            "secrets never in Debug"
        );
    }
}
