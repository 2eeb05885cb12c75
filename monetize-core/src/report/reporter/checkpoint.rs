//! The checkpoint task: swaps the engine's usage cells into numbered checkpoints and merges
//! them, with the account states they carry, into the spool, never dropping or adding one
//! twice when a merge fails.

use super::*;

/// The checkpoint task's state: checkpoints whose merge has not been confirmed.
pub(super) struct Carry {
    /// The last checkpoint number used.
    seq: u64,
    /// Checkpoints whose merge failed (each may or may not have committed), oldest first.
    pending: Vec<Checkpoint>,
}

impl Carry {
    fn deltas(&mut self) -> Vec<Delta> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .flat_map(|c| c.deltas)
            .collect()
    }
}

pub(super) async fn checkpoint_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<CheckpointCmd>) {
    let mut carry = Carry {
        seq: 0,
        pending: Vec::new(),
    };
    let mut tick = tokio::time::interval(shared.options.checkpoint_interval.max(MIN_INTERVAL));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first checkpoint is one interval after the start, not at once: at the start
    // there is nothing to take, and a first tick whose moment depends on when this task
    // is first scheduled would make the first checkpoint's content depend on it too.
    tick.reset();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let _ = checkpoint_once(&shared, &mut carry).await;
            }
            cmd = rx.recv() => match cmd {
                Some(CheckpointCmd::Now(reply)) => {
                    let _ = reply.send(checkpoint_once(&shared, &mut carry).await);
                }
                Some(CheckpointCmd::Stop { deadline, reply }) => {
                    let _ = reply.send(final_checkpoint(&shared, &mut carry, deadline).await);
                    return;
                }
                None => {
                    // The handle was dropped: save what we hold, best effort.
                    if let Err(e) = checkpoint_once(&shared, &mut carry).await {
                        tracing::error!(error = %e, checkpoints = carry.pending.len(), "usage not saved at stop");
                    }
                    return;
                }
            }
        }
    }
}

pub(super) async fn final_checkpoint(
    shared: &Shared,
    carry: &mut Carry,
    deadline: Instant,
) -> Result<(), ReporterError> {
    loop {
        match checkpoint_once(shared, carry).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() + shared.options.min_backoff < deadline => {
                tracing::warn!(error = %e, "final checkpoint failed; retrying");
                tokio::time::sleep(shared.options.min_backoff.max(MIN_INTERVAL)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, checkpoints = carry.pending.len(), "final checkpoint failed");
                return Err(ReporterError::Unsaved {
                    deltas: carry.deltas(),
                    source: e,
                });
            }
        }
    }
}

/// After failed merges: asks the spool which checkpoints committed anyway, drops them, and
/// folds the others (none committed) into one checkpoint per report window. If the spool
/// cannot say, everything is kept as it is (the merge skips what committed).
pub(super) async fn resolve_carry(shared: &Shared, carry: &mut Carry) {
    let writer = shared.writer.clone();
    let last = match shared.spool(move |s| s.last_checkpoint(&writer)).await {
        Ok(last) => last,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the last merged checkpoint");
            return;
        }
    };
    let before = carry.pending.len();
    carry.pending.retain(|c| c.seq > last);
    let skipped = before - carry.pending.len();
    if skipped > 0 {
        bump(&shared.counters.checkpoints_already_merged, skipped);
        tracing::warn!(
            checkpoints = skipped,
            "checkpoints reported as failed had been merged; not merging them again"
        );
    }
    let window_secs = shared.options.window_secs();
    // Account snapshots, oldest first, move to the newest checkpoint (merged last): folding
    // by window reorders checkpoints, and an older snapshot must never replace a newer one.
    let mut latest: Vec<(CustomerId, AccountState)> = Vec::new();
    let mut index: HashMap<CustomerId, usize> = HashMap::new();
    for c in &mut carry.pending {
        for (id, state) in std::mem::take(&mut c.accounts) {
            match index.get(&id) {
                Some(&i) => latest[i].1 = state,
                None => {
                    index.insert(id.clone(), latest.len());
                    latest.push((id, state));
                }
            }
        }
    }
    let mut folded: Vec<Checkpoint> = Vec::new();
    for c in std::mem::take(&mut carry.pending) {
        let window = ReportWindow::containing(c.taken_unix, window_secs);
        match folded
            .iter_mut()
            .find(|f| ReportWindow::containing(f.taken_unix, window_secs) == window)
        {
            Some(f) => {
                f.seq = f.seq.max(c.seq);
                let mut deltas = std::mem::take(&mut f.deltas);
                deltas.extend(c.deltas);
                f.deltas = compact(deltas);
            }
            None => folded.push(c),
        }
    }
    folded.sort_by_key(|c| c.seq);
    if let Some(last) = folded.last_mut() {
        last.accounts = latest;
    }
    carry.pending = folded;
}

/// Merges the engine's deltas (and any kept from failed merges) into the spool. The deltas
/// are dated by the time of the swap, kept through failed merges; each checkpoint carries
/// a sequence number so a retry never adds a committed one twice. On failure the
/// checkpoints are kept in `carry`.
pub(super) async fn checkpoint_once(
    shared: &Shared,
    carry: &mut Carry,
) -> Result<usize, SpoolError> {
    // Engine housekeeping (coarse clock, quota periods) rides on the checkpoint tick.
    shared.engine.tick();
    let taken_unix = unix_now();
    let fresh = shared.engine.checkpoint();
    let accounts = snapshot_accounts(&shared.engine, &fresh);
    if fresh.is_empty() && accounts.is_empty() && carry.pending.is_empty() {
        bump(&shared.counters.checkpoints, 1);
        return Ok(0);
    }
    if !carry.pending.is_empty() {
        resolve_carry(shared, carry).await;
    }
    if !fresh.is_empty() || !accounts.is_empty() {
        carry.seq += 1;
        carry.pending.push(
            Checkpoint::new(shared.writer.clone(), carry.seq, taken_unix, compact(fresh))
                .with_accounts(accounts),
        );
    }
    let batch = Arc::new(std::mem::take(&mut carry.pending));
    let checkpoints = Arc::clone(&batch);
    let routes = Arc::clone(&shared.routes);
    let window_secs = shared.options.window_secs();
    let result = shared
        .spool(move |s| s.merge_checkpoints(&routes, &checkpoints, window_secs))
        .await;
    match result {
        Ok(n) => {
            bump(&shared.counters.checkpoints, 1);
            tracing::debug!(checkpoints = batch.len(), merged = n, "checkpoint merged");
            Ok(n)
        }
        Err(e) => {
            bump(&shared.counters.merge_failures, 1);
            carry.pending = Arc::try_unwrap(batch).unwrap_or_else(|a| (*a).clone());
            tracing::warn!(
                error = %e,
                kept = carry.pending.len(),
                "checkpoint merge failed (it may have committed); checkpoints kept for the next one"
            );
            Err(e)
        }
    }
}

/// The state of every customer whose usage `deltas` took, or whose state an operator
/// changed, read right after the swap (background work on the checkpoint task: the request
/// path is not involved). A spend racing with the swap lands in this snapshot or the next,
/// like its usage.
pub(super) fn snapshot_accounts(
    engine: &Engine,
    deltas: &[Delta],
) -> Vec<(CustomerId, AccountState)> {
    let mut ids: Vec<CustomerId> = engine.take_changed_accounts();
    ids.extend(deltas.iter().map(|d| d.customer.clone()));
    ids.sort_unstable();
    ids.dedup();
    engine.accounts_of(ids)
}

/// Folds deltas of the same customer and meter together, older first.
pub(super) fn compact(deltas: Vec<Delta>) -> Vec<Delta> {
    let mut index: HashMap<(CustomerId, MeterId), usize> = HashMap::with_capacity(deltas.len());
    let mut out: Vec<Delta> = Vec::with_capacity(deltas.len());
    for d in deltas {
        match index.get(&(d.customer.clone(), d.meter.clone())) {
            Some(&i) => out[i].measure.merge(&d.measure),
            None => {
                index.insert((d.customer.clone(), d.meter.clone()), out.len());
                out.push(d);
            }
        }
    }
    out
}
