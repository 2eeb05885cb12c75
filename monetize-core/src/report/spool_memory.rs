//! [`MemorySpool`]: the spool in memory, for tests, examples, and deployments that accept
//! losing unreported usage on restart.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use crate::report::spool::SpoolError;
use crate::report::spool_kv::{KvRead, KvStore, KvWrite, RowKey, Table};

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

impl KvStore for MemorySpool {
    fn read_txn<R>(
        &self,
        op: impl FnOnce(&mut dyn KvRead) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError> {
        self.with(|t| op(t))
    }

    fn write_txn<R>(
        &self,
        op: impl FnOnce(&mut dyn KvWrite) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError> {
        self.with(|t| op(t))
    }
}
