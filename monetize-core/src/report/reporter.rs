//! The reporter: moves usage from the engine's cells to the spool (checkpoints) and from the
//! spool to billing providers (reports), exactly once.
//!
//! [`Reporter::start`] checks the routes (distinct provider names, every routed meter
//! accepted by its provider's [`BillingProvider::check_meter`], no meter whose aggregation
//! changed while usage is pending) and spawns one checkpoint task, one prune task and one
//! task per provider:
//!
//! - **Checkpoint**, every `checkpoint_interval`: [`Engine::checkpoint`] swaps every usage
//!   cell to zero and returns the deltas, dated by the swap time and numbered (this run's
//!   writer id and a sequence number), which [`Spool::merge_checkpoints`] adds into the
//!   report window of the swap time in one transaction that also stores the number. If the
//!   merge fails, the checkpoint stays in the reporter's memory; before the next attempt
//!   the reporter asks the spool which numbers committed anyway (an error does not mean no
//!   effect), drops those, and merges the rest with the next checkpoint (never dropped,
//!   never added twice; each failure is a `tracing` warning).
//! - **Report**, every provider's `report_interval`: [`Spool::take`] seals the closed
//!   windows and hands them out in batches of the provider's `max_batch`, examining a
//!   bounded number of rows per batch; each batch is sent under `call_timeout`. Timeouts,
//!   retryable errors and refused credentials (with one [`EventKind::ProviderUnauthorized`]
//!   per failure streak) are retried within the round with exponential backoff and jitter
//!   (`min_backoff` .. `max_backoff`, at most `max_retries` times); a throttle waits at
//!   least the provider's `retry_after`. Accepted records are acknowledged; records refused
//!   for good go to the dead letter list and raise an [`EventKind::DeadLetter`] event.
//!   Anything else stays sealed in the spool and is sent again next round (and after a
//!   restart) with the same idempotency key and quantity, so a provider that deduplicates
//!   on the key bills it once, until the record's first delivery is older than the
//!   provider's [`BillingProvider::dedup_horizon`]: then it moves to the reconciliation
//!   list with an [`EventKind::NeedsReconciliation`] event instead of being resent.
//! - **Prune**, every hour: acknowledged records whose window ended before
//!   `audit_retention` are deleted in transactions of 500 rows, off the checkpoint task.
//!
//! [`ReporterHandle::shutdown_after`] waits for the server's graceful stop, then
//! [`ReporterHandle::shutdown`] takes a final checkpoint and reports everything, the open
//! window included (except open windows of non-additive meters, which wait in the spool
//! until they close), retrying until done or `shutdown_timeout`.
//!
//! # What a crash loses
//!
//! Usage is durable once the merge of the checkpoint that took it has committed (the redb
//! spool commits with immediate durability). A `kill -9` therefore loses what was recorded
//! after the swap of the last checkpoint whose merge committed: **at most one
//! `checkpoint_interval` of usage, plus a commit allowance of 100 ms** (the merge of the
//! checkpoint in flight: one redb commit, and the checkpoint task being scheduled on a busy
//! machine). With the default 1 s interval, that is at most 1.1 s of usage. While merges
//! fail (a full disk), usage accumulates in memory and the window grows until a merge
//! succeeds. Nothing that reached the spool is lost or billed twice: after the restart,
//! sealed entries are re-sent with their keys. A graceful
//! [`ReporterHandle::shutdown_after`] loses nothing. The crash test
//! (`tests/tests/crash.rs`) kills a process at random moments and asserts this bound (with
//! a 50 ms interval: at most 150 ms of usage per kill) and that every committed unit is
//! billed once per customer, meter and window.
//!
//! # Credits and quota usage
//!
//! Spent credits and quota usage are exactly as durable as the usage that spent them. Each
//! checkpoint, right after the swap, snapshots the state (status, plan, prepaid balance,
//! quota usage this period) of every customer whose usage it took or whose state an
//! operator changed since the last one ([`Engine::apply`], [`Engine::register`]); the
//! snapshots travel with the checkpoint (kept with it through failed merges, the newest
//! per customer winning) and are written to the spool's accounts table **in the merge's
//! transaction** ([`Spool::accounts`]). [`Reporter::start`] restores them into the engine.
//! A `kill -9` therefore loses the spends and quota usage of exactly the calls whose usage
//! it loses: **at most one `checkpoint_interval` plus the 100 ms commit allowance of
//! both** (1.1 s by default), never more of one than of the other. Quota usage matches the
//! usage in the spool exactly (it is the part the checkpoints took); the balance is read
//! just after the swap, so a call racing with the swap (one per request in flight) may
//! have its usage in one checkpoint and its spend in the next. Operator changes (top-ups,
//! status, plan) are saved by the next checkpoint too: a `kill -9` loses those made in
//! the last interval plus the allowance (the [`StateSync`](crate::StateSync) may have
//! saved them to its store, but for a customer the spool holds, the spool wins: see
//! [`Reporter::start`]). The crash test `tests/tests/crash_spend.rs` kills a spending
//! process and asserts these figures.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::engine::Engine;
use crate::event::{Event, EventKind};
use crate::id::{CustomerId, MeterId};
use crate::provider::{BillingProvider, ProviderError, RecordOutcome, UsageRecord};
use crate::report::Delta;
use crate::report::spool::{Checkpoint, Spool, SpoolError, SpoolRoute, TakeRequest, Taken};
use crate::report::window::{ReportWindow, unix_now};
use crate::store::AccountState;

/// The smallest interval accepted (tokio intervals cannot be zero).
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// How often acknowledged records older than `audit_retention` are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Acknowledged rows one prune transaction examines.
const PRUNE_BATCH: usize = 500;

/// The longest report window accepted, as in the configuration file.
const MAX_WINDOW_SECS: u64 = 86_400;

/// The most batches one report round sends (a round also ends at a partial batch).
const MAX_BATCHES_PER_ROUND: usize = 10_000;

/// Where a provider's usage goes and how often.
#[derive(Clone)]
#[non_exhaustive]
pub struct ProviderRoute {
    /// The provider.
    pub provider: Arc<dyn BillingProvider>,
    /// How often closed windows are sent (default 10 s).
    pub report_interval: Duration,
    /// The meters it takes; `None` (the default) for all.
    pub meters: Option<Vec<MeterId>>,
}

impl std::fmt::Debug for ProviderRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRoute")
            .field("provider", &self.provider.name())
            .field("report_interval", &self.report_interval)
            .field("meters", &self.meters)
            .finish()
    }
}

impl ProviderRoute {
    /// A route taking every meter, reported every 10 s.
    pub fn new(provider: Arc<dyn BillingProvider>) -> Self {
        Self {
            provider,
            report_interval: Duration::from_secs(10),
            meters: None,
        }
    }

    /// Sets how often closed windows are sent.
    pub fn with_report_interval(mut self, every: Duration) -> Self {
        self.report_interval = every;
        self
    }

    /// Restricts the route to `meters`.
    pub fn with_meters(mut self, meters: Vec<MeterId>) -> Self {
        self.meters = Some(meters);
        self
    }
}

/// Settings of a [`Reporter`]. Start from `Default` and use the setters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReporterOptions {
    /// How often usage cells are checkpointed into the spool (default 1 s). This is the
    /// most usage a `kill -9` can lose (see the module docs).
    pub checkpoint_interval: Duration,
    /// Length of a report window (default 60 s; whole seconds, at least 1).
    pub window: Duration,
    /// The longest one provider call may take before it counts as failed (default 10 s).
    /// A timed-out call may still have reached the provider: the retry carries the same
    /// idempotency keys.
    pub call_timeout: Duration,
    /// The first retry delay within a round (default 200 ms).
    pub min_backoff: Duration,
    /// The longest retry delay within a round (default 30 s).
    pub max_backoff: Duration,
    /// Retries of one batch within a round (default 4); what is left is retried next round.
    pub max_retries: usize,
    /// How long [`ReporterHandle::shutdown`] keeps trying (default 30 s).
    pub shutdown_timeout: Duration,
    /// How long acknowledged records are kept for audit (default 30 days).
    pub audit_retention: Duration,
    /// How long a provider may keep failing (timeouts, 5xx, 401, 429: every call of a
    /// streak) before [`EventKind::ProviderFailing`] is raised, once per streak (default
    /// 15 minutes).
    pub provider_failing_after: Duration,
}

impl Default for ReporterOptions {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(1),
            window: Duration::from_secs(60),
            call_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            max_retries: 4,
            shutdown_timeout: Duration::from_secs(30),
            audit_retention: Duration::from_secs(30 * 24 * 3600),
            provider_failing_after: Duration::from_secs(15 * 60),
        }
    }
}

impl From<&crate::config::ReportingConfig> for ReporterOptions {
    /// The checkpoint interval and window length of a configuration; everything else at
    /// its default.
    fn from(config: &crate::config::ReportingConfig) -> Self {
        Self::default()
            .with_checkpoint_interval(Duration::from_millis(config.checkpoint_interval_ms))
            .with_window(Duration::from_secs(config.window_secs))
    }
}

impl ProviderRoute {
    /// A route for `provider` as configured: the report interval and meters of the entry
    /// named like the provider, or every meter every 10 s when there is none.
    pub fn from_config(
        provider: Arc<dyn BillingProvider>,
        config: &crate::config::ReportingConfig,
    ) -> Self {
        let route = Self::new(provider);
        let Some(entry) = config
            .providers
            .iter()
            .find(|p| p.name == route.provider.name())
        else {
            return route;
        };
        let meters = entry.meters.as_ref().map(|names| {
            names
                .iter()
                .filter_map(|n| match MeterId::new(n) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(meter = %n, error = %e, "ignoring an invalid meter name");
                        None
                    }
                })
                .collect()
        });
        Self {
            report_interval: Duration::from_millis(entry.report_interval_ms),
            meters,
            ..route
        }
    }
}

impl ReporterOptions {
    /// Sets [`Self::provider_failing_after`].
    pub fn with_provider_failing_after(mut self, after: Duration) -> Self {
        self.provider_failing_after = after;
        self
    }

    /// Sets [`Self::checkpoint_interval`].
    pub fn with_checkpoint_interval(mut self, every: Duration) -> Self {
        self.checkpoint_interval = every;
        self
    }

    /// Sets [`Self::window`].
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets [`Self::call_timeout`].
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets [`Self::min_backoff`].
    pub fn with_min_backoff(mut self, delay: Duration) -> Self {
        self.min_backoff = delay;
        self
    }

    /// Sets [`Self::max_backoff`].
    pub fn with_max_backoff(mut self, delay: Duration) -> Self {
        self.max_backoff = delay;
        self
    }

    /// Sets [`Self::max_retries`].
    pub fn with_max_retries(mut self, retries: usize) -> Self {
        self.max_retries = retries;
        self
    }

    /// Sets [`Self::shutdown_timeout`].
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets [`Self::audit_retention`].
    pub fn with_audit_retention(mut self, retention: Duration) -> Self {
        self.audit_retention = retention;
        self
    }

    fn window_secs(&self) -> u64 {
        self.window.as_secs().max(1)
    }

    /// Checks the options as the configuration file does.
    fn validate(&self) -> Result<(), ReporterError> {
        let secs = self.window.as_secs();
        if self.window.subsec_nanos() != 0 || !(1..=MAX_WINDOW_SECS).contains(&secs) {
            return Err(ReporterError::InvalidOptions {
                field: "window",
                reason: format!(
                    "{:?}: a report window is a whole number of seconds from 1 to {MAX_WINDOW_SECS}",
                    self.window
                ),
            });
        }
        if self.checkpoint_interval.is_zero() {
            return Err(ReporterError::InvalidOptions {
                field: "checkpoint_interval",
                reason: "must be above zero".into(),
            });
        }
        Ok(())
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.min_backoff)
            .with_max_delay(self.max_backoff.max(self.min_backoff))
            .with_max_times(self.max_retries)
            .build()
    }
}

/// Why the reporter could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReporterError {
    /// The spool failed. Nothing was lost: deltas stay in memory and are merged with the
    /// next checkpoint; records stay in the spool. Retry later.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The final merge of a shutdown kept failing until the deadline. The usage it held is
    /// here: store it some other way, or it is lost when the process exits.
    #[error("shutdown could not save {} deltas to the spool: {source}", deltas.len())]
    Unsaved {
        /// The usage not saved.
        deltas: Vec<Delta>,
        /// The last merge error.
        #[source]
        source: SpoolError,
    },
    /// The reporter's tasks are gone (one panicked, or the runtime is shutting down). Usage
    /// merged to a durable spool is sent by the next reporter.
    #[error("the reporter is not running")]
    Stopped,
    /// Two routes name the same provider: they would add every delta twice into one spool
    /// entry. Give each provider instance its own name.
    #[error("two provider routes are named {name:?}: provider names must be distinct")]
    DuplicateProvider {
        /// The shared name.
        name: String,
    },
    /// A provider refused a meter routed to it at start-up (it cannot bill the meter's
    /// aggregation honestly). Route the meter elsewhere or change the provider's meter.
    #[error("provider {provider} refuses meter {meter}: {reason}")]
    MeterRefused {
        /// The provider.
        provider: String,
        /// The meter.
        meter: MeterId,
        /// What the provider said.
        reason: String,
    },
    /// A meter has usage pending in the spool under another aggregation than the one now
    /// configured (merging them would replace or mix the stored value). Restore the old
    /// aggregation until that usage is delivered, or give the changed meter a new id.
    #[error(
        "meter {meter} has usage pending in the spool aggregated as {} but is now configured as {}: restore the old aggregation until it is delivered, or give the meter a new id",
        stored.as_str(),
        configured.as_str()
    )]
    AggregationChanged {
        /// The meter.
        meter: MeterId,
        /// The aggregation of its pending usage.
        stored: crate::meter::Aggregation,
        /// The configured one.
        configured: crate::meter::Aggregation,
    },
    /// An option is out of range.
    #[error("invalid reporter option {field}: {reason}")]
    InvalidOptions {
        /// The option.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Counters of a reporter since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReporterStats {
    /// Checkpoints whose merge committed (empty checkpoints included).
    pub checkpoints: u64,
    /// Merges that failed (their deltas were kept and retried).
    pub merge_failures: u64,
    /// Records acknowledged by providers.
    pub records_sent: u64,
    /// Records moved to the dead letter list.
    pub dead_letters: u64,
    /// Provider calls that failed or timed out (each is retried).
    pub call_failures: u64,
    /// Records moved to the reconciliation list (past the provider's deduplication
    /// horizon).
    pub to_reconcile: u64,
    /// Spool rows quarantined because they could not be decoded.
    pub quarantined: u64,
    /// Checkpoints found already merged when retried (a merge that committed and then
    /// reported an error); skipped, never added twice.
    pub checkpoints_already_merged: u64,
    /// Customer states restored from the spool at start (see [`Spool::accounts`]).
    pub accounts_restored: u64,
}

/// What a flush or a shutdown achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReportSummary {
    /// Records acknowledged by providers since the reporter started.
    pub records_sent: u64,
    /// Records moved to the dead letter list since the reporter started.
    pub dead_letters: u64,
    /// Entries still pending in the spool (sent by the next reporter on this spool).
    pub pending_left: usize,
    /// The reporter's counters.
    pub stats: ReporterStats,
    /// Usage cells recorded after the final checkpoint of a shutdown (requests that were
    /// still running): saved in the spool for the next run, not reported by this one.
    /// Always 0 when the server was stopped first.
    pub late_cells: u64,
}

#[derive(Default)]
struct Counters {
    checkpoints: AtomicU64,
    merge_failures: AtomicU64,
    records_sent: AtomicU64,
    dead_letters: AtomicU64,
    call_failures: AtomicU64,
    to_reconcile: AtomicU64,
    quarantined: AtomicU64,
    checkpoints_already_merged: AtomicU64,
    accounts_restored: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ReporterStats {
        ReporterStats {
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
            merge_failures: self.merge_failures.load(Ordering::Relaxed),
            records_sent: self.records_sent.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            call_failures: self.call_failures.load(Ordering::Relaxed),
            to_reconcile: self.to_reconcile.load(Ordering::Relaxed),
            quarantined: self.quarantined.load(Ordering::Relaxed),
            checkpoints_already_merged: self.checkpoints_already_merged.load(Ordering::Relaxed),
            accounts_restored: self.accounts_restored.load(Ordering::Relaxed),
        }
    }
}

fn bump(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

struct Shared {
    engine: Engine,
    spool: Arc<dyn Spool>,
    routes: Arc<[SpoolRoute]>,
    options: ReporterOptions,
    counters: Counters,
    /// This run's checkpoint writer id (random): its checkpoint numbers are its own.
    writer: String,
}

impl Shared {
    /// Runs a spool operation on the blocking pool.
    async fn spool<R: Send + 'static>(
        &self,
        op: impl FnOnce(&dyn Spool) -> Result<R, SpoolError> + Send + 'static,
    ) -> Result<R, SpoolError> {
        let spool = Arc::clone(&self.spool);
        tokio::task::spawn_blocking(move || op(&*spool))
            .await
            .unwrap_or_else(|e| {
                Err(SpoolError::Unavailable {
                    reason: format!("spool task failed: {e}"),
                })
            })
    }
}

enum CheckpointCmd {
    Now(oneshot::Sender<Result<usize, SpoolError>>),
    Stop {
        deadline: Instant,
        reply: oneshot::Sender<Result<(), ReporterError>>,
    },
}

enum ProviderCmd {
    Round {
        include_open: bool,
        reply: oneshot::Sender<RoundStats>,
    },
    Drain {
        deadline: Instant,
        reply: oneshot::Sender<RoundStats>,
    },
}

/// Starts reporters. See the module docs.
#[derive(Debug)]
#[non_exhaustive]
pub struct Reporter;

impl Reporter {
    /// Spawns the checkpoint task, a prune task and one task per provider on the current
    /// tokio runtime.
    ///
    /// First restores the customer states stored in the spool by merged checkpoints
    /// ([`Spool::accounts`]) into `engine` (counted in [`ReporterStats::accounts_restored`]).
    /// For the customers it holds, the spool is authoritative for status, plan, balance and
    /// quota usage: start the reporter **after** [`StateSync::start`](crate::StateSync::start)
    /// (whose store may hold balances newer than the usage in the spool, that is credits
    /// spent by usage a crash lost) and before changing customers' state.
    ///
    /// Fails, before spawning anything, when two routes share a provider name (the name
    /// keys the provider's entries in the spool), when a provider refuses a meter routed to
    /// it ([`BillingProvider::check_meter`]), or when an option is out of range.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(
        engine: Engine,
        spool: Arc<dyn Spool>,
        providers: Vec<ProviderRoute>,
        options: ReporterOptions,
    ) -> Result<ReporterHandle, ReporterError> {
        options.validate()?;
        let routes: Arc<[SpoolRoute]> = providers
            .iter()
            .map(|p| SpoolRoute {
                provider: p.provider.name().to_owned(),
                meters: p.meters.clone(),
            })
            .collect();
        for (i, r) in routes.iter().enumerate() {
            if routes[..i].iter().any(|o| o.provider == r.provider) {
                return Err(ReporterError::DuplicateProvider {
                    name: r.provider.clone(),
                });
            }
        }
        let meters = engine.meter_aggregations();
        for p in &providers {
            let route = SpoolRoute {
                provider: p.provider.name().to_owned(),
                meters: p.meters.clone(),
            };
            for (meter, aggregation) in meters.iter().filter(|(m, _)| route.takes(m)) {
                p.provider
                    .check_meter(meter, *aggregation)
                    .map_err(|reason| ReporterError::MeterRefused {
                        provider: route.provider.clone(),
                        meter: meter.clone(),
                        reason,
                    })?;
            }
        }
        for p in &providers {
            let name = p.provider.name();
            let route = SpoolRoute {
                provider: name.to_owned(),
                meters: p.meters.clone(),
            };
            for (meter, configured) in meters.iter().filter(|(m, _)| route.takes(m)) {
                // One key lookup per routed meter (blocking, at start-up only).
                let stored = spool.stored_aggregation(name, meter)?;
                if let Some(stored) = stored
                    && stored != *configured
                {
                    return Err(ReporterError::AggregationChanged {
                        meter: meter.clone(),
                        stored,
                        configured: *configured,
                    });
                }
            }
        }
        // Balances and quota usage as of the last merged checkpoint (blocking, at start-up
        // only): they replace what a StateStore restored, which may be newer than the
        // usage the spool holds.
        let counters = Counters::default();
        for (id, state) in spool.accounts()? {
            match engine.restore_account(id.as_str(), &state) {
                Ok(()) => bump(&counters.accounts_restored, 1),
                Err(e) => {
                    tracing::warn!(customer = %id, error = %e, "customer state in the spool not restored");
                }
            }
        }
        let mut writer = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut writer);
        let shared = Arc::new(Shared {
            engine,
            spool,
            routes,
            options,
            counters,
            writer: hex::encode(writer),
        });
        let (stopping_tx, stopping_rx) = watch::channel(false);

        let (checkpoint_tx, checkpoint_rx) = mpsc::channel(4);
        let checkpoint_task = tokio::spawn(
            checkpoint_loop(Arc::clone(&shared), checkpoint_rx)
                .instrument(tracing::info_span!("reporter.checkpoint")),
        );
        let providers = providers
            .into_iter()
            .map(|route| {
                let (tx, rx) = mpsc::channel(4);
                let name = route.provider.name().to_owned();
                let span = tracing::info_span!("reporter.provider", provider = %name);
                let task = tokio::spawn(
                    provider_loop(Arc::clone(&shared), route, rx, stopping_rx.clone())
                        .instrument(span),
                );
                ProviderTask { name, tx, task }
            })
            .collect();
        let prune_task = tokio::spawn(
            prune_loop(Arc::clone(&shared), stopping_rx)
                .instrument(tracing::info_span!("reporter.prune")),
        );
        Ok(ReporterHandle {
            shared,
            stopping: stopping_tx,
            checkpoint_tx,
            checkpoint_task,
            prune_task,
            providers,
        })
    }
}

struct ProviderTask {
    name: String,
    tx: mpsc::Sender<ProviderCmd>,
    task: JoinHandle<()>,
}

/// Controls a running reporter. Dropping it stops the reporter after one last checkpoint,
/// without sending the open window: call [`ReporterHandle::shutdown`] for a graceful stop.
pub struct ReporterHandle {
    shared: Arc<Shared>,
    stopping: watch::Sender<bool>,
    checkpoint_tx: mpsc::Sender<CheckpointCmd>,
    checkpoint_task: JoinHandle<()>,
    prune_task: JoinHandle<()>,
    providers: Vec<ProviderTask>,
}

impl std::fmt::Debug for ReporterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReporterHandle")
            .field(
                "providers",
                &self.providers.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ReporterHandle {
    /// The reporter's counters.
    pub fn stats(&self) -> ReporterStats {
        self.shared.counters.snapshot()
    }

    /// Checkpoints now, then sends everything pending to every provider, the open window
    /// included (its entry is sealed: later usage of the window goes to the next part),
    /// except open windows of non-additive meters (`max`, `latest`, `unique_count`): a
    /// provider would sum their parts, so they wait until the window closes. Failed
    /// deliveries stay pending for the next round.
    pub async fn flush_now(&self) -> Result<ReportSummary, ReporterError> {
        let (reply, rx) = oneshot::channel();
        self.checkpoint_tx
            .send(CheckpointCmd::Now(reply))
            .await
            .map_err(|_| ReporterError::Stopped)?;
        rx.await.map_err(|_| ReporterError::Stopped)??;
        let mut replies = Vec::new();
        for p in &self.providers {
            let (reply, rx) = oneshot::channel();
            p.tx.send(ProviderCmd::Round {
                include_open: true,
                reply,
            })
            .await
            .map_err(|_| ReporterError::Stopped)?;
            replies.push(rx);
        }
        for rx in replies {
            rx.await.map_err(|_| ReporterError::Stopped)?;
        }
        self.summary().await
    }

    /// After the final checkpoint and the drain: usage recorded meanwhile (requests still
    /// running) is merged into the spool for the next reporter, counted and logged once.
    async fn sweep_late_usage(&self) -> u64 {
        let late = self.shared.engine.checkpoint();
        let accounts = snapshot_accounts(&self.shared.engine, &late);
        if late.is_empty() && accounts.is_empty() {
            return 0;
        }
        let routes = Arc::clone(&self.shared.routes);
        let window_secs = self.shared.options.window_secs();
        let checkpoint = Checkpoint::unsequenced(unix_now(), compact(late)).with_accounts(accounts);
        if checkpoint.deltas.is_empty() {
            // Operator changes after the final checkpoint: saved, nothing to report.
            if let Err(e) = self
                .shared
                .spool(move |s| s.merge_checkpoints(&routes, &[checkpoint], window_secs))
                .await
            {
                tracing::error!(error = %e, "customer states changed at shutdown could not be saved");
            }
            return 0;
        }
        let late = &checkpoint.deltas;
        let cells = late.len() as u64;
        tracing::error!(
            cells,
            "usage was recorded after the final checkpoint (requests still running at shutdown): \
             kept in the spool for the next run; stop the server before the reporter"
        );
        self.shared
            .engine
            .emit(Event::new(None, EventKind::UsageAfterShutdown { cells }));
        if let Err(e) = self
            .shared
            .spool(move |s| s.merge_checkpoints(&routes, &[checkpoint], window_secs))
            .await
        {
            tracing::error!(error = %e, cells, "late usage could not be saved");
        }
        cells
    }

    async fn summary(&self) -> Result<ReportSummary, ReporterError> {
        let pending_left = self.shared.spool(|s| s.pending_count(None)).await?;
        let stats = self.shared.counters.snapshot();
        Ok(ReportSummary {
            records_sent: stats.records_sent,
            dead_letters: stats.dead_letters,
            pending_left,
            stats,
            late_cells: 0,
        })
    }

    /// The one obvious way to stop a monetized server: waits for `server` to finish (give
    /// it a graceful shutdown, such as axum's `with_graceful_shutdown`, so that requests
    /// in flight finish and are metered), then [`shutdown`](Self::shutdown)s the reporter.
    /// A server error is logged and the reporter is still shut down (usage is never left
    /// behind because the server failed).
    ///
    /// ```no_run
    /// # async fn run(reporter: monetize_core::report::ReporterHandle, listener: tokio::net::TcpListener) {
    /// # let server = async { Ok::<(), std::io::Error>(()) }; // axum::serve(listener, app).with_graceful_shutdown(ctrl_c)
    /// let summary = reporter.shutdown_after(server).await;
    /// # }
    /// ```
    pub async fn shutdown_after<F, E>(self, server: F) -> Result<ReportSummary, ReporterError>
    where
        F: std::future::IntoFuture<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the server stopped with an error; saving and reporting usage anyway");
        }
        self.shutdown().await
    }

    /// Stops the reporter gracefully: a final checkpoint, then everything pending is sent,
    /// the open window included (windows of non-additive meters stay pending until they
    /// close: see [`TakeRequest::include_open`]), retrying until nothing is left or
    /// `shutdown_timeout` passes. What is still pending then stays in the spool
    /// (`pending_left`) for the next reporter. Fails with [`ReporterError::Unsaved`]
    /// (carrying the usage) if the final merge kept failing.
    ///
    /// Stop the server first ([`shutdown_after`](Self::shutdown_after)): usage recorded
    /// after the final checkpoint (by requests still running) is merged into the spool at
    /// the end for the next reporter, counted in [`ReportSummary::late_cells`], logged
    /// once and raised as [`EventKind::UsageAfterShutdown`]; usage recorded after this
    /// returns is lost.
    pub async fn shutdown(self) -> Result<ReportSummary, ReporterError> {
        let deadline = Instant::now() + self.shared.options.shutdown_timeout;
        tracing::info!("reporter shutting down");
        // Cut backoff waits of rounds in progress short.
        let _ = self.stopping.send(true);
        let (reply, rx) = oneshot::channel();
        let saved = match self
            .checkpoint_tx
            .send(CheckpointCmd::Stop { deadline, reply })
            .await
        {
            Ok(()) => rx.await.unwrap_or(Err(ReporterError::Stopped)),
            Err(_) => Err(ReporterError::Stopped),
        };
        let mut replies = Vec::new();
        for p in &self.providers {
            let (reply, rx) = oneshot::channel();
            if p.tx
                .send(ProviderCmd::Drain { deadline, reply })
                .await
                .is_ok()
            {
                replies.push((p.name.clone(), rx));
            }
        }
        let mut stopped = replies.len() != self.providers.len();
        for (name, rx) in replies {
            match rx.await {
                Ok(round) => tracing::info!(
                    provider = %name,
                    sent = round.accepted,
                    left = round.left,
                    "provider drained"
                ),
                Err(_) => stopped = true,
            }
        }
        let late_cells = self.sweep_late_usage().await;
        let summary = self.summary().await.map(|mut s| {
            s.late_cells = late_cells;
            s
        });
        let ReporterHandle {
            checkpoint_task,
            prune_task,
            providers,
            ..
        } = self;
        stopped |= checkpoint_task.await.is_err();
        stopped |= prune_task.await.is_err();
        for p in providers {
            stopped |= p.task.await.is_err();
        }
        saved?;
        if stopped {
            return Err(ReporterError::Stopped);
        }
        let summary = summary?;
        tracing::info!(
            sent = summary.records_sent,
            pending_left = summary.pending_left,
            dead_letters = summary.dead_letters,
            "reporter stopped"
        );
        Ok(summary)
    }
}

// ---------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------

/// The checkpoint task's state: checkpoints whose merge has not been confirmed.
struct Carry {
    /// The last checkpoint number used.
    seq: u64,
    /// Checkpoints whose merge failed (each may or may not have committed), oldest first.
    pending: Vec<Checkpoint>,
}

impl Carry {
    fn deltas(&mut self) -> Vec<Delta> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .flat_map(|c| c.deltas)
            .collect()
    }
}

async fn checkpoint_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<CheckpointCmd>) {
    let mut carry = Carry {
        seq: 0,
        pending: Vec::new(),
    };
    let mut tick = tokio::time::interval(shared.options.checkpoint_interval.max(MIN_INTERVAL));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let _ = checkpoint_once(&shared, &mut carry).await;
            }
            cmd = rx.recv() => match cmd {
                Some(CheckpointCmd::Now(reply)) => {
                    let _ = reply.send(checkpoint_once(&shared, &mut carry).await);
                }
                Some(CheckpointCmd::Stop { deadline, reply }) => {
                    let _ = reply.send(final_checkpoint(&shared, &mut carry, deadline).await);
                    return;
                }
                None => {
                    // The handle was dropped: save what we hold, best effort.
                    if let Err(e) = checkpoint_once(&shared, &mut carry).await {
                        tracing::error!(error = %e, checkpoints = carry.pending.len(), "usage not saved at stop");
                    }
                    return;
                }
            }
        }
    }
}

async fn final_checkpoint(
    shared: &Shared,
    carry: &mut Carry,
    deadline: Instant,
) -> Result<(), ReporterError> {
    loop {
        match checkpoint_once(shared, carry).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() + shared.options.min_backoff < deadline => {
                tracing::warn!(error = %e, "final checkpoint failed; retrying");
                tokio::time::sleep(shared.options.min_backoff.max(MIN_INTERVAL)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, checkpoints = carry.pending.len(), "final checkpoint failed");
                return Err(ReporterError::Unsaved {
                    deltas: carry.deltas(),
                    source: e,
                });
            }
        }
    }
}

/// After failed merges: asks the spool which checkpoints committed anyway, drops them, and
/// folds the others (none committed) into one checkpoint per report window. If the spool
/// cannot say, everything is kept as it is (the merge skips what committed).
async fn resolve_carry(shared: &Shared, carry: &mut Carry) {
    let writer = shared.writer.clone();
    let last = match shared.spool(move |s| s.last_checkpoint(&writer)).await {
        Ok(last) => last,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the last merged checkpoint");
            return;
        }
    };
    let before = carry.pending.len();
    carry.pending.retain(|c| c.seq > last);
    let skipped = before - carry.pending.len();
    if skipped > 0 {
        bump(&shared.counters.checkpoints_already_merged, skipped);
        tracing::warn!(
            checkpoints = skipped,
            "checkpoints reported as failed had been merged; not merging them again"
        );
    }
    let window_secs = shared.options.window_secs();
    // Account snapshots, oldest first, move to the newest checkpoint (merged last): folding
    // by window reorders checkpoints, and an older snapshot must never replace a newer one.
    let mut latest: Vec<(CustomerId, AccountState)> = Vec::new();
    let mut index: HashMap<CustomerId, usize> = HashMap::new();
    for c in &mut carry.pending {
        for (id, state) in std::mem::take(&mut c.accounts) {
            match index.get(&id) {
                Some(&i) => latest[i].1 = state,
                None => {
                    index.insert(id.clone(), latest.len());
                    latest.push((id, state));
                }
            }
        }
    }
    let mut folded: Vec<Checkpoint> = Vec::new();
    for c in std::mem::take(&mut carry.pending) {
        let window = ReportWindow::containing(c.taken_unix, window_secs);
        match folded
            .iter_mut()
            .find(|f| ReportWindow::containing(f.taken_unix, window_secs) == window)
        {
            Some(f) => {
                f.seq = f.seq.max(c.seq);
                let mut deltas = std::mem::take(&mut f.deltas);
                deltas.extend(c.deltas);
                f.deltas = compact(deltas);
            }
            None => folded.push(c),
        }
    }
    folded.sort_by_key(|c| c.seq);
    if let Some(last) = folded.last_mut() {
        last.accounts = latest;
    }
    carry.pending = folded;
}

/// Merges the engine's deltas (and any kept from failed merges) into the spool. The deltas
/// are dated by the time of the swap, kept through failed merges; each checkpoint carries
/// a sequence number so a retry never adds a committed one twice. On failure the
/// checkpoints are kept in `carry`.
async fn checkpoint_once(shared: &Shared, carry: &mut Carry) -> Result<usize, SpoolError> {
    // Engine housekeeping (coarse clock, quota periods) rides on the checkpoint tick.
    shared.engine.tick();
    let taken_unix = unix_now();
    let fresh = shared.engine.checkpoint();
    let accounts = snapshot_accounts(&shared.engine, &fresh);
    if fresh.is_empty() && accounts.is_empty() && carry.pending.is_empty() {
        bump(&shared.counters.checkpoints, 1);
        return Ok(0);
    }
    if !carry.pending.is_empty() {
        resolve_carry(shared, carry).await;
    }
    if !fresh.is_empty() || !accounts.is_empty() {
        carry.seq += 1;
        carry.pending.push(
            Checkpoint::new(shared.writer.clone(), carry.seq, taken_unix, compact(fresh))
                .with_accounts(accounts),
        );
    }
    let batch = Arc::new(std::mem::take(&mut carry.pending));
    let checkpoints = Arc::clone(&batch);
    let routes = Arc::clone(&shared.routes);
    let window_secs = shared.options.window_secs();
    let result = shared
        .spool(move |s| s.merge_checkpoints(&routes, &checkpoints, window_secs))
        .await;
    match result {
        Ok(n) => {
            bump(&shared.counters.checkpoints, 1);
            tracing::debug!(checkpoints = batch.len(), merged = n, "checkpoint merged");
            Ok(n)
        }
        Err(e) => {
            bump(&shared.counters.merge_failures, 1);
            carry.pending = Arc::try_unwrap(batch).unwrap_or_else(|a| (*a).clone());
            tracing::warn!(
                error = %e,
                kept = carry.pending.len(),
                "checkpoint merge failed (it may have committed); checkpoints kept for the next one"
            );
            Err(e)
        }
    }
}

/// The state of every customer whose usage `deltas` took, or whose state an operator
/// changed, read right after the swap (background work on the checkpoint task: the request
/// path is not involved). A spend racing with the swap lands in this snapshot or the next,
/// like its usage.
fn snapshot_accounts(engine: &Engine, deltas: &[Delta]) -> Vec<(CustomerId, AccountState)> {
    let mut ids: Vec<CustomerId> = engine.take_changed_accounts();
    ids.extend(deltas.iter().map(|d| d.customer.clone()));
    ids.sort_unstable();
    ids.dedup();
    engine.accounts_of(ids)
}

/// Folds deltas of the same customer and meter together, older first.
fn compact(deltas: Vec<Delta>) -> Vec<Delta> {
    let mut index: HashMap<(CustomerId, MeterId), usize> = HashMap::with_capacity(deltas.len());
    let mut out: Vec<Delta> = Vec::with_capacity(deltas.len());
    for d in deltas {
        match index.get(&(d.customer.clone(), d.meter.clone())) {
            Some(&i) => out[i].measure.merge(&d.measure),
            None => {
                index.insert((d.customer.clone(), d.meter.clone()), out.len());
                out.push(d);
            }
        }
    }
    out
}

/// Deletes acknowledged records whose window ended before the retention horizon, every
/// [`PRUNE_EVERY`], in small transactions of its own (never on the checkpoint task).
async fn prune_loop(shared: Arc<Shared>, mut stopping: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let retention = shared.options.audit_retention.as_secs();
        let before = unix_now().saturating_sub(retention);
        let mut after = None;
        let mut total = 0;
        loop {
            if *stopping.borrow() {
                return;
            }
            let from = after.clone();
            let batch = shared
                .spool(move |s| s.prune_batch(before, from.as_ref(), PRUNE_BATCH))
                .await;
            match batch {
                Ok(p) => {
                    total += p.deleted;
                    match p.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning acknowledged records failed");
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(pruned = total, "pruned old acknowledged records");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------

/// What a round (or a drain) did.
#[derive(Clone, Copy, Debug, Default)]
struct RoundStats {
    taken: usize,
    accepted: usize,
    dead: usize,
    /// Records handed out but neither acknowledged nor dead-lettered.
    left: usize,
    /// The spool failed.
    failed: bool,
}

impl RoundStats {
    fn add(&mut self, o: RoundStats) {
        self.taken += o.taken;
        self.accepted += o.accepted;
        self.dead += o.dead;
        self.left += o.left;
        self.failed |= o.failed;
    }
}

async fn provider_loop(
    shared: Arc<Shared>,
    route: ProviderRoute,
    mut rx: mpsc::Receiver<ProviderCmd>,
    stopping: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(route.report_interval.max(MIN_INTERVAL));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut gate = ProviderState::default();
    loop {
        let stop = *stopping.borrow();
        tokio::select! {
            _ = tick.tick(), if !stop => {
                let limits = interruptible(&stopping);
                round(&shared, &*route.provider, false, limits, &mut gate).await;
            }
            cmd = rx.recv() => match cmd {
                Some(ProviderCmd::Round { include_open, reply }) => {
                    let limits = interruptible(&stopping);
                    let stats =
                        round(&shared, &*route.provider, include_open, limits, &mut gate).await;
                    let _ = reply.send(stats);
                }
                Some(ProviderCmd::Drain { deadline, reply }) => {
                    let stats = drain(&shared, &*route.provider, deadline, &mut gate).await;
                    let _ = reply.send(stats);
                    return;
                }
                None => return,
            }
        }
    }
}

fn interruptible(stopping: &watch::Receiver<bool>) -> Limits {
    Limits {
        interrupt: Some(stopping.clone()),
        deadline: None,
    }
}

/// Sends everything pending, the open window included, until nothing is left or the
/// deadline passes. Spool operations are never cut short (only provider calls and waits
/// are), so none is in flight when this returns.
async fn drain(
    shared: &Shared,
    provider: &dyn BillingProvider,
    deadline: Instant,
    gate: &mut ProviderState,
) -> RoundStats {
    let mut total = RoundStats::default();
    let limits = Limits {
        interrupt: None,
        deadline: Some(deadline),
    };
    loop {
        if Instant::now() >= deadline {
            tracing::warn!("shutdown deadline reached; the rest stays in the spool");
            break;
        }
        let r = round(shared, provider, true, limits.clone(), gate).await;
        total.add(r);
        if r.taken == 0 && !r.failed {
            break;
        }
        if r.left > 0 || r.failed {
            let pause = shared.options.min_backoff.max(MIN_INTERVAL);
            if !limits.clone().pause(pause).await {
                tracing::warn!("shutdown deadline reached; the rest stays in the spool");
                break;
            }
        }
    }
    total
}

/// What a provider task remembers across rounds.
#[derive(Default)]
struct ProviderState {
    /// No call before this instant (set by a throttle).
    gate: Option<Instant>,
    /// An unauthorized alert was raised and no call succeeded since.
    unauthorized: bool,
    /// When the current streak of failed calls began (none: the last call succeeded).
    failing_since: Option<Instant>,
    /// `ProviderFailing` was raised for the current streak.
    failing_raised: bool,
}

/// Notes a failed call: raises [`EventKind::ProviderFailing`] once per streak of failed
/// calls that has lasted [`ReporterOptions::provider_failing_after`].
fn failed_call(shared: &Shared, provider: &str, gate: &mut ProviderState, message: &str) {
    let since = *gate.failing_since.get_or_insert_with(Instant::now);
    let lasted = since.elapsed();
    if !gate.failing_raised && lasted >= shared.options.provider_failing_after {
        gate.failing_raised = true;
        tracing::error!(provider, failing_for = ?lasted, %message, "provider failing for longer than the alert threshold");
        shared.engine.emit(Event::new(
            None,
            EventKind::ProviderFailing {
                provider: provider.to_owned(),
                failing_for_secs: lasted.as_secs(),
                message: message.to_owned(),
            },
        ));
    }
}

/// When a round must stop early: a shutdown began (`interrupt` turned true) or the
/// deadline passed.
#[derive(Clone, Default)]
struct Limits {
    interrupt: Option<watch::Receiver<bool>>,
    deadline: Option<Instant>,
}

impl Limits {
    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
            || self.interrupt.as_ref().is_some_and(|i| *i.borrow())
    }

    /// The call timeout, shortened to the deadline.
    fn call_timeout(&self, call_timeout: Duration) -> Duration {
        match self.deadline {
            Some(d) => call_timeout.min(d.saturating_duration_since(Instant::now())),
            None => call_timeout,
        }
    }

    /// Waits `delay`; false (at once) if the wait would end past the deadline, or as soon
    /// as a shutdown begins.
    async fn pause(&mut self, delay: Duration) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() + delay >= d) {
            return false;
        }
        match self.interrupt.as_mut() {
            None => {
                tokio::time::sleep(delay).await;
                true
            }
            Some(stop) => tokio::select! {
                _ = tokio::time::sleep(delay) => true,
                _ = stop.wait_for(|s| *s) => false,
            },
        }
    }
}

/// One report round: batches of due records until none is due, a batch is partial, or a
/// batch leaves records undelivered.
async fn round(
    shared: &Shared,
    provider: &dyn BillingProvider,
    include_open: bool,
    mut limits: Limits,
    gate: &mut ProviderState,
) -> RoundStats {
    let name = provider.name().to_owned();
    let max_batch = provider.max_batch().max(1);
    let instance = shared.engine.instance().to_owned();
    let horizon = provider.dedup_horizon();
    let mut stats = RoundStats::default();
    let mut after = None;
    for _ in 0..MAX_BATCHES_PER_ROUND {
        if let Some(wait) = gate
            .gate
            .and_then(|t| t.checked_duration_since(Instant::now()))
            && !limits.pause(wait).await
        {
            break;
        }
        if limits.expired() {
            break;
        }
        let now = unix_now();
        // Past the horizon the provider may have forgotten the key: never resend blindly.
        let resend_before = if horizon == Duration::MAX {
            0
        } else {
            now.saturating_sub(horizon.as_secs())
        };
        let request = TakeRequest::new(name.clone(), instance.clone(), now, max_batch)
            .include_open(include_open)
            .resend_before(resend_before)
            .after(after.take());
        let taken = shared.spool(move |s| s.take(&request)).await;
        let taken = match taken {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take due records; retrying next round");
                stats.failed = true;
                break;
            }
        };
        settle_side_effects(shared, &taken);
        after = taken.next;
        let batch = taken.records;
        if batch.is_empty() {
            if after.is_none() {
                break;
            }
            continue;
        }
        let full = batch.len() >= max_batch;
        stats.taken += batch.len();
        let d = deliver(shared, provider, batch, limits.clone(), gate).await;
        stats.add(d);
        if d.left > 0 || (!full && after.is_none()) {
            break;
        }
    }
    if stats.taken > 0 {
        tracing::debug!(
            taken = stats.taken,
            accepted = stats.accepted,
            dead = stats.dead,
            left = stats.left,
            "report round done"
        );
    }
    stats
}

/// Raises the events of what `take` moved aside: records past the deduplication horizon
/// and quarantined rows.
fn settle_side_effects(shared: &Shared, taken: &Taken) {
    for r in &taken.to_reconcile {
        bump(&shared.counters.to_reconcile, 1);
        tracing::error!(
            provider = %r.provider,
            customer = %r.customer,
            key = %r.idempotency_key,
            quantity = r.quantity,
            "usage record past the provider's deduplication horizon; moved to reconciliation"
        );
        shared.engine.emit(Event::new(
            Some(r.customer.clone()),
            EventKind::NeedsReconciliation {
                provider: r.provider.clone(),
                idempotency_key: r.idempotency_key.clone(),
                quantity: r.quantity,
            },
        ));
    }
    for (key, reason) in &taken.quarantined {
        bump(&shared.counters.quarantined, 1);
        shared.engine.emit(Event::new(
            None,
            EventKind::SpoolRowQuarantined {
                key: key.clone(),
                reason: reason.clone(),
            },
        ));
    }
}

/// Sends one batch, retrying what is not settled with backoff, and settles the outcomes.
/// A throttle sets `gate`: no call to this provider before it, in this round or the next.
async fn deliver(
    shared: &Shared,
    provider: &dyn BillingProvider,
    records: Vec<UsageRecord>,
    mut limits: Limits,
    gate: &mut ProviderState,
) -> RoundStats {
    let opts = &shared.options;
    let mut stats = RoundStats::default();
    let mut backoff = opts.backoff();
    let mut remaining = records;
    loop {
        let call_timeout = limits.call_timeout(opts.call_timeout);
        let call = tokio::time::timeout(call_timeout, provider.report(&remaining)).await;
        let wait = match call {
            Err(_) => {
                bump(&shared.counters.call_failures, 1);
                tracing::warn!(
                    records = remaining.len(),
                    timeout = ?call_timeout,
                    "provider call timed out; outcome unknown, resending with the same keys"
                );
                failed_call(shared, provider.name(), gate, "call timed out");
                backoff.next()
            }
            Ok(Err(ProviderError::Retryable { message })) => {
                bump(&shared.counters.call_failures, 1);
                tracing::warn!(records = remaining.len(), %message, "provider call failed; retrying");
                failed_call(shared, provider.name(), gate, &message);
                backoff.next()
            }
            Ok(Err(ProviderError::Unauthorized { message })) => {
                bump(&shared.counters.call_failures, 1);
                failed_call(shared, provider.name(), gate, &message);
                if !gate.unauthorized {
                    gate.unauthorized = true;
                    tracing::error!(records = remaining.len(), %message, "provider refused the credentials; retrying (check the API key)");
                    shared.engine.emit(Event::new(
                        None,
                        EventKind::ProviderUnauthorized {
                            provider: provider.name().to_owned(),
                            message,
                        },
                    ));
                }
                backoff.next()
            }
            Ok(Err(ProviderError::Throttled {
                retry_after,
                message,
            })) => {
                bump(&shared.counters.call_failures, 1);
                tracing::info!(?retry_after, %message, "provider throttled");
                failed_call(shared, provider.name(), gate, &message);
                gate.gate = Some(Instant::now() + retry_after);
                backoff.next().map(|d| d.max(retry_after))
            }
            Ok(Err(ProviderError::Permanent { message })) => {
                bump(&shared.counters.call_failures, 1);
                tracing::error!(records = remaining.len(), %message, "provider refused the batch for good");
                let batch = std::mem::take(&mut remaining);
                let (dead, left) = dead_letter(shared, batch, message).await;
                stats.dead += dead;
                stats.left += left;
                None
            }
            Ok(Ok(outcomes)) if outcomes.len() != remaining.len() => {
                bump(&shared.counters.call_failures, 1);
                tracing::error!(
                    sent = remaining.len(),
                    answered = outcomes.len(),
                    "provider answered the wrong number of outcomes; retrying"
                );
                backoff.next()
            }
            Ok(Ok(outcomes)) => {
                gate.failing_since = None;
                gate.failing_raised = false;
                if gate.unauthorized {
                    gate.unauthorized = false;
                    tracing::info!("provider accepts the credentials again");
                }
                let mut accepted = Vec::new();
                let mut rejected: Vec<(UsageRecord, String)> = Vec::new();
                let mut retry = Vec::new();
                for (record, outcome) in std::mem::take(&mut remaining).into_iter().zip(outcomes) {
                    match outcome {
                        RecordOutcome::Accepted => accepted.push(record),
                        RecordOutcome::Rejected { reason } => rejected.push((record, reason)),
                        RecordOutcome::Retry { reason } => {
                            tracing::debug!(key = %record.idempotency_key, %reason, "record to retry");
                            retry.push(record);
                        }
                    }
                }
                if !accepted.is_empty() {
                    let n = accepted.len();
                    match shared.spool(move |s| s.ack(&accepted, unix_now())).await {
                        Ok(moved) => {
                            bump(&shared.counters.records_sent, moved);
                            stats.accepted += n;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, records = n, "cannot store acknowledgements; the records will be resent with the same keys");
                            stats.left += n;
                            stats.failed = true;
                        }
                    }
                }
                for (record, reason) in rejected {
                    let (dead, left) = dead_letter(shared, vec![record], reason).await;
                    stats.dead += dead;
                    stats.left += left;
                }
                remaining = retry;
                if remaining.is_empty() {
                    None
                } else {
                    backoff.next()
                }
            }
        };
        if remaining.is_empty() {
            break;
        }
        let Some(delay) = wait else {
            tracing::info!(
                records = remaining.len(),
                "retries exhausted for this round; records stay pending"
            );
            break;
        };
        for r in &mut remaining {
            r.attempts = r.attempts.saturating_add(1);
        }
        if !limits.pause(delay).await {
            break;
        }
    }
    stats.left += remaining.len();
    stats
}

/// Moves records to the dead letter list and raises an event for each. Returns (moved,
/// left pending).
async fn dead_letter(shared: &Shared, records: Vec<UsageRecord>, reason: String) -> (usize, usize) {
    let n = records.len();
    let events: Vec<(CustomerId, String, String)> = records
        .iter()
        .map(|r| {
            (
                r.customer.clone(),
                r.provider.clone(),
                r.idempotency_key.clone(),
            )
        })
        .collect();
    let why = reason.clone();
    match shared
        .spool(move |s| s.dead_letter(&records, &why, unix_now()))
        .await
    {
        Ok(moved) => {
            bump(&shared.counters.dead_letters, moved);
            for (customer, provider, idempotency_key) in events {
                tracing::error!(%provider, %customer, key = %idempotency_key, %reason, "usage record dead-lettered");
                shared.engine.emit(Event::new(
                    Some(customer),
                    EventKind::DeadLetter {
                        provider,
                        idempotency_key,
                        reason: reason.clone(),
                    },
                ));
            }
            (n, 0)
        }
        Err(e) => {
            tracing::warn!(error = %e, records = n, "cannot store dead letters; the records stay pending");
            (0, n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Measure;
    use crate::report::Spool;

    fn d(c: &str, m: &str, measure: Measure) -> Delta {
        Delta::new(
            CustomerId::new(c).unwrap(),
            MeterId::new(m).unwrap(),
            measure,
        )
    }

    #[test]
    fn compact_folds_same_cell_in_order() {
        let out = compact(vec![
            d("c1", "a", Measure::Sum(1)),
            d("c2", "a", Measure::Sum(2)),
            d("c1", "a", Measure::Sum(3)),
            d("c1", "g", Measure::Latest(5)),
            d("c1", "g", Measure::Latest(4)),
        ]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].measure, Measure::Sum(4));
        assert_eq!(out[1].measure, Measure::Sum(2));
        assert_eq!(out[2].measure, Measure::Latest(4), "newer gauge wins");
    }

    #[test]
    fn options_and_routes_follow_the_config() {
        let mut config = crate::config::ReportingConfig {
            checkpoint_interval_ms: 250,
            window_secs: 3600,
            ..Default::default()
        };
        let mut entry = crate::config::ProviderRouteConfig::new("ledger");
        entry.report_interval_ms = 500;
        entry.meters = Some(vec!["calls".into()]);
        config.providers.push(entry);
        let o = ReporterOptions::from(&config);
        assert_eq!(o.checkpoint_interval, Duration::from_millis(250));
        assert_eq!(o.window, Duration::from_secs(3600));
        let ledger = Arc::new(crate::ledger::LedgerProvider::new());
        let r = ProviderRoute::from_config(ledger, &config);
        assert_eq!(r.report_interval, Duration::from_millis(500));
        assert_eq!(r.meters, Some(vec![MeterId::new("calls").unwrap()]));
        let other = Arc::new(crate::ledger::LedgerProvider::new().with_name("stripe"));
        let r = ProviderRoute::from_config(other, &config);
        assert_eq!(
            (r.report_interval, r.meters),
            (Duration::from_secs(10), None)
        );
    }

    /// Issue 10 item 9: a corrupt row is quarantined once with an event, and the rest is
    /// reported.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_row_is_quarantined_with_an_event() {
        use crate::report::MemorySpool;
        use crate::report::spool_kv::{RowKey, Table};
        let engine = Engine::for_tests(&["calls"]);
        let spool = Arc::new(MemorySpool::new());
        let bad = RowKey {
            provider: "ledger".into(),
            meter: "calls".into(),
            customer: "c0".into(),
            window_start: 60,
            part: 0,
        };
        spool.put_raw(Table::Pending, bad, &[7, 7, 7]);
        let ledger = Arc::new(crate::ledger::LedgerProvider::new());
        let reporter = Reporter::start(
            engine.clone(),
            spool.clone(),
            vec![ProviderRoute::new(ledger.clone())],
            ReporterOptions::default().with_checkpoint_interval(Duration::from_millis(10)),
        )
        .unwrap();
        engine.record_by_id("c1", "calls", 3).unwrap();
        let summary = reporter.shutdown().await.unwrap();
        assert_eq!(ledger.total("calls", "c1"), 3);
        assert_eq!(
            summary.pending_left, 0,
            "the corrupt row no longer blocks anything"
        );
        assert_eq!(summary.stats.quarantined, 1);
        let events = engine.drain_events(100);
        let quarantined: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::SpoolRowQuarantined { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(quarantined, vec!["ledger/calls/c0/60#0".to_owned()]);
        assert_eq!(spool.quarantined().unwrap().len(), 1);
    }

    #[test]
    fn options_have_safe_defaults() {
        let o = ReporterOptions::default()
            .with_window(Duration::from_millis(10))
            .with_max_retries(2)
            .with_min_backoff(Duration::from_millis(5))
            .with_max_backoff(Duration::from_millis(1));
        assert_eq!(o.window_secs(), 1);
        let delays: Vec<Duration> = o.backoff().collect();
        assert_eq!(delays.len(), 2);
        // jitter adds at most the delay itself; the max never goes below the min
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(5)));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(10)));
    }
}
