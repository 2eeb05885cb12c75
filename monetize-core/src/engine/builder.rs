//! [`EngineBuilder`]: an engine with predicates registered in code, an event capacity and
//! a wall clock of its own.

use super::*;

/// Builds an [`Engine`] with predicates registered in code.
pub struct EngineBuilder {
    pub(super) config: Config,
    pub(super) predicates: Predicates,
    pub(super) event_capacity: usize,
    pub(super) clock: Option<WallClock>,
}

/// A wall clock in unix seconds (see [`EngineBuilder::wall_clock`]).
pub(super) type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

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
                credits: crate::engine::credits::Ledger::default(),
                versions: Default::default(),
                upsell: Mutex::new(HashMap::new()),
            }),
        };
        engine.tick();
        Ok(engine)
    }
}
