//! The usage engine: resolves customers, decides, records and checkpoints.
//!
//! Hot-path cost: [`Engine::resolve`] is one shared-lock map read and an `Arc` clone;
//! [`Engine::decide`] reads a few atomics of the handle and walks the compiled rules without
//! allocating when it allows; [`Engine::meter`] costs one relaxed atomic add per matching
//! meter (plus one for the period counter and one for credits on priced meters). Nothing
//! on these paths awaits, blocks on a lock held by background work, or touches the disk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;
use serde::Serialize;

use crate::config::cell::ConfigCell;
use crate::config::validate::{Compiled, Predicates, compile};
use crate::config::{Config, Mode, Period};
use crate::customer::handle_flags::{BLOCKED, CANCELLED, DELINQUENT, NO_PLAN};
use crate::customer::registry_admission::Admission;
use crate::customer::{CustomerHandle, CustomerState, CustomerStatus, Registry, StateChange};
use crate::error::{ConfigError, CoreError};
use crate::event::{Event, EventKind};
use crate::govern::{Allow, Block, Ctx, Decision, Facts, Predicate, QuotaInfo, RuleAction};
use crate::id::{CustomerId, MeterId, MeterIndex, PlanId};
use crate::meter::{Aggregation, Exchange, Meter, Sample};
use crate::quota::{period_end, period_number, period_start};
use crate::report::Delta;
use crate::store::{AccountState, PeriodUsage};

/// Events held for notifiers before the oldest are dropped (and counted).
const DEFAULT_EVENT_CAPACITY: usize = 65_536;

/// At most one `Blocked` (and one `ShadowBlock`) event per customer in this many seconds.
const BLOCK_EVENT_EVERY_SECS: u32 = 60;

/// The usage engine. Cheap to clone: every clone shares the same state.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: ConfigCell,
    instance: Arc<str>,
    registry: Registry,
    events: ArrayQueue<Event>,
    events_dropped: AtomicU64,
    epoch: Instant,
    /// Seconds since `epoch`, advanced by [`Engine::tick`]; used for idle tracking.
    coarse_secs: AtomicU32,
    /// How many deltas the last checkpoint returned (a capacity hint for the next).
    last_checkpoint_len: std::sync::atomic::AtomicUsize,
    /// Period numbers seen by the last tick, for quota resets.
    periods: Mutex<Option<[u64; 4]>>,
    predicates: Predicates,
}

/// Builds an [`Engine`] with predicates registered in code.
pub struct EngineBuilder {
    config: Config,
    predicates: Predicates,
    event_capacity: usize,
}

impl EngineBuilder {
    /// Registers a predicate for `when = { custom = "name" }`.
    pub fn predicate(mut self, name: impl Into<String>, p: impl Predicate) -> Self {
        self.predicates.insert(name.into(), Arc::new(p));
        self
    }

    /// How many undelivered events are held (default 65,536); past that the oldest are
    /// dropped and counted in [`EngineStats::events_dropped`].
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n.max(1);
        self
    }

    /// Validates the config and builds the engine.
    pub fn build(self) -> Result<Engine, ConfigError> {
        let compiled = compile(&self.config, &self.predicates)?;
        let instance = compiled.instance.clone();
        let engine = Engine {
            inner: Arc::new(Inner {
                config: ConfigCell::new(compiled),
                instance,
                registry: Registry::new(),
                events: ArrayQueue::new(self.event_capacity),
                events_dropped: AtomicU64::new(0),
                epoch: Instant::now(),
                coarse_secs: AtomicU32::new(0),
                last_checkpoint_len: std::sync::atomic::AtomicUsize::new(0),
                periods: Mutex::new(None),
                predicates: self.predicates,
            }),
        };
        engine.tick();
        Ok(engine)
    }
}

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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Engine {
    /// An engine with no registered predicates.
    pub fn new(config: Config) -> Result<Engine, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder, to register predicates.
    pub fn builder(config: Config) -> EngineBuilder {
        EngineBuilder {
            config,
            predicates: HashMap::new(),
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    /// An engine with `sum` meters of these names, no filters, no plans and no rules.
    #[doc(hidden)]
    pub fn for_tests(meters: &[&str]) -> Engine {
        let mut b = Config::builder();
        for m in meters {
            b = b.meter(crate::config::MeterConfig::sum(
                *m,
                crate::config::ValueConfig::Count,
            ));
        }
        let mut cfg = b.build();
        cfg.rules = Some(Vec::new());
        match Engine::new(cfg) {
            Ok(e) => e,
            Err(e) => panic!("for_tests: {e}"),
        }
    }

    /// The instance name, part of every idempotency key.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The configured meters, in index order.
    pub fn meters(&self) -> Vec<MeterId> {
        self.inner
            .config
            .load()
            .meters
            .iter()
            .map(|m| m.id.clone())
            .collect()
    }

    /// The index of a meter, to record through [`Engine::record`].
    pub fn meter_index(&self, name: &str) -> Option<MeterIndex> {
        self.inner.config.load().meter_index.get(name).copied()
    }

    /// The largest request and response body prefixes that JSON-field meters read; the
    /// HTTP layer captures no body when both are `None`.
    pub fn json_capture(&self) -> (Option<usize>, Option<usize>) {
        self.inner.config.load().json_capture
    }

    /// What the meters look at, so the HTTP layer keeps only that for each request.
    pub fn exchange_needs(&self) -> crate::meter::ExchangeNeeds {
        self.inner.config.load().needs
    }

    /// Resolves a customer: one map read for a known customer; a new one is admitted
    /// (restored if it was evicted) under the cap and overflow policy.
    #[inline]
    pub fn resolve(&self, id: &str) -> Result<CustomerHandle, CoreError> {
        if let Some(h) = self.inner.registry.get(id) {
            h.0.touch(self.inner.coarse_secs.load(Ordering::Relaxed));
            return Ok(h);
        }
        self.admit(id)
    }

    #[cold]
    fn admit(&self, id: &str) -> Result<CustomerHandle, CoreError> {
        let cid = CustomerId::new(id).map_err(|source| CoreError::Id {
            what: "customer",
            value: id.chars().take(64).collect(),
            source,
        })?;
        let cfg = self.inner.config.load();
        let balance = cfg.plan(cfg.default_plan).map_or(0, |p| p.initial_credits);
        let (h, overflowed) = self.inner.registry.admit(
            cid.clone(),
            &Admission {
                aggs: &cfg.aggs,
                plan: cfg.default_plan,
                balance,
                max: cfg.customers.max,
                policy: cfg.customers.overflow,
                overflow_id: &cfg.overflow_id,
            },
        )?;
        if overflowed {
            self.emit(Event::new(Some(cid), EventKind::CustomerOverflow));
        }
        h.0.touch(self.inner.coarse_secs.load(Ordering::Relaxed));
        Ok(h)
    }

    /// Registers a customer on a plan. A new customer starts with the plan's
    /// `initial_credits`; an existing one only changes plan (its balance is kept).
    pub fn register(&self, customer: &str, plan: &str) -> Result<CustomerHandle, CoreError> {
        let cfg = self.inner.config.load();
        let idx = *cfg
            .plan_index
            .get(plan)
            .ok_or_else(|| CoreError::UnknownPlan(plan.to_owned()))?;
        if let Some(h) = self.inner.registry.get(customer) {
            h.0.plan.store(idx, Ordering::Relaxed);
            return Ok(h);
        }
        let cid = CustomerId::new(customer).map_err(|source| CoreError::Id {
            what: "customer",
            value: customer.chars().take(64).collect(),
            source,
        })?;
        let balance = cfg.plan(idx).map_or(0, |p| p.initial_credits);
        let (h, _) = self.inner.registry.admit(
            cid,
            &Admission {
                aggs: &cfg.aggs,
                plan: idx,
                balance,
                max: cfg.customers.max,
                policy: crate::config::OverflowPolicy::Reject,
                overflow_id: &cfg.overflow_id,
            },
        )?;
        h.0.touch(self.inner.coarse_secs.load(Ordering::Relaxed));
        Ok(h)
    }

    /// Evaluates the rules for a request. Allocation-free when it allows.
    pub fn decide(&self, handle: &CustomerHandle, ex: &Exchange<'_>) -> Decision {
        let cfg = self.inner.config.load();
        let s: &CustomerState = &handle.0;
        let plan = cfg.plan(s.plan.load(Ordering::Relaxed));
        let epoch = self.inner.epoch;
        let clock = move || epoch.elapsed().as_nanos() as u64;
        let ctx = Ctx {
            handle,
            plan,
            ex,
            aggs: &cfg.aggs,
            clock: &clock,
        };
        if let Some(q) = cfg.quiet {
            // Nothing any rule looks at is set: allow without walking the rules.
            let flags = s.flags.load(Ordering::Relaxed);
            let prepaid = plan.is_some_and(|p| p.prepaid);
            let quiet = flags & q.flag_mask == 0
                && !(q.credits && prepaid && s.balance.load(Ordering::Relaxed) <= 0)
                && !(q.quota && plan.is_some_and(|p| p.any_quota_reached(&s.cells, &cfg.aggs)))
                && !(q.rate && plan.is_some_and(|p| p.rate_limit.is_some()));
            if quiet {
                return Decision::Allow(Allow {
                    credits_remaining: prepaid.then(|| handle.balance()),
                    rate_limit: None,
                    headers: None,
                });
            }
        }
        let mut facts = Facts::default();
        for rule in &cfg.rules {
            if let Some(f) = &rule.request
                && !f.matches(ex)
            {
                continue;
            }
            if !rule.when.eval(&ctx, &mut facts) {
                continue;
            }
            rule.hit();
            match (&rule.action, rule.mode) {
                (RuleAction::Block { .. }, Mode::Shadow) => {
                    if s.block_event_due(1, self.coarse_now(), BLOCK_EVENT_EVERY_SECS) {
                        self.emit(Event::new(
                            Some(s.id.clone()),
                            EventKind::ShadowBlock {
                                rule: rule.name.clone(),
                            },
                        ));
                    }
                }
                (_, Mode::Shadow) => {}
                (RuleAction::Allow { headers }, _) => {
                    return Decision::Allow(Allow {
                        credits_remaining: plan.filter(|p| p.prepaid).map(|_| handle.balance()),
                        rate_limit: facts.rate,
                        headers: (!headers.is_empty()).then(|| headers.clone()),
                    });
                }
                (
                    RuleAction::Block {
                        status,
                        reason,
                        message,
                        headers,
                    },
                    _,
                ) => {
                    if s.block_event_due(0, self.coarse_now(), BLOCK_EVENT_EVERY_SECS) {
                        self.emit(Event::new(
                            Some(s.id.clone()),
                            EventKind::Blocked {
                                rule: rule.name.clone(),
                            },
                        ));
                    }
                    let now = unix_now();
                    let quota = facts.quota.map(|(i, used, limit, period)| QuotaInfo {
                        meter: cfg.meters[i.get()].id.clone(),
                        used,
                        limit,
                        resets_at: period_end(period, now),
                    });
                    let retry_after_secs =
                        facts.rate.and_then(|r| r.retry_after_secs).or_else(|| {
                            quota
                                .as_ref()
                                .map(|q| q.resets_at.saturating_sub(now).max(1))
                        });
                    return Decision::Block(Box::new(Block {
                        status: *status,
                        reason: reason.clone(),
                        rule: rule.name.clone(),
                        message: message.clone(),
                        customer: Some(s.id.clone()),
                        plan: plan.map(|p| p.id.clone()),
                        balance: plan.filter(|p| p.prepaid).map(|_| handle.balance()),
                        quota,
                        rate_limit: facts.rate,
                        retry_after_secs,
                        headers: headers.clone(),
                    }));
                }
            }
        }
        Decision::Allow(Allow {
            credits_remaining: plan.filter(|p| p.prepaid).map(|_| handle.balance()),
            rate_limit: facts.rate,
            headers: None,
        })
    }

    /// Runs every meter against a completed exchange and records what matches.
    pub fn meter(&self, handle: &CustomerHandle, ex: &Exchange<'_>) {
        let cfg = self.inner.config.load();
        for m in &cfg.meters {
            if let Some(sample) = m.sample(ex) {
                self.add(cfg, &handle.0, m, sample);
            }
        }
    }

    /// Records `quantity` base units on a meter directly (no filter), taking credits and
    /// counting quota as a metered request would. Never allocates, locks or awaits.
    #[inline]
    pub fn record(&self, handle: &CustomerHandle, meter: MeterIndex, quantity: u64) {
        let cfg = self.inner.config.load();
        if let Some(m) = cfg.meters.get(meter.get()) {
            self.add(cfg, &handle.0, m, sample_of(m, quantity));
        }
    }

    /// Resolves by id and records, for callers without a handle. Unknown meter names and
    /// invalid customer ids are errors.
    pub fn record_by_id(
        &self,
        customer: &str,
        meter: &str,
        quantity: u64,
    ) -> Result<(), CoreError> {
        let cfg = self.inner.config.load();
        let m = cfg
            .meter_index
            .get(meter)
            .and_then(|i| cfg.meters.get(i.get()))
            .ok_or_else(|| CoreError::UnknownMeter(meter.to_owned()))?;
        let sample = sample_of(m, quantity);
        let now = self.inner.coarse_secs.load(Ordering::Relaxed);
        // Known customer: record under the map's read guard, without cloning the handle
        // (three atomic operations: guard, add, release).
        let recorded = self.inner.registry.with(customer, |s| {
            s.touch(now);
            self.add(cfg, s, m, sample);
        });
        if recorded.is_none() {
            let h = self.admit(customer)?;
            self.add(cfg, &h.0, m, sample);
        }
        Ok(())
    }

    #[inline]
    fn add(&self, cfg: &Compiled, s: &CustomerState, m: &Meter, sample: Sample) {
        let i = m.index.get();
        let q = match sample {
            Sample::Distinct(h) => {
                s.cells.add_distinct(i, h);
                return;
            }
            Sample::Quantity(q) => q,
        };
        let prev_cell = match m.aggregation {
            Aggregation::Max => {
                s.cells.max(i, q);
                return;
            }
            Aggregation::Latest => {
                s.cells.set_latest(i, q);
                return;
            }
            _ => s.cells.add(i, q),
        };
        let Some(plan) = cfg.plan(s.plan.load(Ordering::Relaxed)) else {
            return;
        };
        if let Some(Some(quota)) = plan.quotas.get(i) {
            let prev = s.cells.base(i).saturating_add(prev_cell);
            let now = prev.saturating_add(q);
            if prev < quota.limit && now >= quota.limit {
                self.emit(Event::new(
                    Some(s.id.clone()),
                    EventKind::QuotaReached {
                        meter: m.id.clone(),
                        used: now,
                        limit: quota.limit,
                    },
                ));
            } else if prev < quota.warn_at && now >= quota.warn_at {
                self.emit(Event::new(
                    Some(s.id.clone()),
                    EventKind::QuotaWarning {
                        meter: m.id.clone(),
                        used: now,
                        limit: quota.limit,
                    },
                ));
            }
        }
        let price = plan.prices.get(i).copied().unwrap_or(0);
        if price > 0 {
            let cost = i64::try_from(q.saturating_mul(price)).unwrap_or(i64::MAX);
            let before = s.balance.fetch_sub(cost, Ordering::Relaxed);
            let after = before.saturating_sub(cost);
            if before > 0 && after <= 0 {
                self.emit(Event::new(
                    Some(s.id.clone()),
                    EventKind::CreditsExhausted { balance: after },
                ));
            } else if before > plan.credits_low_at && after <= plan.credits_low_at {
                self.emit(Event::new(
                    Some(s.id.clone()),
                    EventKind::CreditsLow { balance: after },
                ));
            }
        }
    }

    /// Swaps every non-zero usage cell to zero and returns the deltas. An add racing with
    /// a checkpoint lands in this checkpoint or the next, never both and never neither.
    pub fn checkpoint(&self) -> Vec<Delta> {
        let cfg = self.inner.config.load();
        // Sized like the last checkpoint: under steady load, no regrowth of a large vector.
        let mut out = Vec::with_capacity(self.inner.last_checkpoint_len.load(Ordering::Relaxed));
        self.inner.registry.checkpoint(&cfg.meters, &mut out);
        self.inner
            .last_checkpoint_len
            .store(out.len(), Ordering::Relaxed);
        out
    }

    /// Background housekeeping (the reporter calls it every checkpoint): advances the
    /// coarse clock, resets quota counters when a period rolls over, and evicts idle
    /// customers when configured.
    pub fn tick(&self) {
        let secs = self.inner.epoch.elapsed().as_secs().min(u32::MAX as u64) as u32;
        self.inner.coarse_secs.store(secs, Ordering::Relaxed);
        let cfg = self.inner.config.load();
        let now = unix_now();
        let kinds = [Period::Minute, Period::Hour, Period::Day, Period::Month];
        let current = kinds.map(|p| period_number(p, now));
        let rolled: Vec<Period> = {
            let mut last = self.inner.periods.lock().unwrap_or_else(|e| e.into_inner());
            let rolled = match *last {
                Some(prev) => kinds
                    .iter()
                    .zip(prev.iter().zip(current.iter()))
                    .filter(|(_, (a, b))| a != b)
                    .map(|(k, _)| *k)
                    .collect(),
                None => Vec::new(),
            };
            *last = Some(current);
            rolled
        };
        if !rolled.is_empty() {
            self.inner.registry.for_each(|h| {
                let Some(plan) = cfg.plan(h.0.plan.load(Ordering::Relaxed)) else {
                    return;
                };
                for i in 0..cfg.meters.len() {
                    if rolled.contains(&plan.period_of(i)) {
                        h.0.cells.set_period(i, 0);
                    }
                }
            });
            self.inner.registry.reset_dormant_periods(|plan, i| {
                cfg.plan(plan)
                    .is_some_and(|p| rolled.contains(&p.period_of(i)))
            });
        }
        if let Some(idle) = cfg.customers.evict_idle_secs {
            let idle = idle.min(u32::MAX as u64) as u32;
            if secs > idle {
                self.inner.registry.evict_idle(secs - idle, &cfg.meters);
            }
        }
    }

    /// Evicts every customer idle for at least `idle_secs` (by the coarse clock) that no
    /// request holds; their usage goes to the next checkpoint and their state is kept.
    /// Returns how many were evicted.
    pub fn evict_idle(&self, idle_secs: u32) -> usize {
        let cfg = self.inner.config.load();
        let secs = self.inner.epoch.elapsed().as_secs().min(u32::MAX as u64) as u32;
        self.inner.coarse_secs.store(secs, Ordering::Relaxed);
        let cutoff = secs
            .saturating_sub(idle_secs)
            .saturating_add(u32::from(idle_secs == 0));
        self.inner.registry.evict_idle(cutoff, &cfg.meters)
    }

    /// Seconds since the engine started (for throttling, not for the request path's clock).
    fn coarse_now(&self) -> u32 {
        self.inner.epoch.elapsed().as_secs().min(u32::MAX as u64) as u32
    }

    /// Pushes an event; when the queue is full the oldest event is dropped and counted.
    pub(crate) fn emit(&self, event: Event) {
        if let Some(_dropped) = self.inner.events.force_push(event) {
            self.inner.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes up to `max` pending events, oldest first.
    pub fn drain_events(&self, max: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.inner.events.pop() {
                Some(e) => out.push(e),
                None => break,
            }
        }
        out
    }

    /// Applies a state change to a customer (admitting it if new).
    pub fn apply(&self, customer: &str, change: StateChange) -> Result<(), CoreError> {
        let h = self.resolve(customer)?;
        let s = &h.0;
        match change {
            StateChange::Delinquent(on) => s.set_flag(DELINQUENT, on),
            StateChange::Cancelled(on) => s.set_flag(CANCELLED, on),
            StateChange::Blocked(on) => s.set_flag(BLOCKED, on),
            StateChange::Plan(p) => {
                let cfg = self.inner.config.load();
                let idx = *cfg
                    .plan_index
                    .get(p.as_str())
                    .ok_or_else(|| CoreError::UnknownPlan(p.to_string()))?;
                s.plan.store(idx, Ordering::Relaxed);
            }
            StateChange::GrantCredits(n) => {
                s.balance.fetch_add(n, Ordering::Relaxed);
            }
            StateChange::SetBalance(n) => s.balance.store(n, Ordering::Relaxed),
        }
        Ok(())
    }

    /// A customer's current figures, or `None` when it is not known to this process.
    pub fn usage(&self, customer: &str) -> Option<CustomerUsage> {
        let h = self.inner.registry.get(customer)?;
        let cfg = self.inner.config.load();
        let s = &h.0;
        let plan_idx = s.plan.load(Ordering::Relaxed);
        let plan = cfg.plan(plan_idx);
        let now = unix_now();
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
                    resets_at: period_end(period, now),
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

    /// A customer's durable state (status, plan, balance, quota usage this period), for a
    /// [`crate::StateStore`].
    pub fn account(&self, customer: &str) -> Option<AccountState> {
        let cfg = self.inner.config.load();
        let now = unix_now();
        self.inner
            .registry
            .with(customer, |s| live_account(cfg, s, now))
    }

    /// Every customer's durable state: those in memory and those evicted to dormant
    /// records.
    pub fn accounts(&self) -> Vec<(CustomerId, AccountState)> {
        let cfg = self.inner.config.load();
        let now = unix_now();
        let mut out = Vec::with_capacity(self.inner.registry.len());
        self.inner.registry.for_each(|h| {
            let s = &h.0;
            if s.is_overflow {
                return;
            }
            out.push((s.id.clone(), live_account(cfg, s, now)));
        });
        self.inner.registry.for_each_dormant(|id, d| {
            out.push((
                id.clone(),
                account_of(cfg, d.flags, d.plan, d.balance, &d.period, now),
            ));
        });
        out
    }

    /// Sets a customer's state from a [`crate::StateStore`] (admitting it if new). Quota
    /// usage is restored only for periods that are still current. A plan the config does
    /// not know is an error and changes nothing; usage of unknown meters is skipped.
    pub fn restore_account(&self, customer: &str, state: &AccountState) -> Result<(), CoreError> {
        let cfg = self.inner.config.load();
        let plan = match &state.plan {
            Some(p) => *cfg
                .plan_index
                .get(p.as_str())
                .ok_or_else(|| CoreError::UnknownPlan(p.to_string()))?,
            None => NO_PLAN,
        };
        let h = self.resolve(customer)?;
        let s = &h.0;
        s.set_flag(DELINQUENT, state.delinquent);
        s.set_flag(CANCELLED, state.cancelled);
        s.set_flag(BLOCKED, state.blocked);
        s.plan.store(plan, Ordering::Relaxed);
        s.balance.store(state.balance, Ordering::Relaxed);
        let now = unix_now();
        for pu in &state.period_usage {
            let Some(i) = cfg.meter_index.get(pu.meter.as_str()).map(|m| m.get()) else {
                continue;
            };
            let period = cfg.plan(plan).map_or(Period::Month, |p| p.period_of(i));
            if period_start(period, now) == pu.period_start {
                s.cells.set_period(i, pu.used);
            }
        }
        Ok(())
    }

    /// Counters for operators.
    pub fn stats(&self) -> EngineStats {
        let cfg = self.inner.config.load();
        EngineStats {
            customers: self.inner.registry.len(),
            dormant: self.inner.registry.dormant_len(),
            overflowed: self.inner.registry.overflowed.load(Ordering::Relaxed),
            rejected: self.inner.registry.rejected.load(Ordering::Relaxed),
            events_dropped: self.inner.events_dropped.load(Ordering::Relaxed),
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

    /// Replaces plans, rules and reporting settings without a restart. Meters cannot
    /// change while running (usage cells are laid out by meter): a config whose meters
    /// differ is refused, naming `meters`.
    pub fn reload(&self, config: Config) -> Result<(), ConfigError> {
        let compiled = compile(&config, &self.inner.predicates)?;
        let cur = self.inner.config.load();
        let same = cur.meters.len() == compiled.meters.len()
            && cur
                .meters
                .iter()
                .zip(&compiled.meters)
                .all(|(a, b)| a.id == b.id && a.aggregation == b.aggregation);
        if !same {
            return Err(ConfigError::new(
                "meters",
                compiled.meters.len(),
                "meters cannot change while the engine runs; restart with the new meters",
            ));
        }
        if compiled.instance != self.inner.instance {
            return Err(ConfigError::new(
                "instance",
                &*compiled.instance,
                "the instance name cannot change while the engine runs (it is part of idempotency keys)",
            ));
        }
        if compiled.plans.len() < cur.plans.len() {
            return Err(ConfigError::new(
                "plans",
                compiled.plans.len(),
                "plans can be added or changed while running, not removed (customers refer to them by position)",
            ));
        }
        self.inner.config.store(compiled);
        Ok(())
    }

    /// The checkpoint interval and report window from the config.
    pub fn reporting(&self) -> crate::config::ReportingConfig {
        self.inner.config.load().reporting.clone()
    }

    /// Whether a customer has no plan (for tests of defaults).
    #[doc(hidden)]
    pub fn has_plan(&self, customer: &str) -> bool {
        self.inner
            .registry
            .with(customer, |s| s.plan.load(Ordering::Relaxed) != NO_PLAN)
            .unwrap_or(false)
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("instance", &self.inner.instance)
            .field("customers", &self.inner.registry.len())
            .finish()
    }
}

/// What a directly recorded quantity contributes to a meter.
#[inline]
fn sample_of(m: &Meter, quantity: u64) -> Sample {
    if m.aggregation == Aggregation::UniqueCount {
        Sample::Distinct(crate::meter::mix64(quantity ^ 0x9e37_79b9_7f4a_7c15))
    } else {
        Sample::Quantity(quantity)
    }
}

/// The durable state of a customer in memory.
fn live_account(cfg: &Compiled, s: &CustomerState, now: u64) -> AccountState {
    account_of(
        cfg,
        s.flags.load(Ordering::Relaxed),
        s.plan.load(Ordering::Relaxed),
        s.balance.load(Ordering::Relaxed),
        &s.cells.period_all(&cfg.aggs),
        now,
    )
}

/// The durable state of one customer, from its parts.
fn account_of(
    cfg: &Compiled,
    flags: u32,
    plan: u32,
    balance: i64,
    period: &[u64],
    now: u64,
) -> AccountState {
    let p = cfg.plan(plan);
    AccountState {
        delinquent: flags & DELINQUENT != 0,
        cancelled: flags & CANCELLED != 0,
        blocked: flags & BLOCKED != 0,
        plan: p.map(|p| p.id.clone()),
        balance,
        period_usage: cfg
            .meters
            .iter()
            .zip(period)
            .filter(|(_, used)| **used > 0)
            .map(|(m, used)| {
                let kind = p.map_or(Period::Month, |p| p.period_of(m.index.get()));
                PeriodUsage::new(m.id.clone(), period_start(kind, now), *used)
            })
            .collect(),
    }
}
