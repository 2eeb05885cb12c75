//! Taking due entries to report: sealing each with its idempotency key, scanning a bounded
//! number of rows per call.

use super::KvWrite;
use super::key::{RowKey, Table};
use super::meta::spool_id_in;
use super::quarantine::quarantine;
use super::row::{PendingRow, decode, encode, is_additive};
use crate::provider::UsageRecord;
use crate::report::dead_letter::DeadLetter;
use crate::report::spool::{Sealed, SpoolError, TakeRequest, Taken};
use crate::report::window::ReportWindow;

/// The most rows one `take` examines per record it may hand out (and at least
/// [`MIN_SCAN`]): the cost of a batch never depends on the backlog.
const SCAN_PER_RECORD: usize = 4;
const MIN_SCAN: usize = 256;

/// What the instance and spool id contribute to an idempotency key.
pub(super) fn key_instance(instance: &str, spool_id: &str) -> String {
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
