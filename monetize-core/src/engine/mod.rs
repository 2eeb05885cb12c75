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

use crate::compiled::cell::ConfigCell;
use crate::compiled::validate::{Compiled, Predicates, compile, compile_after};
use crate::config::{Config, Mode, Period};
use crate::customer::handle_flags::{BLOCKED, CANCELLED, DELINQUENT, NO_PLAN};
use crate::customer::metering::{Events, Metering};
use crate::customer::registry_admission::Admission;
use crate::customer::{
    CustomerHandle, CustomerState, CustomerStatus, CustomerToken, Registry, StateChange,
};
use crate::error::{ConfigError, CoreError};
use crate::event::{Event, EventKind};
use crate::govern::{Allow, Block, Ctx, Decision, Facts, Predicate, QuotaInfo, RuleAction};
use crate::id::{CustomerId, MeterId, MeterIndex, PlanId};
use crate::meter::Delta;
use crate::meter::{Aggregation, Exchange, ExchangeNeeds, Meter, MeterMatch, Sample};
use crate::quota::Bounds;
use crate::store::{AccountState, PeriodUsage};

mod accounts;
mod builder;
pub mod credits;
mod govern;
mod maintenance;
mod record;
mod reload;
mod resolve;
mod stats;
mod upsell;
mod versions;

pub use builder::EngineBuilder;
use builder::WallClock;
pub use stats::{CustomerUsage, EngineStats, MeterUsage};

/// Events held for notifiers before the oldest are dropped (and counted).
const DEFAULT_EVENT_CAPACITY: usize = 65_536;

/// At most one `Blocked` (and one `ShadowBlock`) event per customer in this many seconds.
pub(crate) const BLOCK_EVENT_EVERY_SECS: u32 = 60;

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
    credits: crate::engine::credits::Ledger,
    /// Versions of fields code changed directly ([`Engine::apply`]).
    versions: versions::FieldVersions,
    /// Upsell streaks by customer ([`upsell`]); never taken on the request path.
    upsell: upsell::Streaks,
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

    /// The credits ledger ([`crate::credits`]).
    pub(crate) fn versions(&self) -> &versions::FieldVersions {
        &self.inner.versions
    }

    pub(crate) fn ledger(&self) -> &crate::engine::credits::Ledger {
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
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("instance", &self.inner.instance)
            .field("customers", &self.inner.registry.len())
            .finish()
    }
}

#[cfg(test)]
mod two_phase_tests;

#[cfg(test)]
mod decide_and_match_tests;

#[cfg(test)]
mod reload_tests;

#[cfg(test)]
mod token_tests;
