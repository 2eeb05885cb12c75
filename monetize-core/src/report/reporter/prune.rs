//! The prune task: deletes acknowledged records past the audit retention, in small
//! transactions, off the checkpoint task.

use super::*;

/// Deletes acknowledged records whose window ended before the retention horizon, every
/// [`PRUNE_EVERY`], in small transactions of its own (never on the checkpoint task).
pub(super) async fn prune_loop(shared: Arc<Shared>, mut stopping: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let retention = shared.options.audit_retention.as_secs();
        let before = unix_now().saturating_sub(retention);
        let mut after = None;
        let mut total = 0;
        loop {
            if *stopping.borrow() {
                return;
            }
            let from = after.clone();
            let batch = shared
                .spool(move |s| s.prune_batch(before, from.as_ref(), PRUNE_BATCH))
                .await;
            match batch {
                Ok(p) => {
                    total += p.deleted;
                    match p.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning acknowledged records failed");
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(pruned = total, "pruned old acknowledged records");
        }
    }
}
