//! Reconciliation: what the spool says Stripe acknowledged, per customer, meter and UTC
//! day, against Stripe's meter event summaries for the same days.

use std::collections::{BTreeMap, HashMap};

use monetize_core::meter::Aggregation;
use monetize_core::report::Acknowledged;
use monetize_core::{CustomerId, Engine, Event, EventKind, MeterId, ProviderError};
use reqwest::Method;
use serde::Deserialize;

use super::{ListWire, StripeProvider};
use crate::mapping::Formula;

const DAY: u64 = 86_400;

/// One customer, meter and day where the spool and Stripe disagree.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Difference {
    /// Our customer.
    pub customer: CustomerId,
    /// Our meter.
    pub meter: MeterId,
    /// The UTC day, as unix seconds of its midnight.
    pub day_start: u64,
    /// The quantity the spool holds as acknowledged by Stripe.
    pub acknowledged: u64,
    /// Stripe's `aggregated_value` for the day (0 when it has no summary).
    pub stripe: f64,
}

/// What a reconciliation found.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Reconciliation {
    /// Customer-meter-days compared.
    pub compared: usize,
    /// Every disagreement.
    pub differences: Vec<Difference>,
    /// Records not compared, and why (a meter that does not sum, an unmapped id).
    pub skipped: Vec<String>,
}

impl Reconciliation {
    /// Raises one [`EventKind::ReconciliationDifference`] per difference on `engine`'s
    /// event queue (for the notifications that route it to a team), naming `provider`.
    /// Returns how many were raised.
    pub fn raise(&self, engine: &Engine, provider: &str) -> usize {
        for d in &self.differences {
            engine.raise(Event::new(
                Some(d.customer.clone()),
                EventKind::ReconciliationDifference {
                    provider: provider.to_owned(),
                    meter: d.meter.clone(),
                    day_start: d.day_start,
                    acknowledged: d.acknowledged,
                    // Stripe sums whole units; a fraction would itself be a difference.
                    provider_quantity: d.stripe.max(0.0) as u64,
                },
            ));
        }
        self.differences.len()
    }
}

#[derive(Deserialize)]
struct SummaryWire {
    id: String,
    start_time: u64,
    aggregated_value: f64,
}

impl StripeProvider {
    /// Compares the acknowledged records of this provider (from
    /// `Spool::acknowledged(Some(name))`) dated before `settled_before` (unix seconds;
    /// Stripe aggregates asynchronously, so leave recent hours out) with Stripe's daily
    /// meter event summaries (`GET /v1/billing/meters/{id}/event_summaries` with
    /// `value_grouping_window=day`), and returns every difference; each is also logged
    /// as a warning. Only summing meters are compared.
    pub async fn reconcile(
        &self,
        acknowledged: &[Acknowledged],
        settled_before: u64,
    ) -> Result<Reconciliation, ProviderError> {
        let i = &self.inner;
        let mut report = Reconciliation::default();
        let mut ours: BTreeMap<(CustomerId, MeterId), BTreeMap<u64, u64>> = BTreeMap::new();
        for a in acknowledged {
            let r = &a.record;
            if r.provider != i.name || r.timestamp() >= settled_before {
                continue;
            }
            if !matches!(r.aggregation, Aggregation::Count | Aggregation::Sum) {
                report.skipped.push(format!(
                    "{}: meter `{}` is `{}`; only summing meters are reconciled",
                    r.idempotency_key,
                    r.meter,
                    r.aggregation.as_str()
                ));
                continue;
            }
            let day = r.timestamp() / DAY * DAY;
            *ours
                .entry((r.customer.clone(), r.meter.clone()))
                .or_default()
                .entry(day)
                .or_default() += r.quantity;
        }
        if ours.is_empty() {
            return Ok(report);
        }
        let meters: HashMap<String, String> = self
            .meters()
            .await?
            .into_iter()
            .map(|m| (m.event_name, m.id))
            .collect();
        for ((customer, meter), days) in ours {
            let target = i.mapper.meter(&meter).filter(|t| t.formula == Formula::Sum);
            let stripe_customer = i.mapper.customer(&customer);
            let (Some(target), Some(stripe_customer)) = (target, stripe_customer) else {
                report.skipped.push(format!(
                    "customer `{customer}`, meter `{meter}`: no mapping to a summing Stripe meter"
                ));
                continue;
            };
            let Some(meter_id) = meters.get(&target.id) else {
                report.skipped.push(format!(
                    "meter `{meter}`: Stripe has no meter with event_name `{}`",
                    target.id
                ));
                continue;
            };
            let (Some(&first), Some(&last)) = (days.keys().next(), days.keys().next_back()) else {
                continue;
            };
            let theirs = self
                .summaries(meter_id, &stripe_customer, first, last + DAY)
                .await?;
            let mut all_days: Vec<u64> = days.keys().chain(theirs.keys()).copied().collect();
            all_days.sort_unstable();
            all_days.dedup();
            for day in all_days {
                report.compared += 1;
                let acknowledged = days.get(&day).copied().unwrap_or(0);
                let stripe = theirs.get(&day).copied().unwrap_or(0.0);
                if (stripe - acknowledged as f64).abs() > 1e-9 {
                    tracing::warn!(
                        provider = %i.name, %customer, %meter, day_start = day,
                        acknowledged, stripe, "Stripe's meter event summary differs from the usage it acknowledged"
                    );
                    report.differences.push(Difference {
                        customer: customer.clone(),
                        meter: meter.clone(),
                        day_start: day,
                        acknowledged,
                        stripe,
                    });
                }
            }
        }
        Ok(report)
    }

    /// Daily summaries of one meter and customer over `[start, end)`, day-aligned.
    async fn summaries(
        &self,
        meter_id: &str,
        customer: &str,
        start: u64,
        end: u64,
    ) -> Result<BTreeMap<u64, f64>, ProviderError> {
        let i = &self.inner;
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = reqwest::Url::parse(&format!(
                "{}/v1/billing/meters/{}/event_summaries",
                i.base_url,
                crate::path_segment(meter_id)
            ))
            .map_err(|e| ProviderError::Permanent {
                message: format!("bad base URL: {e}"),
            })?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("customer", customer)
                    .append_pair("start_time", &start.to_string())
                    .append_pair("end_time", &end.to_string())
                    .append_pair("value_grouping_window", "day")
                    .append_pair("limit", "100");
                if let Some(a) = &after {
                    q.append_pair("starting_after", a);
                }
            }
            let answer = i
                .client
                .send(self.authed(Method::GET, url.as_str()), 1)
                .await?;
            if !answer.status.is_success() {
                return Err(answer.error(&i.name));
            }
            let page: ListWire<SummaryWire> = answer.json(&i.name)?;
            after = page.data.last().map(|s| s.id.clone());
            for s in page.data {
                *out.entry(s.start_time / DAY * DAY).or_insert(0.0) += s.aggregated_value;
            }
            if !page.has_more || after.is_none() {
                return Ok(out);
            }
        }
    }
}
