//! [`MemorySpool`]: the spool in memory, for tests, examples, and deployments that accept
//! losing unreported usage on restart.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use crate::id::{CustomerId, MeterId};
use crate::meter::Aggregation;
use crate::provider::UsageRecord;
use crate::report::dead_letter::DeadLetter;
use crate::report::spool::{
    Acknowledged, Checkpoint, PendingEntry, Pruned, Quarantined, Settled, Spool, SpoolError,
    SpoolKey, SpoolRoute, TakeRequest, Taken,
};
use crate::report::spool_kv::{
    KvRead, KvWrite, RowKey, Table, accounts_in, ack_in, acknowledged_in, dead_letter_in,
    last_checkpoint_in, merge_in, pending_in, prune_batch_in, quarantined_in, requeue_in,
    settled_in, stored_aggregation_in, take_in,
};
use crate::store::AccountState;

type Rows = BTreeMap<RowKey, Vec<u8>>;

#[derive(Default)]
struct MemTables {
    tables: [Rows; Table::ALL.len()],
}

impl MemTables {
    fn table(&mut self, table: Table) -> &mut Rows {
        &mut self.tables[table.index()]
    }
}

/// One operation on a [`MemorySpool`]: changes are undone if the operation fails.
struct MemTxn<'a> {
    tables: &'a mut MemTables,
    undo: Vec<(Table, RowKey, Option<Vec<u8>>)>,
}

impl MemTxn<'_> {
    fn rollback(self) {
        for (table, key, old) in self.undo.into_iter().rev() {
            let t = self.tables.table(table);
            match old {
                Some(v) => t.insert(key, v),
                None => t.remove(&key),
            };
        }
    }
}

impl KvRead for MemTxn<'_> {
    fn get(&mut self, table: Table, key: &RowKey) -> Result<Option<Vec<u8>>, SpoolError> {
        Ok(self.tables.table(table).get(key).cloned())
    }

    fn scan(
        &mut self,
        table: Table,
        from: &RowKey,
        max: usize,
        keep: &dyn Fn(&RowKey) -> bool,
    ) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError> {
        Ok(self
            .tables
            .table(table)
            .range(from.clone()..)
            .take_while(|(k, _)| keep(k))
            .take(max)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl KvWrite for MemTxn<'_> {
    fn put(&mut self, table: Table, key: &RowKey, value: &[u8]) -> Result<(), SpoolError> {
        let old = self.tables.table(table).insert(key.clone(), value.to_vec());
        self.undo.push((table, key.clone(), old));
        Ok(())
    }

    fn remove(&mut self, table: Table, key: &RowKey) -> Result<(), SpoolError> {
        let old = self.tables.table(table).remove(key);
        self.undo.push((table, key.clone(), old));
        Ok(())
    }
}

/// A spool in memory: same semantics as the file spool, lost when the process exits.
/// For tests, examples, and deployments that accept losing unreported usage on restart.
#[derive(Default)]
pub struct MemorySpool {
    tables: Mutex<MemTables>,
}

impl fmt::Debug for MemorySpool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySpool").finish_non_exhaustive()
    }
}

impl MemorySpool {
    /// An empty spool (its id is created with its first key).
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(
        &self,
        op: impl FnOnce(&mut MemTxn<'_>) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError> {
        let mut guard = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let mut txn = MemTxn {
            tables: &mut guard,
            undo: Vec::new(),
        };
        match op(&mut txn) {
            Ok(r) => Ok(r),
            Err(e) => {
                txn.rollback();
                Err(e)
            }
        }
    }

    /// Stores raw bytes as a row (to test how corrupt rows are handled).
    #[cfg(test)]
    pub(crate) fn put_raw(&self, table: Table, key: RowKey, bytes: &[u8]) {
        let mut guard = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        guard.table(table).insert(key, bytes.to_vec());
    }
}

impl Spool for MemorySpool {
    fn merge_checkpoints(
        &self,
        routes: &[SpoolRoute],
        checkpoints: &[Checkpoint],
        window_secs: u64,
    ) -> Result<usize, SpoolError> {
        self.with(|t| merge_in(t, routes, checkpoints, window_secs))
    }

    fn accounts(&self) -> Result<Vec<(CustomerId, AccountState)>, SpoolError> {
        self.with(|t| accounts_in(t))
    }

    fn last_checkpoint(&self, writer: &str) -> Result<u64, SpoolError> {
        self.with(|t| last_checkpoint_in(t, writer))
    }

    fn take(&self, request: &TakeRequest) -> Result<Taken, SpoolError> {
        self.with(|t| take_in(t, request))
    }

    fn ack(&self, records: &[UsageRecord], now_unix: u64) -> Result<usize, SpoolError> {
        self.with(|t| ack_in(t, records, now_unix))
    }

    fn dead_letter(
        &self,
        records: &[UsageRecord],
        reason: &str,
        now_unix: u64,
    ) -> Result<usize, SpoolError> {
        self.with(|t| dead_letter_in(t, records, reason, now_unix))
    }

    fn requeue(
        &self,
        from: Settled,
        keys: &[SpoolKey],
        instance: &str,
        now_unix: u64,
    ) -> Result<usize, SpoolError> {
        self.with(|t| requeue_in(t, from, keys, instance, now_unix))
    }

    fn pending(&self, provider: Option<&str>) -> Result<Vec<PendingEntry>, SpoolError> {
        self.with(|t| pending_in(t, provider))
    }

    fn acknowledged(&self, provider: Option<&str>) -> Result<Vec<Acknowledged>, SpoolError> {
        self.with(|t| acknowledged_in(t, provider))
    }

    fn dead_letters(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError> {
        self.with(|t| settled_in(t, Settled::DeadLetters, provider))
    }

    fn to_reconcile(&self, provider: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError> {
        self.with(|t| settled_in(t, Settled::Reconciliation, provider))
    }

    fn stored_aggregation(
        &self,
        provider: &str,
        meter: &MeterId,
    ) -> Result<Option<Aggregation>, SpoolError> {
        self.with(|t| stored_aggregation_in(t, provider, meter))
    }

    fn quarantined(&self) -> Result<Vec<Quarantined>, SpoolError> {
        self.with(|t| quarantined_in(t))
    }

    fn prune_batch(
        &self,
        before_unix: u64,
        after: Option<&SpoolKey>,
        max: usize,
    ) -> Result<Pruned, SpoolError> {
        self.with(|t| prune_batch_in(t, before_unix, after, max))
    }
}
