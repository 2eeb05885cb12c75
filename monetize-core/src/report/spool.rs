//! The spool: durable usage between a checkpoint and the provider's acknowledgement.
//!
//! Usage moves through the spool in three steps, each one atomic:
//!
//! 1. [`Spool::merge`] adds a checkpoint's deltas into a *pending* entry keyed by
//!    (provider, meter, customer, report window, part), one per provider that takes the meter.
//! 2. [`Spool::take_due`] hands out pending entries as [`UsageRecord`]s and *seals* them in the
//!    same transaction: from then on the entry's quantity and idempotency key never change.
//!    Usage that arrives for a sealed window goes to the next *part* (a new entry with its own
//!    key). Because a key always names the same quantity, a provider that deduplicates on it
//!    bills every unit once, however often the record is sent: this is the core of "never
//!    billed twice". A sealed entry that is not acknowledged is handed out again by the next
//!    `take_due` (same key and quantity, one more attempt), in this process or after a restart.
//! 3. [`Spool::ack`] moves acknowledged entries to the *acknowledged* table (kept for audit,
//!    pruned by age with [`Spool::prune_acknowledged`]); [`Spool::dead_letter`] moves refused
//!    ones to the *dead letter* table (kept until an operator acts).
//!
//! Two implementations share one algorithm (this module), so they behave alike:
//! [`MemorySpool`] (lost on exit: tests and examples) and
//! [`RedbSpool`](crate::report::spool_redb::RedbSpool) (a file, the embedded default).
//!
//! The trait is synchronous: the reporter calls it from `tokio::task::spawn_blocking`, never
//! from the request path.
//!
//! A row that cannot be decoded never causes a panic or the loss of other rows: the listing
//! functions fail with [`SpoolError::Corrupt`] naming the row's key; `take_due`, `ack` and
//! `dead_letter` log that error and skip the row (leaving it for an operator); `merge` never
//! writes into it (new usage goes to the next part).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::id::{CustomerId, MeterId};
use crate::meter::Measure;
use crate::provider::UsageRecord;
use crate::report::Delta;
use crate::report::dead_letter::DeadLetter;
use crate::report::window::ReportWindow;

/// Why a spool operation failed. A failed operation had no effect.
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
    /// A read or write failed and the operation's transaction was rolled back. Retry later:
    /// the reporter keeps the usage in memory until a merge succeeds. If it persists, the
    /// disk is probably full or failing.
    #[error("spool storage error at {path}: {source}")]
    Storage {
        /// The spool's location.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored row cannot be decoded (written by a newer version, or damaged). Other rows
    /// are unaffected and the row itself is left in place: inspect it, bill it by hand if
    /// needed, and remove it with a database tool.
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
    /// How many times `take_due` handed the entry out (1 after sealing).
    pub handouts: u32,
    /// When it was sealed, unix seconds.
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

/// Durable storage for usage between checkpoint and acknowledgement.
///
/// Every method is one atomic transaction: it happens entirely or not at all, and an error
/// means it had no effect. Methods block (disk I/O): call them from
/// `tokio::task::spawn_blocking` in async code.
pub trait Spool: Send + Sync + 'static {
    /// Adds each delta into the open entry of the report window containing `now_unix`
    /// (windows of `window_secs`), for every route that takes the delta's meter. If that
    /// window's latest entry is sealed (or acknowledged, or dead-lettered), the delta opens
    /// the next part instead. Returns how many (delta, provider) pairs were merged.
    fn merge(
        &self,
        routes: &[SpoolRoute],
        deltas: &[Delta],
        now_unix: u64,
        window_secs: u64,
    ) -> Result<usize, SpoolError>;

    /// Hands out up to `limit` entries of `provider` as records, in key order: every sealed
    /// entry (again, with the same key and quantity and one more attempt) and every open
    /// entry whose window is closed at `now_unix` (or every open entry when `include_open`),
    /// which is sealed in the same transaction. New keys are computed with `instance`.
    fn take_due(
        &self,
        provider: &str,
        instance: &str,
        now_unix: u64,
        limit: usize,
        include_open: bool,
    ) -> Result<Vec<UsageRecord>, SpoolError>;

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

    /// Pending entries (of one provider, or all), in key order.
    fn pending(&self, provider: Option<&str>) -> Result<Vec<PendingEntry>, SpoolError>;

    /// Acknowledged records (of one provider, or all), in key order.
    fn acknowledged(&self, provider: Option<&str>) -> Result<Vec<Acknowledged>, SpoolError>;

    /// Dead letters (of one provider, or all), in key order.
    fn dead_letters(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError>;

    /// Deletes acknowledged records stored before `before_unix`; returns how many.
    fn prune_acknowledged(&self, before_unix: u64) -> Result<usize, SpoolError>;

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

// ---------------------------------------------------------------------------------------
// The shared algorithm, written against a minimal key-value transaction.
// ---------------------------------------------------------------------------------------

/// The tables of a spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    Pending,
    Acked,
    Dead,
}

/// A stored key, as raw strings (validated into a [`SpoolKey`] when read).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RowKey {
    pub(crate) provider: String,
    pub(crate) meter: String,
    pub(crate) customer: String,
    pub(crate) window_start: u64,
    pub(crate) part: u32,
}

impl RowKey {
    fn of_record(r: &UsageRecord) -> Self {
        Self {
            provider: r.provider.clone(),
            meter: r.meter.as_str().to_owned(),
            customer: r.customer.as_str().to_owned(),
            window_start: r.window_start,
            part: r.part,
        }
    }

    /// The smallest key of `provider` (or of all when `None`).
    fn first_of(provider: Option<&str>) -> Self {
        Self {
            provider: provider.unwrap_or_default().to_owned(),
            meter: String::new(),
            customer: String::new(),
            window_start: 0,
            part: 0,
        }
    }

    fn same_window(&self, other: &RowKey) -> bool {
        self.provider == other.provider
            && self.meter == other.meter
            && self.customer == other.customer
            && self.window_start == other.window_start
    }

    fn to_spool_key(&self) -> Result<SpoolKey, SpoolError> {
        let corrupt = |reason: String| SpoolError::Corrupt {
            key: self.to_string(),
            reason,
        };
        let meter = MeterId::new(&self.meter).map_err(|e| corrupt(format!("meter: {e}")))?;
        let customer =
            CustomerId::new(&self.customer).map_err(|e| corrupt(format!("customer: {e}")))?;
        Ok(SpoolKey::new(
            self.provider.clone(),
            meter,
            customer,
            self.window_start,
            self.part,
        ))
    }
}

impl fmt::Display for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}#{}",
            self.provider, self.meter, self.customer, self.window_start, self.part
        )
    }
}

/// Reads of a spool transaction.
pub(crate) trait KvRead {
    fn get(&mut self, table: Table, key: &RowKey) -> Result<Option<Vec<u8>>, SpoolError>;

    /// Rows with a key at or after `from`, in key order, up to the first key for which
    /// `keep` is false.
    fn scan(
        &mut self,
        table: Table,
        from: &RowKey,
        keep: &dyn Fn(&RowKey) -> bool,
    ) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError>;
}

/// Writes of a spool transaction.
pub(crate) trait KvWrite: KvRead {
    fn put(&mut self, table: Table, key: &RowKey, value: &[u8]) -> Result<(), SpoolError>;
    fn remove(&mut self, table: Table, key: &RowKey) -> Result<(), SpoolError>;
}

/// A pending row as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PendingRow {
    measure: Measure,
    window_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<Sealed>,
    updated_unix: u64,
}

fn encode<T: Serialize>(key: &RowKey, value: &T) -> Result<Vec<u8>, SpoolError> {
    serde_json::to_vec(value).map_err(|e| SpoolError::Corrupt {
        key: key.to_string(),
        reason: format!("cannot encode: {e}"),
    })
}

fn decode<T: for<'de> Deserialize<'de>>(key: &RowKey, bytes: &[u8]) -> Result<T, SpoolError> {
    serde_json::from_slice(bytes).map_err(|e| SpoolError::Corrupt {
        key: key.to_string(),
        reason: format!("cannot decode: {e}"),
    })
}

fn scan_provider<T: KvRead + ?Sized>(
    txn: &mut T,
    table: Table,
    provider: Option<&str>,
) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError> {
    let from = RowKey::first_of(provider);
    match provider {
        Some(p) => txn.scan(table, &from, &|k| k.provider == p),
        None => txn.scan(table, &from, &|_| true),
    }
}

fn scan_window<T: KvRead + ?Sized>(
    txn: &mut T,
    table: Table,
    window: &RowKey,
) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError> {
    txn.scan(table, window, &|k| k.same_window(window))
}

pub(crate) fn merge_in<T: KvWrite + ?Sized>(
    txn: &mut T,
    routes: &[SpoolRoute],
    deltas: &[Delta],
    now_unix: u64,
    window_secs: u64,
) -> Result<usize, SpoolError> {
    let window = ReportWindow::containing(now_unix, window_secs);
    let mut merged = 0;
    for delta in deltas {
        if delta.measure == Measure::Sum(0) {
            continue;
        }
        for route in routes.iter().filter(|r| r.takes(&delta.meter)) {
            let first = RowKey {
                provider: route.provider.clone(),
                meter: delta.meter.as_str().to_owned(),
                customer: delta.customer.as_str().to_owned(),
                window_start: window.start(),
                part: 0,
            };
            let mut last_part: Option<u32> = None;
            let mut open: Option<(RowKey, PendingRow)> = None;
            for (key, bytes) in scan_window(txn, Table::Pending, &first)? {
                last_part = last_part.max(Some(key.part));
                match decode::<PendingRow>(&key, &bytes) {
                    Ok(row) if row.sealed.is_none() => open = Some((key, row)),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "skipping a corrupt pending row"),
                }
            }
            for table in [Table::Acked, Table::Dead] {
                for (key, _) in scan_window(txn, table, &first)? {
                    last_part = last_part.max(Some(key.part));
                }
            }
            // Only the window's latest part may be open: usage never goes into a part
            // below a sealed one.
            let open = open.filter(|(k, _)| Some(k.part) == last_part);
            let (key, row) = match open {
                Some((key, mut row)) => {
                    row.measure.merge(&delta.measure);
                    row.updated_unix = now_unix;
                    (key, row)
                }
                None => {
                    let part = match last_part {
                        None => 0,
                        Some(p) => p.checked_add(1).ok_or_else(|| SpoolError::Corrupt {
                            key: first.to_string(),
                            reason: "no part number left in this window".into(),
                        })?,
                    };
                    let key = RowKey { part, ..first };
                    let row = PendingRow {
                        measure: delta.measure.clone(),
                        window_secs: window.secs(),
                        sealed: None,
                        updated_unix: now_unix,
                    };
                    (key, row)
                }
            };
            txn.put(Table::Pending, &key, &encode(&key, &row)?)?;
            merged += 1;
        }
    }
    Ok(merged)
}

pub(crate) fn take_due_in<T: KvWrite + ?Sized>(
    txn: &mut T,
    provider: &str,
    instance: &str,
    now_unix: u64,
    limit: usize,
    include_open: bool,
) -> Result<Vec<UsageRecord>, SpoolError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    for (rk, bytes) in scan_provider(txn, Table::Pending, Some(provider))? {
        if out.len() >= limit {
            break;
        }
        let decoded = decode::<PendingRow>(&rk, &bytes).and_then(|r| Ok((r, rk.to_spool_key()?)));
        let (mut row, key) = match decoded {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "skipping a corrupt pending row");
                continue;
            }
        };
        let mut record = UsageRecord::new(
            instance,
            provider,
            key.meter,
            key.customer,
            key.window_start,
            row.window_secs,
            key.part,
            0,
        );
        match &mut row.sealed {
            Some(sealed) => {
                sealed.handouts = sealed.handouts.saturating_add(1);
                record.idempotency_key.clone_from(&sealed.idempotency_key);
                record.quantity = sealed.quantity;
                record.attempts = sealed.handouts - 1;
            }
            None => {
                let window = ReportWindow::new(key.window_start, row.window_secs);
                if !include_open && !window.is_closed(now_unix) {
                    continue;
                }
                record.quantity = row.measure.quantity();
                row.sealed = Some(Sealed {
                    idempotency_key: record.idempotency_key.clone(),
                    quantity: record.quantity,
                    handouts: 1,
                    sealed_unix: now_unix,
                });
            }
        }
        txn.put(Table::Pending, &rk, &encode(&rk, &row)?)?;
        out.push(record);
    }
    Ok(out)
}

/// Moves sealed entries matching `records` out of the pending table into `to`, storing
/// `make(record)`.
fn settle_in<T: KvWrite + ?Sized>(
    txn: &mut T,
    records: &[UsageRecord],
    to: Table,
    make: &dyn Fn(&UsageRecord) -> Result<Vec<u8>, SpoolError>,
) -> Result<usize, SpoolError> {
    let mut moved = 0;
    for record in records {
        let key = RowKey::of_record(record);
        let Some(bytes) = txn.get(Table::Pending, &key)? else {
            tracing::debug!(key = %key, "record no longer pending");
            continue;
        };
        let row = match decode::<PendingRow>(&key, &bytes) {
            Ok(row) => row,
            Err(e) => {
                tracing::error!(error = %e, "skipping a corrupt pending row");
                continue;
            }
        };
        match row.sealed {
            Some(s) if s.idempotency_key == record.idempotency_key => {
                let mut stored = record.clone();
                stored.quantity = s.quantity;
                txn.remove(Table::Pending, &key)?;
                txn.put(to, &key, &make(&stored)?)?;
                moved += 1;
            }
            _ => tracing::warn!(
                key = %key,
                idempotency_key = %record.idempotency_key,
                "record does not match the sealed entry; left pending"
            ),
        }
    }
    Ok(moved)
}

pub(crate) fn ack_in<T: KvWrite + ?Sized>(
    txn: &mut T,
    records: &[UsageRecord],
    now_unix: u64,
) -> Result<usize, SpoolError> {
    settle_in(txn, records, Table::Acked, &|r| {
        let row = Acknowledged {
            record: r.clone(),
            at_unix: now_unix,
        };
        encode(&RowKey::of_record(r), &row)
    })
}

pub(crate) fn dead_letter_in<T: KvWrite + ?Sized>(
    txn: &mut T,
    records: &[UsageRecord],
    reason: &str,
    now_unix: u64,
) -> Result<usize, SpoolError> {
    settle_in(txn, records, Table::Dead, &|r| {
        let row = DeadLetter::new(r.clone(), reason, now_unix);
        encode(&RowKey::of_record(r), &row)
    })
}

pub(crate) fn pending_in<T: KvRead + ?Sized>(
    txn: &mut T,
    provider: Option<&str>,
) -> Result<Vec<PendingEntry>, SpoolError> {
    scan_provider(txn, Table::Pending, provider)?
        .into_iter()
        .map(|(rk, bytes)| {
            let row: PendingRow = decode(&rk, &bytes)?;
            Ok(PendingEntry {
                key: rk.to_spool_key()?,
                window_secs: row.window_secs,
                measure: row.measure,
                sealed: row.sealed,
            })
        })
        .collect()
}

pub(crate) fn acknowledged_in<T: KvRead + ?Sized>(
    txn: &mut T,
    provider: Option<&str>,
) -> Result<Vec<Acknowledged>, SpoolError> {
    scan_provider(txn, Table::Acked, provider)?
        .into_iter()
        .map(|(rk, bytes)| decode(&rk, &bytes))
        .collect()
}

pub(crate) fn dead_letters_in<T: KvRead + ?Sized>(
    txn: &mut T,
    provider: Option<&str>,
) -> Result<Vec<DeadLetter>, SpoolError> {
    scan_provider(txn, Table::Dead, provider)?
        .into_iter()
        .map(|(rk, bytes)| decode(&rk, &bytes))
        .collect()
}

pub(crate) fn prune_acknowledged_in<T: KvWrite + ?Sized>(
    txn: &mut T,
    before_unix: u64,
) -> Result<usize, SpoolError> {
    let mut pruned = 0;
    for (rk, bytes) in scan_provider(txn, Table::Acked, None)? {
        match decode::<Acknowledged>(&rk, &bytes) {
            Ok(a) if a.at_unix < before_unix => {
                txn.remove(Table::Acked, &rk)?;
                pruned += 1;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "skipping a corrupt acknowledged row"),
        }
    }
    Ok(pruned)
}

// ---------------------------------------------------------------------------------------
// MemorySpool
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct MemTables {
    pending: BTreeMap<RowKey, Vec<u8>>,
    acked: BTreeMap<RowKey, Vec<u8>>,
    dead: BTreeMap<RowKey, Vec<u8>>,
}

impl MemTables {
    fn table(&mut self, table: Table) -> &mut BTreeMap<RowKey, Vec<u8>> {
        match table {
            Table::Pending => &mut self.pending,
            Table::Acked => &mut self.acked,
            Table::Dead => &mut self.dead,
        }
    }
}

/// One operation on a [`MemorySpool`]: changes are undone if the operation fails.
struct MemTxn<'a> {
    tables: &'a mut MemTables,
    undo: Vec<(Table, RowKey, Option<Vec<u8>>)>,
}

impl MemTxn<'_> {
    fn rollback(self) {
        for (table, key, old) in self.undo.into_iter().rev() {
            let t = self.tables.table(table);
            match old {
                Some(v) => t.insert(key, v),
                None => t.remove(&key),
            };
        }
    }
}

impl KvRead for MemTxn<'_> {
    fn get(&mut self, table: Table, key: &RowKey) -> Result<Option<Vec<u8>>, SpoolError> {
        Ok(self.tables.table(table).get(key).cloned())
    }

    fn scan(
        &mut self,
        table: Table,
        from: &RowKey,
        keep: &dyn Fn(&RowKey) -> bool,
    ) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError> {
        Ok(self
            .tables
            .table(table)
            .range(from.clone()..)
            .take_while(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl KvWrite for MemTxn<'_> {
    fn put(&mut self, table: Table, key: &RowKey, value: &[u8]) -> Result<(), SpoolError> {
        let old = self.tables.table(table).insert(key.clone(), value.to_vec());
        self.undo.push((table, key.clone(), old));
        Ok(())
    }

    fn remove(&mut self, table: Table, key: &RowKey) -> Result<(), SpoolError> {
        let old = self.tables.table(table).remove(key);
        self.undo.push((table, key.clone(), old));
        Ok(())
    }
}

/// A spool in memory: same semantics as the file spool, lost when the process exits.
/// For tests, examples, and deployments that accept losing unreported usage on restart.
#[derive(Default)]
pub struct MemorySpool {
    tables: Mutex<MemTables>,
}

impl fmt::Debug for MemorySpool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySpool").finish_non_exhaustive()
    }
}

impl MemorySpool {
    /// An empty spool.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(
        &self,
        op: impl FnOnce(&mut MemTxn<'_>) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError> {
        let mut guard = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let mut txn = MemTxn {
            tables: &mut guard,
            undo: Vec::new(),
        };
        match op(&mut txn) {
            Ok(r) => Ok(r),
            Err(e) => {
                txn.rollback();
                Err(e)
            }
        }
    }

    /// Stores raw bytes as a row (to test how corrupt rows are handled).
    #[cfg(test)]
    pub(crate) fn put_raw(&self, table: Table, key: RowKey, bytes: &[u8]) {
        let mut guard = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        guard.table(table).insert(key, bytes.to_vec());
    }
}

impl Spool for MemorySpool {
    fn merge(
        &self,
        routes: &[SpoolRoute],
        deltas: &[Delta],
        now_unix: u64,
        window_secs: u64,
    ) -> Result<usize, SpoolError> {
        self.with(|t| merge_in(t, routes, deltas, now_unix, window_secs))
    }

    fn take_due(
        &self,
        provider: &str,
        instance: &str,
        now_unix: u64,
        limit: usize,
        include_open: bool,
    ) -> Result<Vec<UsageRecord>, SpoolError> {
        self.with(|t| take_due_in(t, provider, instance, now_unix, limit, include_open))
    }

    fn ack(&self, records: &[UsageRecord], now_unix: u64) -> Result<usize, SpoolError> {
        self.with(|t| ack_in(t, records, now_unix))
    }

    fn dead_letter(
        &self,
        records: &[UsageRecord],
        reason: &str,
        now_unix: u64,
    ) -> Result<usize, SpoolError> {
        self.with(|t| dead_letter_in(t, records, reason, now_unix))
    }

    fn pending(&self, provider: Option<&str>) -> Result<Vec<PendingEntry>, SpoolError> {
        self.with(|t| pending_in(t, provider))
    }

    fn acknowledged(&self, provider: Option<&str>) -> Result<Vec<Acknowledged>, SpoolError> {
        self.with(|t| acknowledged_in(t, provider))
    }

    fn dead_letters(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError> {
        self.with(|t| dead_letters_in(t, provider))
    }

    fn prune_acknowledged(&self, before_unix: u64) -> Result<usize, SpoolError> {
        self.with(|t| prune_acknowledged_in(t, before_unix))
    }
}

/// A behaviour suite every spool must pass; run on [`MemorySpool`] here and on
/// `RedbSpool` in its module.
#[cfg(test)]
pub(crate) mod suite {
    use super::*;

    pub(crate) fn m(s: &str) -> MeterId {
        MeterId::new(s).unwrap()
    }

    pub(crate) fn c(s: &str) -> CustomerId {
        CustomerId::new(s).unwrap()
    }

    pub(crate) fn sum(customer: &str, meter: &str, v: u64) -> Delta {
        Delta::new(c(customer), m(meter), Measure::Sum(v))
    }

    pub(crate) fn routes() -> Vec<SpoolRoute> {
        vec![
            SpoolRoute::all("ledger"),
            SpoolRoute::only("stripe", vec![m("calls")]),
        ]
    }

    /// Windows of 60 s; t=100 is in [60, 120).
    pub(crate) fn closes_windows_only(s: &dyn Spool) {
        s.merge(
            &routes(),
            &[sum("c1", "calls", 2), sum("c1", "bytes", 10)],
            100,
            60,
        )
        .unwrap();
        s.merge(&routes(), &[sum("c1", "calls", 3)], 110, 60)
            .unwrap();
        assert!(
            s.take_due("ledger", "i", 119, 10, false)
                .unwrap()
                .is_empty()
        );
        let got = s.take_due("ledger", "i", 120, 10, false).unwrap();
        assert_eq!(got.len(), 2);
        let calls = got.iter().find(|r| r.meter.as_str() == "calls").unwrap();
        assert_eq!((calls.quantity, calls.window_start, calls.part), (5, 60, 0));
        assert_eq!(calls.attempts, 0);
        // stripe only takes calls
        let stripe = s.take_due("stripe", "i", 120, 10, false).unwrap();
        assert_eq!(stripe.len(), 1);
        assert_eq!(stripe[0].quantity, 5);
        assert_ne!(stripe[0].idempotency_key, calls.idempotency_key);
    }

    pub(crate) fn include_open_takes_everything(s: &dyn Spool) {
        s.merge(&routes(), &[sum("c1", "calls", 4)], 100, 60)
            .unwrap();
        assert!(
            s.take_due("ledger", "i", 100, 10, false)
                .unwrap()
                .is_empty()
        );
        let got = s.take_due("ledger", "i", 100, 10, true).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].quantity, 4);
    }

    pub(crate) fn sealed_entries_are_stable(s: &dyn Spool) {
        s.merge(&routes(), &[sum("c1", "calls", 7)], 100, 60)
            .unwrap();
        let first = s.take_due("ledger", "i", 200, 10, false).unwrap();
        // a late merge into the sealed window goes to part 1
        s.merge(&routes(), &[sum("c1", "calls", 5)], 100, 60)
            .unwrap();
        let again = s
            .take_due("ledger", "other-instance", 200, 10, false)
            .unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(again[0].idempotency_key, first[0].idempotency_key);
        assert_eq!(again[0].quantity, 7);
        assert_eq!(again[0].attempts, 1);
        assert_eq!(again[1].part, 1);
        assert_eq!(again[1].quantity, 5);
        assert_eq!(again[1].attempts, 0);
        assert_ne!(again[1].idempotency_key, first[0].idempotency_key);
        let third = s.take_due("ledger", "i", 200, 10, false).unwrap();
        assert_eq!((third[0].attempts, third[1].attempts), (2, 1));
        let pending = s.pending(Some("ledger")).unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].sealed.as_ref().unwrap().handouts, 3);
        assert_eq!(s.pending_total(Some("ledger"), "calls", "c1").unwrap(), 12);
    }

    pub(crate) fn ack_and_dead_letter_move_entries(s: &dyn Spool) {
        s.merge(
            &routes(),
            &[
                sum("c1", "calls", 1),
                sum("c2", "calls", 2),
                sum("c3", "calls", 3),
            ],
            100,
            60,
        )
        .unwrap();
        let got = s.take_due("ledger", "i", 200, 10, false).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(s.ack(&got[..1], 300).unwrap(), 1);
        assert_eq!(
            s.dead_letter(&got[1..2], "unknown customer", 301).unwrap(),
            1
        );
        // acking again or acking a record with a foreign key does nothing
        assert_eq!(s.ack(&got[..1], 300).unwrap(), 0);
        let mut forged = got[2].clone();
        forged.idempotency_key = "mz1_forged".into();
        assert_eq!(s.ack(&[forged], 300).unwrap(), 0);
        let acked = s.acknowledged(Some("ledger")).unwrap();
        assert_eq!(acked.len(), 1);
        assert_eq!(acked[0].record.idempotency_key, got[0].idempotency_key);
        assert_eq!(acked[0].at_unix, 300);
        let dead = s.dead_letters(None).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "unknown customer");
        assert_eq!(dead[0].record.quantity, 2);
        assert_eq!(s.pending_count(Some("ledger")).unwrap(), 1);
        // usage merged later into the acknowledged window never reuses part 0
        s.merge(
            &routes(),
            &[sum("c1", "calls", 9), sum("c2", "calls", 9)],
            110,
            60,
        )
        .unwrap();
        let late = s.take_due("ledger", "i", 200, 10, false).unwrap();
        let parts: Vec<(String, u32, u64)> = late
            .iter()
            .map(|r| (r.customer.to_string(), r.part, r.quantity))
            .collect();
        assert!(parts.contains(&("c1".into(), 1, 9)), "{parts:?}");
        assert!(parts.contains(&("c2".into(), 1, 9)), "{parts:?}");
        assert!(parts.contains(&("c3".into(), 0, 3)), "{parts:?}");
        // prune
        assert_eq!(s.prune_acknowledged(300).unwrap(), 0);
        assert_eq!(s.prune_acknowledged(301).unwrap(), 1);
        assert!(s.acknowledged(None).unwrap().is_empty());
    }

    pub(crate) fn limit_is_respected(s: &dyn Spool) {
        let deltas: Vec<Delta> = (0..5).map(|i| sum(&format!("c{i}"), "calls", 1)).collect();
        s.merge(&routes(), &deltas, 100, 60).unwrap();
        assert_eq!(s.take_due("ledger", "i", 200, 2, false).unwrap().len(), 2);
        // the two sealed ones come first (key order), then two more
        assert_eq!(s.take_due("ledger", "i", 200, 4, false).unwrap().len(), 4);
        assert!(s.take_due("ledger", "i", 200, 0, false).unwrap().is_empty());
        let all = s.take_due("ledger", "i", 200, 100, false).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all.iter().map(|r| r.quantity).sum::<u64>(), 5);
    }

    pub(crate) fn measures_merge_by_kind(s: &dyn Spool) {
        let max = |v| Delta::new(c("c1"), m("peak"), Measure::Max(v));
        s.merge(&routes(), &[max(3), max(9), max(4)], 100, 60)
            .unwrap();
        let got = s.take_due("ledger", "i", 200, 10, false).unwrap();
        assert_eq!(got[0].quantity, 9);
        // zero sums are not stored
        s.merge(&routes(), &[sum("c9", "calls", 0)], 100, 60)
            .unwrap();
        assert_eq!(s.pending_total(None, "calls", "c9").unwrap(), 0);
        assert_eq!(s.pending_count(None).unwrap(), 1);
    }

    pub(crate) fn all(make: &dyn Fn() -> Box<dyn Spool>) {
        closes_windows_only(&*make());
        include_open_takes_everything(&*make());
        sealed_entries_are_stable(&*make());
        ack_and_dead_letter_move_entries(&*make());
        limit_is_respected(&*make());
        measures_merge_by_kind(&*make());
    }
}

#[cfg(test)]
mod tests {
    use super::suite::*;
    use super::*;

    #[test]
    fn memory_spool_passes_the_suite() {
        suite::all(&|| Box::new(MemorySpool::new()));
    }

    fn raw(provider: &str, customer: &str, part: u32) -> RowKey {
        RowKey {
            provider: provider.into(),
            meter: "calls".into(),
            customer: customer.into(),
            window_start: 60,
            part,
        }
    }

    #[test]
    fn corrupt_rows_are_named_and_skipped() {
        let s = MemorySpool::new();
        s.merge(
            &routes(),
            &[sum("c1", "calls", 1), sum("c3", "calls", 3)],
            100,
            60,
        )
        .unwrap();
        s.put_raw(Table::Pending, raw("ledger", "c2", 0), b"{not json");
        let err = s.pending(None).unwrap_err();
        assert!(
            matches!(&err, SpoolError::Corrupt { key, .. } if key == "ledger/calls/c2/60#0"),
            "{err}"
        );
        assert!(err.to_string().contains("ledger/calls/c2/60#0"));
        // take_due skips it and hands out the others
        let got = s.take_due("ledger", "i", 200, 10, false).unwrap();
        assert_eq!(got.len(), 2);
        // a merge for the corrupt window goes to the next part, leaving the row in place
        s.merge(&routes(), &[sum("c2", "calls", 5)], 100, 60)
            .unwrap();
        let got = s.take_due("ledger", "i", 200, 10, false).unwrap();
        let c2 = got.iter().find(|r| r.customer.as_str() == "c2").unwrap();
        assert_eq!((c2.part, c2.quantity), (1, 5));
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn failed_operations_roll_back() {
        let s = MemorySpool::new();
        s.merge(&routes(), &[sum("c1", "calls", 1)], 100, 60)
            .unwrap();
        // the last part number is taken: merging c2 fails after c1 was updated
        s.put_raw(Table::Acked, raw("ledger", "c2", u32::MAX), b"{}");
        let err = s
            .merge(
                &routes(),
                &[sum("c1", "calls", 1), sum("c2", "calls", 1)],
                100,
                60,
            )
            .unwrap_err();
        assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
        assert_eq!(
            s.pending_total(None, "calls", "c1").unwrap(),
            2,
            "1 ledger + 1 stripe"
        );
    }

    #[test]
    fn routes_filter_meters() {
        let r = SpoolRoute::only("stripe", vec![m("calls")]);
        assert!(r.takes(&m("calls")));
        assert!(!r.takes(&m("bytes")));
        assert!(SpoolRoute::all("x").takes(&m("bytes")));
    }
}
