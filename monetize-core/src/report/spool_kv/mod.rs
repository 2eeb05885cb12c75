//! The spool algorithm, written once against a minimal key-value transaction
//! ([`KvRead`], [`KvWrite`]) so that every spool (memory, redb, later a remote one) behaves
//! alike.
//!
//! Its parts, in the order a usage record meets them: [`key`] (tables and row keys),
//! [`row`] (the stored format: a format byte, then postcard) and [`account_row`],
//! [`checkpoint`] (merging checkpoints), [`parts`] and [`meta`], [`take`], [`settle`],
//! [`read`], [`quarantine`] and [`prune`].

mod account_row;
mod checkpoint;
mod key;
mod meta;
mod parts;
mod prune;
mod quarantine;
mod read;
mod row;
mod settle;
mod take;

#[cfg(test)]
mod encoding_tests;
#[cfg(test)]
mod tests;

pub(crate) use key::{RowKey, Table};
pub(crate) use meta::spool_id_in;

use checkpoint::{accounts_in, last_checkpoint_in, merge_in};
use prune::prune_batch_in;
use quarantine::quarantined_in;
use read::{acknowledged_in, pending_in, settled_in, stored_aggregation_in};
use settle::{ack_in, dead_letter_in, requeue_in};
use take::take_in;

use crate::id::{CustomerId, MeterId};
use crate::meter::Aggregation;
use crate::provider::UsageRecord;
use crate::report::dead_letter::DeadLetter;
use crate::report::spool::{
    Acknowledged, Checkpoint, PendingEntry, Pruned, Quarantined, Settled, Spool, SpoolError,
    SpoolKey, SpoolRoute, TakeRequest, Taken,
};
use crate::store::AccountState;

/// Reads of a spool transaction.
pub(crate) trait KvRead {
    fn get(&mut self, table: Table, key: &RowKey) -> Result<Option<Vec<u8>>, SpoolError>;

    /// Up to `max` rows with a key at or after `from`, in key order, up to the first key
    /// for which `keep` is false.
    fn scan(
        &mut self,
        table: Table,
        from: &RowKey,
        max: usize,
        keep: &dyn Fn(&RowKey) -> bool,
    ) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError>;
}

/// Writes of a spool transaction.
pub(crate) trait KvWrite: KvRead {
    fn put(&mut self, table: Table, key: &RowKey, value: &[u8]) -> Result<(), SpoolError>;
    fn remove(&mut self, table: Table, key: &RowKey) -> Result<(), SpoolError>;
}

/// A key-value store the shared algorithm runs on ([`MemorySpool`](super::MemorySpool),
/// [`RedbSpool`](super::RedbSpool)): each call is one transaction that takes effect
/// whole or not at all. Every such store is a [`Spool`], through the one implementation
/// below.
pub(crate) trait KvStore: Send + Sync + 'static {
    /// Runs `op` in a read transaction.
    fn read_txn<R>(
        &self,
        op: impl FnOnce(&mut dyn KvRead) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError>;

    /// Runs `op` in a write transaction, committed when it returns `Ok`.
    fn write_txn<R>(
        &self,
        op: impl FnOnce(&mut dyn KvWrite) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError>;
}

impl<S: KvStore> Spool for S {
    fn merge_checkpoints(
        &self,
        routes: &[SpoolRoute],
        checkpoints: &[Checkpoint],
        window_secs: u64,
    ) -> Result<usize, SpoolError> {
        self.write_txn(|w| merge_in(w, routes, checkpoints, window_secs))
    }

    fn accounts(&self) -> Result<Vec<(CustomerId, AccountState)>, SpoolError> {
        self.read_txn(|r| accounts_in(r))
    }

    fn last_checkpoint(&self, writer: &str) -> Result<u64, SpoolError> {
        self.read_txn(|r| last_checkpoint_in(r, writer))
    }

    fn take(&self, request: &TakeRequest) -> Result<Taken, SpoolError> {
        self.write_txn(|w| take_in(w, request))
    }

    fn ack(&self, records: &[UsageRecord], now_unix: u64) -> Result<usize, SpoolError> {
        self.write_txn(|w| ack_in(w, records, now_unix))
    }

    fn dead_letter(
        &self,
        records: &[UsageRecord],
        reason: &str,
        now_unix: u64,
    ) -> Result<usize, SpoolError> {
        self.write_txn(|w| dead_letter_in(w, records, reason, now_unix))
    }

    fn requeue(
        &self,
        from: Settled,
        keys: &[SpoolKey],
        instance: &str,
        now_unix: u64,
    ) -> Result<usize, SpoolError> {
        self.write_txn(|w| requeue_in(w, from, keys, instance, now_unix))
    }

    fn pending(&self, provider: Option<&str>) -> Result<Vec<PendingEntry>, SpoolError> {
        self.read_txn(|r| pending_in(r, provider))
    }

    fn acknowledged(&self, provider: Option<&str>) -> Result<Vec<Acknowledged>, SpoolError> {
        self.read_txn(|r| acknowledged_in(r, provider))
    }

    fn dead_letters(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError> {
        self.read_txn(|r| settled_in(r, Settled::DeadLetters, provider))
    }

    fn to_reconcile(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError> {
        self.read_txn(|r| settled_in(r, Settled::Reconciliation, provider))
    }

    fn stored_aggregation(
        &self,
        provider: &str,
        meter: &MeterId,
    ) -> Result<Option<Aggregation>, SpoolError> {
        self.read_txn(|r| stored_aggregation_in(r, provider, meter))
    }

    fn quarantined(&self) -> Result<Vec<Quarantined>, SpoolError> {
        self.read_txn(|r| quarantined_in(r))
    }

    fn prune_batch(
        &self,
        before_unix: u64,
        after: Option<&SpoolKey>,
        max: usize,
    ) -> Result<Pruned, SpoolError> {
        self.write_txn(|w| prune_batch_in(w, before_unix, after, max))
    }
}

fn scan_provider<T: KvRead + ?Sized>(
    txn: &mut T,
    table: Table,
    provider: Option<&str>,
) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError> {
    let from = RowKey::first_of(provider);
    match provider {
        Some(p) => txn.scan(table, &from, usize::MAX, &|k| k.provider == p),
        None => txn.scan(table, &from, usize::MAX, &|_| true),
    }
}

fn scan_window<T: KvRead + ?Sized>(
    txn: &mut T,
    table: Table,
    window: &RowKey,
) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError> {
    txn.scan(table, &window.with_part(0), usize::MAX, &|k| {
        k.same_window(window)
    })
}
