//! Plan configuration: prices, quotas, credits and rate limits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PlanConfig {
    /// The plan's name.
    pub id: String,
    /// Prepaid: requests spend credits, and the default rules refuse requests once the
    /// balance is at or below zero.
    #[serde(default)]
    pub prepaid: bool,
    /// Credits (micro-credits) a new customer on this plan starts with.
    #[serde(default)]
    pub initial_credits: i64,
    /// The balance (micro-credits) at or below which a `credits_low` event fires.
    #[serde(default)]
    pub credits_low_at: i64,
    /// Micro-credits taken off the balance per base unit of each meter.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prices: BTreeMap<String, u64>,
    /// Usage limits per period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaConfig>,
    /// A request rate limit (GCRA), per customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Per-meter settings of this plan, by meter id: usage tiers (`tier_reached` events).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meters: BTreeMap<String, PlanMeterConfig>,
    /// Raise `upsell_candidate` (for sales) when a customer's usage of a meter reached
    /// its allowance (the meter's quota limit, else its first tier) in this many periods
    /// in a row, checked when each period ends; unset (the default): never. (An enforced
    /// quota stops usage at its limit, so reaching the limit is what counts.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upsell_after_periods: Option<u32>,
}

impl PlanConfig {
    /// A postpaid plan with no prices, quotas or limits.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            prepaid: false,
            initial_credits: 0,
            credits_low_at: 0,
            prices: BTreeMap::new(),
            quotas: Vec::new(),
            rate_limit: None,
            meters: BTreeMap::new(),
            upsell_after_periods: None,
        }
    }

    /// Makes the plan prepaid, starting with `initial_credits` micro-credits.
    pub fn prepaid(mut self, initial_credits: i64) -> Self {
        self.prepaid = true;
        self.initial_credits = initial_credits;
        self
    }

    /// Sets the low-credit mark.
    pub fn credits_low_at(mut self, micro_credits: i64) -> Self {
        self.credits_low_at = micro_credits;
        self
    }

    /// Prices a meter in micro-credits per base unit.
    pub fn price(mut self, meter: impl Into<String>, micro_credits: u64) -> Self {
        self.prices.insert(meter.into(), micro_credits);
        self
    }

    /// Adds a quota.
    pub fn quota(mut self, q: QuotaConfig) -> Self {
        self.quotas.push(q);
        self
    }

    /// Sets the rate limit.
    pub fn rate_limit(mut self, r: RateLimitConfig) -> Self {
        self.rate_limit = Some(r);
        self
    }

    /// Sets a meter's usage tiers (strictly increasing, positive): a `tier_reached` event
    /// fires in the request whose usage crosses one, once per period.
    pub fn tiers(mut self, meter: impl Into<String>, tiers: impl IntoIterator<Item = u64>) -> Self {
        self.meters.entry(meter.into()).or_default().tiers = tiers.into_iter().collect();
        self
    }

    /// Raises `upsell_candidate` after `periods` periods in a row at the allowance.
    pub fn upsell_after_periods(mut self, periods: u32) -> Self {
        self.upsell_after_periods = Some(periods);
        self
    }
}

/// A plan's settings for one meter (`[plans.meters.api_calls]` in TOML).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PlanMeterConfig {
    /// Usage thresholds per period (the meter's quota period, else the calendar month),
    /// strictly increasing and positive, at most 8: the steps of a graduated price, for
    /// example `[10000, 100000]`. Crossing one raises `tier_reached` (the highest tier a
    /// single request crosses) in that request, once per tier and period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<u64>,
}

/// A limit on a meter's usage per period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct QuotaConfig {
    /// The meter limited.
    pub meter: String,
    /// Base units allowed per period.
    pub limit: u64,
    /// The period (calendar, UTC).
    pub period: Period,
    /// Share of the limit (percent) at which a `quota_warning` event fires.
    #[serde(default = "default_warn")]
    pub warn_at_percent: u8,
    /// Shares of the limit (percent, 1 to 100, at most 4) at which `quota_warning`
    /// events fire, each once per period; 100 % is `quota_reached`. Empty (the default):
    /// `warn_at_percent` and 90 %, so 80 %, 90 % and 100 % by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warn_at_percents: Vec<u8>,
}

fn default_warn() -> u8 {
    80
}

impl QuotaConfig {
    /// A quota warning at 80 %.
    pub fn new(meter: impl Into<String>, limit: u64, period: Period) -> Self {
        Self {
            meter: meter.into(),
            limit,
            period,
            warn_at_percent: default_warn(),
            warn_at_percents: Vec::new(),
        }
    }

    /// Warns at these shares of the limit (percent) instead of 80 % and 90 %.
    pub fn warn_at_percents(mut self, shares: impl IntoIterator<Item = u8>) -> Self {
        self.warn_at_percents = shares.into_iter().collect();
        self
    }

    /// The shares (percent) warned at, ascending, without repeats.
    pub(crate) fn warning_shares(&self) -> Vec<u8> {
        let mut shares = if self.warn_at_percents.is_empty() {
            vec![self.warn_at_percent, 90]
        } else {
            self.warn_at_percents.clone()
        };
        shares.sort_unstable();
        shares.dedup();
        shares
    }
}

/// A quota period. Minutes and hours are fixed lengths; days and months are calendar
/// days and months in the config's `time_zone` (UTC by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Period {
    /// A minute.
    Minute,
    /// An hour.
    Hour,
    /// A day.
    Day,
    /// A calendar month.
    Month,
    /// A month starting at the customer's billing anchor (set with
    /// `StateChange::BillingAnchor`, for example the day their subscription started): a
    /// customer anchored on the 15th has quotas reset on the 15th. Without an anchor, the
    /// calendar month.
    BillingCycle,
}

/// A request rate limit: `requests` per `per_secs`, with bursts up to `burst`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Requests allowed per period.
    pub requests: u64,
    /// The period in seconds.
    #[serde(default = "one")]
    pub per_secs: u64,
    /// Largest burst; defaults to `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

fn one() -> u64 {
    1
}

impl RateLimitConfig {
    /// `requests` per `per_secs` seconds.
    pub fn new(requests: u64, per_secs: u64) -> Self {
        Self {
            requests,
            per_secs,
            burst: None,
        }
    }
}
