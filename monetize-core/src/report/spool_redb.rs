//! [`RedbSpool`]: the spool in one [redb](https://docs.rs/redb) file, the embedded default.
//!
//! Each spool operation is one redb write transaction, committed with redb's default
//! (immediate) durability: when `merge` returns `Ok`, the usage survives a `kill -9` or a
//! power cut. Operations that change nothing are aborted instead of committed, so idle
//! polling costs no disk write.
//!
//! Rows are keyed by the tuple `(provider, meter, customer, window_start, part)`; values are
//! one version byte and postcard (see `spool_kv`); JSON rows of earlier releases are read.

use std::fmt;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::report::spool::SpoolError;
use crate::report::spool_kv::{KvRead, KvStore, KvWrite, RowKey, Table, spool_id_in};

type Key = (&'static str, &'static str, &'static str, u64, u32);

const PENDING: TableDefinition<Key, &[u8]> = TableDefinition::new("pending");
const ACKED: TableDefinition<Key, &[u8]> = TableDefinition::new("acknowledged");
const DEAD: TableDefinition<Key, &[u8]> = TableDefinition::new("dead_letters");
const RECONCILE: TableDefinition<Key, &[u8]> = TableDefinition::new("reconcile");
const QUARANTINE: TableDefinition<Key, &[u8]> = TableDefinition::new("quarantine");
const PARTS: TableDefinition<Key, &[u8]> = TableDefinition::new("parts");
const META: TableDefinition<Key, &[u8]> = TableDefinition::new("meta");
const ACCOUNTS: TableDefinition<Key, &[u8]> = TableDefinition::new("accounts");

fn definition(table: Table) -> TableDefinition<'static, Key, &'static [u8]> {
    match table {
        Table::Pending => PENDING,
        Table::Acked => ACKED,
        Table::Dead => DEAD,
        Table::Reconcile => RECONCILE,
        Table::Quarantine => QUARANTINE,
        Table::Parts => PARTS,
        Table::Meta => META,
        Table::Accounts => ACCOUNTS,
    }
}

fn tuple(k: &RowKey) -> (&str, &str, &str, u64, u32) {
    (&k.provider, &k.meter, &k.customer, k.window_start, k.part)
}

fn row_key(t: (&str, &str, &str, u64, u32)) -> RowKey {
    RowKey {
        provider: t.0.to_owned(),
        meter: t.1.to_owned(),
        customer: t.2.to_owned(),
        window_start: t.3,
        part: t.4,
    }
}

/// A spool stored in one redb file.
pub struct RedbSpool {
    db: Database,
    path: PathBuf,
}

impl fmt::Debug for RedbSpool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbSpool")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbSpool {
    /// Opens the spool file at `path`, creating it (and its tables) if missing.
    ///
    /// One process at a time may have a spool file open; after a crash, opening repairs
    /// the file (redb rolls back to the last committed transaction).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SpoolError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(|e| SpoolError::Open {
            path: path.clone(),
            source: Box::new(e),
        })?;
        let spool = Self { db, path };
        spool.write(|w| {
            for t in Table::ALL {
                w.txn
                    .open_table(definition(t))
                    .map_err(|e| storage(w.path, e))?;
            }
            // The spool id exists from the start: every key handed out is derived from it.
            spool_id_in(w)?;
            w.dirty = true;
            Ok(())
        })?;
        tracing::debug!(path = %spool.path.display(), "spool opened");
        Ok(spool)
    }

    /// Where the spool file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write<R>(
        &self,
        op: impl FnOnce(&mut RedbWrite<'_>) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError> {
        let txn = self.db.begin_write().map_err(|e| storage(&self.path, e))?;
        let mut w = RedbWrite {
            txn,
            path: &self.path,
            dirty: false,
        };
        // On error, dropping the transaction rolls it back.
        let out = op(&mut w)?;
        if w.dirty {
            w.txn.commit().map_err(|e| storage(&self.path, e))?;
        } else {
            w.txn.abort().map_err(|e| storage(&self.path, e))?;
        }
        Ok(out)
    }

    fn read<R>(
        &self,
        op: impl FnOnce(&mut RedbRead<'_>) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError> {
        let txn = self.db.begin_read().map_err(|e| storage(&self.path, e))?;
        op(&mut RedbRead {
            txn,
            path: &self.path,
        })
    }

    /// Stores raw bytes as a row (to test how corrupt rows are handled).
    #[cfg(test)]
    pub(crate) fn put_raw(&self, table: Table, key: &RowKey, bytes: &[u8]) {
        self.write(|w| {
            w.put(table, key, bytes)?;
            Ok(())
        })
        .expect("raw write");
    }
}

fn storage(path: &Path, e: impl Into<redb::Error>) -> SpoolError {
    SpoolError::Storage {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    }
}

struct RedbWrite<'a> {
    txn: redb::WriteTransaction,
    path: &'a Path,
    dirty: bool,
}

struct RedbRead<'a> {
    txn: redb::ReadTransaction,
    path: &'a Path,
}

fn collect<T: ReadableTable<Key, &'static [u8]>>(
    table: &T,
    path: &Path,
    from: &RowKey,
    max: usize,
    keep: &dyn Fn(&RowKey) -> bool,
) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError> {
    let mut out = Vec::new();
    let range = table
        .range::<(&str, &str, &str, u64, u32)>(tuple(from)..)
        .map_err(|e| storage(path, e))?;
    for item in range {
        if out.len() >= max {
            break;
        }
        let (k, v) = item.map_err(|e| storage(path, e))?;
        let key = row_key(k.value());
        if !keep(&key) {
            break;
        }
        out.push((key, v.value().to_vec()));
    }
    Ok(out)
}

impl KvRead for RedbWrite<'_> {
    fn get(&mut self, table: Table, key: &RowKey) -> Result<Option<Vec<u8>>, SpoolError> {
        let t = self
            .txn
            .open_table(definition(table))
            .map_err(|e| storage(self.path, e))?;
        let v = t.get(tuple(key)).map_err(|e| storage(self.path, e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn scan(
        &mut self,
        table: Table,
        from: &RowKey,
        max: usize,
        keep: &dyn Fn(&RowKey) -> bool,
    ) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError> {
        let t = self
            .txn
            .open_table(definition(table))
            .map_err(|e| storage(self.path, e))?;
        collect(&t, self.path, from, max, keep)
    }
}

impl KvWrite for RedbWrite<'_> {
    fn put(&mut self, table: Table, key: &RowKey, value: &[u8]) -> Result<(), SpoolError> {
        let mut t = self
            .txn
            .open_table(definition(table))
            .map_err(|e| storage(self.path, e))?;
        t.insert(tuple(key), value)
            .map_err(|e| storage(self.path, e))?;
        self.dirty = true;
        Ok(())
    }

    fn remove(&mut self, table: Table, key: &RowKey) -> Result<(), SpoolError> {
        let mut t = self
            .txn
            .open_table(definition(table))
            .map_err(|e| storage(self.path, e))?;
        t.remove(tuple(key)).map_err(|e| storage(self.path, e))?;
        self.dirty = true;
        Ok(())
    }
}

impl KvRead for RedbRead<'_> {
    fn get(&mut self, table: Table, key: &RowKey) -> Result<Option<Vec<u8>>, SpoolError> {
        let t = self
            .txn
            .open_table(definition(table))
            .map_err(|e| storage(self.path, e))?;
        let v = t.get(tuple(key)).map_err(|e| storage(self.path, e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn scan(
        &mut self,
        table: Table,
        from: &RowKey,
        max: usize,
        keep: &dyn Fn(&RowKey) -> bool,
    ) -> Result<Vec<(RowKey, Vec<u8>)>, SpoolError> {
        let t = self
            .txn
            .open_table(definition(table))
            .map_err(|e| storage(self.path, e))?;
        collect(&t, self.path, from, max, keep)
    }
}

impl KvStore for RedbSpool {
    fn read_txn<R>(
        &self,
        op: impl FnOnce(&mut dyn KvRead) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError> {
        self.read(|r| op(r))
    }

    fn write_txn<R>(
        &self,
        op: impl FnOnce(&mut dyn KvWrite) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError> {
        self.write(|w| op(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::CustomerId;
    use crate::report::spool::{Checkpoint, Spool};
    use crate::report::spool_suite::{self as suite, routes, sum};
    use crate::store::AccountState;

    #[test]
    fn redb_spool_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicUsize::new(0);
        suite::all(&|| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::new(RedbSpool::open(dir.path().join(format!("s{i}.redb"))).unwrap())
        });
    }

    #[test]
    fn accounts_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        let state = AccountState {
            balance: -12,
            delinquent: true,
            ..AccountState::default()
        };
        let id = CustomerId::new("acme").unwrap();
        {
            let s = RedbSpool::open(&path).unwrap();
            let cp = Checkpoint::new("w", 1, 100, vec![sum("acme", "calls", 7)])
                .with_accounts(vec![(id.clone(), state.clone())]);
            s.merge_checkpoints(&routes(), &[cp], 60).unwrap();
        }
        let s = RedbSpool::open(&path).unwrap();
        assert_eq!(s.accounts().unwrap(), vec![(id, state)]);
        assert_eq!(s.pending_total(Some("ledger"), "calls", "acme").unwrap(), 7);
    }

    #[test]
    fn sealed_entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        let first = {
            let s = RedbSpool::open(&path).unwrap();
            s.merge(&routes(), &[sum("c1", "calls", 7)], 100, 60)
                .unwrap();
            s.take_due("ledger", "i", 200, 10, false).unwrap()
        };
        let s = RedbSpool::open(&path).unwrap();
        let again = s.take_due("ledger", "i", 200, 10, false).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].idempotency_key, first[0].idempotency_key);
        assert_eq!(again[0].quantity, 7);
        assert_eq!(again[0].attempts, 1);
        assert_eq!(s.path(), path.as_path());
    }

    #[test]
    fn corrupt_rows_are_named_and_do_not_hide_others() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbSpool::open(dir.path().join("spool.redb")).unwrap();
        s.merge(&routes(), &[sum("c1", "calls", 1)], 100, 60)
            .unwrap();
        let bad = RowKey {
            provider: "ledger".into(),
            meter: "calls".into(),
            customer: "c0".into(),
            window_start: 60,
            part: 0,
        };
        s.put_raw(Table::Pending, &bad, &[0xff, 0x00]);
        let err = s.pending(Some("ledger")).unwrap_err();
        assert!(err.to_string().contains("ledger/calls/c0/60#0"), "{err}");
        let got = s.take_due("ledger", "i", 200, 10, false).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].customer.as_str(), "c1");
        // an invalid identifier in a key is reported the same way
        let bad_id = RowKey {
            customer: "has space".into(),
            ..bad
        };
        s.put_raw(Table::Pending, &bad_id, b"{}");
        let err = s.take_due("ledger", "i", 200, 10, false);
        assert_eq!(err.unwrap().len(), 1);
    }

    #[test]
    fn open_fails_clearly_on_a_bad_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("spool.redb");
        let err = RedbSpool::open(&path).unwrap_err();
        assert!(matches!(err, SpoolError::Open { .. }), "{err}");
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }
}
