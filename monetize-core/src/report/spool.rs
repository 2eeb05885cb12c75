//! The spool: durable usage between a checkpoint and the provider's acknowledgement.
//!
//! Usage moves through the spool in three steps, each one atomic:
//!
//! 1. [`Spool::merge_checkpoints`] adds a checkpoint's deltas into a *pending* entry keyed by
//!    (provider, meter, customer, report window, part), one per provider that takes the
//!    meter. The window is the one containing the checkpoint's swap time
//!    ([`Checkpoint::taken_unix`]), whenever the merge happens. Each checkpoint carries a
//!    sequence number of its writer, stored in the same transaction: a checkpoint at or
//!    below the stored number is skipped, so a retry of a merge that did commit adds
//!    nothing.
//! 2. [`Spool::take`] hands out pending entries as [`UsageRecord`]s and *seals* them in the
//!    same transaction: from then on the entry's quantity and idempotency key never change.
//!    Usage that arrives for a sealed window goes to the next *part* (a new entry with its own
//!    key). Because a key always names the same quantity, a provider that deduplicates on it
//!    bills every unit once, however often the record is sent: this is the core of "never
//!    billed twice". A sealed entry that is not acknowledged is handed out again by the next
//!    `take` (same key and quantity, one more attempt), in this process or after a restart,
//!    until its first handout is older than the provider's deduplication horizon: then it
//!    moves to the *reconciliation* list instead (see [`TakeRequest::resend_before_unix`]).
//! 3. [`Spool::ack`] moves acknowledged entries to the *acknowledged* table (kept for audit,
//!    pruned once their window ended before the retention horizon with
//!    [`Spool::prune_batch`]); [`Spool::dead_letter`] moves refused ones to the *dead
//!    letter* table (kept until an operator acts, see [`Spool::requeue`]).
//!
//! # Idempotency keys are unique per spool
//!
//! Every spool holds a random *spool id*, created with it and stored in it; every key is
//! derived from it (with the instance name, provider, meter, customer, window and part). Two
//! replicas, or a restart on a new or lost spool, therefore never produce the same key for
//! different quantities, whatever their instance names. Part numbers come from a per-window
//! marker that pruning keeps while the window can still receive usage. What a user must
//! keep unique: **one spool per running process** (a spool file has one writer), and
//! **never restore a spool file from a backup or copy it to another machine** while the
//! original may have handed out records: the copy shares the id and part numbers.
//!
//! Implementations share one algorithm (`spool_kv`), written against a minimal key-value
//! transaction, so they behave alike: [`MemorySpool`](crate::report::MemorySpool) (lost on
//! exit: tests and examples) and [`RedbSpool`](crate::report::spool_redb::RedbSpool) (a
//! file, the embedded default). A remote spool (Redis) would run the same algorithm inside
//! its own transactions.
//!
//! The trait is synchronous: the reporter calls it from `tokio::task::spawn_blocking`, never
//! from the request path.
//!
//! A row that cannot be decoded never causes a panic or the loss of other rows: the listing
//! functions fail with [`SpoolError::Corrupt`] naming the row's key; `take` moves the row to
//! the *quarantine* table (raw bytes kept, see [`Spool::quarantined`]) and reports it in
//! [`Taken::quarantined`], so the reporter raises an event once and goes on.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::id::{CustomerId, MeterId};
use crate::meter::{Aggregation, Measure};
use crate::provider::UsageRecord;
use crate::report::Delta;
use crate::report::dead_letter::DeadLetter;
use crate::store::AccountState;

/// Why a spool operation failed.
///
/// An embedded spool (memory, redb) rolls a failed operation back, but an error can also
/// come after the commit (a lost reply from a remote spool, a task that failed after the
/// write): callers must not assume that an error means no effect. Every operation is made
/// safe to retry instead: merges carry checkpoint sequence numbers, `take` hands sealed
/// entries out again with the same key, `ack` and `dead_letter` skip what already moved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The spool could not be opened or created. Check that the directory exists and is
    /// writable and that no other process has the spool open (a spool file has one writer).
    #[error("cannot open the spool at {path}: {source}")]
    Open {
        /// The spool's location.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A read or write failed. Retry later: the reporter keeps the usage in memory until a
    /// merge succeeds. If it persists, the disk is probably full or failing.
    #[error("spool storage error at {path}: {source}")]
    Storage {
        /// The spool's location.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored row cannot be decoded (written by a newer version, or damaged). Other rows
    /// are unaffected: `take` moves such a row to the quarantine table.
    #[error("corrupt spool row {key}: {reason}")]
    Corrupt {
        /// The row's key (`provider/meter/customer/window_start#part` for usage rows).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The spool cannot serve the operation right now (a wrapper or a remote spool said
    /// so). Retry later.
    #[error("spool unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// Which meters a provider takes, as the spool sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpoolRoute {
    /// The provider's name ([`BillingProvider::name`](crate::provider::BillingProvider::name)).
    pub provider: String,
    /// The meters it takes; `None` for all.
    pub meters: Option<Vec<MeterId>>,
}

impl SpoolRoute {
    /// A provider that takes every meter.
    pub fn all(provider: impl Into<String>) -> Self {
        Self {
            provider: provider.into(),
            meters: None,
        }
    }

    /// A provider that takes only `meters`.
    pub fn only(provider: impl Into<String>, meters: Vec<MeterId>) -> Self {
        Self {
            provider: provider.into(),
            meters: Some(meters),
        }
    }

    /// Whether this provider takes `meter`.
    pub fn takes(&self, meter: &MeterId) -> bool {
        self.meters.as_ref().is_none_or(|m| m.contains(meter))
    }
}

/// One checkpoint's deltas, as merged into the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Checkpoint {
    /// Who wrote it: a random id per reporter run (empty for an unsequenced merge).
    pub writer: String,
    /// The writer's sequence number, increasing from 1; 0 for an unsequenced merge (always
    /// applied). The spool stores the highest merged number per writer in the same
    /// transaction and skips a checkpoint at or below it.
    pub seq: u64,
    /// When the deltas were swapped out of the usage cells, unix seconds: they belong to
    /// the report window containing this time, however late the merge happens.
    pub taken_unix: u64,
    /// The deltas.
    pub deltas: Vec<Delta>,
    /// The state (status, plan, prepaid balance, quota usage this period) of the customers
    /// whose usage was taken, or whose state an operator changed, snapshotted right after
    /// the swap. Written to the spool's accounts table in the same transaction as the
    /// deltas, so spent credits and quota usage are exactly as durable as the usage that
    /// spent them (see [`Spool::accounts`]).
    pub accounts: Vec<(CustomerId, AccountState)>,
}

impl Checkpoint {
    /// A sequenced checkpoint.
    pub fn new(writer: impl Into<String>, seq: u64, taken_unix: u64, deltas: Vec<Delta>) -> Self {
        Self {
            writer: writer.into(),
            seq,
            taken_unix,
            deltas,
            accounts: Vec::new(),
        }
    }

    /// Adds account snapshots (see [`Self::accounts`]).
    pub fn with_accounts(mut self, accounts: Vec<(CustomerId, AccountState)>) -> Self {
        self.accounts = accounts;
        self
    }

    /// A checkpoint merged unconditionally (tests, tools).
    pub fn unsequenced(taken_unix: u64, deltas: Vec<Delta>) -> Self {
        Self::new(String::new(), 0, taken_unix, deltas)
    }
}

/// Where an entry sits in the spool: one per provider, meter, customer, report window and
/// part.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct SpoolKey {
    /// The provider.
    pub provider: String,
    /// The meter.
    pub meter: MeterId,
    /// The customer.
    pub customer: CustomerId,
    /// Start of the report window, unix seconds.
    pub window_start: u64,
    /// 0 for a window's first entry, then 1, 2, ... for usage merged after earlier parts
    /// were sealed.
    pub part: u32,
}

impl SpoolKey {
    /// A key.
    pub fn new(
        provider: impl Into<String>,
        meter: MeterId,
        customer: CustomerId,
        window_start: u64,
        part: u32,
    ) -> Self {
        Self {
            provider: provider.into(),
            meter,
            customer,
            window_start,
            part,
        }
    }

    /// The key of the entry a record was made from.
    pub fn of(record: &UsageRecord) -> Self {
        Self::new(
            record.provider.clone(),
            record.meter.clone(),
            record.customer.clone(),
            record.window_start,
            record.part,
        )
    }
}

impl fmt::Display for SpoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}#{}",
            self.provider, self.meter, self.customer, self.window_start, self.part
        )
    }
}

/// What sealing fixed about an entry: from then on its quantity and key never change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Sealed {
    /// The key every delivery of this entry carries.
    pub idempotency_key: String,
    /// The quantity every delivery of this entry carries.
    pub quantity: u64,
    /// How many times `take` handed the entry out (1 after sealing).
    pub handouts: u32,
    /// When it was sealed (first handed out), unix seconds.
    pub sealed_unix: u64,
}

/// A pending entry: open (still merging) or sealed (handed out, not yet acknowledged).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingEntry {
    /// Where it sits.
    pub key: SpoolKey,
    /// Length of its report window, seconds.
    pub window_secs: u64,
    /// What was merged into it.
    pub measure: Measure,
    /// How its meter aggregates (stored with the entry, so Count and Sum stay apart).
    pub aggregation: Aggregation,
    /// Set once the entry was handed to its provider.
    pub sealed: Option<Sealed>,
}

impl PendingEntry {
    /// The quantity it bills: the sealed quantity, or the current measure's.
    pub fn quantity(&self) -> u64 {
        self.sealed
            .as_ref()
            .map_or_else(|| self.measure.quantity(), |s| s.quantity)
    }
}

/// A record its provider acknowledged, kept for audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Acknowledged {
    /// The record as delivered.
    pub record: UsageRecord,
    /// When the acknowledgement was stored, unix seconds.
    pub at_unix: u64,
}

/// A row moved out of the way because it could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quarantined {
    /// The row's key, as text.
    pub key: String,
    /// Why it could not be used.
    pub reason: String,
    /// The row's stored bytes, untouched.
    pub bytes: Vec<u8>,
}

/// Where settled records wait for an operator: [`Spool::requeue`] sends them again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// Refused for good by the provider ([`Spool::dead_letters`]).
    DeadLetters,
    /// Past the provider's deduplication horizon with an unknown outcome
    /// ([`Spool::to_reconcile`]).
    Reconciliation,
}

/// What [`Spool::take`] is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TakeRequest {
    /// The provider.
    pub provider: String,
    /// The instance name (part of new keys, with the spool id).
    pub instance: String,
    /// The current time, unix seconds.
    pub now_unix: u64,
    /// The most records handed out.
    pub limit: usize,
    /// Also seal and hand out entries of windows still open (flush, shutdown). Entries of
    /// non-additive meters (`max`, `latest`, `unique_count`) are never sealed before their
    /// window closes: a later part would be summed by the provider.
    pub include_open: bool,
    /// A sealed entry first handed out before this time (unix seconds) is not handed out
    /// again: it moves to the reconciliation list (its provider may have forgotten the
    /// key). 0 (the default) disables the check.
    pub resend_before_unix: u64,
    /// Continue the scan after this key (from [`Taken::next`]); `None` starts at the
    /// provider's first entry.
    pub after: Option<SpoolKey>,
}

impl TakeRequest {
    /// A request for up to `limit` due records of `provider`.
    pub fn new(
        provider: impl Into<String>,
        instance: impl Into<String>,
        now_unix: u64,
        limit: usize,
    ) -> Self {
        Self {
            provider: provider.into(),
            instance: instance.into(),
            now_unix,
            limit,
            include_open: false,
            resend_before_unix: 0,
            after: None,
        }
    }

    /// Sets [`Self::include_open`].
    pub fn include_open(mut self, on: bool) -> Self {
        self.include_open = on;
        self
    }

    /// Sets [`Self::resend_before_unix`].
    pub fn resend_before(mut self, unix: u64) -> Self {
        self.resend_before_unix = unix;
        self
    }

    /// Sets [`Self::after`].
    pub fn after(mut self, key: Option<SpoolKey>) -> Self {
        self.after = key;
        self
    }
}

/// What [`Spool::take`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Taken {
    /// Records to deliver, in key order.
    pub records: Vec<UsageRecord>,
    /// Records moved to the reconciliation list by this call.
    pub to_reconcile: Vec<UsageRecord>,
    /// Rows moved to the quarantine table by this call: (key, reason).
    pub quarantined: Vec<(String, String)>,
    /// Where to continue: `Some` when the scan stopped at its bound before the provider's
    /// last entry (a later call with [`TakeRequest::after`] goes on from there).
    pub next: Option<SpoolKey>,
}

/// What [`Spool::prune_batch`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pruned {
    /// Acknowledged records deleted.
    pub deleted: usize,
    /// Where to continue, `None` when the table was scanned to its end.
    pub next: Option<SpoolKey>,
}

/// Durable storage for usage between checkpoint and acknowledgement.
///
/// Every method is one atomic transaction: it happens entirely or not at all. An error
/// does **not** promise that nothing happened (a remote spool may commit and then lose the
/// reply): every method is safe to retry instead (see [`SpoolError`]). Methods block
/// (disk or network I/O): call them from `tokio::task::spawn_blocking` in async code.
pub trait Spool: Send + Sync + 'static {
    /// Merges checkpoints, oldest first, in one transaction. For each checkpoint whose
    /// `seq` is above the highest stored for its writer (or 0), each delta is added into
    /// the open entry of the report window containing `taken_unix` (windows of
    /// `window_secs`), for every route that takes the delta's meter; the checkpoint's
    /// number is stored in the same transaction. Checkpoints at or below the stored number
    /// were merged already and are skipped. If the window's latest entry is sealed (or
    /// acknowledged, or dead-lettered), the delta opens the next part instead. The
    /// checkpoint's [`accounts`](Checkpoint::accounts) replace the stored ones in the same
    /// transaction (a later checkpoint's snapshot replaces an earlier one). Returns how
    /// many (delta, provider) pairs were merged.
    fn merge_checkpoints(
        &self,
        routes: &[SpoolRoute],
        checkpoints: &[Checkpoint],
        window_secs: u64,
    ) -> Result<usize, SpoolError>;

    /// The highest checkpoint number merged for `writer` (0 if none).
    fn last_checkpoint(&self, writer: &str) -> Result<u64, SpoolError>;

    /// The customer states stored by the merged checkpoints (the newest per customer), in
    /// customer order: [`Reporter::start`] restores them into the engine, so that a
    /// restart after a crash resumes with the balances and quota usage of the last merged
    /// checkpoint, never with credits spent by usage the spool holds handed back. A row
    /// that cannot be decoded is skipped with an error log (the customer keeps the state
    /// from the [`StateStore`](crate::StateStore), if any).
    ///
    /// [`Reporter::start`]: crate::report::Reporter::start
    fn accounts(&self) -> Result<Vec<(CustomerId, AccountState)>, SpoolError>;

    /// Hands out up to `limit` entries of a provider as records, in key order, examining a
    /// bounded number of rows: every sealed entry (again, with the same key and quantity
    /// and one more attempt, unless it is past `resend_before_unix`) and every open entry
    /// whose window is closed at `now_unix` (or every open additive entry when
    /// `include_open`), which is sealed in the same transaction.
    fn take(&self, request: &TakeRequest) -> Result<Taken, SpoolError>;

    /// Moves the sealed entries of `records` (matched by key and idempotency key) to the
    /// acknowledged table, stamped `now_unix`. Records no longer pending are skipped.
    /// Returns how many moved.
    fn ack(&self, records: &[UsageRecord], now_unix: u64) -> Result<usize, SpoolError>;

    /// Moves the sealed entries of `records` to the dead letter table with `reason`.
    /// Returns how many moved.
    fn dead_letter(
        &self,
        records: &[UsageRecord],
        reason: &str,
        now_unix: u64,
    ) -> Result<usize, SpoolError>;

    /// Sends dead letters or reconciliation entries again, after an operator fixed the
    /// cause (or checked that the provider does not hold the record): each entry at one of
    /// `keys` becomes a sealed pending entry of the next free part of its window, with the
    /// same quantity and a **new** idempotency key (computed with `instance`), so a provider
    /// that remembered the refused key does not answer from its cache. Returns how many
    /// were re-queued.
    fn requeue(
        &self,
        from: Settled,
        keys: &[SpoolKey],
        instance: &str,
        now_unix: u64,
    ) -> Result<usize, SpoolError>;

    /// Pending entries (of one provider, or all), in key order.
    fn pending(&self, provider: Option<&str>) -> Result<Vec<PendingEntry>, SpoolError>;

    /// Acknowledged records (of one provider, or all), in key order.
    fn acknowledged(&self, provider: Option<&str>) -> Result<Vec<Acknowledged>, SpoolError>;

    /// Dead letters (of one provider, or all), in key order.
    fn dead_letters(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError>;

    /// Records past their provider's deduplication horizon whose outcome is unknown (of
    /// one provider, or all), in key order: check at the provider whether each was
    /// billed, then [`requeue`](Self::requeue) those that were not.
    fn to_reconcile(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError>;

    /// Rows moved out of the way because they could not be decoded.
    fn quarantined(&self) -> Result<Vec<Quarantined>, SpoolError>;

    /// How the pending entries of `meter` for `provider` aggregate (read from its first
    /// pending entry), or `None` when it has none. [`Reporter::start`] compares it with the
    /// configured aggregation: a meter whose aggregation changed across a restart is an
    /// error, never a silent replacement of the stored value.
    ///
    /// [`Reporter::start`]: crate::report::Reporter::start
    fn stored_aggregation(
        &self,
        provider: &str,
        meter: &MeterId,
    ) -> Result<Option<Aggregation>, SpoolError>;

    /// Deletes up to `max` acknowledged records whose report window ended before
    /// `before_unix`, scanning at most a bounded number of rows after `after`. Windows that
    /// ended before `before_unix` take no more usage from then on (a late delta goes to the
    /// first window not pruned), so their part numbers are never reused.
    fn prune_batch(
        &self,
        before_unix: u64,
        after: Option<&SpoolKey>,
        max: usize,
    ) -> Result<Pruned, SpoolError>;

    /// Merges `deltas` as one unsequenced checkpoint taken at `now_unix`.
    fn merge(
        &self,
        routes: &[SpoolRoute],
        deltas: &[Delta],
        now_unix: u64,
        window_secs: u64,
    ) -> Result<usize, SpoolError> {
        self.merge_checkpoints(
            routes,
            &[Checkpoint::unsequenced(now_unix, deltas.to_vec())],
            window_secs,
        )
    }

    /// Hands out up to `limit` due records of `provider` (see [`Spool::take`]), scanning
    /// on until `limit` records are found or the provider's entries end.
    fn take_due(
        &self,
        provider: &str,
        instance: &str,
        now_unix: u64,
        limit: usize,
        include_open: bool,
    ) -> Result<Vec<UsageRecord>, SpoolError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let request = TakeRequest::new(provider, instance, now_unix, limit - out.len())
                .include_open(include_open)
                .after(after);
            let taken = self.take(&request)?;
            out.extend(taken.records);
            match taken.next {
                Some(next) if out.len() < limit => after = Some(next),
                _ => return Ok(out),
            }
        }
    }

    /// Deletes every acknowledged record whose window ended before `before_unix`, in
    /// batches; returns how many.
    fn prune_acknowledged(&self, before_unix: u64) -> Result<usize, SpoolError> {
        let mut total = 0;
        let mut after = None;
        loop {
            let pruned = self.prune_batch(before_unix, after.as_ref(), 1_000)?;
            total += pruned.deleted;
            match pruned.next {
                Some(next) => after = Some(next),
                None => return Ok(total),
            }
        }
    }

    /// The quantity still pending for one meter and customer (of one provider, or summed
    /// over all).
    fn pending_total(
        &self,
        provider: Option<&str>,
        meter: &str,
        customer: &str,
    ) -> Result<u64, SpoolError> {
        Ok(self
            .pending(provider)?
            .iter()
            .filter(|e| e.key.meter.as_str() == meter && e.key.customer.as_str() == customer)
            .map(PendingEntry::quantity)
            .fold(0u64, u64::saturating_add))
    }

    /// How many entries are pending (of one provider, or all).
    fn pending_count(&self, provider: Option<&str>) -> Result<usize, SpoolError> {
        Ok(self.pending(provider)?.len())
    }
}
