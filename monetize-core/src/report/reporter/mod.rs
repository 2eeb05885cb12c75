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

mod checkpoint;
mod handle;
mod options;
mod prune;
mod round;
#[cfg(test)]
mod tests;

use checkpoint::checkpoint_loop;
pub use handle::ReporterHandle;
pub use options::{ProviderRoute, ReporterOptions};
use prune::prune_loop;
use round::RoundStats;
use round::provider_loop;

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
