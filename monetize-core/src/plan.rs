//! A compiled plan: per-meter prices and quotas as arrays indexed by meter.

use std::collections::HashMap;

use crate::config::{Period, PlanConfig};
use crate::error::ConfigError;
use crate::id::{MeterIndex, PlanId};
use crate::quota::Quota;
use crate::rate_limit::RateLimit;
use crate::tier::Tiers;

/// A customer's plan position when no plan is assigned.
pub(crate) const NO_PLAN: u32 = u32::MAX;

/// The most quota warning shares per quota.
const MAX_WARNINGS: usize = 4;

/// A plan, compiled against the meter table.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) id: PlanId,
    pub(crate) prepaid: bool,
    pub(crate) initial_credits: i64,
    pub(crate) credits_low_at: i64,
    /// Price and quota per meter, side by side for recording (one bounds check).
    pub(crate) terms: Box<[MeterTerms]>,
    /// Quota per meter.
    pub(crate) quotas: Box<[Option<Quota>]>,
    /// The meters that have a quota, for a quick scan.
    pub(crate) quota_meters: Box<[usize]>,
    pub(crate) rate_limit: Option<RateLimit>,
    /// Usage tiers per meter.
    pub(crate) tiers: Box<[Tiers]>,
    /// Periods in a row at the allowance after which `upsell_candidate` fires.
    pub(crate) upsell_after: Option<u32>,
}

/// What recording on one meter involves under a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MeterTerms {
    /// Micro-credits per base unit (0: free).
    pub(crate) price: u64,
    /// The meter's quota, if the plan has one.
    pub(crate) quota: Option<Quota>,
    /// The meter's first usage tier (`u64::MAX` when the plan sets none): usage below it
    /// crosses no tier, so the request path reads the tiers themselves
    /// ([`Plan::tiers`], out of line: this struct stays within one cache line) only
    /// past it.
    pub(crate) first_tier: u64,
}

// What one recorded meter reads of its plan fits one cache line.
const _: () = assert!(std::mem::size_of::<MeterTerms>() <= 64);

impl MeterTerms {
    /// Whether recording on the meter needs the period's usage (a quota or tiers to test).
    #[inline(always)]
    pub(crate) fn watches_period(&self) -> bool {
        self.quota.is_some() || self.first_tier != u64::MAX
    }
}

impl Plan {
    pub(crate) fn compile(
        cfg: &PlanConfig,
        field: &str,
        meters: &HashMap<&str, MeterIndex>,
    ) -> Result<Plan, ConfigError> {
        let id =
            PlanId::new(&cfg.id).map_err(|e| ConfigError::id(format!("{field}.id"), &cfg.id, e))?;
        let n = meters.len();
        let mut prices = vec![0u64; n].into_boxed_slice();
        for (name, price) in &cfg.prices {
            let idx = meters.get(name.as_str()).ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.prices.{name}"),
                    name,
                    "no meter has this id",
                )
            })?;
            prices[idx.get()] = *price;
        }
        if cfg.prices.values().any(|p| *p > 0) && !cfg.prepaid {
            return Err(ConfigError::new(
                format!("{field}.prepaid"),
                "false",
                "prices spend prepaid credits; set `prepaid = true` or remove the prices (postpaid usage is priced by the billing provider)",
            ));
        }
        let mut quotas = vec![None; n].into_boxed_slice();
        for (i, q) in cfg.quotas.iter().enumerate() {
            let qf = format!("{field}.quotas[{i}]");
            let idx = meters.get(q.meter.as_str()).ok_or_else(|| {
                ConfigError::new(format!("{qf}.meter"), &q.meter, "no meter has this id")
            })?;
            if q.limit == 0 {
                return Err(ConfigError::new(
                    format!("{qf}.limit"),
                    0,
                    "must be at least 1 (to refuse all use, add a rule instead)",
                ));
            }
            if q.warn_at_percent == 0 || q.warn_at_percent > 100 {
                return Err(ConfigError::new(
                    format!("{qf}.warn_at_percent"),
                    q.warn_at_percent,
                    "must be between 1 and 100",
                ));
            }
            if q.warn_at_percents.len() > MAX_WARNINGS {
                return Err(ConfigError::new(
                    format!("{qf}.warn_at_percents"),
                    format!("{:?}", q.warn_at_percents),
                    "at most 4 shares",
                ));
            }
            if let Some(bad) = q.warn_at_percents.iter().find(|p| **p == 0 || **p > 100) {
                return Err(ConfigError::new(
                    format!("{qf}.warn_at_percents"),
                    bad,
                    "each must be between 1 and 100",
                ));
            }
            if quotas[idx.get()].is_some() {
                return Err(ConfigError::new(
                    format!("{qf}.meter"),
                    &q.meter,
                    "this plan already has a quota on this meter",
                ));
            }
            let mut warn_at = [u64::MAX; MAX_WARNINGS];
            for (slot, share) in warn_at.iter_mut().zip(q.warning_shares()) {
                *slot = ((q.limit as u128 * share as u128).div_ceil(100)) as u64;
            }
            quotas[idx.get()] = Some(Quota {
                limit: q.limit,
                period: q.period,
                warn_at,
            });
        }
        if cfg.initial_credits < 0 {
            return Err(ConfigError::new(
                format!("{field}.initial_credits"),
                cfg.initial_credits,
                "must not be negative",
            ));
        }
        let rate_limit = cfg
            .rate_limit
            .as_ref()
            .map(|r| RateLimit::compile(r, &format!("{field}.rate_limit")))
            .transpose()?;
        let mut tiers = vec![Tiers::NONE; n];
        for (name, m) in &cfg.meters {
            let mf = format!("{field}.meters.{name}");
            let idx = meters
                .get(name.as_str())
                .ok_or_else(|| ConfigError::new(mf.clone(), name, "no meter has this id"))?;
            tiers[idx.get()] = Tiers::compile(&m.tiers, &format!("{mf}.tiers"))?;
        }
        let upsell_after = match cfg.upsell_after_periods {
            Some(0) => {
                return Err(ConfigError::new(
                    format!("{field}.upsell_after_periods"),
                    0,
                    "must be at least 1 (or left out to never raise upsell_candidate)",
                ));
            }
            Some(n) if (0..meters.len()).all(|i| quotas[i].is_none() && tiers[i].is_empty()) => {
                return Err(ConfigError::new(
                    format!("{field}.upsell_after_periods"),
                    n,
                    "no meter of this plan has an allowance: give one a quota or tiers",
                ));
            }
            n => n,
        };
        let quota_meters = (0..n).filter(|i| quotas[*i].is_some()).collect();
        let terms = prices
            .iter()
            .zip(&quotas)
            .zip(&tiers)
            .map(|((price, quota), tiers)| MeterTerms {
                price: *price,
                quota: *quota,
                first_tier: tiers.first().unwrap_or(u64::MAX),
            })
            .collect();
        Ok(Plan {
            id,
            prepaid: cfg.prepaid,
            initial_credits: cfg.initial_credits,
            credits_low_at: cfg.credits_low_at,
            terms,
            quotas,
            quota_meters,
            rate_limit,
            tiers: tiers.into_boxed_slice(),
            upsell_after,
        })
    }

    /// Whether any quota of this plan is used up, reading the customer's period counters.
    #[inline]
    pub(crate) fn any_quota_reached(
        &self,
        cells: &crate::meter::UsageCells,
        aggs: &[crate::meter::Aggregation],
    ) -> bool {
        self.quota_meters
            .iter()
            .any(|&i| match (self.quotas.get(i), aggs.get(i)) {
                (Some(Some(q)), Some(agg)) => cells.period_used(i, *agg) >= q.limit,
                _ => false,
            })
    }

    /// What a meter's usage is compared with for `upsell_candidate`: its quota's limit,
    /// else its first tier; `None` when it has neither.
    pub(crate) fn allowance(&self, meter: usize) -> Option<u64> {
        let terms = self.terms.get(meter)?;
        terms
            .quota
            .map(|q| q.limit)
            .or_else(|| self.tiers.get(meter).and_then(Tiers::first))
    }

    /// The period over which a meter's usage is counted for this plan: its quota's, or
    /// the calendar month.
    pub(crate) fn period_of(&self, meter: usize) -> Period {
        self.quotas
            .get(meter)
            .and_then(|q| q.map(|q| q.period))
            .unwrap_or(Period::Month)
    }
}
