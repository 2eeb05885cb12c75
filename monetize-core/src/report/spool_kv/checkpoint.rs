//! Merging checkpoints: each checkpoint's deltas into the pending windows of every route
//! that takes their meter, and its customers' account states into the accounts table, in
//! one transaction; the checkpoint number per writer makes a repeated merge a no-op.

use super::account_row::{AccountRow, account_key, decode_account, encode_account};
use super::key::{RowKey, Table};
use super::meta::{PRUNED_THROUGH, get_u64, put_u64};
use super::parts::{new_part, next_part};
use super::quarantine::quarantine;
use super::row::{PendingRow, decode, decode_ack, encode, is_additive};
use super::{KvRead, KvWrite};
use crate::id::CustomerId;
use crate::meter::Measure;
use crate::report::Delta;
use crate::report::spool::{Checkpoint, SpoolError, SpoolRoute};
use crate::report::window::ReportWindow;
use crate::store::AccountState;

fn checkpoint_key(writer: &str) -> RowKey {
    RowKey::meta("checkpoint", writer)
}

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
                &encode_account(&key, &AccountRow::of(cp, state))?,
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
