//! The usage engine: resolves customers, decides, records and checkpoints.
//!
//! Hot-path cost: [`Engine::resolve`] is a probe of the thread's cache of customers (else
//! one lock-free map read) and one atomic increment ([`Engine::resolve_token`]: the probe
//! and the increment, no id hash);
//! [`Engine::decide`] reads a few atomics of the handle and walks the compiled rules without
//! allocating when it allows; [`Engine::meter`] costs one relaxed atomic add per matching
//! meter (plus one for the period counter and one for credits on priced meters);
//! [`Engine::meter_request`] and [`Engine::meter_response`] split that walk around the
//! inner service, the response half visiting only the meters the request half kept. Nothing
//! on these paths awaits, blocks on a lock held by background work, or touches the disk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::cell::ConfigCell;
use crate::config::validate::{Compiled, Predicates, compile, compile_after};
use crate::config::{Config, Mode, Period};
use crate::customer::handle_flags::{BLOCKED, CANCELLED, DELINQUENT, NO_PLAN};
use crate::customer::registry_admission::Admission;
use crate::customer::{
    CustomerHandle, CustomerState, CustomerStatus, CustomerToken, Registry, StateChange,
};
use crate::error::{ConfigError, CoreError};
use crate::event::{Event, EventKind};
use crate::govern::{Allow, Block, Ctx, Decision, Facts, Predicate, QuotaInfo, RuleAction};
use crate::id::{CustomerId, MeterId, MeterIndex, PlanId};
use crate::meter::{Aggregation, Exchange, ExchangeNeeds, Meter, MeterMatch, Sample};
use crate::metering::{Events, Metering};
use crate::quota::Bounds;
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
    /// The configuration and the event queue, shared with every customer state this
    /// engine makes (so that a handle can meter without the engine).
    metering: Arc<Metering>,
    /// The event queue (customer states reach it only weakly, through `metering`).
    events: Arc<Events>,
    instance: Arc<str>,
    registry: Registry,
    epoch: Instant,
    /// Seconds since `epoch`, advanced by [`Engine::tick`]; used for idle tracking.
    coarse_secs: AtomicU32,
    /// How many deltas the last checkpoint returned (a capacity hint for the next).
    last_checkpoint_len: std::sync::atomic::AtomicUsize,
    /// Period numbers seen by the last tick, for quota resets: the highest seen, so a
    /// clock stepping back across a boundary does not reset quotas a second time.
    periods: Mutex<Option<[i64; 4]>>,
    /// Billing anchors (unix seconds) by customer, with the highest cycle number a tick
    /// has seen for each (see [`StateChange::BillingAnchor`]). Read and written only off
    /// the request path.
    anchors: papaya::HashMap<CustomerId, (u64, i64)>,
    /// The wall clock (unix seconds) quota periods are computed on.
    clock: Option<WallClock>,
    /// Customers whose state an operator changed ([`Engine::apply`], [`Engine::register`])
    /// since the reporter's last checkpoint took them (never touched on the request path).
    changed_accounts: Mutex<std::collections::HashSet<CustomerId>>,
    predicates: Predicates,
    /// Grants, the credits journal and reservations in flight ([`crate::credits`]).
    credits: crate::credits::Ledger,
}

/// Builds an [`Engine`] with predicates registered in code.
pub struct EngineBuilder {
    config: Config,
    predicates: Predicates,
    event_capacity: usize,
    clock: Option<WallClock>,
}

/// A wall clock in unix seconds (see [`EngineBuilder::wall_clock`]).
type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

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

    /// The wall clock quota periods follow, in unix seconds (default: the system clock).
    /// For tests that move time, and for a process whose system clock is not to be
    /// trusted. A clock that steps back is tolerated: a period rolls over once, when the
    /// clock first passes its end.
    pub fn wall_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Validates the config and builds the engine.
    pub fn build(self) -> Result<Engine, ConfigError> {
        let compiled = compile(&self.config, &self.predicates)?;
        let instance = compiled.instance.clone();
        let events = Arc::new(Events::new(self.event_capacity));
        let engine = Engine {
            inner: Arc::new(Inner {
                metering: Arc::new(Metering::new(ConfigCell::new(compiled), &events)),
                events,
                instance,
                registry: Registry::new(),
                epoch: Instant::now(),
                coarse_secs: AtomicU32::new(0),
                last_checkpoint_len: std::sync::atomic::AtomicUsize::new(0),
                periods: Mutex::new(None),
                anchors: papaya::HashMap::new(),
                clock: self.clock,
                changed_accounts: Mutex::new(std::collections::HashSet::new()),
                predicates: self.predicates,
                credits: crate::credits::Ledger::default(),
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
            clock: None,
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
            .metering
            .config
            .load()
            .meters
            .iter()
            .map(|m| m.id.clone())
            .collect()
    }

    /// The configured meters with their aggregations, in index order.
    pub fn meter_aggregations(&self) -> Vec<(MeterId, crate::meter::Aggregation)> {
        self.inner
            .metering
            .config
            .load()
            .meters
            .iter()
            .map(|m| (m.id.clone(), m.aggregation))
            .collect()
    }

    /// The index of a meter, to record through [`Engine::record`].
    pub fn meter_index(&self, name: &str) -> Option<MeterIndex> {
        self.inner
            .metering
            .config
            .load()
            .meter_index
            .get(name)
            .copied()
    }

    /// The largest request and response body prefixes that JSON-field meters read; the
    /// HTTP layer captures no body when both are `None`.
    pub fn json_capture(&self) -> (Option<usize>, Option<usize>) {
        self.inner.metering.config.load().json_capture
    }

    /// What the meters look at, so the HTTP layer keeps only that for each request.
    pub fn exchange_needs(&self) -> ExchangeNeeds {
        self.inner.metering.config.load().needs
    }

    /// Resolves a customer: for one in memory, a lock-free map read and one atomic
    /// increment on its state (no lock, so no background pass can delay it); a new one is
    /// admitted (restored if it was evicted) under the cap and overflow policy.
    #[inline]
    pub fn resolve(&self, id: &str) -> Result<CustomerHandle, CoreError> {
        if let Some(h) = self.inner.registry.get(id) {
            h.0.touch(self.inner.coarse_secs.load(Ordering::Relaxed));
            return Ok(h);
        }
        self.admit(id)
    }

    /// The customer this thread last resolved for `token` (see [`CustomerToken`]): one
    /// probe of the thread's cache and one atomic increment, with no id to hash or compare.
    /// `None` when the thread has not remembered the token (call
    /// [`Engine::remember_token`] after resolving the customer by id) or the customer was
    /// evicted since.
    #[inline]
    pub fn resolve_token(&self, token: CustomerToken) -> Option<CustomerHandle> {
        let h = self.inner.registry.get_token(token.bits())?;
        h.0.touch(self.inner.coarse_secs.load(Ordering::Relaxed));
        Some(h)
    }

    /// Remembers on this thread that `token` names the customer of `handle`, a handle
    /// this engine resolved, so that [`Engine::resolve_token`] finds it next time. Tokens
    /// are remembered on their second sighting on a thread (so credentials used once cost
    /// no cache slot), in 4,096 slots per thread (two-way sets; 128 KiB, allocated on first use).
    pub fn remember_token(&self, token: CustomerToken, handle: &CustomerHandle) {
        self.inner.registry.remember_token(token.bits(), handle);
    }

    #[cold]
    fn admit(&self, id: &str) -> Result<CustomerHandle, CoreError> {
        let cid = CustomerId::new(id).map_err(|source| CoreError::Id {
            what: "customer",
            value: id.chars().take(64).collect(),
            source,
        })?;
        let cfg = self.inner.metering.config.load();
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
                metering: &self.inner.metering,
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
        let cfg = self.inner.metering.config.load();
        let idx = *cfg
            .plan_index
            .get(plan)
            .ok_or_else(|| CoreError::UnknownPlan(plan.to_owned()))?;
        if let Some(h) = self.inner.registry.get(customer) {
            h.0.plan.store(idx, Ordering::Relaxed);
            self.account_changed(&h.0.id);
            return Ok(h);
        }
        // Not in memory: new, dormant (evicted) or being admitted by another thread.
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
                metering: &self.inner.metering,
            },
        )?;
        // Admission restores a dormant customer's stored plan (or finds one another
        // thread admitted): the plan asked for applies after it.
        h.0.plan.store(idx, Ordering::Relaxed);
        h.0.touch(self.inner.coarse_secs.load(Ordering::Relaxed));
        self.account_changed(&h.0.id);
        Ok(h)
    }

    /// Notes an operator change of a customer's state, for the next checkpoint.
    pub(crate) fn account_changed(&self, id: &CustomerId) {
        let mut changed = self
            .inner
            .changed_accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        changed.insert(id.clone());
    }

    /// The customers whose state an operator changed since the last call (the reporter's
    /// checkpoint snapshots them with the customers whose usage it took).
    pub(crate) fn take_changed_accounts(&self) -> Vec<CustomerId> {
        let mut changed = self
            .inner
            .changed_accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        changed.drain().collect()
    }

    /// The durable state of each of `ids` known to this process, in memory or evicted, as
    /// of the last checkpoint's swap (for the reporter's checkpoint): quota usage of count
    /// and sum meters is what the checkpoints took this period, so it matches the usage in
    /// the spool exactly; the balance is read now (a call racing with the swap may have its
    /// usage on one side and its spend on the other).
    pub(crate) fn accounts_of(
        &self,
        ids: impl IntoIterator<Item = CustomerId>,
    ) -> Vec<(CustomerId, AccountState)> {
        let cfg = self.inner.metering.config.load();
        let now = self.now();
        let anchors = self.inner.anchors.pin();
        let registry = &self.inner.registry;
        let out = ids
            .into_iter()
            .filter_map(|id| {
                let state = registry
                    .with(id.as_str(), |s| {
                        (!s.is_overflow).then(|| {
                            // Quota usage as checkpointed (the cells' content after the
                            // swap belongs to the next checkpoint).
                            let period: Vec<u64> = cfg
                                .aggs
                                .iter()
                                .enumerate()
                                .map(|(i, a)| match a {
                                    Aggregation::Count | Aggregation::Sum => s.cells.base(i),
                                    _ => s.cells.period_used(i, *a),
                                })
                                .collect();
                            account_of(
                                cfg,
                                (
                                    s.flags.load(Ordering::Relaxed),
                                    s.plan.load(Ordering::Relaxed),
                                    s.balance.load(Ordering::Relaxed),
                                ),
                                &period,
                                now,
                                anchors.get(&s.id),
                            )
                        })
                    })
                    .flatten()
                    .or_else(|| {
                        registry.with_dormant(&id, |d| {
                            account_of(
                                cfg,
                                (d.flags, d.plan, d.balance),
                                &d.period,
                                now,
                                anchors.get(&id),
                            )
                        })
                    })?;
                Some((id, state))
            })
            .collect::<Vec<_>>();
        drop(anchors);
        let mut out = out;
        self.fill_credits(&mut out, false);
        out
    }

    /// Evaluates the rules for a request. Allocation-free when it allows.
    ///
    /// When the rules only look at the customer's state (the default rules do) and none
    /// of it is set, this is a few loads; otherwise the rules are walked out of line.
    #[inline]
    pub fn decide(&self, handle: &CustomerHandle, ex: &Exchange<'_>) -> Decision {
        let cfg = self.inner.metering.config.load();
        match quiet_allow(cfg, &handle.0) {
            Some(allow) => Decision::Allow(allow),
            None => self.decide_rules(cfg, handle, ex),
        }
    }

    /// [`Engine::decide`] and [`Engine::meter_request`] on one configuration load: the
    /// decision for the request and which meters' request-side filters it passed. The
    /// match is computed whatever the decision; a layer that answers a blocked request
    /// itself just drops it.
    ///
    /// Both halves see the same configuration, even across a concurrent
    /// [`Engine::reload`].
    #[inline]
    pub fn decide_and_match(
        &self,
        handle: &CustomerHandle,
        ex: &Exchange<'_>,
    ) -> (Decision, MeterMatch) {
        let cfg = self.inner.metering.config.load();
        // The match first (it reads only the request and the config), so that the
        // decision is built in place in the returned pair rather than moved into it.
        let matched = request_match(cfg, ex);
        let decision = match quiet_allow(cfg, &handle.0) {
            Some(allow) => Decision::Allow(allow),
            None => self.decide_rules(cfg, handle, ex),
        };
        (decision, matched)
    }

    /// [`Engine::decide_and_match`] for an HTTP layer that keeps what it needs until the
    /// response in a state of its own: an allow is written into `allow` (replacing what it
    /// held) and the match returned; a block is returned as the error, `allow` untouched.
    /// The same decision and match, on one configuration, without building a
    /// [`Decision`]: the allow (80 bytes) is written once, into the caller's state,
    /// instead of being moved through the decision, the returned pair and the caller's
    /// locals.
    #[inline]
    pub fn decide_and_match_into(
        &self,
        handle: &CustomerHandle,
        ex: &Exchange<'_>,
        allow: &mut Allow,
    ) -> Result<MeterMatch, Box<Block>> {
        let cfg = self.inner.metering.config.load();
        let matched = request_match(cfg, ex);
        if let Some(balance) = quiet_balance(cfg, &handle.0) {
            allow.credits_remaining = balance;
            allow.rate_limit = None;
            allow.headers = None;
            return Ok(matched);
        }
        match self.decide_rules(cfg, handle, ex) {
            Decision::Allow(a) => {
                *allow = a;
                Ok(matched)
            }
            Decision::Block(block) => Err(block),
        }
    }

    /// [`Engine::decide`] past the quiet check: walks the rules.
    #[inline(never)]
    fn decide_rules(&self, cfg: &Compiled, handle: &CustomerHandle, ex: &Exchange<'_>) -> Decision {
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
                    let now = self.now();
                    let quota = facts.quota.map(|(i, used, limit, period)| QuotaInfo {
                        meter: cfg.meters[i.get()].id.clone(),
                        used,
                        limit,
                        resets_at: self.bounds(cfg, &s.id, period, now).end,
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
        let cfg = self.inner.metering.config.load();
        let s: &CustomerState = &handle.0;
        // The plan is read once for the exchange, as `meter_response` does.
        let plan = cfg.plan(s.plan.load(Ordering::Relaxed));
        for m in &cfg.meters {
            if let Some(sample) = m.sample(ex) {
                self.inner.metering.add_on(plan, s, m, sample);
            }
        }
    }

    /// The request half of two-phase metering: tests each meter's request-side filter
    /// (method, route or path, query, request headers) and returns which passed, to hand to
    /// [`Engine::meter_response`] with the response. Only the request side of `ex` is read;
    /// its response, reported usage and bodies may be left unset.
    ///
    /// A meter's filter is split when the config is compiled: the leaves of an `all` go to
    /// the request or the response side. Meters whose filter cannot be split (an `any` or
    /// `not` over both sides) and meters from index 64 on are not tested here: the
    /// response half tests their whole filter (see [`MeterMatch`]).
    ///
    /// One configuration load and the request-side tests of the meters that have one; no
    /// allocation, no lock.
    #[inline]
    pub fn meter_request(&self, ex: &Exchange<'_>) -> MeterMatch {
        request_match(self.inner.metering.config.load(), ex)
    }

    /// The response half of two-phase metering: for each meter whose request-side filter
    /// passed in `m` (from [`Engine::meter_request`] on the same request), tests the
    /// response-side filter and records the value as [`Engine::meter`] would; meters decided
    /// whole at the response (mixed filters, indices 64 and up) are tested against `ex` in
    /// full. Meters are recorded in index order, as [`Engine::meter`] does, so credit and
    /// quota events come out the same.
    ///
    /// `ex` carries the response (status, headers, bytes), reported usage, captured bodies
    /// and `request_bytes`. Its method, route, path, query and request headers are read
    /// only when [`ExchangeNeeds::request_at_response`] is set; otherwise they may be
    /// placeholders. Costs one configuration load when no meter matched and none is
    /// decided at the response.
    ///
    /// The response half uses the configuration the request half used, even if
    /// [`Engine::reload`] replaced it in between: a request in flight during a reload is
    /// metered (filters, values, prices, quotas) entirely under the configuration it
    /// started with.
    ///
    /// [`ExchangeNeeds::request_at_response`]: crate::ExchangeNeeds::request_at_response
    #[inline]
    pub fn meter_response(&self, handle: &CustomerHandle, m: MeterMatch, ex: &Exchange<'_>) {
        self.inner.metering.meter_response(&handle.0, m, ex);
    }

    /// Records `quantity` base units on a meter directly (no filter), taking credits and
    /// counting quota as a metered request would. Never allocates, locks or awaits.
    #[inline]
    pub fn record(&self, handle: &CustomerHandle, meter: MeterIndex, quantity: u64) {
        let cfg = self.inner.metering.config.load();
        if let Some(m) = cfg.meters.get(meter.get()) {
            self.inner
                .metering
                .add(cfg, &handle.0, m, sample_of(m, quantity));
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
        let cfg = self.inner.metering.config.load();
        let m = cfg
            .meter_index
            .get(meter)
            .and_then(|i| cfg.meters.get(i.get()))
            .ok_or_else(|| CoreError::UnknownMeter(meter.to_owned()))?;
        let sample = sample_of(m, quantity);
        let h = self.resolve(customer)?;
        self.inner.metering.add(cfg, &h.0, m, sample);
        Ok(())
    }

    /// Swaps every non-zero usage cell to zero and returns the deltas. An add racing with
    /// a checkpoint lands in this checkpoint or the next, never both and never neither.
    pub fn checkpoint(&self) -> Vec<Delta> {
        let cfg = self.inner.metering.config.load();
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
        let cfg = self.inner.metering.config.load();
        let now = self.now();
        let kinds = [Period::Minute, Period::Hour, Period::Day, Period::Month];
        let current = kinds.map(|p| cfg.calendar.bounds(p, now).number);
        // Only a period number above the highest seen rolls over: a clock stepping back
        // (NTP, a VM restored) and forward again resets nothing twice.
        let rolled: Vec<Period> = {
            let mut last = self.inner.periods.lock().unwrap_or_else(|e| e.into_inner());
            let rolled = match *last {
                Some(prev) => kinds
                    .iter()
                    .zip(prev.iter().zip(current.iter()))
                    .filter(|(_, (a, b))| b > a)
                    .map(|(k, _)| *k)
                    .collect(),
                None => Vec::new(),
            };
            let prev = last.unwrap_or(current);
            *last = Some(std::array::from_fn(|i| prev[i].max(current[i])));
            rolled
        };
        // Anchored billing cycles, per customer, under the same guard.
        let cycled: std::collections::HashSet<CustomerId> = {
            let anchors = self.inner.anchors.pin();
            let due: Vec<(CustomerId, u64, i64)> = anchors
                .iter()
                .filter_map(|(id, &(anchor, seen))| {
                    let n = cfg.calendar.cycle(anchor, now).number;
                    (n > seen).then(|| (id.clone(), anchor, n))
                })
                .collect();
            for (id, anchor, n) in &due {
                anchors.insert(id.clone(), (*anchor, *n));
            }
            due.into_iter().map(|(id, ..)| id).collect()
        };
        if !rolled.is_empty() || !cycled.is_empty() {
            let anchors = self.inner.anchors.pin();
            let resets = |id: &CustomerId, period: Period| match period {
                Period::BillingCycle if anchors.contains_key(id) => cycled.contains(id),
                Period::BillingCycle => rolled.contains(&Period::Month),
                p => rolled.contains(&p),
            };
            // No eviction meanwhile: every customer is reset once, in memory or dormant.
            let _maintenance = self.inner.registry.maintenance();
            self.inner.registry.for_each(|s| {
                let Some(plan) = cfg.plan(s.plan.load(Ordering::Relaxed)) else {
                    return;
                };
                for i in 0..cfg.meters.len() {
                    if resets(&s.id, plan.period_of(i)) {
                        s.cells.set_period(i, 0);
                    }
                }
            });
            self.inner.registry.reset_dormant_periods(|id, plan, i| {
                cfg.plan(plan).is_some_and(|p| resets(id, p.period_of(i)))
            });
        }
        self.credits_tick();
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
        let cfg = self.inner.metering.config.load();
        let secs = self.inner.epoch.elapsed().as_secs().min(u32::MAX as u64) as u32;
        self.inner.coarse_secs.store(secs, Ordering::Relaxed);
        let cutoff = secs
            .saturating_sub(idle_secs)
            .saturating_add(u32::from(idle_secs == 0));
        self.inner.registry.evict_idle(cutoff, &cfg.meters)
    }

    /// Unix seconds on the engine's wall clock ([`EngineBuilder::wall_clock`]).
    pub(crate) fn now(&self) -> u64 {
        self.inner.clock.as_ref().map_or_else(unix_now, |c| c())
    }

    /// The quota period of kind `period` containing `now` for `customer`: its billing
    /// cycle when it has an anchor, else the calendar's.
    fn bounds(&self, cfg: &Compiled, customer: &CustomerId, period: Period, now: u64) -> Bounds {
        match period {
            Period::BillingCycle => match self.inner.anchors.pin().get(customer) {
                Some(&(anchor, _)) => cfg.calendar.cycle(anchor, now),
                None => cfg.calendar.bounds(Period::Month, now),
            },
            p => cfg.calendar.bounds(p, now),
        }
    }

    /// Seconds since the engine started (for throttling, not for the request path's clock).
    fn coarse_now(&self) -> u32 {
        self.inner.epoch.elapsed().as_secs().min(u32::MAX as u64) as u32
    }

    /// The credits ledger ([`crate::credits`]).
    pub(crate) fn ledger(&self) -> &crate::credits::Ledger {
        &self.inner.credits
    }

    /// What recording usage needs (configuration, events).
    pub(crate) fn metering(&self) -> &Arc<Metering> {
        &self.inner.metering
    }

    /// The customer's handle when it is in memory (no admission).
    pub(crate) fn resident(&self, customer: &str) -> Option<CustomerHandle> {
        self.inner.registry.get(customer)
    }

    /// Pushes an event; when the queue is full the oldest event is dropped and counted.
    pub(crate) fn emit(&self, event: Event) {
        self.inner.events.push(event);
    }

    /// Raises an event from outside the engine (a provider's reconciliation, or the
    /// application's own) onto the same bounded queue the engine's events go to
    /// ([`Engine::drain_events`]); when the queue is full the oldest event is dropped and
    /// counted. Never blocks.
    pub fn raise(&self, event: Event) {
        self.emit(event);
    }

    /// Takes up to `max` pending events, oldest first.
    pub fn drain_events(&self, max: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.inner.events.queue.pop() {
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
                let cfg = self.inner.metering.config.load();
                let idx = *cfg
                    .plan_index
                    .get(p.as_str())
                    .ok_or_else(|| CoreError::UnknownPlan(p.to_string()))?;
                s.plan.store(idx, Ordering::Relaxed);
            }
            StateChange::GrantCredits(n) => crate::metering::grant(&s.balance, n),
            StateChange::BillingAnchor(anchor) => {
                let cfg = self.inner.metering.config.load();
                let n = cfg.calendar.cycle(anchor, self.now()).number;
                self.inner.anchors.pin().insert(s.id.clone(), (anchor, n));
            }
            StateChange::SetBalance(n) => s
                .balance
                .store(n.max(crate::metering::BALANCE_FLOOR), Ordering::Relaxed),
        }
        self.account_changed(&s.id);
        Ok(())
    }

    /// A customer's current figures, or `None` when it is not known to this process.
    pub fn usage(&self, customer: &str) -> Option<CustomerUsage> {
        let h = self.inner.registry.get(customer)?;
        let cfg = self.inner.metering.config.load();
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

    /// A customer's durable state (status, plan, balance, quota usage this period), for a
    /// [`crate::StateStore`].
    pub fn account(&self, customer: &str) -> Option<AccountState> {
        let cfg = self.inner.metering.config.load();
        let now = self.now();
        let anchors = self.inner.anchors.pin();
        let state = self
            .inner
            .registry
            .with(customer, |s| live_account(cfg, s, now, anchors.get(&s.id)))?;
        drop(anchors);
        let mut one = [(CustomerId::new(customer).ok()?, state)];
        self.fill_credits(&mut one, true);
        let [(_, state)] = one;
        Some(state)
    }

    /// Every customer's durable state: those in memory and those evicted to dormant
    /// records.
    pub fn accounts(&self) -> Vec<(CustomerId, AccountState)> {
        let cfg = self.inner.metering.config.load();
        let now = self.now();
        let anchors = self.inner.anchors.pin();
        let mut out = Vec::with_capacity(self.inner.registry.len());
        // No eviction meanwhile: every customer is listed once, in memory or dormant.
        let _maintenance = self.inner.registry.maintenance();
        self.inner.registry.for_each(|s| {
            if s.is_overflow {
                return;
            }
            out.push((s.id.clone(), live_account(cfg, s, now, anchors.get(&s.id))));
        });
        self.inner.registry.for_each_dormant(|id, d| {
            out.push((
                id.clone(),
                account_of(
                    cfg,
                    (d.flags, d.plan, d.balance),
                    &d.period,
                    now,
                    anchors.get(id),
                ),
            ));
        });
        drop(_maintenance);
        drop(anchors);
        self.fill_credits(&mut out, true);
        out
    }

    /// Sets a customer's state from a [`crate::StateStore`] (admitting it if new). Quota
    /// usage is restored only for periods that are still current; meters the state does
    /// not list have none. A plan the config does
    /// not know is an error and changes nothing; usage of unknown meters is skipped.
    pub fn restore_account(&self, customer: &str, state: &AccountState) -> Result<(), CoreError> {
        let cfg = self.inner.metering.config.load();
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
        let now = self.now();
        // The anchor first: the period bounds below follow it.
        let anchors = self.inner.anchors.pin();
        match state.billing_anchor {
            Some(anchor) => {
                let n = cfg.calendar.cycle(anchor, now).number;
                anchors.insert(s.id.clone(), (anchor, n));
            }
            None => {
                anchors.remove(&s.id);
            }
        }
        drop(anchors);
        // Every meter's period usage is replaced: one the state does not list (or lists for
        // a past period) has none this period.
        let mut used = vec![0u64; cfg.meters.len()];
        for pu in &state.period_usage {
            let Some(i) = cfg.meter_index.get(pu.meter.as_str()).map(|m| m.get()) else {
                continue;
            };
            let period = cfg.plan(plan).map_or(Period::Month, |p| p.period_of(i));
            if self.bounds(cfg, &s.id, period, now).start == pu.period_start
                && let Some(u) = used.get_mut(i)
            {
                *u = pu.used;
            }
        }
        for (i, u) in used.into_iter().enumerate() {
            s.cells.set_period(i, u);
        }
        self.restore_credits(s, state);
        Ok(())
    }

    /// Counters for operators.
    pub fn stats(&self) -> EngineStats {
        let cfg = self.inner.metering.config.load();
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

    /// Replaces plans, rules and reporting settings without a restart. Plans are matched
    /// by id: they may be reordered, changed or added, and a customer stays on the plan
    /// of the same id; removing a plan is refused (naming it). Meters cannot
    /// change while running (usage cells are laid out by meter): a config whose meters
    /// differ in ids or aggregations, or read other parts of an exchange
    /// ([`Engine::exchange_needs`]), is refused, naming `meters`. Meter filters and values
    /// may change otherwise; requests in flight finish under the configuration they
    /// started with ([`Engine::meter_response`]).
    pub fn reload(&self, config: Config) -> Result<(), ConfigError> {
        let compiled = compile(&config, &self.inner.predicates)?;
        let cur = self.inner.metering.config.load();
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
        if compiled.needs != cur.needs {
            return Err(ConfigError::new(
                "meters",
                needs_change(&cur.needs, &compiled.needs),
                "what the meters read (request or response headers, bytes, body fields, handler-reported quantities) cannot change while the engine runs: HTTP layers keep only what the meters read when they are built; restart with the new meters",
            ));
        }
        if compiled.calendar != cur.calendar {
            return Err(ConfigError::new(
                "time_zone",
                compiled.calendar.name(),
                "the time zone cannot change while the engine runs (quota periods would move); restart with it",
            ));
        }
        if compiled.instance != self.inner.instance {
            return Err(ConfigError::new(
                "instance",
                &*compiled.instance,
                "the instance name cannot change while the engine runs (it is part of idempotency keys)",
            ));
        }
        // Plans keep their positions (customers hold a plan by position): a reload that
        // reorders plans moves nobody; one that drops a plan is refused, naming it.
        let compiled = compile_after(&config, &self.inner.predicates, Some(cur))?;
        self.inner.metering.config.store(compiled);
        Ok(())
    }

    /// The checkpoint interval and report window from the config.
    pub fn reporting(&self) -> crate::config::ReportingConfig {
        self.inner.metering.config.load().reporting.clone()
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

/// The decision when the rule set has a quiet check and nothing it looks at is set for
/// this customer: allow, with the balance on prepaid plans. `None`: walk the rules.
#[inline]
fn quiet_allow(cfg: &Compiled, s: &CustomerState) -> Option<Allow> {
    quiet_balance(cfg, s).map(|balance| Allow {
        credits_remaining: balance,
        rate_limit: None,
        headers: None,
    })
}

/// The quiet check of [`quiet_allow`]: `Some` (with the balance of a prepaid customer)
/// when no rule can fire.
#[inline]
fn quiet_balance(cfg: &Compiled, s: &CustomerState) -> Option<Option<i64>> {
    let q = cfg.quiet.as_ref()?;
    let plan = cfg.plan(s.plan.load(Ordering::Relaxed));
    if s.flags.load(Ordering::Relaxed) & q.flag_mask != 0 {
        return None;
    }
    let prepaid = plan.is_some_and(|p| p.prepaid);
    let balance = prepaid.then(|| s.balance.load(Ordering::Relaxed));
    let out_of_credits = q.credits && balance.is_some_and(|b| b <= 0);
    if out_of_credits {
        return None;
    }
    let over_quota = q.quota && plan.is_some_and(|p| p.any_quota_reached(&s.cells, &cfg.aggs));
    let rate_limited = q.rate && plan.is_some_and(|p| p.rate_limit.is_some());
    if over_quota || rate_limited {
        return None;
    }
    Some(balance)
}

/// The request half of two-phase metering (see [`Engine::meter_request`]).
#[inline]
fn request_match(cfg: &Compiled, ex: &Exchange<'_>) -> MeterMatch {
    let phases = &cfg.phases;
    let mut bits = phases.always;
    let mut todo = phases.checked;
    while todo != 0 {
        let i = todo.trailing_zeros() as usize;
        todo &= todo - 1;
        if cfg
            .meters
            .get(i)
            .is_some_and(|m| m.request_filter.matches(ex))
        {
            bits |= 1 << i;
        }
    }
    MeterMatch::new(bits, phases.whole, cfg.generation)
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
fn live_account(
    cfg: &Compiled,
    s: &CustomerState,
    now: u64,
    anchor: Option<&(u64, i64)>,
) -> AccountState {
    account_of(
        cfg,
        (
            s.flags.load(Ordering::Relaxed),
            s.plan.load(Ordering::Relaxed),
            s.balance.load(Ordering::Relaxed),
        ),
        &s.cells.period_all(&cfg.aggs),
        now,
        anchor,
    )
}

/// The durable state of one customer, from its parts.
fn account_of(
    cfg: &Compiled,
    (flags, plan, balance): (u32, u32, i64),
    period: &[u64],
    now: u64,
    anchor: Option<&(u64, i64)>,
) -> AccountState {
    let p = cfg.plan(plan);
    AccountState {
        delinquent: flags & DELINQUENT != 0,
        cancelled: flags & CANCELLED != 0,
        blocked: flags & BLOCKED != 0,
        plan: p.map(|p| p.id.clone()),
        balance,
        billing_anchor: anchor.map(|&(a, _)| a),
        period_usage: cfg
            .meters
            .iter()
            .zip(period)
            .filter(|(_, used)| **used > 0)
            .map(|(m, used)| {
                let kind = p.map_or(Period::Month, |p| p.period_of(m.index.get()));
                let start = match (kind, anchor) {
                    (Period::BillingCycle, Some(&(a, _))) => cfg.calendar.cycle(a, now).start,
                    (Period::BillingCycle, None) => cfg.calendar.bounds(Period::Month, now).start,
                    (k, _) => cfg.calendar.bounds(k, now).start,
                };
                PeriodUsage::new(m.id.clone(), start, *used)
            })
            .collect(),
        credits: None,
        ledger_seq: None,
    }
}

/// What differs between two [`ExchangeNeeds`], for a refused reload: `"response_bytes:
/// false -> true, ..."`.
fn needs_change(old: &ExchangeNeeds, new: &ExchangeNeeds) -> String {
    let mut out = Vec::new();
    let mut flag = |name: &str, a: bool, b: bool| {
        if a != b {
            out.push(format!("{name}: {a} -> {b}"));
        }
    };
    flag("request_headers", old.request_headers, new.request_headers);
    flag(
        "response_headers",
        old.response_headers,
        new.response_headers,
    );
    flag("request_bytes", old.request_bytes, new.request_bytes);
    flag("response_bytes", old.response_bytes, new.response_bytes);
    flag("query", old.query, new.query);
    flag("reported", old.reported, new.reported);
    flag(
        "request_at_response",
        old.request_at_response,
        new.request_at_response,
    );
    if old.json_capture != new.json_capture {
        out.push(format!(
            "json_capture: {:?} -> {:?}",
            old.json_capture, new.json_capture
        ));
    }
    out.join(", ")
}

#[cfg(test)]
mod two_phase_tests {
    //! `meter_request` + `meter_response` record exactly what `meter` records.

    use super::*;
    use crate::config::{
        BodySide, FilterConfig, JsonFieldConfig, MeterConfig, PlanConfig, QuotaConfig, ValueConfig,
    };
    use crate::meter::Measure;
    use crate::{ExchangeNeeds, ReportedUsage, ResponseView};
    use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
    use proptest::prelude::*;
    use proptest::{collection::vec, option, sample::select};

    /// A generated request and its response, owned.
    #[derive(Clone, Debug)]
    struct Case {
        method: Method,
        path: &'static str,
        route: Option<&'static str>,
        query: Option<&'static str>,
        request_headers: HeaderMap,
        request_bytes: u64,
        status: StatusCode,
        response_headers: HeaderMap,
        response_bytes: u64,
        reported: Option<ReportedUsage>,
        request_body: Option<Vec<u8>>,
        response_body: Option<Vec<u8>>,
    }

    impl Case {
        /// The whole exchange, as `Engine::meter` sees it.
        fn full(&self) -> Exchange<'_> {
            self.request()
                .request_bytes(self.request_bytes)
                .response(self.status, &self.response_headers, self.response_bytes)
                .reported(self.reported.as_ref())
                .bodies(self.request_body.as_deref(), self.response_body.as_deref())
        }

        /// The request side only, as the layer's `call` has it.
        fn request(&self) -> Exchange<'_> {
            Exchange::new(&self.method, self.path, &self.request_headers)
                .route(self.route)
                .query(self.query)
                .request_bytes(self.request_bytes)
        }

        /// The response-time exchange, over the request side `req`.
        fn at_response<'a>(&'a self, req: Exchange<'a>) -> Exchange<'a> {
            req.request_bytes(self.request_bytes)
                .response(self.status, &self.response_headers, self.response_bytes)
                .reported(self.reported.as_ref())
                .bodies(self.request_body.as_deref(), self.response_body.as_deref())
        }
    }

    fn headers(pairs: &[(&'static str, Option<&'static str>)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            if let Some(v) = value {
                h.insert(HeaderName::from_static(name), HeaderValue::from_static(v));
            }
        }
        h
    }

    fn header_strategy() -> impl Strategy<Value = HeaderMap> {
        (
            option::of(select(vec!["1", "2"])),
            option::of(select(vec!["1", "2"])),
            option::of(select(vec!["5", "2.5", "abc", "0"])),
        )
            .prop_map(|(a, b, n)| headers(&[("x-a", a), ("x-b", b), ("x-n", n)]))
    }

    fn body_strategy() -> impl Strategy<Value = Option<Vec<u8>>> {
        option::of(
            select(vec![
                r#"{"n":3}"#,
                r#"{"n":"u1"}"#,
                r#"{"n":1.5}"#,
                r#"{"m":1}"#,
                "not json",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
        )
    }

    fn case_strategy() -> impl Strategy<Value = Case> {
        let request = (
            select(vec![
                Method::GET,
                Method::POST,
                Method::DELETE,
                Method::PATCH,
            ]),
            select(vec!["/v1/users/7", "/v2/x", "/", "/v1"]),
            option::of(select(vec!["/v1/users/{id}", "/v2/x"])),
            option::of(select(vec!["q=1", "dry_run=1&q=0", "a=2", ""])),
            header_strategy(),
            0u64..1000,
        );
        let response = (
            select(vec![200u16, 201, 404, 429, 500]),
            header_strategy(),
            0u64..1000,
            option::of((option::of(0u64..50), option::of(0u64..50))),
            body_strategy(),
            body_strategy(),
        );
        (request, response).prop_map(
            |(
                (method, path, route, query, request_headers, request_bytes),
                (status, response_headers, response_bytes, reported, request_body, response_body),
            )| Case {
                method,
                path,
                route,
                query,
                request_headers,
                request_bytes,
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                response_headers,
                response_bytes,
                reported: reported.map(|(tokens, rows)| {
                    let mut r = ReportedUsage::new();
                    if let Some(t) = tokens {
                        r.add("tokens", t);
                    }
                    if let Some(n) = rows {
                        r.add("rows", n);
                    }
                    r
                }),
                request_body,
                response_body,
            },
        )
    }

    /// A filter with each top-level test present or not (mostly one or two tests).
    fn flat_filter() -> impl Strategy<Value = FilterConfig> {
        let opt = || proptest::bool::weighted(0.15);
        (
            (opt(), select(vec!["GET", "POST", "DELETE"])),
            (
                opt(),
                select(vec!["/v1/users/{id}", "/v1/*", "/v2/*", "/v1/users/7", "/"]),
            ),
            (opt(), select(vec!["2xx", "404", "400-499", "5xx", "200"])),
            (
                opt(),
                select(vec!["x-a", "x-b"]),
                option::of(select(vec!["1", "2"])),
            ),
            (
                opt(),
                select(vec!["x-a", "x-b"]),
                option::of(select(vec!["1", "2"])),
            ),
            (
                opt(),
                select(vec!["q", "dry_run"]),
                option::of(select(vec!["1", "0"])),
            ),
            (opt(), select(vec!["tokens", "rows"])),
        )
            .prop_map(|(m, r, s, h, rh, q, rep)| {
                let mut f = FilterConfig::new();
                if m.0 {
                    f = f.method(m.1);
                }
                if r.0 {
                    f = f.route(r.1);
                }
                if s.0 {
                    f = f.status(s.1);
                }
                if h.0 {
                    f = f.header(h.1, h.2);
                }
                if rh.0 {
                    f = f.response_header(rh.1, rh.2);
                }
                if q.0 {
                    f = f.query(q.1, q.2);
                }
                if rep.0 {
                    f = f.reported(rep.1);
                }
                f
            })
    }

    /// Flat filters nested under `all`, `any` and `not` (which may mix both sides).
    fn filter_strategy() -> BoxedStrategy<FilterConfig> {
        let nested = flat_filter().prop_recursive(2, 12, 2, |inner| {
            (
                flat_filter(),
                vec(inner.clone(), 0..3),
                vec(inner.clone(), 0..3),
                option::of(inner),
            )
                .prop_map(|(mut f, all, any, not)| {
                    f.all = all;
                    f.any = any;
                    f.not = not.map(Box::new);
                    f
                })
        });
        prop_oneof![2 => flat_filter(), 3 => nested].boxed()
    }

    /// Flat filters nested under `all` only: they always split, so the response half
    /// runs on placeholders unless a meter sits at index 64 or more.
    fn split_filter_strategy() -> BoxedStrategy<FilterConfig> {
        flat_filter()
            .prop_recursive(2, 12, 3, |inner| {
                (flat_filter(), vec(inner, 0..3)).prop_map(|(mut f, all)| {
                    f.all = all;
                    f
                })
            })
            .boxed()
    }

    /// A meter of kind `kind` over `filter`.
    fn meter_config(i: usize, kind: u8, filter: FilterConfig) -> MeterConfig {
        let id = format!("m{i}");
        let mut request_json = JsonFieldConfig::response("/n");
        request_json.from = BodySide::Request;
        let m = match kind {
            0 => MeterConfig::count(id),
            1 => MeterConfig::sum(id, ValueConfig::RequestBytes),
            2 => MeterConfig::sum(id, ValueConfig::ResponseBytes),
            3 => MeterConfig::sum(id, ValueConfig::Header("x-n".into())),
            4 => MeterConfig::sum(id, ValueConfig::ResponseHeader("x-n".into())),
            5 => MeterConfig::sum(id, ValueConfig::Reported("tokens".into())),
            6 => MeterConfig::sum(id, ValueConfig::Json(request_json)),
            7 => MeterConfig::sum(id, ValueConfig::Json(JsonFieldConfig::response("/n"))),
            8 => MeterConfig::sum(id, ValueConfig::Header("x-n".into()))
                .aggregation(Aggregation::Max),
            9 => MeterConfig::sum(id, ValueConfig::Reported("rows".into()))
                .aggregation(Aggregation::Latest),
            _ => MeterConfig::sum(id, ValueConfig::Json(JsonFieldConfig::response("/n")))
                .aggregation(Aggregation::UniqueCount),
        };
        m.filter(filter)
    }

    /// `pad` filler meters first (to push the generated ones past index 64), then the
    /// generated ones; a prepaid plan prices and limits them so credit and quota events
    /// fire.
    fn config(pad: usize, meters: &[(u8, FilterConfig)]) -> Config {
        let mut b = Config::builder();
        let mut plan = PlanConfig::new("p").prepaid(12).credits_low_at(6);
        for i in 0..pad {
            // Every third filler matches PATCH requests; the rest never match.
            let method = if i % 3 == 0 { "PATCH" } else { "PUT" };
            b = b.meter(MeterConfig::count(format!("pad{i}")).method(method));
        }
        for (i, (kind, filter)) in meters.iter().enumerate() {
            let m = meter_config(i, *kind, filter.clone());
            let agg = m.aggregation;
            if matches!(agg, Aggregation::Count | Aggregation::Sum) {
                plan = plan.price(m.id.clone(), 1 + i as u64 % 3);
            }
            if agg != Aggregation::UniqueCount {
                plan = plan.quota(QuotaConfig::new(
                    m.id.clone(),
                    1 + i as u64 % 3,
                    crate::config::Period::Month,
                ));
            }
            b = b.meter(m);
        }
        let mut cfg = b.plan(plan).build();
        cfg.rules = Some(Vec::new());
        cfg
    }

    fn engine(cfg: &Config) -> (Engine, CustomerHandle) {
        let engine = Engine::new(cfg.clone()).unwrap_or_else(|e| panic!("config: {e}"));
        let h = engine
            .register("c", "p")
            .unwrap_or_else(|e| panic!("register: {e}"));
        (engine, h)
    }

    fn deltas(engine: &Engine) -> Vec<(String, Measure)> {
        let mut d: Vec<_> = engine
            .checkpoint()
            .into_iter()
            .map(|d| (d.meter.to_string(), d.measure))
            .collect();
        d.sort_by(|a, b| a.0.cmp(&b.0));
        d
    }

    fn events(engine: &Engine) -> Vec<EventKind> {
        engine
            .drain_events(1024)
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    fn used(engine: &Engine) -> (Vec<u64>, i64) {
        let u = engine
            .usage("c")
            .unwrap_or_else(|| panic!("customer c is known"));
        (u.meters.iter().map(|m| m.used).collect(), u.balance)
    }

    /// How the response half gets the request side when it may use placeholders.
    #[derive(Clone, Copy, Debug)]
    enum Placeholder {
        /// Method GET, path "", no route, no query, empty headers.
        Empty,
        /// A different request altogether: nothing may read it.
        Decoy,
        /// [`Exchange::at_response`]: the response's headers stand in for the request's.
        OneStep,
    }

    /// Meters every case through `meter` on one engine and through the two halves on
    /// another, comparing deltas and events after each case and usage at the end.
    fn check(cfg: &Config, cases: &[Case], placeholder: Placeholder) -> Result<(), TestCaseError> {
        let (one, h1) = engine(cfg);
        let (two, h2) = engine(cfg);
        let needs: ExchangeNeeds = two.exchange_needs();
        let (get, no_headers) = (Method::GET, HeaderMap::new());
        let decoy_headers = headers(&[("x-a", Some("1")), ("x-b", Some("2")), ("x-n", Some("7"))]);
        for case in cases {
            one.meter(&h1, &case.full());
            let m = two.meter_request(&case.request());
            let req = if needs.request_at_response {
                case.request()
            } else {
                match placeholder {
                    Placeholder::Empty | Placeholder::OneStep => {
                        Exchange::new(&get, "", &no_headers)
                    }
                    Placeholder::Decoy => Exchange::new(&Method::PATCH, "/v2/x", &decoy_headers)
                        .route(Some("/v1/users/{id}"))
                        .query(Some("q=1&dry_run=0")),
                }
            };
            // Status-only meters first, with no exchange, as the HTTP layer does.
            let by_status = matches!(placeholder, Placeholder::OneStep)
                && !needs.request_at_response
                && h2.meter_status(m, case.status);
            let at_response = match placeholder {
                _ if by_status => Exchange::new(&get, "", &no_headers),
                Placeholder::OneStep if !needs.request_at_response => {
                    let response =
                        ResponseView::new(case.status, &case.response_headers, case.response_bytes);
                    Exchange::at_response(response, case.request_bytes)
                        .reported(case.reported.as_ref())
                        .bodies(case.request_body.as_deref(), case.response_body.as_deref())
                }
                _ => case.at_response(req),
            };
            if !by_status {
                two.meter_response(&h2, m, &at_response);
            }
            let (d1, d2) = (deltas(&one), deltas(&two));
            if m.is_empty() {
                prop_assert!(d1.is_empty(), "empty match but `meter` recorded {:?}", d1);
            }
            prop_assert_eq!(d1, d2, "deltas for {:?}", case);
            prop_assert_eq!(events(&one), events(&two), "events for {:?}", case);
        }
        prop_assert_eq!(used(&one), used(&two));
        Ok(())
    }

    /// Kinds of meter whose value does not read the request side at the response.
    const RESPONSE_SAFE_KINDS: [u8; 9] = [0, 1, 2, 4, 5, 6, 7, 9, 10];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn two_phase_records_what_meter_records(
            meters in vec((0u8..11, filter_strategy()), 1..6),
            pad in select(vec![0usize, 0, 0, 61, 64]),
            cases in vec(case_strategy(), 1..8),
            decoy: bool,
        ) {
            let cfg = config(pad, &meters);
            let placeholder = if decoy { Placeholder::Decoy } else { Placeholder::Empty };
            check(&cfg, &cases, placeholder)?;
        }

        #[test]
        fn two_phase_on_placeholders_records_what_meter_records(
            meters in vec((select(RESPONSE_SAFE_KINDS.to_vec()), split_filter_strategy()), 1..6),
            pad in select(vec![0usize, 0, 0, 61]),
            cases in vec(case_strategy(), 1..8),
            decoy: Option<bool>,
        ) {
            let cfg = config(pad, &meters);
            if pad == 0 {
                let (e, _) = engine(&cfg);
                prop_assert!(!e.exchange_needs().request_at_response);
            }
            let placeholder = match decoy {
                Some(true) => Placeholder::Decoy,
                Some(false) => Placeholder::Empty,
                None => Placeholder::OneStep,
            };
            check(&cfg, &cases, placeholder)?;
        }
    }

    fn needs_of(meters: Vec<MeterConfig>) -> (Engine, ExchangeNeeds) {
        let mut b = Config::builder();
        for m in meters {
            b = b.meter(m);
        }
        let engine = Engine::new(b.build()).unwrap_or_else(|e| panic!("config: {e}"));
        let needs = engine.exchange_needs();
        (engine, needs)
    }

    #[test]
    fn split_all_meters_at_request_and_response() {
        let (engine, needs) = needs_of(vec![
            MeterConfig::count("posts_ok").method("POST").status("2xx"),
        ]);
        assert!(!needs.request_at_response);
        let h = engine.resolve("c").unwrap_or_else(|e| panic!("{e}"));
        let (get, post, hs) = (Method::GET, Method::POST, HeaderMap::new());
        let m = engine.meter_request(&Exchange::new(&get, "/", &hs));
        assert!(m.is_empty(), "GET fails the request side");
        let m = engine.meter_request(&Exchange::new(&post, "/", &hs));
        let idx = engine
            .meter_index("posts_ok")
            .unwrap_or_else(|| panic!("meter"));
        assert!(m.contains(idx));
        // Placeholders for the request side: only the status is read.
        let placeholder = Exchange::new(&get, "", &hs);
        engine.meter_response(&h, m, &placeholder.response(StatusCode::NOT_FOUND, &hs, 0));
        engine.meter_response(&h, m, &placeholder.response(StatusCode::OK, &hs, 0));
        let used = engine.usage("c").map(|u| u.meters[0].used);
        assert_eq!(used, Some(1));
    }

    #[test]
    fn status_only_meters_are_metered_without_an_exchange() {
        let (engine, _) = needs_of(vec![
            MeterConfig::count("ok").status("2xx"),
            MeterConfig::count("all"),
            MeterConfig::count("posts_failed")
                .method("POST")
                .status("5xx"),
        ]);
        let h = engine.resolve("c").unwrap_or_else(|e| panic!("{e}"));
        let (get, post, hs) = (Method::GET, Method::POST, HeaderMap::new());
        for (method, status) in [(&get, 200), (&post, 503), (&get, 404), (&post, 201)] {
            let m = engine.meter_request(&Exchange::new(method, "/", &hs));
            let status = StatusCode::from_u16(status).unwrap_or_else(|e| panic!("{e}"));
            assert!(h.meter_status(m, status), "only statuses are read");
        }
        let used = engine
            .usage("c")
            .map(|u| u.meters.iter().map(|m| m.used).collect());
        assert_eq!(used, Some(vec![2, 4, 1]));
        // A meter that reads more than the status: nothing recorded, `false`.
        let (engine, _) = needs_of(vec![
            MeterConfig::count("ok").status("2xx"),
            MeterConfig::sum("egress", ValueConfig::ResponseBytes),
        ]);
        let h = engine.resolve("c").unwrap_or_else(|e| panic!("{e}"));
        let m = engine.meter_request(&Exchange::new(&get, "/", &hs));
        assert!(!h.meter_status(m, StatusCode::OK));
        assert_eq!(engine.usage("c").map(|u| u.meters[0].used), Some(0));
    }

    #[test]
    fn mixed_any_is_decided_at_the_response() {
        let any = FilterConfig::new().any(vec![
            FilterConfig::new().route("/a"),
            FilterConfig::new().status("5xx"),
        ]);
        let (engine, needs) = needs_of(vec![
            MeterConfig::count("mixed").filter(any),
            MeterConfig::count("plain").route("/b"),
        ]);
        assert!(needs.request_at_response);
        let h = engine.resolve("c").unwrap_or_else(|e| panic!("{e}"));
        let (get, hs) = (Method::GET, HeaderMap::new());
        for (path, status) in [("/a", 200), ("/b", 500), ("/b", 200), ("/c", 200)] {
            let req = Exchange::new(&get, path, &hs);
            let m = engine.meter_request(&req);
            assert!(
                !m.is_empty(),
                "a mixed meter is always left to the response"
            );
            assert!(!m.contains(MeterIndex(0)));
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            engine.meter_response(&h, m, &req.response(status, &hs, 0));
        }
        let used: Vec<u64> = engine
            .usage("c")
            .map(|u| u.meters.iter().map(|m| m.used).collect())
            .unwrap_or_default();
        assert_eq!(used, vec![2, 2], "mixed: /a and 5xx; plain: /b twice");
    }

    #[test]
    fn request_at_response_covers_request_header_values_only() {
        let mut request_json = JsonFieldConfig::response("/n");
        request_json.from = BodySide::Request;
        let (_, needs) = needs_of(vec![
            MeterConfig::sum("bytes", ValueConfig::RequestBytes).method("POST"),
            MeterConfig::sum("json", ValueConfig::Json(request_json)).route("/v1/*"),
            MeterConfig::sum("resp", ValueConfig::ResponseHeader("x-n".into())),
            MeterConfig::count("calls").method("GET").status("2xx"),
        ]);
        assert!(!needs.request_at_response);
        let (_, needs) = needs_of(vec![MeterConfig::sum(
            "seats",
            ValueConfig::Header("x-seats".into()),
        )]);
        assert!(needs.request_at_response);
    }

    #[test]
    fn meters_past_64_are_metered_at_the_response() {
        // 70 meters: meter i counts route `/r{i}` with a 2xx status.
        let meters: Vec<MeterConfig> = (0..70)
            .map(|i| {
                MeterConfig::count(format!("m{i}"))
                    .route(format!("/r{i}"))
                    .status("2xx")
            })
            .collect();
        let (engine, needs) = needs_of(meters);
        assert!(
            needs.request_at_response,
            "meters 64..70 read the route at the response"
        );
        let h = engine.resolve("c").unwrap_or_else(|e| panic!("{e}"));
        let (get, hs) = (Method::GET, HeaderMap::new());
        for i in [3usize, 63, 64, 69, 69] {
            let path = format!("/r{i}");
            let req = Exchange::new(&get, &path, &hs);
            let m = engine.meter_request(&req);
            assert_eq!(m.contains(MeterIndex(i as u16)), i < 64);
            assert!(!m.is_empty(), "meters past 64 are left to the response");
            engine.meter_response(&h, m, &req.response(StatusCode::OK, &hs, 0));
            engine.meter_response(&h, m, &req.response(StatusCode::NOT_FOUND, &hs, 0));
        }
        let used: Vec<u64> = engine
            .usage("c")
            .map(|u| u.meters.iter().map(|m| m.used).collect())
            .unwrap_or_default();
        for (i, u) in used.iter().enumerate() {
            let want = match i {
                3 | 63 | 64 => 1,
                69 => 2,
                _ => 0,
            };
            assert_eq!(*u, want, "meter {i}");
        }

        // Past 64 with response-only filters: the request side is never read.
        let mut meters: Vec<MeterConfig> = (0..64)
            .map(|i| MeterConfig::count(format!("p{i}")).method("PUT"))
            .collect();
        meters.push(MeterConfig::count("errors").status("5xx"));
        let (engine, needs) = needs_of(meters);
        assert!(!needs.request_at_response);
        let h = engine.resolve("c").unwrap_or_else(|e| panic!("{e}"));
        let m = engine.meter_request(&Exchange::new(&get, "/x", &hs));
        let placeholder = Exchange::new(&get, "", &hs);
        engine.meter_response(
            &h,
            m,
            &placeholder.response(StatusCode::BAD_GATEWAY, &hs, 0),
        );
        let used = engine.usage("c").map(|u| u.meters[64].used);
        assert_eq!(used, Some(1));
    }
}

#[cfg(test)]
mod decide_and_match_tests {
    //! `decide_and_match` decides as `decide` does and matches as `meter_request` does.

    use super::*;
    use crate::config::{
        BlockConfig, ConditionConfig, FilterConfig, MeterConfig, PlanConfig, QuotaConfig,
        RateLimitConfig, RuleConfig, ValueConfig,
    };
    use crate::{PlanId, ReportedUsage};
    use http::{HeaderMap, Method, StatusCode};
    use proptest::prelude::*;
    use proptest::sample::select;

    /// Meters of each phase (request-tested, always, mixed), plans with a quota, prices
    /// and a rate limit, and one of three rule sets: the defaults (quiet check), the
    /// defaults after an allow rule limited to a route, or the defaults with a shadow
    /// block on POST (both walk the rules).
    fn config(rules: u8) -> Config {
        let mut rule_set = RuleConfig::defaults();
        match rules {
            1 => rule_set.insert(
                0,
                RuleConfig::allow(
                    "internal",
                    ConditionConfig::PlanIn(vec!["plain".into()]),
                    [("x-internal".to_owned(), "1".to_owned())].into(),
                )
                .request(FilterConfig::new().route("/internal/*")),
            ),
            2 => rule_set.push(
                RuleConfig::block(
                    "no_posts",
                    ConditionConfig::Always,
                    BlockConfig::new(403, "no_posts", "no posts"),
                )
                .request(FilterConfig::new().method("POST"))
                .shadow(),
            ),
            _ => {}
        }
        let mut cfg = Config::builder()
            .meter(MeterConfig::count("calls").route("/v1/*").status("2xx"))
            .meter(MeterConfig::sum(
                "tokens",
                ValueConfig::Reported("tokens".into()),
            ))
            .meter(MeterConfig::count("posts").method("POST"))
            .meter(
                MeterConfig::count("mixed").filter(FilterConfig::new().any(vec![
                    FilterConfig::new().route("/internal/*"),
                    FilterConfig::new().status("5xx"),
                ])),
            )
            .plan(PlanConfig::new("free").quota(QuotaConfig::new(
                "calls",
                3,
                crate::config::Period::Month,
            )))
            .plan(PlanConfig::new("prepaid").prepaid(0).price("calls", 2))
            .plan(PlanConfig::new("limited").rate_limit(RateLimitConfig::new(2, 3600)))
            .plan(PlanConfig::new("plain"))
            .build();
        cfg.rules = Some(rule_set);
        cfg
    }

    /// Status, reason and balance of a decision, and whether it carries a rate limit and
    /// rule headers.
    fn outcome(d: &Decision) -> (u16, String, Option<i64>, bool, bool) {
        match d {
            Decision::Allow(a) => (
                200,
                String::new(),
                a.credits_remaining,
                a.rate_limit.is_some(),
                a.headers.is_some(),
            ),
            Decision::Block(b) => (
                b.status.as_u16(),
                b.reason.to_string(),
                b.balance,
                b.rate_limit.is_some(),
                !b.headers.is_empty(),
            ),
        }
    }

    fn events(engine: &Engine) -> Vec<EventKind> {
        engine
            .drain_events(64)
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn decide_and_match_is_decide_then_meter_request(
            rules in 0u8..3,
            plan in select(vec!["free", "prepaid", "limited", "plain"]),
            flags in (any::<bool>(), any::<bool>(), any::<bool>()),
            balance in -3i64..6,
            requests in proptest::collection::vec(
                (
                    select(vec![Method::GET, Method::POST]),
                    select(vec!["/v1/x", "/v2/y", "/internal/z"]),
                    select(vec![200u16, 404, 503]),
                ),
                1..6,
            ),
        ) {
            let cfg = config(rules);
            let mut engines = Vec::new();
            for _ in 0..3 {
                let engine = Engine::new(cfg.clone()).unwrap_or_else(|e| panic!("config: {e}"));
                let h = engine.resolve("c").unwrap_or_else(|e| panic!("resolve: {e}"));
                let apply = |c| engine.apply("c", c).unwrap_or_else(|e| panic!("apply: {e}"));
                apply(StateChange::Plan(PlanId::new(plan).unwrap_or_else(|e| panic!("{e}"))));
                apply(StateChange::Delinquent(flags.0));
                apply(StateChange::Cancelled(flags.1));
                apply(StateChange::Blocked(flags.2));
                apply(StateChange::SetBalance(balance));
                engines.push((engine, h));
            }
            let hs = HeaderMap::new();
            let mut reported = ReportedUsage::new();
            reported.add("tokens", 2);
            for (method, path, status) in &requests {
                let ex = Exchange::new(method, path, &hs);
                let (one, h1) = &engines[0];
                let (two, h2) = &engines[1];
                let (d1, m1) = (one.decide(h1, &ex), one.meter_request(&ex));
                let (d2, m2) = two.decide_and_match(h2, &ex);
                prop_assert_eq!(outcome(&d1), outcome(&d2), "{} {}", method, path);
                prop_assert_eq!(m1, m2, "{} {}", method, path);
                let e1 = events(one);
                prop_assert_eq!(&e1, &events(two));
                // The same through `decide_and_match_into`, over a slot holding a stale
                // allow with every field set: an allow replaces all of it.
                let (three, h3) = &engines[2];
                let mut slot = Allow {
                    credits_remaining: Some(-77),
                    rate_limit: Some(crate::RateLimitInfo {
                        limit: 9,
                        remaining: 9,
                        reset_secs: 9,
                        retry_after_secs: Some(9),
                    }),
                    headers: Some(Arc::from(vec![(
                        http::HeaderName::from_static("x-stale"),
                        http::HeaderValue::from_static("1"),
                    )])),
                };
                let (d3, m3) = match three.decide_and_match_into(h3, &ex, &mut slot) {
                    Ok(m) => (Decision::Allow(slot), m),
                    Err(block) => (Decision::Block(block), MeterMatch::new(0, false, 0)),
                };
                prop_assert_eq!(outcome(&d1), outcome(&d3), "into: {} {}", method, path);
                if d3.is_allow() {
                    prop_assert_eq!(m1, m3, "into: {} {}", method, path);
                }
                let m3 = m1;
                prop_assert_eq!(&e1, &events(three));
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
                let at_response = ex.response(status, &hs, 0).reported(Some(&reported));
                one.meter_response(h1, m1, &at_response);
                two.meter_response(h2, m2, &at_response);
                three.meter_response(h3, m3, &at_response);
                let e1 = events(one);
                prop_assert_eq!(&e1, &events(two));
                prop_assert_eq!(&e1, &events(three));
            }
            let used = |e: &Engine| e.usage("c").map(|u| {
                (u.balance, u.meters.iter().map(|m| m.used).collect::<Vec<_>>())
            });
            prop_assert_eq!(used(&engines[0].0), used(&engines[1].0));
            prop_assert_eq!(used(&engines[0].0), used(&engines[2].0));
            let hits = |e: &Engine| e.stats().rule_hits;
            prop_assert_eq!(hits(&engines[0].0), hits(&engines[1].0));
            prop_assert_eq!(hits(&engines[0].0), hits(&engines[2].0));
        }
    }
}

#[cfg(test)]
mod reload_tests {
    //! Reloads while requests are in flight, and what a reload may change.

    use super::*;
    use crate::config::{FilterConfig, MeterConfig, PlanConfig, ValueConfig};
    use http::{HeaderMap, Method, StatusCode};

    fn config(route: &str, status: &str, price: u64) -> Config {
        Config::builder()
            .meter(
                MeterConfig::count("calls").filter(FilterConfig::new().route(route).status(status)),
            )
            .meter(MeterConfig::sum(
                "tokens",
                ValueConfig::Reported("tokens".into()),
            ))
            .plan(
                PlanConfig::new("prepaid")
                    .prepaid(1_000)
                    .price("calls", price),
            )
            .default_plan("prepaid")
            .build()
    }

    fn used(e: &Engine, meter: &str) -> u64 {
        e.usage("acme").map_or(0, |u| {
            u.meters
                .iter()
                .find(|m| m.meter.as_str() == meter)
                .map_or(0, |m| m.used)
        })
    }

    #[test]
    fn a_request_in_flight_during_a_reload_is_metered_under_the_config_it_started_with() {
        let e = Engine::new(config("/a", "2xx", 10)).unwrap();
        let h = e.resolve("acme").unwrap();
        let headers = HeaderMap::new();
        let at = |path: &'static str| Exchange::new(&Method::GET, path, &headers);
        // Two requests start under A (route /a, 2xx, price 10).
        let first = e.meter_request(&at("/a"));
        let second = e.meter_request(&at("/a"));
        // B meters /b with 5xx, at price 100.
        e.reload(config("/b", "5xx", 100)).unwrap();
        let on = |status: u16| {
            Exchange::new(&Method::GET, "", &headers).response(
                StatusCode::from_u16(status).unwrap(),
                &headers,
                0,
            )
        };
        // A 500 for an /a request: neither A (2xx) nor B (/b) meters it; mixing A's request
        // half with B's response half would have.
        e.meter_response(&h, first, &on(500));
        assert_eq!(used(&e, "calls"), 0);
        // A 200 for an /a request: A meters it, at A's price.
        e.meter_response(&h, second, &on(200));
        assert_eq!(used(&e, "calls"), 1);
        assert_eq!(e.usage("acme").unwrap().balance, 1_000 - 10);
        // A request that starts under B is metered under B.
        let third = e.meter_request(&at("/b"));
        e.meter_response(&h, third, &on(503));
        assert_eq!(used(&e, "calls"), 2);
        assert_eq!(e.usage("acme").unwrap().balance, 1_000 - 10 - 100);
    }

    #[test]
    fn a_reload_may_change_filters_and_prices_but_not_what_meters_read() {
        let e = Engine::new(config("/a", "2xx", 10)).unwrap();
        let needs = e.exchange_needs();
        e.reload(config("/v2/*", "200-299", 5)).unwrap();
        assert_eq!(e.exchange_needs(), needs);
        // The tokens meter now counts response bytes: the layer would not count them.
        let bytes = Config::builder()
            .meter(MeterConfig::count("calls").route("/a"))
            .meter(MeterConfig::sum("tokens", ValueConfig::ResponseBytes))
            .plan(PlanConfig::new("prepaid").prepaid(1_000).price("calls", 1))
            .default_plan("prepaid")
            .build();
        let err = e.reload(bytes).unwrap_err();
        assert_eq!(err.field, "meters");
        assert!(
            err.problem.contains("cannot change while the engine runs"),
            "{err}"
        );
        // A renamed meter is refused too, and nothing of a refused config is applied.
        let renamed = Config::builder()
            .meter(MeterConfig::count("requests").route("/a"))
            .meter(MeterConfig::sum(
                "tokens",
                ValueConfig::Reported("tokens".into()),
            ))
            .build();
        assert_eq!(e.reload(renamed).unwrap_err().field, "meters");
        assert_eq!(e.exchange_needs(), needs);
        let h = e.resolve("acme").unwrap();
        let headers = HeaderMap::new();
        let m = e.meter_request(&Exchange::new(&Method::GET, "/v2/x", &headers));
        e.meter_response(
            &h,
            m,
            &Exchange::new(&Method::GET, "", &headers).response(StatusCode::OK, &headers, 0),
        );
        assert_eq!(used(&e, "calls"), 1, "the accepted reload's filter");
    }
}

#[cfg(test)]
mod token_tests {
    //! Customers resolved by [`CustomerToken`] from a thread's cache.

    use super::*;
    use crate::config::MeterConfig;

    fn engine() -> Engine {
        Engine::new(Config::builder().meter(MeterConfig::count("calls")).build())
            .expect("valid config")
    }

    fn calls(e: &Engine, id: &str) -> u64 {
        e.usage(id)
            .and_then(|u| {
                u.meters
                    .iter()
                    .find(|m| m.meter.as_str() == "calls")
                    .map(|m| m.used)
            })
            .unwrap_or(0)
    }

    #[test]
    fn a_token_resolves_after_its_second_sighting_and_records_for_its_customer() {
        let e = engine();
        let t = CustomerToken::new(0x1234_5678_9abc_def0_0fed_cba9_8765_4321);
        assert!(e.resolve_token(t).is_none());
        let h = e.resolve("acme").unwrap();
        // First sighting: not remembered (the doorkeeper).
        e.remember_token(t, &h);
        assert!(e.resolve_token(t).is_none());
        e.remember_token(t, &h);
        let got = e
            .resolve_token(t)
            .expect("remembered on the second sighting");
        assert_eq!(got.id().as_str(), "acme");
        let calls_meter = e.meter_index("calls").unwrap();
        e.record(&got, calls_meter, 5);
        assert_eq!(calls(&e, "acme"), 5);
        // Another token, and the same bits in another engine, resolve nothing.
        assert!(e.resolve_token(CustomerToken::new(t.bits() ^ 1)).is_none());
        assert!(engine().resolve_token(t).is_none());
        // Other threads have their own cache.
        std::thread::scope(|s| {
            s.spawn(|| assert!(e.resolve_token(t).is_none()));
        });
    }

    #[test]
    fn an_evicted_customer_is_not_resolved_by_token_until_remembered_again() {
        let e = engine();
        let t = CustomerToken::new(42 << 64 | 7);
        let h = e.resolve("acme").unwrap();
        e.remember_token(t, &h);
        e.remember_token(t, &h);
        assert!(e.resolve_token(t).is_some());
        drop(h);
        assert_eq!(e.evict_idle(0), 1);
        // The cached state is sealed: the token misses, and the customer comes back by id
        // (restored, its usage kept).
        assert!(e.resolve_token(t).is_none());
        let again = e.resolve("acme").unwrap();
        e.record(&again, e.meter_index("calls").unwrap(), 1);
        e.remember_token(t, &again);
        let h = e.resolve_token(t).expect("remembered again");
        assert!(std::ptr::eq::<CustomerState>(&*h.0, &*again.0));
        assert_eq!(calls(&e, "acme"), 1);
    }

    #[test]
    fn a_thread_remembers_a_thousand_customers_by_token() {
        let e = engine();
        // Pseudo-random tokens (splitmix64), as MAC-derived tokens are.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let tokens: Vec<CustomerToken> = (0..1_000)
            .map(|_| CustomerToken::new(u128::from(next()) << 64 | u128::from(next())))
            .collect();
        // Each seen twice (the doorkeeper).
        for _ in 0..2 {
            for (i, t) in tokens.iter().enumerate() {
                let h = e.resolve(&format!("c{i}")).unwrap();
                e.remember_token(*t, &h);
            }
        }
        // Two candidate sets per token: with one, about 90 of these would keep evicting
        // each other.
        let hits = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                e.resolve_token(**t)
                    .is_some_and(|h| h.id().as_str() == format!("c{i}"))
            })
            .count();
        assert!(hits >= 995, "{hits} of 1,000 remembered");
    }

    #[test]
    fn handles_and_thread_caches_do_not_keep_a_dropped_engines_event_queue() {
        let e = engine();
        let t = CustomerToken::new(7 << 64 | 7);
        let h = e.resolve("acme").unwrap();
        e.remember_token(t, &h);
        e.remember_token(t, &h);
        assert!(e.resolve_token(t).is_some());
        let queue = Arc::downgrade(&e.inner.events);
        let config = Arc::downgrade(&h.0.metering);
        drop(e);
        // The handle and this thread's token slot still hold the customer's state, and
        // through it the configuration; the event queue went with the engine.
        assert!(queue.upgrade().is_none());
        assert!(config.upgrade().is_some());
        // Recording through the handle still works; its events have nowhere to go.
        h.0.metering
            .emit(Event::new(None, EventKind::CustomerOverflow));
        drop(h);
    }

    #[test]
    fn another_engines_handle_is_not_remembered() {
        let (a, b) = (engine(), engine());
        let t = CustomerToken::new(99);
        let foreign = b.resolve("acme").unwrap();
        a.remember_token(t, &foreign);
        a.remember_token(t, &foreign);
        assert!(a.resolve_token(t).is_none(), "a handle of engine b");
        // Once `a` has its own `acme`, a handle of b's `acme` still is not a's.
        let own = a.resolve("acme").unwrap();
        a.remember_token(t, &foreign);
        assert!(a.resolve_token(t).is_none());
        a.remember_token(t, &own);
        a.remember_token(t, &own);
        let h = a.resolve_token(t).unwrap();
        assert!(std::ptr::eq::<CustomerState>(&*h.0, &*own.0));
        assert!(format!("{t:?}").contains(".."));
        assert!(!format!("{t:?}").contains("99"));
    }
}
