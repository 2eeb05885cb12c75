//! A spool wrapper for tests: runs a hook around `merge` and forwards everything else.

use monetize_core::provider::UsageRecord;
use monetize_core::report::{
    Acknowledged, DeadLetter, Delta, PendingEntry, Spool, SpoolError, SpoolRoute,
};

/// What a [`MergeHook`] does instead of a plain `merge`: it gets the inner spool and the
/// merge's arguments, and may fail, count or forward.
pub type OnMerge<S> =
    dyn Fn(&S, &[SpoolRoute], &[Delta], u64, u64) -> Result<usize, SpoolError> + Send + Sync;

/// Wraps a spool, running `on_merge` for every merge and forwarding the rest.
pub struct MergeHook<S: Spool> {
    inner: S,
    on_merge: Box<OnMerge<S>>,
}

impl<S: Spool> MergeHook<S> {
    /// Wraps `inner`.
    pub fn new(
        inner: S,
        on_merge: impl Fn(&S, &[SpoolRoute], &[Delta], u64, u64) -> Result<usize, SpoolError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            inner,
            on_merge: Box::new(on_merge),
        }
    }
}

impl<S: Spool> MergeHook<S> {
    /// The wrapped spool.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Spool> Spool for MergeHook<S> {
    fn merge(
        &self,
        routes: &[SpoolRoute],
        deltas: &[Delta],
        now_unix: u64,
        window_secs: u64,
    ) -> Result<usize, SpoolError> {
        (self.on_merge)(&self.inner, routes, deltas, now_unix, window_secs)
    }

    fn take_due(
        &self,
        provider: &str,
        instance: &str,
        now_unix: u64,
        limit: usize,
        include_open: bool,
    ) -> Result<Vec<UsageRecord>, SpoolError> {
        self.inner
            .take_due(provider, instance, now_unix, limit, include_open)
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

    fn pending(&self, provider: Option<&str>) -> Result<Vec<PendingEntry>, SpoolError> {
        self.inner.pending(provider)
    }

    fn acknowledged(&self, provider: Option<&str>) -> Result<Vec<Acknowledged>, SpoolError> {
        self.inner.acknowledged(provider)
    }

    fn dead_letters(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError> {
        self.inner.dead_letters(provider)
    }

    fn prune_acknowledged(&self, before_unix: u64) -> Result<usize, SpoolError> {
        self.inner.prune_acknowledged(before_unix)
    }
}
