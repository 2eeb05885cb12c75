//! Pruning: deleting, a bounded batch at a time, the settled rows of windows that ended
//! before the horizon, and recording the watermark.

use super::KvWrite;
use super::key::{RowKey, Table};
use super::meta::{PRUNED_THROUGH, get_u64, put_u64};
use super::quarantine::quarantine;
use super::row::decode_ack;
use crate::report::spool::{Pruned, SpoolError, SpoolKey};
use crate::report::window::ReportWindow;

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
