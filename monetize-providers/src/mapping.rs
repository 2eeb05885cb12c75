//! Mapping our customers and meters to a provider's identifiers, and which of our
//! aggregations each provider-side formula can bill honestly.

use std::collections::HashMap;
use std::fmt;

use monetize_core::meter::Aggregation;
use monetize_core::{CustomerId, MeterId};
use serde::{Deserialize, Serialize};

/// How the provider aggregates what we send over its billing period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Formula {
    /// Adds the values (Stripe `sum`, Recurly usage, Chargebee `sum_of_usages`).
    #[default]
    Sum,
    /// Counts the events, ignoring their values (Stripe `count`): never correct for our
    /// per-window records, which each carry many units.
    Count,
    /// The last value of the period (Stripe `last`, Chargebee `last_usage`).
    Last,
    /// The largest value of the period (Chargebee `max_usage`).
    Max,
}

impl Formula {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Formula::Sum => "sum",
            Formula::Count => "count",
            Formula::Last => "last",
            Formula::Max => "max",
        }
    }

    /// Whether records of a meter with `aggregation` can be sent to a provider meter
    /// with this formula without changing what is billed; the error says why not.
    ///
    /// Our records are per report window (and a late part of a window is a separate
    /// record): summing them is right for `count` and `sum` meters; for a `latest` gauge
    /// only the provider's last value is right, for `max` only its max. An approximate
    /// distinct count per window cannot be combined across windows by any formula.
    pub fn accepts(self, aggregation: Aggregation) -> Result<(), String> {
        match (aggregation, self) {
            (Aggregation::Count | Aggregation::Sum, Formula::Sum)
            | (Aggregation::Latest, Formula::Last)
            | (Aggregation::Max, Formula::Max) => Ok(()),
            (Aggregation::UniqueCount, _) => Err(
                "a unique_count meter sends one approximate distinct count per window; no provider formula combines those honestly"
                    .into(),
            ),
            (_, Formula::Count) => Err(
                "the provider meter counts events, but each record carries a window's quantity: use a `sum` provider meter"
                    .into(),
            ),
            (a, f) => Err(format!(
                "a `{}` meter needs a provider formula of `{}`, not `{}`",
                a.as_str(),
                match a {
                    Aggregation::Latest => "last",
                    Aggregation::Max => "max",
                    _ => "sum",
                },
                f.as_str()
            )),
        }
    }
}

impl fmt::Display for Formula {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one of our meters goes at the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MeterTarget {
    /// Stripe: the meter's `event_name`; Recurly: the add-on id (`code-...` for a code);
    /// Chargebee: the item price id.
    pub id: String,
    /// How the provider meter aggregates (default `sum`).
    pub formula: Formula,
}

impl MeterTarget {
    /// A target summing what it receives.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            formula: Formula::Sum,
        }
    }

    /// Sets the provider-side formula.
    pub fn with_formula(mut self, formula: Formula) -> Self {
        self.formula = formula;
        self
    }
}

/// Maps our ids to a provider's. Implement it to look ids up in your own database; the
/// provider calls it for every record, so cache what is slow. A record whose customer or
/// meter has no mapping is refused for good (it reaches the dead letter list with a
/// message naming what is missing), never dropped.
pub trait IdMapper: Send + Sync + 'static {
    /// The provider's id for our customer: Stripe customer id (`cus_...`), Recurly
    /// subscription (`uuid-...` or id), Chargebee subscription id.
    fn customer(&self, customer: &CustomerId) -> Option<String>;

    /// The provider's target for our meter.
    fn meter(&self, meter: &MeterId) -> Option<MeterTarget>;
}

/// A mapping held in memory: from configuration or built in code.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Mapping {
    customers: HashMap<CustomerId, String>,
    same_customer_ids: bool,
    meters: HashMap<MeterId, MeterTarget>,
}

impl Mapping {
    /// An empty mapping.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps a customer.
    pub fn with_customer(mut self, ours: CustomerId, theirs: impl Into<String>) -> Self {
        self.customers.insert(ours, theirs.into());
        self
    }

    /// Uses our customer id unchanged for customers not mapped explicitly (when the ids
    /// you give customers are already the provider's).
    pub fn with_same_customer_ids(mut self, yes: bool) -> Self {
        self.same_customer_ids = yes;
        self
    }

    /// Maps a meter.
    pub fn with_meter(mut self, ours: MeterId, target: MeterTarget) -> Self {
        self.meters.insert(ours, target);
        self
    }

    /// Our customer for a provider's customer id (the reverse of [`IdMapper::customer`],
    /// used by webhooks): the customer mapped to `theirs`, else `theirs` itself when
    /// [`with_same_customer_ids`](Self::with_same_customer_ids) is on and it is a valid id.
    pub fn our_customer(&self, theirs: &str) -> Option<CustomerId> {
        self.customers
            .iter()
            .find(|(_, t)| t.as_str() == theirs)
            .map(|(ours, _)| ours.clone())
            .or_else(|| {
                self.same_customer_ids
                    .then(|| CustomerId::new(theirs).ok())
                    .flatten()
            })
    }

    /// The meters mapped.
    pub fn meters(&self) -> impl Iterator<Item = (&MeterId, &MeterTarget)> {
        self.meters.iter()
    }
}

impl IdMapper for Mapping {
    fn customer(&self, customer: &CustomerId) -> Option<String> {
        self.customers
            .get(customer)
            .cloned()
            .or_else(|| self.same_customer_ids.then(|| customer.to_string()))
    }

    fn meter(&self, meter: &MeterId) -> Option<MeterTarget> {
        self.meters.get(meter).cloned()
    }
}

/// The message of a record refused for want of a mapping.
pub(crate) fn no_customer(provider: &str, customer: &CustomerId) -> String {
    format!(
        "no {provider} id is mapped for customer `{customer}`: add it to the provider's `customers` table (or implement IdMapper)"
    )
}

/// The message of a record refused for want of a meter mapping.
pub(crate) fn no_meter(provider: &str, meter: &MeterId) -> String {
    format!(
        "no {provider} target is mapped for meter `{meter}`: add it to the provider's `meters` table"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_accept_only_honest_aggregations() {
        assert!(Formula::Sum.accepts(Aggregation::Count).is_ok());
        assert!(Formula::Sum.accepts(Aggregation::Sum).is_ok());
        assert!(Formula::Last.accepts(Aggregation::Latest).is_ok());
        assert!(Formula::Max.accepts(Aggregation::Max).is_ok());
        assert!(Formula::Sum.accepts(Aggregation::Max).is_err());
        assert!(Formula::Last.accepts(Aggregation::Sum).is_err());
        assert!(Formula::Count.accepts(Aggregation::Count).is_err());
        for f in [Formula::Sum, Formula::Last, Formula::Max, Formula::Count] {
            assert!(f.accepts(Aggregation::UniqueCount).is_err());
        }
    }

    #[test]
    fn mapping_falls_back_only_when_asked() {
        let c = |s| CustomerId::new(s).unwrap();
        let m = Mapping::new().with_customer(c("acme"), "cus_1");
        assert_eq!(m.customer(&c("acme")).as_deref(), Some("cus_1"));
        assert_eq!(m.customer(&c("other")), None);
        assert_eq!(m.our_customer("cus_1"), Some(c("acme")));
        assert_eq!(m.our_customer("cus_2"), None);
        let m = m.with_same_customer_ids(true);
        assert_eq!(m.customer(&c("other")).as_deref(), Some("other"));
        assert_eq!(m.our_customer("cus_2"), Some(c("cus_2")));
        assert_eq!(m.our_customer("cus_1"), Some(c("acme")));
    }
}
