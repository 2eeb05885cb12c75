//! Settling taken records: acknowledged, dead-lettered, or requeued under a new key.

use super::KvWrite;
use super::key::{RowKey, Table};
use super::meta::spool_id_in;
use super::parts::{new_part, next_part};
use super::row::{AckRow, PendingRow, decode, encode};
use super::take::key_instance;
use crate::meter::Measure;
use crate::provider::UsageRecord;
use crate::report::dead_letter::DeadLetter;
use crate::report::spool::{Acknowledged, Sealed, Settled, SpoolError, SpoolKey};

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
