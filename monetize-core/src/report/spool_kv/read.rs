//! Listings: pending, acknowledged, dead-lettered and to-reconcile entries, and the
//! aggregation a meter was stored with.

use super::key::{RowKey, Table};
use super::row::{PendingRow, decode, decode_ack};
use super::{KvRead, scan_provider};
use crate::id::MeterId;
use crate::meter::Aggregation;
use crate::report::dead_letter::DeadLetter;
use crate::report::spool::{Acknowledged, PendingEntry, Settled, SpoolError};

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
