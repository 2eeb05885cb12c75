//! [`RedbStore`]: customer state on disk, the embedded default [`StateStore`], so that
//! balances, status and quota usage survive restarts without a server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::id::CustomerId;
use crate::store::{AccountState, StateStore, StoreError};

pub(crate) const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
pub(crate) const MARKS: TableDefinition<&str, u64> = TableDefinition::new("marks");

/// Customer state in a redb file. Every write is one committed transaction.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    /// Where the pruning of expired marks resumes (the last key looked at; `None`: from
    /// the start).
    pub(crate) prune_cursor: Arc<std::sync::Mutex<Option<String>>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

fn unavailable(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

impl RedbStore {
    /// Opens (or creates) the store file. One process at a time may have it open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(|e| unavailable(&path, e))?;
        let txn = db.begin_write().map_err(|e| unavailable(&path, e))?;
        txn.open_table(ACCOUNTS)
            .map_err(|e| unavailable(&path, e))?;
        txn.open_table(MARKS).map_err(|e| unavailable(&path, e))?;
        txn.commit().map_err(|e| unavailable(&path, e))?;
        Ok(Self {
            db: Arc::new(db),
            path: Arc::new(path),
            prune_cursor: Arc::default(),
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a blocking redb operation off the async workers.
    pub(crate) async fn blocking<R: Send + 'static>(
        &self,
        op: impl FnOnce(&Database, &Path) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (db, path) = (self.db.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || op(&db, &path))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<AccountState, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn encode(state: &AccountState) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(state)
        .map_err(|e| StoreError::Unavailable(format!("cannot encode state: {e}")))
}

#[async_trait]
impl StateStore for RedbStore {
    async fn load(&self, customer: &CustomerId) -> Result<Option<AccountState>, StoreError> {
        let id = customer.clone();
        self.blocking(move |db, path| {
            let txn = db.begin_read().map_err(|e| unavailable(path, e))?;
            let t = txn.open_table(ACCOUNTS).map_err(|e| unavailable(path, e))?;
            let v = t.get(id.as_str()).map_err(|e| unavailable(path, e))?;
            v.map(|g| decode(id.as_str(), g.value())).transpose()
        })
        .await
    }

    async fn load_all(&self) -> Result<Vec<(CustomerId, AccountState)>, StoreError> {
        self.blocking(|db, path| {
            let txn = db.begin_read().map_err(|e| unavailable(path, e))?;
            let t = txn.open_table(ACCOUNTS).map_err(|e| unavailable(path, e))?;
            let mut out = Vec::new();
            for row in t.iter().map_err(|e| unavailable(path, e))? {
                let (k, v) = row.map_err(|e| unavailable(path, e))?;
                let key = k.value();
                let id = CustomerId::new(key).map_err(|e| StoreError::Corrupt {
                    key: key.to_owned(),
                    reason: e.to_string(),
                })?;
                out.push((id, decode(key, v.value())?));
            }
            Ok(out)
        })
        .await
    }

    async fn save(&self, customer: &CustomerId, state: &AccountState) -> Result<(), StoreError> {
        let (id, bytes) = (customer.clone(), encode(state)?);
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| unavailable(path, e))?;
            {
                let mut t = txn.open_table(ACCOUNTS).map_err(|e| unavailable(path, e))?;
                t.insert(id.as_str(), bytes.as_slice())
                    .map_err(|e| unavailable(path, e))?;
            }
            txn.commit().map_err(|e| unavailable(path, e))
        })
        .await
    }

    async fn adjust_balance(&self, customer: &CustomerId, delta: i64) -> Result<i64, StoreError> {
        let id = customer.clone();
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| unavailable(path, e))?;
            let balance = {
                let mut t = txn.open_table(ACCOUNTS).map_err(|e| unavailable(path, e))?;
                let mut state = match t.get(id.as_str()).map_err(|e| unavailable(path, e))? {
                    Some(v) => decode(id.as_str(), v.value())?,
                    None => AccountState::default(),
                };
                state.balance = state.balance.saturating_add(delta);
                t.insert(id.as_str(), encode(&state)?.as_slice())
                    .map_err(|e| unavailable(path, e))?;
                state.balance
            };
            txn.commit().map_err(|e| unavailable(path, e))?;
            Ok(balance)
        })
        .await
    }

    async fn mark_once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.blocking(move |db, path| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let txn = db.begin_write().map_err(|e| unavailable(path, e))?;
            let set = {
                let mut t = txn.open_table(MARKS).map_err(|e| unavailable(path, e))?;
                let live = t
                    .get(key.as_str())
                    .map_err(|e| unavailable(path, e))?
                    .is_some_and(|v| v.value() > now);
                if !live {
                    let until = now.saturating_add(ttl.as_millis() as u64);
                    t.insert(key.as_str(), until)
                        .map_err(|e| unavailable(path, e))?;
                }
                !live
            };
            txn.commit().map_err(|e| unavailable(path, e))?;
            Ok(set)
        })
        .await
    }

    async fn unmark(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| unavailable(path, e))?;
            txn.open_table(MARKS)
                .map_err(|e| unavailable(path, e))?
                .remove(key.as_str())
                .map_err(|e| unavailable(path, e))?;
            txn.commit().map_err(|e| unavailable(path, e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{MeterId, PlanId};
    use crate::store::PeriodUsage;

    #[tokio::test]
    async fn survives_reopen_and_names_corrupt_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let c = CustomerId::new("acme").unwrap();
        let st = AccountState {
            delinquent: true,
            plan: Some(PlanId::new("pro").unwrap()),
            balance: 42,
            period_usage: vec![PeriodUsage::new(MeterId::new("calls").unwrap(), 60, 3)],
            ..Default::default()
        };
        {
            let s = RedbStore::open(&path).unwrap();
            s.save(&c, &st).await.unwrap();
            assert_eq!(s.adjust_balance(&c, -50).await.unwrap(), -8);
            assert!(s.mark_once("m", Duration::from_secs(60)).await.unwrap());
        }
        let s = RedbStore::open(&path).unwrap();
        let mut expected = st;
        expected.balance = -8;
        assert_eq!(s.load(&c).await.unwrap(), Some(expected.clone()));
        assert_eq!(s.load_all().await.unwrap(), vec![(c.clone(), expected)]);
        assert!(
            !s.mark_once("m", Duration::from_secs(60)).await.unwrap(),
            "marks survive reopen"
        );
        s.unmark("m").await.unwrap();
        s.unmark("never-set").await.unwrap();
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        assert!(
            s.mark_once("m", Duration::from_secs(60)).await.unwrap(),
            "an unmark is durable: the key can be set again after reopen"
        );
        // A row that does not decode is an error naming its key, not a panic.
        {
            let txn = s.db.begin_write().unwrap();
            txn.open_table(ACCOUNTS)
                .unwrap()
                .insert("bad", &b"{nope"[..])
                .unwrap();
            txn.commit().unwrap();
        }
        let e = s.load_all().await.unwrap_err();
        assert!(e.to_string().contains("`bad`"), "{e}");
        assert!(
            s.load(&c).await.unwrap().is_some(),
            "other rows still readable"
        );
    }

    #[test]
    fn open_names_the_path() {
        let e = RedbStore::open("/nonexistent-dir/state.redb").unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/state.redb"), "{e}");
    }
}
