//! Rows that cannot be decoded: moved out of the way with their raw bytes and the reason,
//! and listed.

use super::key::{RowKey, Table};
use super::parts::bump_marker;
use super::row::{QuarantineRow, decode, encode};
use super::{KvRead, KvWrite, scan_provider};
use crate::report::spool::{Quarantined, SpoolError};

/// Moves a row that cannot be decoded to the quarantine table (raw bytes kept).
pub(super) fn quarantine<T: KvWrite + ?Sized>(
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
