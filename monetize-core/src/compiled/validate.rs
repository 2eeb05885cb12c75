//! Validation: turns a [`Config`] into the engine's compiled form, or a [`ConfigError`]
//! naming the field.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, CustomersConfig, ReportingConfig};
use crate::error::ConfigError;
use crate::govern::{Predicate, QuietCheck, Rule};
use crate::id::{CustomerId, MeterIndex, PlanId};
use crate::meter::{Aggregation, Meter, MeterPhases};
use crate::plan::NO_PLAN;
use crate::plan::Plan;

/// Predicates registered in code, by name.
pub(crate) type Predicates = HashMap<String, Arc<dyn Predicate>>;

/// The validated, compiled configuration the engine runs on.
#[derive(Debug)]
///
/// Plans are held by position (`plans`, indexed by a customer's `plan`); positions are
/// stable across [`compile_after`], so a plan keeps its position for the engine's life.
pub(crate) struct Compiled {
    pub(crate) instance: Arc<str>,
    pub(crate) meters: Vec<Meter>,
    pub(crate) aggs: Vec<Aggregation>,
    pub(crate) meter_index: HashMap<String, MeterIndex, foldhash::fast::RandomState>,
    pub(crate) plans: Vec<Plan>,
    pub(crate) plan_index: HashMap<String, u32, foldhash::fast::RandomState>,
    pub(crate) default_plan: u32,
    /// Where quota periods begin and end (the configured time zone).
    pub(crate) calendar: crate::quota::Calendar,
    pub(crate) rules: Vec<Rule>,
    pub(crate) customers: CustomersConfig,
    pub(crate) overflow_id: CustomerId,
    pub(crate) reporting: ReportingConfig,
    /// Largest request / response body prefix a JSON-field meter needs.
    pub(crate) json_capture: (Option<usize>, Option<usize>),
    /// What meters look at.
    pub(crate) needs: crate::meter::ExchangeNeeds,
    /// Which meters are tested at the request and which whole at the response, for
    /// two-phase metering.
    pub(crate) phases: MeterPhases,
    /// Meters with a reservation estimate (`reserve`), with it ([`crate::credits`]).
    pub(crate) reserve: Vec<(MeterIndex, u64)>,
    /// The rules' fast "nothing can fire" check, when the rule set allows one.
    pub(crate) quiet: Option<QuietCheck>,
    /// This configuration's number in the engine's [`ConfigCell`](super::cell::ConfigCell)
    /// (0 for the first; set when it is stored): two-phase metering finishes a request
    /// with the configuration it started with.
    pub(crate) generation: u32,
}

impl Compiled {
    pub(crate) fn plan(&self, idx: u32) -> Option<&Plan> {
        self.plans.get(idx as usize)
    }
}

pub(crate) fn compile(cfg: &Config, predicates: &Predicates) -> Result<Compiled, ConfigError> {
    compile_after(cfg, predicates, None)
}

/// The order in which `cfg`'s plans take positions (indexes into `cfg.plans`): in config
/// order; after a `previous` configuration, each plan it had keeps its position (customers
/// hold a plan by position) and new plans follow, so a reload that reorders, renames
/// around or adds plans moves no customer to another plan. A plan of `previous` that
/// `cfg` lacks is an error naming it.
fn plan_order(cfg: &Config, previous: Option<&Compiled>) -> Result<Vec<usize>, ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, p) in cfg.plans.iter().enumerate() {
        if seen.insert(p.id.as_str(), i).is_some() {
            return Err(ConfigError::new(
                format!("plans[{i}].id"),
                &p.id,
                "another plan already has this id",
            ));
        }
    }
    let Some(prev) = previous else {
        return Ok((0..cfg.plans.len()).collect());
    };
    let mut order = Vec::with_capacity(cfg.plans.len());
    for p in &prev.plans {
        let i = seen.remove(p.id.as_str()).ok_or_else(|| {
            ConfigError::new(
                "plans",
                p.id.as_str(),
                "a plan cannot be removed while the engine runs (customers may be on it); keep it, or restart",
            )
        })?;
        order.push(i);
    }
    order.extend((0..cfg.plans.len()).filter(|i| seen.contains_key(cfg.plans[*i].id.as_str())));
    Ok(order)
}

/// [`compile`], keeping the plan positions of `previous` (see [`plan_order`]).
pub(crate) fn compile_after(
    cfg: &Config,
    predicates: &Predicates,
    previous: Option<&Compiled>,
) -> Result<Compiled, ConfigError> {
    PlanId::new(&cfg.instance).map_err(|e| ConfigError::id("instance", &cfg.instance, e))?;
    let calendar = crate::quota::Calendar::new(&cfg.time_zone).ok_or_else(|| {
        ConfigError::new(
            "time_zone",
            &cfg.time_zone,
            "not a known time zone; use an IANA name such as `UTC`, `Europe/Paris` or `America/New_York`",
        )
    })?;

    if cfg.meters.len() > u16::MAX as usize {
        return Err(ConfigError::new(
            "meters",
            cfg.meters.len(),
            "at most 65535 meters",
        ));
    }
    let mut meters = Vec::with_capacity(cfg.meters.len());
    let mut by_name: HashMap<&str, MeterIndex> = HashMap::new();
    for (i, m) in cfg.meters.iter().enumerate() {
        let field = format!("meters[{i}]");
        let index = MeterIndex(i as u16);
        if by_name.insert(m.id.as_str(), index).is_some() {
            return Err(ConfigError::new(
                format!("{field}.id"),
                &m.id,
                "another meter already has this id",
            ));
        }
        meters.push(Meter::compile(m, &field, index)?);
    }

    let mut plans = Vec::with_capacity(cfg.plans.len());
    let mut plan_names: HashMap<&str, u32> = HashMap::new();
    for (pos, i) in plan_order(cfg, previous)?.into_iter().enumerate() {
        let p = &cfg.plans[i];
        let field = format!("plans[{i}]");
        plan_names.insert(p.id.as_str(), pos as u32);
        let plan = Plan::compile(p, &field, &by_name)?;
        for (name, price) in &p.prices {
            if let Some(idx) = by_name.get(name.as_str()) {
                let agg = meters[idx.get()].aggregation;
                if *price > 0 && !matches!(agg, Aggregation::Count | Aggregation::Sum) {
                    return Err(ConfigError::new(
                        format!("{field}.prices.{name}"),
                        price,
                        format!(
                            "only `count` and `sum` meters can be priced per unit; this meter aggregates by `{}`",
                            agg.as_str()
                        ),
                    ));
                }
            }
        }
        for (name, m) in &p.meters {
            if let Some(idx) = by_name.get(name.as_str()) {
                let agg = meters[idx.get()].aggregation;
                if !m.tiers.is_empty() && !matches!(agg, Aggregation::Count | Aggregation::Sum) {
                    return Err(ConfigError::new(
                        format!("{field}.meters.{name}.tiers"),
                        format!("{:?}", m.tiers),
                        format!(
                            "only `count` and `sum` meters have usage tiers; this meter aggregates by `{}`",
                            agg.as_str()
                        ),
                    ));
                }
            }
        }
        for (j, q) in p.quotas.iter().enumerate() {
            if let Some(idx) = by_name.get(q.meter.as_str()) {
                let agg = meters[idx.get()].aggregation;
                if agg == Aggregation::UniqueCount {
                    return Err(ConfigError::new(
                        format!("{field}.quotas[{j}].meter"),
                        &q.meter,
                        "a quota cannot limit a `unique_count` meter",
                    ));
                }
            }
        }
        plans.push(plan);
    }

    let default_plan = match &cfg.customers.default_plan {
        Some(name) => *plan_names.get(name.as_str()).ok_or_else(|| {
            ConfigError::new("customers.default_plan", name, "no plan has this id")
        })?,
        None if plans.is_empty() => NO_PLAN,
        None => 0,
    };
    if cfg.customers.max == 0 {
        return Err(ConfigError::new("customers.max", 0, "must be at least 1"));
    }
    let overflow_id = CustomerId::new(&cfg.customers.overflow_customer).map_err(|e| {
        ConfigError::id(
            "customers.overflow_customer",
            &cfg.customers.overflow_customer,
            e,
        )
    })?;
    if cfg.customers.evict_idle_secs == Some(0) {
        return Err(ConfigError::new(
            "customers.evict_idle_secs",
            0,
            "must be at least 1 (or left out to never evict)",
        ));
    }

    let rules_cfg = match &cfg.rules {
        Some(r) => r.clone(),
        None => crate::config::RuleConfig::defaults(),
    };
    let mut rules = Vec::with_capacity(rules_cfg.len());
    let mut rule_names = std::collections::HashSet::new();
    for (i, r) in rules_cfg.iter().enumerate() {
        let field = format!("rules[{i}]");
        if !rule_names.insert(r.name.as_str()) {
            return Err(ConfigError::new(
                format!("{field}.name"),
                &r.name,
                "another rule already has this name",
            ));
        }
        rules.push(Rule::compile(r, &field, &by_name, &plan_names, predicates)?);
    }

    let rep = &cfg.reporting;
    if !(10..=60_000).contains(&rep.checkpoint_interval_ms) {
        return Err(ConfigError::new(
            "reporting.checkpoint_interval_ms",
            rep.checkpoint_interval_ms,
            "must be between 10 and 60000 (it bounds what a crash can lose)",
        ));
    }
    if !(1..=86_400).contains(&rep.window_secs) {
        return Err(ConfigError::new(
            "reporting.window_secs",
            rep.window_secs,
            "must be between 1 and 86400",
        ));
    }
    let mut provider_names = std::collections::HashSet::new();
    for (i, p) in rep.providers.iter().enumerate() {
        let field = format!("reporting.providers[{i}]");
        if p.name.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.name"),
                "",
                "name the provider (`stripe`, `ledger`, ...)",
            ));
        }
        if !provider_names.insert(p.name.as_str()) {
            return Err(ConfigError::new(
                format!("{field}.name"),
                &p.name,
                "this provider is already routed",
            ));
        }
        if !(10..=86_400_000).contains(&p.report_interval_ms) {
            return Err(ConfigError::new(
                format!("{field}.report_interval_ms"),
                p.report_interval_ms,
                "must be between 10 and 86400000",
            ));
        }
        for (j, m) in p.meters.iter().flatten().enumerate() {
            if !by_name.contains_key(m.as_str()) {
                return Err(ConfigError::new(
                    format!("{field}.meters[{j}]"),
                    m,
                    "no meter has this id",
                ));
            }
        }
    }

    let mut json_capture = (None, None);
    for m in &meters {
        if let Some((side, cap)) = m.json_capture() {
            let slot = match side {
                crate::config::BodySide::Request => &mut json_capture.0,
                _ => &mut json_capture.1,
            };
            *slot = Some(slot.map_or(cap, |c: usize| c.max(cap)));
        }
    }

    let mut needs = crate::meter::ExchangeNeeds {
        json_capture,
        ..Default::default()
    };
    for m in &meters {
        m.note_needs(&mut needs);
        needs.request_at_response |= m.request_at_response();
    }
    let phases = MeterPhases::of(&meters);
    let mut reserve = Vec::new();
    for (i, mc) in cfg.meters.iter().enumerate() {
        let Some(estimate) = mc.reserve else {
            continue;
        };
        let Some(m) = meters.get(i) else {
            continue;
        };
        let field = format!("meters[{i}].reserve");
        if !matches!(m.aggregation, Aggregation::Count | Aggregation::Sum) {
            return Err(ConfigError::new(
                field,
                estimate,
                "only `count` and `sum` meters can be reserved on",
            ));
        }
        if m.mixed || i >= crate::meter::MeterMatch::CAPACITY {
            return Err(ConfigError::new(
                field,
                estimate,
                "a reserved meter must be among the first 64 and have a filter whose request and response tests split (no `any`/`not` mixing both sides)",
            ));
        }
        reserve.push((m.index, estimate));
    }

    let meter_index = by_name.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    let plan_index = plan_names
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    Ok(Compiled {
        instance: Arc::from(cfg.instance.as_str()),
        aggs: meters.iter().map(|m| m.aggregation).collect(),
        meters,
        meter_index,
        plans,
        plan_index,
        default_plan,
        calendar,
        customers: cfg.customers.clone(),
        overflow_id,
        reporting: cfg.reporting.clone(),
        json_capture,
        needs,
        phases,
        reserve,
        quiet: QuietCheck::of(&rules),
        rules,
        generation: 0,
    })
}
