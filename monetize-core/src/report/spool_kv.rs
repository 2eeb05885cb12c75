//! The spool algorithm, written once against a minimal key-value transaction
//! ([`KvRead`], [`KvWrite`]) so that every spool (memory, redb, later a remote one) behaves
//! alike.
//!
//! Rows are encoded as one version byte followed by [postcard](https://docs.rs/postcard)
//! (version 1). Rows written by earlier releases as JSON (first byte `{`) are still read;
//! a row of an unknown version is reported as corrupt (and quarantined by `take`).

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::id::{CustomerId, MeterId};
use crate::meter::{Aggregation, Measure};
use crate::provider::UsageRecord;
use crate::report::Delta;
use crate::report::dead_letter::DeadLetter;
use crate::report::spool::{
    Acknowledged, Checkpoint, PendingEntry, Pruned, Quarantined, Sealed, Settled, Spool,
    SpoolError, SpoolKey, SpoolRoute, TakeRequest, Taken,
};
use crate::report::window::ReportWindow;
use crate::store::{AccountState, PeriodUsage, UpsellStreak};

/// The tables of a spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Table {
    /// Open and sealed entries.
    Pending,
    /// Acknowledged records (audit).
    Acked,
    /// Records refused for good.
    Dead,
    /// Records past the provider's deduplication horizon with an unknown outcome.
    Reconcile,
    /// Rows that could not be decoded, moved out of the way.
    Quarantine,
    /// Per window (part 0 key): the next part number.
    Parts,
    /// Spool id, checkpoint numbers, prune watermark.
    Meta,
    /// Per customer: its state as of the last checkpoint that snapshotted it.
    Accounts,
}

impl Table {
    pub(crate) const ALL: [Table; 8] = [
        Table::Pending,
        Table::Acked,
        Table::Dead,
        Table::Reconcile,
        Table::Quarantine,
        Table::Parts,
        Table::Meta,
        Table::Accounts,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Table::Pending => "pending",
            Table::Acked => "acknowledged",
            Table::Dead => "dead_letters",
            Table::Reconcile => "reconcile",
            Table::Quarantine => "quarantine",
            Table::Parts => "parts",
            Table::Meta => "meta",
            Table::Accounts => "accounts",
        }
    }
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
    pub(crate) fn of_record(r: &UsageRecord) -> Self {
        Self::of_key(&SpoolKey::of(r))
    }

    pub(crate) fn of_key(k: &SpoolKey) -> Self {
        Self {
            provider: k.provider.clone(),
            meter: k.meter.as_str().to_owned(),
            customer: k.customer.as_str().to_owned(),
            window_start: k.window_start,
            part: k.part,
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

    fn meta(name: &str, sub: &str) -> Self {
        Self {
            provider: name.to_owned(),
            meter: sub.to_owned(),
            customer: String::new(),
            window_start: 0,
            part: 0,
        }
    }

    fn with_part(&self, part: u32) -> Self {
        Self {
            part,
            ..self.clone()
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

    /// Up to `max` rows with a key at or after `from`, in key order, up to the first key
    /// for which `keep` is false.
    fn scan(
        &mut self,
        table: Table,
        from: &RowKey,
        max: usize,
        keep: &dyn Fn(&RowKey) -> bool,
    ) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError>;
}

/// Writes of a spool transaction.
pub(crate) trait KvWrite: KvRead {
    fn put(&mut self, table: Table, key: &RowKey, value: &[u8]) -> Result<(), SpoolError>;
    fn remove(&mut self, table: Table, key: &RowKey) -> Result<(), SpoolError>;
}

/// A key-value store the shared algorithm runs on ([`MemorySpool`](super::MemorySpool),
/// [`RedbSpool`](super::RedbSpool)): each call is one transaction that takes effect
/// whole or not at all. Every such store is a [`Spool`], through the one implementation
/// below.
pub(crate) trait KvStore: Send + Sync + 'static {
    /// Runs `op` in a read transaction.
    fn read_txn<R>(
        &self,
        op: impl FnOnce(&mut dyn KvRead) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError>;

    /// Runs `op` in a write transaction, committed when it returns `Ok`.
    fn write_txn<R>(
        &self,
        op: impl FnOnce(&mut dyn KvWrite) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError>;
}

impl<S: KvStore> Spool for S {
    fn merge_checkpoints(
        &self,
        routes: &[SpoolRoute],
        checkpoints: &[Checkpoint],
        window_secs: u64,
    ) -> Result<usize, SpoolError> {
        self.write_txn(|w| merge_in(w, routes, checkpoints, window_secs))
    }

    fn accounts(&self) -> Result<Vec<(CustomerId, AccountState)>, SpoolError> {
        self.read_txn(|r| accounts_in(r))
    }

    fn last_checkpoint(&self, writer: &str) -> Result<u64, SpoolError> {
        self.read_txn(|r| last_checkpoint_in(r, writer))
    }

    fn take(&self, request: &TakeRequest) -> Result<Taken, SpoolError> {
        self.write_txn(|w| take_in(w, request))
    }

    fn ack(&self, records: &[UsageRecord], now_unix: u64) -> Result<usize, SpoolError> {
        self.write_txn(|w| ack_in(w, records, now_unix))
    }

    fn dead_letter(
        &self,
        records: &[UsageRecord],
        reason: &str,
        now_unix: u64,
    ) -> Result<usize, SpoolError> {
        self.write_txn(|w| dead_letter_in(w, records, reason, now_unix))
    }

    fn requeue(
        &self,
        from: Settled,
        keys: &[SpoolKey],
        instance: &str,
        now_unix: u64,
    ) -> Result<usize, SpoolError> {
        self.write_txn(|w| requeue_in(w, from, keys, instance, now_unix))
    }

    fn pending(&self, provider: Option<&str>) -> Result<Vec<PendingEntry>, SpoolError> {
        self.read_txn(|r| pending_in(r, provider))
    }

    fn acknowledged(&self, provider: Option<&str>) -> Result<Vec<Acknowledged>, SpoolError> {
        self.read_txn(|r| acknowledged_in(r, provider))
    }

    fn dead_letters(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError> {
        self.read_txn(|r| settled_in(r, Settled::DeadLetters, provider))
    }

    fn to_reconcile(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError> {
        self.read_txn(|r| settled_in(r, Settled::Reconciliation, provider))
    }

    fn stored_aggregation(
        &self,
        provider: &str,
        meter: &MeterId,
    ) -> Result<Option<Aggregation>, SpoolError> {
        self.read_txn(|r| stored_aggregation_in(r, provider, meter))
    }

    fn quarantined(&self) -> Result<Vec<Quarantined>, SpoolError> {
        self.read_txn(|r| quarantined_in(r))
    }

    fn prune_batch(
        &self,
        before_unix: u64,
        after: Option<&SpoolKey>,
        max: usize,
    ) -> Result<Pruned, SpoolError> {
        self.write_txn(|w| prune_batch_in(w, before_unix, after, max))
    }
}

// ---------------------------------------------------------------------------------------
// Rows and their encoding
// ---------------------------------------------------------------------------------------

/// The version byte of rows written by this release.
const ROW_VERSION: u8 = 1;

/// A pending row as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PendingRow {
    measure: Measure,
    window_secs: u64,
    sealed: Option<Sealed>,
    updated_unix: u64,
    /// Absent from rows written as JSON by earlier releases (guessed from the measure).
    #[serde(default)]
    aggregation: Option<Aggregation>,
}

impl PendingRow {
    fn aggregation(&self) -> Aggregation {
        self.aggregation.unwrap_or(match self.measure {
            Measure::Max(_) => Aggregation::Max,
            Measure::Latest(_) => Aggregation::Latest,
            Measure::Sketch(_) => Aggregation::UniqueCount,
            _ => Aggregation::Sum,
        })
    }
}

/// An acknowledged row as stored: the record, and the measure it was sealed from (so that
/// a late part of a non-additive window can carry the whole window's value).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct AckRow {
    ack: Acknowledged,
    measure: Option<Measure>,
}

/// A quarantined row as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct QuarantineRow {
    table: String,
    key: String,
    reason: String,
    bytes: Vec<u8>,
}

/// A customer's state as stored in the accounts table (its own plain shape: postcard is
/// not self-describing, so no skipped or defaulted fields).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct AccountRow {
    /// Who wrote it, and the checkpoint: `(writer, seq, taken_unix)`.
    writer: String,
    seq: u64,
    taken_unix: u64,
    delinquent: bool,
    cancelled: bool,
    blocked: bool,
    plan: Option<String>,
    balance: i64,
    /// (meter, period start, used).
    period_usage: Vec<(String, u64, u64)>,
    /// The billing anchor, unix seconds.
    billing_anchor: Option<u64>,
    /// The last credits operation the balance includes (rows written before credits
    /// journals existed end before this field: see [`decode_account`]).
    ledger_seq: Option<u64>,
    /// Upsell streaks: (meter, periods in a row, start of the last period counted). Rows
    /// written before upsell streaks existed end before this field.
    upsell: Vec<(String, u32, u64)>,
}

/// An account row as written before `upsell` (postcard rows have no defaults).
#[derive(Deserialize)]
struct AccountRowV2 {
    writer: String,
    seq: u64,
    taken_unix: u64,
    delinquent: bool,
    cancelled: bool,
    blocked: bool,
    plan: Option<String>,
    balance: i64,
    period_usage: Vec<(String, u64, u64)>,
    billing_anchor: Option<u64>,
    ledger_seq: Option<u64>,
}

/// An account row as written before `ledger_seq` (postcard rows have no defaults).
#[derive(Deserialize)]
struct AccountRowV1 {
    writer: String,
    seq: u64,
    taken_unix: u64,
    delinquent: bool,
    cancelled: bool,
    blocked: bool,
    plan: Option<String>,
    balance: i64,
    period_usage: Vec<(String, u64, u64)>,
    billing_anchor: Option<u64>,
}

/// Decodes an account row, of this release or of the ones before `upsell` and before
/// `ledger_seq` (each a prefix of the next: a shorter row fails to decode as a longer
/// shape, and is tried as the one before).
fn decode_account(key: &RowKey, bytes: &[u8]) -> Result<AccountRow, SpoolError> {
    decode::<AccountRow>(key, bytes).or_else(|e| {
        let v2 = decode::<AccountRowV2>(key, bytes).or_else(|_| {
            decode::<AccountRowV1>(key, bytes).map(|r| AccountRowV2 {
                writer: r.writer,
                seq: r.seq,
                taken_unix: r.taken_unix,
                delinquent: r.delinquent,
                cancelled: r.cancelled,
                blocked: r.blocked,
                plan: r.plan,
                balance: r.balance,
                period_usage: r.period_usage,
                billing_anchor: r.billing_anchor,
                ledger_seq: None,
            })
        });
        match v2 {
            Ok(r) => Ok(AccountRow {
                writer: r.writer,
                seq: r.seq,
                taken_unix: r.taken_unix,
                delinquent: r.delinquent,
                cancelled: r.cancelled,
                blocked: r.blocked,
                plan: r.plan,
                balance: r.balance,
                period_usage: r.period_usage,
                billing_anchor: r.billing_anchor,
                ledger_seq: r.ledger_seq,
                upsell: Vec::new(),
            }),
            Err(_) => Err(e),
        }
    })
}

impl AccountRow {
    fn of(cp: &Checkpoint, state: &AccountState) -> Self {
        Self {
            writer: cp.writer.clone(),
            seq: cp.seq,
            taken_unix: cp.taken_unix,
            delinquent: state.delinquent,
            cancelled: state.cancelled,
            blocked: state.blocked,
            plan: state.plan.as_ref().map(|p| p.as_str().to_owned()),
            balance: state.balance,
            period_usage: state
                .period_usage
                .iter()
                .map(|u| (u.meter.as_str().to_owned(), u.period_start, u.used))
                .collect(),
            billing_anchor: state.billing_anchor,
            ledger_seq: state.ledger_seq,
            upsell: state
                .upsell
                .iter()
                .map(|u| (u.meter.as_str().to_owned(), u.periods, u.period_start))
                .collect(),
        }
    }

    fn state(&self, key: &RowKey) -> Result<AccountState, SpoolError> {
        let corrupt = |reason: String| SpoolError::Corrupt {
            key: key.to_string(),
            reason,
        };
        let plan = match &self.plan {
            Some(p) => Some(crate::id::PlanId::new(p).map_err(|e| corrupt(format!("plan: {e}")))?),
            None => None,
        };
        let mut period_usage = Vec::with_capacity(self.period_usage.len());
        for (meter, start, used) in &self.period_usage {
            let meter = MeterId::new(meter).map_err(|e| corrupt(format!("meter: {e}")))?;
            period_usage.push(PeriodUsage::new(meter, *start, *used));
        }
        let mut upsell = Vec::with_capacity(self.upsell.len());
        for (meter, periods, start) in &self.upsell {
            let meter = MeterId::new(meter).map_err(|e| corrupt(format!("meter: {e}")))?;
            upsell.push(UpsellStreak::new(meter, *periods, *start));
        }
        let mut state = AccountState {
            upsell,
            plan,
            balance: self.balance,
            period_usage,
            billing_anchor: self.billing_anchor,
            ledger_seq: self.ledger_seq,
            ..AccountState::default()
        };
        state.delinquent = self.delinquent;
        state.cancelled = self.cancelled;
        state.blocked = self.blocked;
        Ok(state)
    }
}

fn account_key(customer: &CustomerId) -> RowKey {
    RowKey {
        provider: String::new(),
        meter: String::new(),
        customer: customer.as_str().to_owned(),
        window_start: 0,
        part: 0,
    }
}

pub(crate) fn encode<T: Serialize>(key: &RowKey, value: &T) -> Result<Vec<u8>, SpoolError> {
    let mut out = vec![ROW_VERSION];
    let body = postcard::to_allocvec(value).map_err(|e| SpoolError::Corrupt {
        key: key.to_string(),
        reason: format!("cannot encode: {e}"),
    })?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    key: &RowKey,
    bytes: &[u8],
) -> Result<T, SpoolError> {
    let corrupt = |reason: String| SpoolError::Corrupt {
        key: key.to_string(),
        reason,
    };
    match bytes.first() {
        Some(&ROW_VERSION) => postcard::from_bytes(&bytes[1..])
            .map_err(|e| corrupt(format!("cannot decode (version 1): {e}"))),
        Some(b'{') => {
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("cannot decode JSON: {e}")))
        }
        Some(v) => Err(corrupt(format!(
            "unknown row format {v} (written by a newer release?)"
        ))),
        None => Err(corrupt("empty row".into())),
    }
}

fn decode_ack(key: &RowKey, bytes: &[u8]) -> Result<AckRow, SpoolError> {
    if bytes.first() == Some(&b'{') {
        let ack: Acknowledged = decode(key, bytes)?;
        return Ok(AckRow { ack, measure: None });
    }
    decode(key, bytes)
}

fn get_u64<T: KvRead + ?Sized>(txn: &mut T, key: &RowKey) -> Result<Option<u64>, SpoolError> {
    match txn.get(Table::Meta, key)? {
        Some(bytes) => Ok(Some(decode(key, &bytes)?)),
        None => Ok(None),
    }
}

fn put_u64<T: KvWrite + ?Sized>(txn: &mut T, key: &RowKey, v: u64) -> Result<(), SpoolError> {
    txn.put(Table::Meta, key, &encode(key, &v)?)
}

fn is_additive(a: Aggregation) -> bool {
    matches!(a, Aggregation::Count | Aggregation::Sum)
}

fn scan_provider<T: KvRead + ?Sized>(
    txn: &mut T,
    table: Table,
    provider: Option<&str>,
) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError> {
    let from = RowKey::first_of(provider);
    match provider {
        Some(p) => txn.scan(table, &from, usize::MAX, &|k| k.provider == p),
        None => txn.scan(table, &from, usize::MAX, &|_| true),
    }
}

fn scan_window<T: KvRead + ?Sized>(
    txn: &mut T,
    table: Table,
    window: &RowKey,
) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError> {
    txn.scan(table, &window.with_part(0), usize::MAX, &|k| {
        k.same_window(window)
    })
}

/// Moves a row that cannot be decoded to the quarantine table (raw bytes kept).
fn quarantine<T: KvWrite + ?Sized>(
    txn: &mut T,
    table: Table,
    key: &RowKey,
    bytes: Vec<u8>,
    reason: &str,
) -> Result<(), SpoolError> {
    tracing::error!(table = table.name(), key = %key, %reason, "spool row quarantined");
    let qkey = RowKey {
        provider: format!("{}|{}", table.name(), key.provider),
        ..key.clone()
    };
    let row = QuarantineRow {
        table: table.name().to_owned(),
        key: key.to_string(),
        reason: reason.to_owned(),
        bytes,
    };
    txn.put(Table::Quarantine, &qkey, &encode(&qkey, &row)?)?;
    txn.remove(table, key)?;
    if table == Table::Pending {
        // Its part number stays taken.
        bump_marker(txn, key, key.part.saturating_add(1))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Spool id and part markers
// ---------------------------------------------------------------------------------------

/// The spool's id, created (in this transaction) when missing.
pub(crate) fn spool_id_in<T: KvWrite + ?Sized>(txn: &mut T) -> Result<String, SpoolError> {
    let key = RowKey::meta("spool_id", "");
    if let Some(bytes) = txn.get(Table::Meta, &key)? {
        return decode(&key, &bytes);
    }
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let id = hex::encode(raw);
    txn.put(Table::Meta, &key, &encode(&key, &id)?)?;
    Ok(id)
}

/// The next part number of a window, from its marker, or (for windows written by earlier
/// releases) from the parts present in every table.
fn next_part<T: KvRead + ?Sized>(txn: &mut T, window: &RowKey) -> Result<u32, SpoolError> {
    let first = window.with_part(0);
    if let Some(bytes) = txn.get(Table::Parts, &first)? {
        let next: u64 = decode(&first, &bytes)?;
        return Ok(u32::try_from(next).unwrap_or(u32::MAX));
    }
    let mut next = 0u32;
    for table in [Table::Pending, Table::Acked, Table::Dead, Table::Reconcile] {
        for (key, _) in scan_window(txn, table, &first)? {
            next = next.max(key.part.saturating_add(1));
        }
    }
    Ok(next)
}

fn bump_marker<T: KvWrite + ?Sized>(
    txn: &mut T,
    window: &RowKey,
    next: u32,
) -> Result<(), SpoolError> {
    let first = window.with_part(0);
    let current = next_part(txn, &first)?;
    if next > current || txn.get(Table::Parts, &first)?.is_none() {
        let v = u64::from(next.max(current));
        txn.put(Table::Parts, &first, &encode(&first, &v)?)?;
    }
    Ok(())
}

fn new_part(window: &RowKey, next: u32) -> Result<u32, SpoolError> {
    if next == u32::MAX {
        return Err(SpoolError::Corrupt {
            key: window.to_string(),
            reason: "no part number left in this window".into(),
        });
    }
    Ok(next)
}

// ---------------------------------------------------------------------------------------
// Merge
// ---------------------------------------------------------------------------------------

fn checkpoint_key(writer: &str) -> RowKey {
    RowKey::meta("checkpoint", writer)
}

const PRUNED_THROUGH: &str = "pruned_through";

pub(crate) fn last_checkpoint_in<T: KvRead + ?Sized>(
    txn: &mut T,
    writer: &str,
) -> Result<u64, SpoolError> {
    Ok(get_u64(txn, &checkpoint_key(writer))?.unwrap_or(0))
}

pub(crate) fn merge_in<T: KvWrite + ?Sized>(
    txn: &mut T,
    routes: &[SpoolRoute],
    checkpoints: &[Checkpoint],
    window_secs: u64,
) -> Result<usize, SpoolError> {
    let pruned_through = get_u64(txn, &RowKey::meta(PRUNED_THROUGH, ""))?.unwrap_or(0);
    let mut merged = 0;
    for cp in checkpoints {
        if cp.seq != 0 {
            let key = checkpoint_key(&cp.writer);
            let stored = get_u64(txn, &key)?.unwrap_or(0);
            if cp.seq <= stored {
                tracing::info!(
                    writer = %cp.writer,
                    seq = cp.seq,
                    stored,
                    "checkpoint already merged; skipped"
                );
                continue;
            }
            put_u64(txn, &key, cp.seq)?;
        }
        for (customer, state) in &cp.accounts {
            let key = account_key(customer);
            txn.put(
                Table::Accounts,
                &key,
                &encode(&key, &AccountRow::of(cp, state))?,
            )?;
        }
        let mut window = ReportWindow::containing(cp.taken_unix, window_secs);
        if window.end() <= pruned_through {
            tracing::warn!(
                taken_unix = cp.taken_unix,
                pruned_through,
                "usage dated in a window already pruned (clock stepped back?); moved to the first window not pruned"
            );
            window = ReportWindow::containing(pruned_through, window_secs);
        }
        for delta in &cp.deltas {
            if delta.measure == Measure::Sum(0) {
                continue;
            }
            for route in routes.iter().filter(|r| r.takes(&delta.meter)) {
                merge_one(txn, &route.provider, delta, window, cp.taken_unix)?;
                merged += 1;
            }
        }
    }
    Ok(merged)
}

/// The stored customer states, in customer order; rows that cannot be decoded are skipped
/// with an error log.
pub(crate) fn accounts_in<T: KvRead + ?Sized>(
    txn: &mut T,
) -> Result<Vec<(CustomerId, AccountState)>, SpoolError> {
    let rows = txn.scan(
        Table::Accounts,
        &RowKey::first_of(None),
        usize::MAX,
        &|_| true,
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (key, bytes) in rows {
        let decoded = decode_account(&key, &bytes).and_then(|row| {
            let id = CustomerId::new(&key.customer).map_err(|e| SpoolError::Corrupt {
                key: key.to_string(),
                reason: format!("customer: {e}"),
            })?;
            Ok((id, row.state(&key)?))
        });
        match decoded {
            Ok(account) => out.push(account),
            Err(e) => tracing::error!(error = %e, "stored customer state skipped"),
        }
    }
    Ok(out)
}

fn merge_one<T: KvWrite + ?Sized>(
    txn: &mut T,
    provider: &str,
    delta: &Delta,
    window: ReportWindow,
    now_unix: u64,
) -> Result<(), SpoolError> {
    let first = RowKey {
        provider: provider.to_owned(),
        meter: delta.meter.as_str().to_owned(),
        customer: delta.customer.as_str().to_owned(),
        window_start: window.start(),
        part: 0,
    };
    let next = next_part(txn, &first)?;
    // Only the window's latest part may be open: usage never goes into a part below a
    // sealed one.
    let mut previous: Option<Measure> = None;
    if let Some(last) = next.checked_sub(1) {
        let key = first.with_part(last);
        if let Some(bytes) = txn.get(Table::Pending, &key)? {
            match decode::<PendingRow>(&key, &bytes) {
                Ok(mut row) if row.sealed.is_none() => {
                    row.measure.merge(&delta.measure);
                    row.updated_unix = now_unix;
                    row.aggregation.get_or_insert(delta.aggregation);
                    txn.put(Table::Pending, &key, &encode(&key, &row)?)?;
                    return Ok(());
                }
                Ok(row) => previous = Some(row.measure),
                Err(e) => quarantine(txn, Table::Pending, &key, bytes, &e.to_string())?,
            }
        } else if let Some(bytes) = txn.get(Table::Acked, &key)? {
            previous = decode_ack(&key, &bytes).ok().and_then(|a| a.measure);
        }
    }
    let part = new_part(&first, next)?;
    let key = first.with_part(part);
    // A later part of a non-additive window carries the whole window's value so far
    // (it supersedes the earlier parts): a provider keeps the last part, never sums them.
    let measure = match previous {
        Some(mut prev) if !is_additive(delta.aggregation) => {
            prev.merge(&delta.measure);
            prev
        }
        _ => delta.measure.clone(),
    };
    let row = PendingRow {
        measure,
        window_secs: window.secs(),
        sealed: None,
        updated_unix: now_unix,
        aggregation: Some(delta.aggregation),
    };
    txn.put(Table::Pending, &key, &encode(&key, &row)?)?;
    let marker = u64::from(part) + 1;
    txn.put(Table::Parts, &first, &encode(&first, &marker)?)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Take
// ---------------------------------------------------------------------------------------

/// The most rows one `take` examines per record it may hand out (and at least
/// [`MIN_SCAN`]): the cost of a batch never depends on the backlog.
const SCAN_PER_RECORD: usize = 4;
const MIN_SCAN: usize = 256;

/// What the instance and spool id contribute to an idempotency key.
fn key_instance(instance: &str, spool_id: &str) -> String {
    format!("{instance}@{spool_id}")
}

pub(crate) fn take_in<T: KvWrite + ?Sized>(
    txn: &mut T,
    req: &TakeRequest,
) -> Result<Taken, SpoolError> {
    let mut taken = Taken::default();
    if req.limit == 0 {
        return Ok(taken);
    }
    let provider = req.provider.as_str();
    let from = match &req.after {
        Some(k) => RowKey::of_key(k),
        None => RowKey::first_of(Some(provider)),
    };
    let bound = req.limit.saturating_mul(SCAN_PER_RECORD).max(MIN_SCAN);
    // One more than the bound tells whether the scan stopped early.
    let rows = txn.scan(Table::Pending, &from, bound.saturating_add(2), &|k| {
        k.provider == provider
    })?;
    let instance = key_instance(&req.instance, &spool_id_in(txn)?);
    let mut examined = 0usize;
    let mut last: Option<RowKey> = None;
    for (rk, bytes) in rows {
        if req.after.is_some() && rk == from {
            continue;
        }
        if taken.records.len() >= req.limit || examined >= bound {
            taken.next = last.as_ref().map(RowKey::to_spool_key).transpose()?;
            break;
        }
        examined += 1;
        let decoded = decode::<PendingRow>(&rk, &bytes).and_then(|r| Ok((r, rk.to_spool_key()?)));
        let (mut row, key) = match decoded {
            Ok(v) => v,
            Err(e) => {
                let reason = e.to_string();
                quarantine(txn, Table::Pending, &rk, bytes, &reason)?;
                taken.quarantined.push((rk.to_string(), reason));
                // A quarantined key cannot be a cursor (it may not parse): the last good
                // one stays.
                continue;
            }
        };
        last = Some(rk.clone());
        let aggregation = row.aggregation();
        let mut record = UsageRecord::new(
            &instance,
            provider,
            key.meter,
            key.customer,
            key.window_start,
            row.window_secs,
            key.part,
            0,
        )
        .with_aggregation(aggregation);
        match &mut row.sealed {
            Some(sealed) => {
                record.idempotency_key.clone_from(&sealed.idempotency_key);
                record.quantity = sealed.quantity;
                record.attempts = sealed.handouts;
                if req.resend_before_unix > 0 && sealed.sealed_unix < req.resend_before_unix {
                    let dl = DeadLetter::new(
                        record.clone(),
                        "first sent before the provider's deduplication horizon and never \
                         acknowledged: check whether the provider holds it, then requeue or drop it",
                        req.now_unix,
                    );
                    txn.remove(Table::Pending, &rk)?;
                    txn.put(Table::Reconcile, &rk, &encode(&rk, &dl)?)?;
                    taken.to_reconcile.push(record);
                    continue;
                }
                sealed.handouts = sealed.handouts.saturating_add(1);
            }
            None => {
                let window = ReportWindow::new(key.window_start, row.window_secs);
                let closed = window.is_closed(req.now_unix);
                let due = closed || (req.include_open && is_additive(aggregation));
                if !due {
                    continue;
                }
                record.quantity = row.measure.quantity();
                row.sealed = Some(Sealed {
                    idempotency_key: record.idempotency_key.clone(),
                    quantity: record.quantity,
                    handouts: 1,
                    sealed_unix: req.now_unix,
                });
            }
        }
        txn.put(Table::Pending, &rk, &encode(&rk, &row)?)?;
        taken.records.push(record);
    }
    Ok(taken)
}

// ---------------------------------------------------------------------------------------
// Settle: ack, dead letter, requeue
// ---------------------------------------------------------------------------------------

/// Builds the stored row of a settled record from the record and its sealed measure.
type MakeRow<'a> = dyn Fn(&UsageRecord, Measure) -> Result<Vec<u8>, SpoolError> + 'a;

/// Moves sealed entries matching `records` out of the pending table into `to`, storing
/// `make(record, measure)`.
fn settle_in<T: KvWrite + ?Sized>(
    txn: &mut T,
    records: &[UsageRecord],
    to: Table,
    make: &MakeRow<'_>,
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
                tracing::error!(error = %e, "corrupt pending row left for take to quarantine");
                continue;
            }
        };
        match row.sealed {
            Some(s) if s.idempotency_key == record.idempotency_key => {
                let mut stored = record.clone();
                stored.quantity = s.quantity;
                txn.remove(Table::Pending, &key)?;
                txn.put(to, &key, &make(&stored, row.measure)?)?;
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
    settle_in(txn, records, Table::Acked, &|r, measure| {
        let row = AckRow {
            ack: Acknowledged {
                record: r.clone(),
                at_unix: now_unix,
            },
            measure: Some(measure),
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
    settle_in(txn, records, Table::Dead, &|r, _| {
        let row = DeadLetter::new(r.clone(), reason, now_unix);
        encode(&RowKey::of_record(r), &row)
    })
}

pub(crate) fn requeue_in<T: KvWrite + ?Sized>(
    txn: &mut T,
    from: Settled,
    keys: &[SpoolKey],
    instance: &str,
    now_unix: u64,
) -> Result<usize, SpoolError> {
    let table = match from {
        Settled::DeadLetters => Table::Dead,
        Settled::Reconciliation => Table::Reconcile,
    };
    let instance = key_instance(instance, &spool_id_in(txn)?);
    let mut moved = 0;
    for k in keys {
        let rk = RowKey::of_key(k);
        let Some(bytes) = txn.get(table, &rk)? else {
            continue;
        };
        let dl: DeadLetter = decode(&rk, &bytes)?;
        let part = new_part(&rk, next_part(txn, &rk)?)?;
        let old = dl.record;
        let record = UsageRecord::new(
            &instance,
            &old.provider,
            old.meter.clone(),
            old.customer.clone(),
            old.window_start,
            old.window_secs,
            part,
            old.quantity,
        );
        let nk = rk.with_part(part);
        let row = PendingRow {
            measure: Measure::Sum(old.quantity),
            window_secs: old.window_secs,
            sealed: Some(Sealed {
                idempotency_key: record.idempotency_key,
                quantity: old.quantity,
                handouts: 0,
                sealed_unix: now_unix,
            }),
            updated_unix: now_unix,
            aggregation: Some(old.aggregation),
        };
        txn.put(Table::Pending, &nk, &encode(&nk, &row)?)?;
        let marker = u64::from(part) + 1;
        let first = rk.with_part(0);
        txn.put(Table::Parts, &first, &encode(&first, &marker)?)?;
        txn.remove(table, &rk)?;
        moved += 1;
    }
    Ok(moved)
}

// ---------------------------------------------------------------------------------------
// Listings and prune
// ---------------------------------------------------------------------------------------

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
                aggregation: row.aggregation(),
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
        .map(|(rk, bytes)| Ok(decode_ack(&rk, &bytes)?.ack))
        .collect()
}

pub(crate) fn settled_in<T: KvRead + ?Sized>(
    txn: &mut T,
    from: Settled,
    provider: Option<&str>,
) -> Result<Vec<DeadLetter>, SpoolError> {
    let table = match from {
        Settled::DeadLetters => Table::Dead,
        Settled::Reconciliation => Table::Reconcile,
    };
    scan_provider(txn, table, provider)?
        .into_iter()
        .map(|(rk, bytes)| decode(&rk, &bytes))
        .collect()
}

pub(crate) fn stored_aggregation_in<T: KvRead + ?Sized>(
    txn: &mut T,
    provider: &str,
    meter: &MeterId,
) -> Result<Option<Aggregation>, SpoolError> {
    let from = RowKey {
        provider: provider.to_owned(),
        meter: meter.as_str().to_owned(),
        customer: String::new(),
        window_start: 0,
        part: 0,
    };
    // A corrupt row is skipped here (the next take quarantines it): it must not block a
    // start.
    let rows = txn.scan(Table::Pending, &from, 16, &|k| {
        k.provider == provider && k.meter == meter.as_str()
    })?;
    Ok(rows
        .iter()
        .find_map(|(rk, bytes)| decode::<PendingRow>(rk, bytes).ok())
        .map(|row| row.aggregation()))
}

pub(crate) fn quarantined_in<T: KvRead + ?Sized>(
    txn: &mut T,
) -> Result<Vec<Quarantined>, SpoolError> {
    scan_provider(txn, Table::Quarantine, None)?
        .into_iter()
        .map(|(rk, bytes)| {
            let row: QuarantineRow = decode(&rk, &bytes)?;
            Ok(Quarantined {
                key: format!("{}:{}", row.table, row.key),
                reason: row.reason,
                bytes: row.bytes,
            })
        })
        .collect()
}

pub(crate) fn prune_batch_in<T: KvWrite + ?Sized>(
    txn: &mut T,
    before_unix: u64,
    after: Option<&SpoolKey>,
    max: usize,
) -> Result<Pruned, SpoolError> {
    let watermark = RowKey::meta(PRUNED_THROUGH, "");
    if get_u64(txn, &watermark)?.unwrap_or(0) < before_unix {
        put_u64(txn, &watermark, before_unix)?;
    }
    let from = match after {
        Some(k) => RowKey::of_key(k),
        None => RowKey::first_of(None),
    };
    let max = max.max(1);
    let rows = txn.scan(Table::Acked, &from, max.saturating_add(2), &|_| true)?;
    let mut pruned = Pruned::default();
    let mut examined = 0;
    let mut last: Option<RowKey> = None;
    for (rk, bytes) in rows {
        if after.is_some() && rk == from {
            continue;
        }
        if examined >= max {
            pruned.next = last.as_ref().map(RowKey::to_spool_key).transpose()?;
            break;
        }
        examined += 1;
        let row = match decode_ack(&rk, &bytes) {
            Ok(row) => row,
            Err(e) => {
                quarantine(txn, Table::Acked, &rk, bytes, &e.to_string())?;
                continue;
            }
        };
        last = Some(rk.clone());
        let r = &row.ack.record;
        let window = ReportWindow::new(r.window_start, r.window_secs);
        if window.end() > before_unix {
            continue;
        }
        txn.remove(Table::Acked, &rk)?;
        pruned.deleted += 1;
        // The window takes no more usage (the watermark): its part marker can go once
        // nothing else of the window remains (a dead letter may still be requeued).
        let first = rk.with_part(0);
        let mut others = false;
        for table in [Table::Pending, Table::Acked, Table::Dead, Table::Reconcile] {
            if !txn
                .scan(table, &first, 1, &|k| k.same_window(&first))?
                .is_empty()
            {
                others = true;
                break;
            }
        }
        if !others {
            txn.remove(Table::Parts, &first)?;
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::MemorySpool;
    use crate::report::spool::Spool;
    use crate::report::spool_suite::*;

    #[test]
    fn a_corrupt_account_row_is_skipped() {
        let s = MemorySpool::new();
        let cp = Checkpoint::new("w", 1, 100, Vec::new()).with_accounts(vec![(
            c("good"),
            AccountState {
                balance: 7,
                ..AccountState::default()
            },
        )]);
        s.merge_checkpoints(&routes(), &[cp], 60).unwrap();
        s.put_raw(
            Table::Accounts,
            account_key(&c("bad")),
            &[ROW_VERSION, 0xff],
        );
        let got = s.accounts().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0.as_str(), got[0].1.balance), ("good", 7));
    }

    #[test]
    fn memory_spool_passes_the_suite() {
        crate::report::spool_suite::all(&|| Box::new(MemorySpool::new()));
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
        // take quarantines it (once) and hands out the others
        let t = s.take(&TakeRequest::new("ledger", "i", 200, 10)).unwrap();
        assert_eq!(t.records.len(), 2);
        assert_eq!(t.quarantined.len(), 1);
        assert_eq!(t.quarantined[0].0, "ledger/calls/c2/60#0");
        let q = s.quarantined().unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].bytes, b"{not json");
        assert!(q[0].key.contains("ledger/calls/c2/60#0"), "{}", q[0].key);
        // the listings work again; the next take quarantines nothing
        assert_eq!(s.pending(None).unwrap().len(), 4, "2 ledger + 2 stripe");
        let t = s.take(&TakeRequest::new("ledger", "i", 200, 10)).unwrap();
        assert!(t.quarantined.is_empty());
        // a merge for the corrupt window goes to the next part
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
        s.put_raw(Table::Acked, raw("ledger", "c2", u32::MAX - 1), b"{}");
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

#[cfg(test)]
mod encoding {
    use super::*;
    use crate::report::MemorySpool;
    use crate::report::spool::Spool;
    use crate::report::spool_suite::*;

    fn key(customer: &str) -> RowKey {
        RowKey {
            provider: "ledger".into(),
            meter: "calls".into(),
            customer: customer.into(),
            window_start: 60,
            part: 0,
        }
    }

    #[test]
    fn rows_written_as_json_by_earlier_releases_are_read() {
        let s = MemorySpool::new();
        let json = br#"{"measure":{"sum":6},"window_secs":60,"updated_unix":100}"#;
        s.put_raw(Table::Pending, key("c1"), json);
        let got = s.take_due("ledger", "i", 200, 10, false).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].quantity, 6);
        // rewritten in the binary format when sealed, and still the same entry
        let p = s.pending(None).unwrap();
        assert_eq!(p[0].sealed.as_ref().unwrap().quantity, 6);
        assert!(s.quarantined().unwrap().is_empty());
    }

    /// Account rows written before `ledger_seq` existed (postcard has no defaults) are
    /// still read, with no journal number; rows of this release keep it.
    #[test]
    fn account_rows_without_a_journal_number_are_still_read() {
        #[derive(Serialize)]
        struct Old {
            writer: String,
            seq: u64,
            taken_unix: u64,
            delinquent: bool,
            cancelled: bool,
            blocked: bool,
            plan: Option<String>,
            balance: i64,
            period_usage: Vec<(String, u64, u64)>,
            billing_anchor: Option<u64>,
        }
        let k = key("c1");
        let old = Old {
            writer: "w".into(),
            seq: 3,
            taken_unix: 100,
            delinquent: true,
            cancelled: false,
            blocked: false,
            plan: Some("pro".into()),
            balance: -42,
            period_usage: vec![("calls".into(), 0, 7)],
            billing_anchor: Some(5),
        };
        let row = decode_account(&k, &encode(&k, &old).unwrap()).unwrap();
        assert_eq!((row.balance, row.ledger_seq), (-42, None));
        let state = row.state(&k).unwrap();
        assert!(state.delinquent);
        assert_eq!(state.billing_anchor, Some(5));
        let new = AccountRow {
            ledger_seq: Some(9),
            ..row
        };
        let back = decode_account(&k, &encode(&k, &new).unwrap()).unwrap();
        assert_eq!(back.ledger_seq, Some(9));
        assert_eq!(back.state(&k).unwrap().ledger_seq, Some(9));
    }

    /// Account rows written before upsell streaks existed (with `ledger_seq`, without
    /// `upsell`) are still read, with no streaks; rows of this release keep them.
    #[test]
    fn account_rows_without_upsell_streaks_are_still_read() {
        #[derive(Serialize)]
        struct Old {
            writer: String,
            seq: u64,
            taken_unix: u64,
            delinquent: bool,
            cancelled: bool,
            blocked: bool,
            plan: Option<String>,
            balance: i64,
            period_usage: Vec<(String, u64, u64)>,
            billing_anchor: Option<u64>,
            ledger_seq: Option<u64>,
        }
        let k = key("c1");
        let old = Old {
            writer: "w".into(),
            seq: 3,
            taken_unix: 100,
            delinquent: false,
            cancelled: true,
            blocked: false,
            plan: Some("pro".into()),
            balance: 42,
            period_usage: vec![("calls".into(), 0, 7)],
            billing_anchor: None,
            ledger_seq: Some(11),
        };
        let row = decode_account(&k, &encode(&k, &old).unwrap()).unwrap();
        assert_eq!((row.balance, row.ledger_seq), (42, Some(11)));
        assert!(row.upsell.is_empty());
        let state = row.state(&k).unwrap();
        assert!(state.cancelled);
        assert_eq!(state.period_usage[0].used, 7);
        let new = AccountRow {
            upsell: vec![("calls".into(), 2, 1_796_083_200)],
            ..row
        };
        let back = decode_account(&k, &encode(&k, &new).unwrap()).unwrap();
        assert_eq!(back.ledger_seq, Some(11));
        assert_eq!(
            back.state(&k).unwrap().upsell,
            [UpsellStreak::new(
                MeterId::new("calls").unwrap(),
                2,
                1_796_083_200
            )]
        );
    }

    #[test]
    fn rows_are_compact_and_versioned() {
        let row = PendingRow {
            measure: Measure::Sketch(vec![3; 1024]),
            window_secs: 60,
            sealed: None,
            updated_unix: 100,
            aggregation: Some(Aggregation::UniqueCount),
        };
        let bytes = encode(&key("c1"), &row).unwrap();
        assert_eq!(bytes[0], ROW_VERSION);
        assert!(bytes.len() < 1_100, "{}", bytes.len());
        let json = serde_json::to_vec(&row).unwrap();
        assert!(json.len() > 2_000, "{}", json.len());
        let back: PendingRow = decode(&key("c1"), &bytes).unwrap();
        assert_eq!(back.measure, row.measure);
        let err = decode::<PendingRow>(&key("c1"), &[9, 0]).unwrap_err();
        assert!(err.to_string().contains("unknown row format 9"), "{err}");
        let _ = sum("c1", "calls", 1);
    }
}
