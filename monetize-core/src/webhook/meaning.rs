//! What a provider's event type means for the customer's state, and the configurable map.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::customer::StateChange;

/// What a webhook event means for the customer's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Meaning {
    /// A payment failed: the customer becomes delinquent (and `PaymentFailed` is raised).
    PaymentFailed,
    /// An invoice is overdue: delinquent (and `InvoiceOverdue` is raised).
    InvoiceOverdue,
    /// Delinquent for another reason (a subscription `past_due` or `unpaid`).
    Delinquent,
    /// An invoice was paid or a payment succeeded: no longer delinquent.
    Paid,
    /// The subscription is active again: neither delinquent nor cancelled.
    Active,
    /// The subscription was cancelled (or expired).
    Cancelled,
    /// The subscription was paused: refused like a cancelled one until resumed.
    Paused,
    /// The subscription was resumed: no longer cancelled.
    Resumed,
    /// The subscription moved to another plan: the source carries the plan
    /// ([`Delivery::with_change`](super::Delivery::with_change)) when its price maps to one
    /// of ours.
    PlanChanged,
    /// Credits were granted: the source carries the amount, converted to micro-credits.
    CreditsGranted,
    /// Read the subscription's status in the payload (Stripe
    /// `customer.subscription.updated`): the source turns it into one of the above.
    SubscriptionStatus,
    /// Acknowledged, changes nothing.
    Ignored,
}

impl Meaning {
    /// The state changes this meaning applies, each to one field of the customer's state.
    pub fn changes(self) -> Vec<StateChange> {
        match self {
            Meaning::PaymentFailed | Meaning::InvoiceOverdue | Meaning::Delinquent => {
                vec![StateChange::Delinquent(true)]
            }
            Meaning::Paid => vec![StateChange::Delinquent(false)],
            Meaning::Active => vec![
                StateChange::Delinquent(false),
                StateChange::Cancelled(false),
            ],
            Meaning::Cancelled | Meaning::Paused => vec![StateChange::Cancelled(true)],
            Meaning::Resumed => vec![StateChange::Cancelled(false)],
            Meaning::PlanChanged
            | Meaning::CreditsGranted
            | Meaning::SubscriptionStatus
            | Meaning::Ignored => Vec::new(),
        }
    }

    /// A subscription status (Stripe's, Chargebee's, Recurly's names) as a meaning:
    /// `past_due`/`unpaid` delinquent, `active`/`trialing`/`in_trial`/`non_renewing`
    /// active, `canceled`/`cancelled`/`expired`/`incomplete_expired` cancelled, `paused`
    /// paused; anything else ignored.
    pub fn of_subscription_status(status: &str) -> Meaning {
        match status {
            "past_due" | "unpaid" => Meaning::Delinquent,
            "active" | "trialing" | "in_trial" | "non_renewing" => Meaning::Active,
            "canceled" | "cancelled" | "expired" | "incomplete_expired" => Meaning::Cancelled,
            "paused" => Meaning::Paused,
            _ => Meaning::Ignored,
        }
    }
}

/// Which provider event type means what. Start from a provider's defaults
/// (`StripeWebhook::default_events()` in `monetize-providers`) and change entries; a type
/// the map lacks is acknowledged and ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventMap {
    map: HashMap<String, Meaning>,
}

impl EventMap {
    /// An empty map (every event ignored).
    pub fn new() -> Self {
        Self::default()
    }

    /// A map from `(event type, meaning)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, Meaning)>) -> Self {
        Self {
            map: pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    /// Sets what `event_type` means (`Meaning::Ignored` to ignore a default).
    pub fn set(mut self, event_type: impl Into<String>, meaning: Meaning) -> Self {
        self.map.insert(event_type.into(), meaning);
        self
    }

    /// What `event_type` means ([`Meaning::Ignored`] when unmapped).
    pub fn meaning(&self, event_type: &str) -> Meaning {
        self.map
            .get(event_type)
            .copied()
            .unwrap_or(Meaning::Ignored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meanings_and_map() {
        let m = EventMap::from_pairs([("a", Meaning::PaymentFailed)]).set("b", Meaning::Paid);
        assert_eq!(m.meaning("a"), Meaning::PaymentFailed);
        assert_eq!(
            m.meaning("b").changes(),
            vec![StateChange::Delinquent(false)]
        );
        assert_eq!(m.meaning("zzz"), Meaning::Ignored);
        assert!(Meaning::Ignored.changes().is_empty());
        assert_eq!(
            Meaning::of_subscription_status("unpaid"),
            Meaning::Delinquent
        );
        assert_eq!(Meaning::of_subscription_status("trialing"), Meaning::Active);
        assert_eq!(Meaning::of_subscription_status("paused"), Meaning::Paused);
        let parsed: EventMap = toml::from_str(r#""x.y" = "cancelled""#).unwrap();
        assert_eq!(parsed.meaning("x.y"), Meaning::Cancelled);
    }
}
