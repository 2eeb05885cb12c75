//! Provider webhooks: a [`WebhookSource`] verifies a delivery's raw body and headers and
//! says what it means; the [`WebhookProcessor`] applies it to the engine exactly once.
//!
//! Vendor code (Stripe, Recurly, Chargebee signatures and payloads) lives in
//! `monetize-providers`; the HTTP route in `monetize-axum`. This module holds what they
//! share:
//!
//! - [`Delivery`]: a verified event: the provider's event id, its time or resource
//!   version (the ordering key), our customer, and its [`Meaning`];
//! - [`EventMap`]: which provider event type means what (configurable, with each
//!   provider's defaults);
//! - [`WebhookProcessor`]: dedup on the event id (remembered in a [`WebhookLog`] across
//!   restarts, 7 days by default), older-never-overrides-newer per customer and field, and
//!   the customer's new state persisted before the route answers 2xx;
//! - [`WebhookError`]: why a delivery was refused, with its HTTP status (400, 401, 413).

mod error;
mod log;
mod meaning;
mod processor;

use async_trait::async_trait;
use http::HeaderMap;

use crate::event::EventKind;
use crate::id::CustomerId;

pub use error::WebhookError;
pub use log::{
    AppliedEvent, CustomerWebhooks, FieldState, FieldValue, MemoryWebhookLog, WebhookLog,
};
pub use meaning::{EventMap, Meaning};
pub use processor::{DEFAULT_DEDUP_TTL, Outcome, PRUNE_ROWS, WebhookProcessor};
pub(crate) use processor::{field_name, now_ms, revert};

/// The largest body a webhook route accepts by default (256 KiB; Stripe's events are far
/// smaller).
pub const DEFAULT_MAX_BODY: usize = 256 * 1024;

/// A verified webhook delivery, with what it means for one customer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The provider (`stripe`, `recurly`, `chargebee`, or yours).
    pub provider: String,
    /// The provider's event id: deliveries are deduplicated on it.
    pub event_id: String,
    /// The provider's event type (`invoice.payment_failed`).
    pub event_type: String,
    /// The event's time or resource version in milliseconds: a delivery never overrides
    /// a field of the customer's state set by a delivery with a larger one.
    pub version: u64,
    /// Our customer, mapped from the provider's id; `None` when the event names none or
    /// the mapping has none (the delivery is then acknowledged and ignored).
    pub customer: Option<CustomerId>,
    /// What the event means ([`Meaning::Ignored`] for types the [`EventMap`] lacks).
    pub meaning: Meaning,
    /// Changes the event carries beyond its meaning's: a plan, credits granted.
    pub carried: Vec<crate::StateChange>,
    /// The event to raise for notifications when the delivery is applied (payment failed,
    /// invoice overdue); the processor adds `PaymentRecovered` itself.
    pub event: Option<EventKind>,
}

impl Delivery {
    /// A delivery meaning `meaning` for `customer`.
    pub fn new(
        provider: impl Into<String>,
        event_id: impl Into<String>,
        event_type: impl Into<String>,
        version: u64,
        customer: Option<CustomerId>,
        meaning: Meaning,
    ) -> Self {
        Self {
            provider: provider.into(),
            event_id: event_id.into(),
            event_type: event_type.into(),
            version,
            customer,
            meaning,
            carried: Vec::new(),
            event: None,
        }
    }

    /// Adds a change the event carries (a plan it names, credits it grants).
    pub fn with_change(mut self, change: crate::StateChange) -> Self {
        self.carried.push(change);
        self
    }

    /// Sets the event raised when the delivery is applied.
    pub fn with_event(mut self, event: EventKind) -> Self {
        self.event = Some(event);
        self
    }
}

/// A provider's webhooks: verifies a delivery and says what it means.
///
/// `verify` must check the signature (or credentials) over the exact raw body before
/// parsing it, in constant time, and refuse with [`WebhookError::Unauthorized`]; a body
/// that is not the provider's JSON is [`WebhookError::Malformed`].
#[async_trait]
pub trait WebhookSource: Send + Sync + 'static {
    /// The provider's name (`stripe`), used in dedup keys and logs.
    fn provider(&self) -> &str;

    /// The largest body accepted; larger ones are refused with 413 before `verify`.
    fn max_body(&self) -> usize {
        DEFAULT_MAX_BODY
    }

    /// Verifies the raw body and headers, and parses the delivery.
    async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, WebhookError>;
}
