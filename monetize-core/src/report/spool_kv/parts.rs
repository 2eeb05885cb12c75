//! Part numbers of a report window: each window's next-part marker, so that a part number
//! is never used twice, even after its rows were pruned.

use super::key::{RowKey, Table};
use super::row::{decode, encode};
use super::{KvRead, KvWrite, scan_window};
use crate::report::spool::SpoolError;

/// The next part number of a window, from its marker, or (for windows written by earlier
/// releases) from the parts present in every table.
pub(super) fn next_part<T: KvRead + ?Sized>(
    txn: &mut T,
    window: &RowKey,
) -> Result<u32, SpoolError> {
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

pub(super) fn bump_marker<T: KvWrite + ?Sized>(
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

pub(super) fn new_part(window: &RowKey, next: u32) -> Result<u32, SpoolError> {
    if next == u32::MAX {
        return Err(SpoolError::Corrupt {
            key: window.to_string(),
            reason: "no part number left in this window".into(),
        });
    }
    Ok(next)
}
