//! A spool wrapper for tests: runs a hook around `merge_checkpoints` and forwards
//! everything else.

use monetize_core::meter::Aggregation;
use monetize_core::provider::UsageRecord;
use monetize_core::report::{
    Acknowledged, Checkpoint, DeadLetter, PendingEntry, Pruned, Quarantined, Settled, Spool,
    SpoolError, SpoolKey, SpoolRoute, TakeRequest, Taken,
};
use monetize_core::{AccountState, CustomerId, MeterId};

/// What a [`MergeHook`] does instead of a plain merge: it gets the inner spool and the
/// merge's arguments (routes, checkpoints, window length), and may fail, count or forward.
pub type OnMerge<S> =
    dyn Fn(&S, &[SpoolRoute], &[Checkpoint], u64) -> Result<usize, SpoolError> + Send + Sync;

/// Wraps a spool, running `on_merge` for every merge and forwarding the rest.
pub struct MergeHook<S: Spool> {
    inner: S,
    on_merge: Box<OnMerge<S>>,
}

impl<S: Spool> MergeHook<S> {
    /// Wraps `inner`.
    pub fn new(
        inner: S,
        on_merge: impl Fn(&S, &[SpoolRoute], &[Checkpoint], u64) -> Result<usize, SpoolError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            inner,
            on_merge: Box::new(on_merge),
        }
    }

    /// The wrapped spool.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Spool> Spool for MergeHook<S> {
    fn merge_checkpoints(
        &self,
        routes: &[SpoolRoute],
        checkpoints: &[Checkpoint],
        window_secs: u64,
    ) -> Result<usize, SpoolError> {
        (self.on_merge)(&self.inner, routes, checkpoints, window_secs)
    }

    fn last_checkpoint(&self, writer: &str) -> Result<u64, SpoolError> {
        self.inner.last_checkpoint(writer)
    }

    fn accounts(&self) -> Result<Vec<(CustomerId, AccountState)>, SpoolError> {
        self.inner.accounts()
    }

    fn take(&self, request: &TakeRequest) -> Result<Taken, SpoolError> {
        self.inner.take(request)
    }

    fn ack(&self, records: &[UsageRecord], now_unix: u64) -> Result<usize, SpoolError> {
        self.inner.ack(records, now_unix)
    }

    fn dead_letter(
        &self,
        records: &[UsageRecord],
        reason: &str,
        now_unix: u64,
    ) -> Result<usize, SpoolError> {
        self.inner.dead_letter(records, reason, now_unix)
    }

    fn requeue(
        &self,
        from: Settled,
        keys: &[SpoolKey],
        instance: &str,
        now_unix: u64,
    ) -> Result<usize, SpoolError> {
        self.inner.requeue(from, keys, instance, now_unix)
    }

    fn pending(&self, provider: Option<&str>) -> Result<Vec<PendingEntry>, SpoolError> {
        self.inner.pending(provider)
    }

    fn acknowledged(&self, provider: Option<&str>) -> Result<Vec<Acknowledged>, SpoolError> {
        self.inner.acknowledged(provider)
    }

    fn dead_letters(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError> {
        self.inner.dead_letters(provider)
    }

    fn to_reconcile(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError> {
        self.inner.to_reconcile(provider)
    }

    fn stored_aggregation(
        &self,
        provider: &str,
        meter: &MeterId,
    ) -> Result<Option<Aggregation>, SpoolError> {
        self.inner.stored_aggregation(provider, meter)
    }

    fn quarantined(&self) -> Result<Vec<Quarantined>, SpoolError> {
        self.inner.quarantined()
    }

    fn prune_batch(
        &self,
        before_unix: u64,
        after: Option<&SpoolKey>,
        max: usize,
    ) -> Result<Pruned, SpoolError> {
        self.inner.prune_batch(before_unix, after, max)
    }
}
