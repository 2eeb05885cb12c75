//! Conditions on a customer's state.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::{ConditionConfig, Period};
use crate::customer::{CustomerHandle, CustomerState};
use crate::error::ConfigError;
use crate::id::MeterIndex;
use crate::meter::Exchange;
use crate::plan::Plan;
use crate::rate_limit::RateLimitInfo;

/// A condition written in code, registered under a name and referred to from config as
/// `when = { custom = "name" }`.
///
/// ```
/// use monetize_core::{CustomerHandle, Exchange, Predicate};
///
/// /// Refuses writes for customers whose id starts with `trial_`.
/// struct TrialWrites;
/// impl Predicate for TrialWrites {
///     fn holds(&self, customer: &CustomerHandle, request: &Exchange<'_>) -> bool {
///         customer.id().as_str().starts_with("trial_") && request.method != http::Method::GET
///     }
/// }
/// ```
pub trait Predicate: Send + Sync + 'static {
    /// Whether the condition holds for this customer and request. Called on the request
    /// path: it must not block, allocate heavily or do I/O.
    fn holds(&self, customer: &CustomerHandle, request: &Exchange<'_>) -> bool;
}

/// A compiled condition.
#[derive(Clone)]
pub(crate) enum Condition {
    Always,
    Delinquent,
    Cancelled,
    Blocked,
    CreditsExhausted,
    QuotaExceeded(Option<MeterIndex>),
    RateLimited,
    PlanIn(Vec<u32>),
    Custom(Arc<dyn Predicate>),
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::Custom(_) => f.write_str("Custom"),
            Condition::All(c) => f.debug_tuple("All").field(c).finish(),
            Condition::Any(c) => f.debug_tuple("Any").field(c).finish(),
            Condition::Not(c) => f.debug_tuple("Not").field(c).finish(),
            Condition::QuotaExceeded(m) => f.debug_tuple("QuotaExceeded").field(m).finish(),
            Condition::PlanIn(p) => f.debug_tuple("PlanIn").field(p).finish(),
            other => f.write_str(match other {
                Condition::Always => "Always",
                Condition::Delinquent => "Delinquent",
                Condition::Cancelled => "Cancelled",
                Condition::Blocked => "Blocked",
                Condition::CreditsExhausted => "CreditsExhausted",
                _ => "RateLimited",
            }),
        }
    }
}

/// What a condition needs to look at.
pub(crate) struct Ctx<'a> {
    pub(crate) handle: &'a CustomerHandle,
    pub(crate) plan: Option<&'a Plan>,
    pub(crate) ex: &'a Exchange<'a>,
    /// Each meter's aggregation, by index.
    pub(crate) aggs: &'a [crate::meter::Aggregation],
    /// Nanoseconds on the engine's monotonic clock, read only when a rate limit is checked.
    pub(crate) clock: &'a dyn Fn() -> u64,
}

/// What conditions found out on the way, for the decision's headers and body.
#[derive(Default)]
pub(crate) struct Facts {
    pub(crate) quota: Option<(MeterIndex, u64, u64, Period)>,
    pub(crate) rate: Option<RateLimitInfo>,
}

impl Condition {
    pub(crate) fn compile(
        cfg: &ConditionConfig,
        field: &str,
        meters: &HashMap<&str, MeterIndex>,
        plans: &HashMap<&str, u32>,
        predicates: &HashMap<String, Arc<dyn Predicate>>,
    ) -> Result<Condition, ConfigError> {
        let many = |cs: &[ConditionConfig], kind: &str| -> Result<Vec<Condition>, ConfigError> {
            if cs.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.{kind}"),
                    "[]",
                    "list at least one condition",
                ));
            }
            cs.iter()
                .enumerate()
                .map(|(i, c)| {
                    Condition::compile(
                        c,
                        &format!("{field}.{kind}[{i}]"),
                        meters,
                        plans,
                        predicates,
                    )
                })
                .collect()
        };
        Ok(match cfg {
            ConditionConfig::Always => Condition::Always,
            ConditionConfig::Delinquent => Condition::Delinquent,
            ConditionConfig::Cancelled => Condition::Cancelled,
            ConditionConfig::Blocked => Condition::Blocked,
            ConditionConfig::CreditsExhausted => Condition::CreditsExhausted,
            ConditionConfig::RateLimited => Condition::RateLimited,
            ConditionConfig::QuotaExceeded(None) => Condition::QuotaExceeded(None),
            ConditionConfig::QuotaExceeded(Some(m)) => Condition::QuotaExceeded(Some(
                *meters.get(m.as_str()).ok_or_else(|| {
                    ConfigError::new(format!("{field}.quota_exceeded"), m, "no meter has this id")
                })?,
            )),
            ConditionConfig::PlanIn(ps) => {
                if ps.is_empty() {
                    return Err(ConfigError::new(format!("{field}.plan_in"), "[]", "list at least one plan"));
                }
                let mut idx = Vec::new();
                for (i, p) in ps.iter().enumerate() {
                    idx.push(*plans.get(p.as_str()).ok_or_else(|| {
                        ConfigError::new(format!("{field}.plan_in[{i}]"), p, "no plan has this id")
                    })?);
                }
                Condition::PlanIn(idx)
            }
            ConditionConfig::Custom(name) => Condition::Custom(
                predicates.get(name).cloned().ok_or_else(|| {
                    ConfigError::new(
                        format!("{field}.custom"),
                        name,
                        "no predicate is registered under this name (register it with EngineBuilder::predicate)",
                    )
                })?,
            ),
            ConditionConfig::All(cs) => Condition::All(many(cs, "all")?),
            ConditionConfig::Any(cs) => Condition::Any(many(cs, "any")?),
            ConditionConfig::Not(c) => Condition::Not(Box::new(Condition::compile(
                c,
                &format!("{field}.not"),
                meters,
                plans,
                predicates,
            )?)),
        })
    }

    pub(crate) fn eval(&self, ctx: &Ctx<'_>, facts: &mut Facts) -> bool {
        let s: &CustomerState = &ctx.handle.0;
        match self {
            Condition::Always => true,
            Condition::Delinquent => s.has(crate::customer::handle_flags::DELINQUENT),
            Condition::Cancelled => s.has(crate::customer::handle_flags::CANCELLED),
            Condition::Blocked => s.has(crate::customer::handle_flags::BLOCKED),
            Condition::CreditsExhausted => {
                ctx.plan.is_some_and(|p| p.prepaid) && s.balance.load(Ordering::Relaxed) <= 0
            }
            Condition::QuotaExceeded(meter) => {
                let Some(plan) = ctx.plan else { return false };
                let check = |i: usize, facts: &mut Facts| {
                    let Some(Some(q)) = plan.quotas.get(i) else {
                        return false;
                    };
                    let agg = ctx.aggs.get(i).copied().unwrap_or_default();
                    let used = s.cells.period_used(i, agg);
                    if used >= q.limit {
                        facts.quota = Some((MeterIndex(i as u16), used, q.limit, q.period));
                        true
                    } else {
                        false
                    }
                };
                match meter {
                    Some(m) => check(m.get(), facts),
                    None => (0..plan.quotas.len()).any(|i| check(i, facts)),
                }
            }
            Condition::RateLimited => {
                let Some(rl) = ctx.plan.and_then(|p| p.rate_limit.as_ref()) else {
                    return false;
                };
                let info = rl.check(&s.rate_tat, (ctx.clock)());
                facts.rate = Some(info);
                info.retry_after_secs.is_some()
            }
            Condition::PlanIn(ps) => {
                let p = s.plan.load(Ordering::Relaxed);
                ps.contains(&p)
            }
            Condition::Custom(p) => p.holds(ctx.handle, ctx.ex),
            Condition::All(cs) => cs.iter().all(|c| c.eval(ctx, facts)),
            Condition::Any(cs) => cs.iter().any(|c| c.eval(ctx, facts)),
            Condition::Not(c) => !c.eval(ctx, facts),
        }
    }
}
