//! What the engine shows: its counters ([`EngineStats`]) and a customer's current usage
//! ([`CustomerUsage`], [`MeterUsage`]).

use super::*;

/// Counters about the engine, for operators and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct EngineStats {
    /// Customers in memory.
    pub customers: usize,
    /// Customers evicted to dormant records.
    pub dormant: usize,
    /// New customers accounted to the overflow customer because of the cap.
    pub overflowed: u64,
    /// New customers refused because of the cap.
    pub rejected: u64,
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
    /// Responses not metered because their request was matched by another engine (a
    /// programming error: each request's `MeterMatch` belongs to the engine that made it).
    pub foreign_matches: u64,
    /// Samples larger than one sample may add (2^48), recorded as 2^48, and samples whose
    /// cost exceeded 2^52 micro-credits, charged that much: a value this large is almost
    /// surely a bad header or JSON field, and is capped so that no cell or balance wraps.
    pub samples_capped: u64,
    /// Per rule: (name, shadow mode, requests it blocked or would have blocked).
    pub rule_hits: Vec<(String, bool, u64)>,
}

/// One meter's figures for a customer, as shown on the usage route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MeterUsage {
    /// The meter.
    pub meter: MeterId,
    /// The period the figure covers.
    pub period: Period,
    /// Unix seconds when the period ends.
    pub resets_at: u64,
    /// Used in the current period (counted by this process).
    pub used: u64,
    /// The plan's quota for the period, if any.
    pub limit: Option<u64>,
    /// What is left of the quota.
    pub remaining: Option<u64>,
}

/// A customer's current figures: plan, status, balance and per-meter usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CustomerUsage {
    /// The customer.
    pub customer: CustomerId,
    /// The plan, if any.
    pub plan: Option<PlanId>,
    /// Whether the plan is prepaid.
    pub prepaid: bool,
    /// Prepaid balance in micro-credits.
    pub balance: i64,
    /// Status flags.
    pub status: CustomerStatus,
    /// Per meter.
    pub meters: Vec<MeterUsage>,
}

impl Engine {
    /// Counters for operators.
    pub fn stats(&self) -> EngineStats {
        let cfg = &*self.inner.metering.config.load();
        EngineStats {
            customers: self.inner.registry.len(),
            dormant: self.inner.registry.dormant_len(),
            overflowed: self.inner.registry.overflowed.load(Ordering::Relaxed),
            rejected: self.inner.registry.rejected.load(Ordering::Relaxed),
            events_dropped: self.inner.events.dropped.load(Ordering::Relaxed),
            foreign_matches: self.inner.metering.foreign_matches.load(Ordering::Relaxed),
            samples_capped: self.inner.events.capped.load(Ordering::Relaxed),
            rule_hits: cfg
                .rules
                .iter()
                .map(|r| {
                    (
                        r.name.to_string(),
                        r.mode == Mode::Shadow,
                        r.hits.load(Ordering::Relaxed),
                    )
                })
                .collect(),
        }
    }

    /// A customer's current figures, or `None` when it is not known to this process.
    pub fn usage(&self, customer: &str) -> Option<CustomerUsage> {
        let h = self.inner.registry.get(customer)?;
        let cfg = &*self.inner.metering.config.load();
        let s = &h.0;
        let plan_idx = s.plan.load(Ordering::Relaxed);
        let plan = cfg.plan(plan_idx);
        let now = self.now();
        let meters = cfg
            .meters
            .iter()
            .map(|m| {
                let i = m.index.get();
                let period = plan.map_or(Period::Month, |p| p.period_of(i));
                let used = s.cells.period_used(i, m.aggregation);
                let limit = plan
                    .and_then(|p| p.quotas.get(i).copied().flatten())
                    .map(|q| q.limit);
                MeterUsage {
                    meter: m.id.clone(),
                    period,
                    resets_at: self.bounds(cfg, &s.id, period, now).end,
                    used,
                    limit,
                    remaining: limit.map(|l| l.saturating_sub(used)),
                }
            })
            .collect();
        Some(CustomerUsage {
            customer: s.id.clone(),
            plan: plan.map(|p| p.id.clone()),
            prepaid: plan.is_some_and(|p| p.prepaid),
            balance: s.balance.load(Ordering::Relaxed),
            status: h.status(),
            meters,
        })
    }
}
