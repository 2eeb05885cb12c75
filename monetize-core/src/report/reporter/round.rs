//! Report rounds: each provider's task takes sealed records from the spool, sends them in
//! batches with retries and backoff, and acknowledges, dead-letters or leaves them pending.

use super::*;

/// What a round (or a drain) did.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RoundStats {
    pub(super) taken: usize,
    pub(super) accepted: usize,
    pub(super) dead: usize,
    /// Records handed out but neither acknowledged nor dead-lettered.
    pub(super) left: usize,
    /// The spool failed.
    pub(super) failed: bool,
}

impl RoundStats {
    fn add(&mut self, o: RoundStats) {
        self.taken += o.taken;
        self.accepted += o.accepted;
        self.dead += o.dead;
        self.left += o.left;
        self.failed |= o.failed;
    }
}

pub(super) async fn provider_loop(
    shared: Arc<Shared>,
    route: ProviderRoute,
    mut rx: mpsc::Receiver<ProviderCmd>,
    stopping: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(route.report_interval.max(MIN_INTERVAL));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut gate = ProviderState::default();
    loop {
        let stop = *stopping.borrow();
        tokio::select! {
            _ = tick.tick(), if !stop => {
                let limits = interruptible(&stopping);
                round(&shared, &*route.provider, false, limits, &mut gate).await;
            }
            cmd = rx.recv() => match cmd {
                Some(ProviderCmd::Round { include_open, reply }) => {
                    let limits = interruptible(&stopping);
                    let stats =
                        round(&shared, &*route.provider, include_open, limits, &mut gate).await;
                    let _ = reply.send(stats);
                }
                Some(ProviderCmd::Drain { deadline, reply }) => {
                    let stats = drain(&shared, &*route.provider, deadline, &mut gate).await;
                    let _ = reply.send(stats);
                    return;
                }
                None => return,
            }
        }
    }
}

pub(super) fn interruptible(stopping: &watch::Receiver<bool>) -> Limits {
    Limits {
        interrupt: Some(stopping.clone()),
        deadline: None,
    }
}

/// Sends everything pending, the open window included, until nothing is left or the
/// deadline passes. Spool operations are never cut short (only provider calls and waits
/// are), so none is in flight when this returns.
pub(super) async fn drain(
    shared: &Shared,
    provider: &dyn BillingProvider,
    deadline: Instant,
    gate: &mut ProviderState,
) -> RoundStats {
    let mut total = RoundStats::default();
    let limits = Limits {
        interrupt: None,
        deadline: Some(deadline),
    };
    loop {
        if Instant::now() >= deadline {
            tracing::warn!("shutdown deadline reached; the rest stays in the spool");
            break;
        }
        let r = round(shared, provider, true, limits.clone(), gate).await;
        total.add(r);
        if r.taken == 0 && !r.failed {
            break;
        }
        if r.left > 0 || r.failed {
            let pause = shared.options.min_backoff.max(MIN_INTERVAL);
            if !limits.clone().pause(pause).await {
                tracing::warn!("shutdown deadline reached; the rest stays in the spool");
                break;
            }
        }
    }
    total
}

/// What a provider task remembers across rounds.
#[derive(Default)]
pub(super) struct ProviderState {
    /// No call before this instant (set by a throttle).
    gate: Option<Instant>,
    /// An unauthorized alert was raised and no call succeeded since.
    unauthorized: bool,
    /// When the current streak of failed calls began (none: the last call succeeded).
    failing_since: Option<Instant>,
    /// `ProviderFailing` was raised for the current streak.
    failing_raised: bool,
}

/// Notes a failed call: raises [`EventKind::ProviderFailing`] once per streak of failed
/// calls that has lasted [`ReporterOptions::provider_failing_after`].
fn failed_call(shared: &Shared, provider: &str, gate: &mut ProviderState, message: &str) {
    let since = *gate.failing_since.get_or_insert_with(Instant::now);
    let lasted = since.elapsed();
    if !gate.failing_raised && lasted >= shared.options.provider_failing_after {
        gate.failing_raised = true;
        tracing::error!(provider, failing_for = ?lasted, %message, "provider failing for longer than the alert threshold");
        shared.engine.emit(Event::new(
            None,
            EventKind::ProviderFailing {
                provider: provider.to_owned(),
                failing_for_secs: lasted.as_secs(),
                message: message.to_owned(),
            },
        ));
    }
}

/// When a round must stop early: a shutdown began (`interrupt` turned true) or the
/// deadline passed.
#[derive(Clone, Default)]
pub(super) struct Limits {
    interrupt: Option<watch::Receiver<bool>>,
    deadline: Option<Instant>,
}

impl Limits {
    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
            || self.interrupt.as_ref().is_some_and(|i| *i.borrow())
    }

    /// The call timeout, shortened to the deadline.
    fn call_timeout(&self, call_timeout: Duration) -> Duration {
        match self.deadline {
            Some(d) => call_timeout.min(d.saturating_duration_since(Instant::now())),
            None => call_timeout,
        }
    }

    /// Waits `delay`; false (at once) if the wait would end past the deadline, or as soon
    /// as a shutdown begins.
    async fn pause(&mut self, delay: Duration) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() + delay >= d) {
            return false;
        }
        match self.interrupt.as_mut() {
            None => {
                tokio::time::sleep(delay).await;
                true
            }
            Some(stop) => tokio::select! {
                _ = tokio::time::sleep(delay) => true,
                _ = stop.wait_for(|s| *s) => false,
            },
        }
    }
}

/// One report round: batches of due records until none is due, a batch is partial, or a
/// batch leaves records undelivered.
pub(super) async fn round(
    shared: &Shared,
    provider: &dyn BillingProvider,
    include_open: bool,
    mut limits: Limits,
    gate: &mut ProviderState,
) -> RoundStats {
    let name = provider.name().to_owned();
    let max_batch = provider.max_batch().max(1);
    let instance = shared.engine.instance().to_owned();
    let horizon = provider.dedup_horizon();
    let mut stats = RoundStats::default();
    let mut after = None;
    for _ in 0..MAX_BATCHES_PER_ROUND {
        if let Some(wait) = gate
            .gate
            .and_then(|t| t.checked_duration_since(Instant::now()))
            && !limits.pause(wait).await
        {
            break;
        }
        if limits.expired() {
            break;
        }
        let now = unix_now();
        // Past the horizon the provider may have forgotten the key: never resend blindly.
        let resend_before = if horizon == Duration::MAX {
            0
        } else {
            now.saturating_sub(horizon.as_secs())
        };
        let request = TakeRequest::new(name.clone(), instance.clone(), now, max_batch)
            .include_open(include_open)
            .resend_before(resend_before)
            .after(after.take());
        let taken = shared.spool(move |s| s.take(&request)).await;
        let taken = match taken {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take due records; retrying next round");
                stats.failed = true;
                break;
            }
        };
        settle_side_effects(shared, &taken);
        after = taken.next;
        let batch = taken.records;
        if batch.is_empty() {
            if after.is_none() {
                break;
            }
            continue;
        }
        let full = batch.len() >= max_batch;
        stats.taken += batch.len();
        let d = deliver(shared, provider, batch, limits.clone(), gate).await;
        stats.add(d);
        if d.left > 0 || (!full && after.is_none()) {
            break;
        }
    }
    if stats.taken > 0 {
        tracing::debug!(
            taken = stats.taken,
            accepted = stats.accepted,
            dead = stats.dead,
            left = stats.left,
            "report round done"
        );
    }
    stats
}

/// Raises the events of what `take` moved aside: records past the deduplication horizon
/// and quarantined rows.
pub(super) fn settle_side_effects(shared: &Shared, taken: &Taken) {
    for r in &taken.to_reconcile {
        bump(&shared.counters.to_reconcile, 1);
        tracing::error!(
            provider = %r.provider,
            customer = %r.customer,
            key = %r.idempotency_key,
            quantity = r.quantity,
            "usage record past the provider's deduplication horizon; moved to reconciliation"
        );
        shared.engine.emit(Event::new(
            Some(r.customer.clone()),
            EventKind::NeedsReconciliation {
                provider: r.provider.clone(),
                idempotency_key: r.idempotency_key.clone(),
                quantity: r.quantity,
            },
        ));
    }
    for (key, reason) in &taken.quarantined {
        bump(&shared.counters.quarantined, 1);
        shared.engine.emit(Event::new(
            None,
            EventKind::SpoolRowQuarantined {
                key: key.clone(),
                reason: reason.clone(),
            },
        ));
    }
}

/// Sends one batch, retrying what is not settled with backoff, and settles the outcomes.
/// A throttle sets `gate`: no call to this provider before it, in this round or the next.
pub(super) async fn deliver(
    shared: &Shared,
    provider: &dyn BillingProvider,
    records: Vec<UsageRecord>,
    mut limits: Limits,
    gate: &mut ProviderState,
) -> RoundStats {
    let opts = &shared.options;
    let mut stats = RoundStats::default();
    let mut backoff = opts.backoff();
    let mut remaining = records;
    loop {
        let call_timeout = limits.call_timeout(opts.call_timeout);
        let call = tokio::time::timeout(call_timeout, provider.report(&remaining)).await;
        let wait = match call {
            Err(_) => {
                bump(&shared.counters.call_failures, 1);
                tracing::warn!(
                    records = remaining.len(),
                    timeout = ?call_timeout,
                    "provider call timed out; outcome unknown, resending with the same keys"
                );
                failed_call(shared, provider.name(), gate, "call timed out");
                backoff.next()
            }
            Ok(Err(ProviderError::Retryable { message })) => {
                bump(&shared.counters.call_failures, 1);
                tracing::warn!(records = remaining.len(), %message, "provider call failed; retrying");
                failed_call(shared, provider.name(), gate, &message);
                backoff.next()
            }
            Ok(Err(ProviderError::Unauthorized { message })) => {
                bump(&shared.counters.call_failures, 1);
                failed_call(shared, provider.name(), gate, &message);
                if !gate.unauthorized {
                    gate.unauthorized = true;
                    tracing::error!(records = remaining.len(), %message, "provider refused the credentials; retrying (check the API key)");
                    shared.engine.emit(Event::new(
                        None,
                        EventKind::ProviderUnauthorized {
                            provider: provider.name().to_owned(),
                            message,
                        },
                    ));
                }
                backoff.next()
            }
            Ok(Err(ProviderError::Throttled {
                retry_after,
                message,
            })) => {
                bump(&shared.counters.call_failures, 1);
                tracing::info!(?retry_after, %message, "provider throttled");
                failed_call(shared, provider.name(), gate, &message);
                gate.gate = Some(Instant::now() + retry_after);
                backoff.next().map(|d| d.max(retry_after))
            }
            Ok(Err(ProviderError::Permanent { message })) => {
                bump(&shared.counters.call_failures, 1);
                tracing::error!(records = remaining.len(), %message, "provider refused the batch for good");
                let batch = std::mem::take(&mut remaining);
                let (dead, left) = dead_letter(shared, batch, message).await;
                stats.dead += dead;
                stats.left += left;
                None
            }
            Ok(Ok(outcomes)) if outcomes.len() != remaining.len() => {
                bump(&shared.counters.call_failures, 1);
                tracing::error!(
                    sent = remaining.len(),
                    answered = outcomes.len(),
                    "provider answered the wrong number of outcomes; retrying"
                );
                backoff.next()
            }
            Ok(Ok(outcomes)) => {
                gate.failing_since = None;
                gate.failing_raised = false;
                if gate.unauthorized {
                    gate.unauthorized = false;
                    tracing::info!("provider accepts the credentials again");
                }
                let mut accepted = Vec::new();
                let mut rejected: Vec<(UsageRecord, String)> = Vec::new();
                let mut retry = Vec::new();
                for (record, outcome) in std::mem::take(&mut remaining).into_iter().zip(outcomes) {
                    match outcome {
                        RecordOutcome::Accepted => accepted.push(record),
                        RecordOutcome::Rejected { reason } => rejected.push((record, reason)),
                        RecordOutcome::Retry { reason } => {
                            tracing::debug!(key = %record.idempotency_key, %reason, "record to retry");
                            retry.push(record);
                        }
                    }
                }
                if !accepted.is_empty() {
                    let n = accepted.len();
                    match shared.spool(move |s| s.ack(&accepted, unix_now())).await {
                        Ok(moved) => {
                            bump(&shared.counters.records_sent, moved);
                            stats.accepted += n;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, records = n, "cannot store acknowledgements; the records will be resent with the same keys");
                            stats.left += n;
                            stats.failed = true;
                        }
                    }
                }
                for (record, reason) in rejected {
                    let (dead, left) = dead_letter(shared, vec![record], reason).await;
                    stats.dead += dead;
                    stats.left += left;
                }
                remaining = retry;
                if remaining.is_empty() {
                    None
                } else {
                    backoff.next()
                }
            }
        };
        if remaining.is_empty() {
            break;
        }
        let Some(delay) = wait else {
            tracing::info!(
                records = remaining.len(),
                "retries exhausted for this round; records stay pending"
            );
            break;
        };
        for r in &mut remaining {
            r.attempts = r.attempts.saturating_add(1);
        }
        if !limits.pause(delay).await {
            break;
        }
    }
    stats.left += remaining.len();
    stats
}

/// Moves records to the dead letter list and raises an event for each. Returns (moved,
/// left pending).
pub(super) async fn dead_letter(
    shared: &Shared,
    records: Vec<UsageRecord>,
    reason: String,
) -> (usize, usize) {
    let n = records.len();
    let events: Vec<(CustomerId, String, String)> = records
        .iter()
        .map(|r| {
            (
                r.customer.clone(),
                r.provider.clone(),
                r.idempotency_key.clone(),
            )
        })
        .collect();
    let why = reason.clone();
    match shared
        .spool(move |s| s.dead_letter(&records, &why, unix_now()))
        .await
    {
        Ok(moved) => {
            bump(&shared.counters.dead_letters, moved);
            for (customer, provider, idempotency_key) in events {
                tracing::error!(%provider, %customer, key = %idempotency_key, %reason, "usage record dead-lettered");
                shared.engine.emit(Event::new(
                    Some(customer),
                    EventKind::DeadLetter {
                        provider,
                        idempotency_key,
                        reason: reason.clone(),
                    },
                ));
            }
            (n, 0)
        }
        Err(e) => {
            tracing::warn!(error = %e, records = n, "cannot store dead letters; the records stay pending");
            (0, n)
        }
    }
}
