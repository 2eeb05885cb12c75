//! [`WebhookLog`]: what the webhook processor remembers across restarts: the event ids
//! seen (dedup), per customer the version and value of every field a delivery (or an
//! operator) set (ordering), and the last events applied (for operators).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::Meaning;
use crate::customer::StateChange;
use crate::id::{CustomerId, PlanId};
use crate::store::{AccountState, StoreError};
use crate::store_redb::RedbStore;

/// How many applied events are kept per customer.
pub(crate) const RECENT: usize = 20;

/// The last value a delivery or an operator gave one field of a customer's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FieldValue {
    /// Delinquent or not.
    Delinquent(bool),
    /// Cancelled (or paused) or not.
    Cancelled(bool),
    /// Blocked by an operator or not.
    Blocked(bool),
    /// On this plan.
    Plan(PlanId),
}

impl FieldValue {
    /// The field of a change, when it is one whose last value wins (credits add up instead).
    pub fn of(change: &StateChange) -> Option<FieldValue> {
        match change {
            StateChange::Delinquent(b) => Some(FieldValue::Delinquent(*b)),
            StateChange::Cancelled(b) => Some(FieldValue::Cancelled(*b)),
            StateChange::Blocked(b) => Some(FieldValue::Blocked(*b)),
            StateChange::Plan(p) => Some(FieldValue::Plan(p.clone())),
            _ => None,
        }
    }

    /// The field's name (`delinquent`, `cancelled`, `blocked`, `plan`).
    pub fn field(&self) -> &'static str {
        match self {
            FieldValue::Delinquent(_) => "delinquent",
            FieldValue::Cancelled(_) => "cancelled",
            FieldValue::Blocked(_) => "blocked",
            FieldValue::Plan(_) => "plan",
        }
    }

    /// The change that sets it.
    pub fn change(&self) -> StateChange {
        match self {
            FieldValue::Delinquent(b) => StateChange::Delinquent(*b),
            FieldValue::Cancelled(b) => StateChange::Cancelled(*b),
            FieldValue::Blocked(b) => StateChange::Blocked(*b),
            FieldValue::Plan(p) => StateChange::Plan(p.clone()),
        }
    }
}

/// A field's version (milliseconds: the event's time or resource version) and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FieldState {
    /// The version that set it.
    pub version: u64,
    /// The value.
    pub value: FieldValue,
}

/// A delivery (or operator change) recorded for a customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AppliedEvent {
    /// The provider, or `operator:<actor>` for an operator's change.
    pub source: String,
    /// The provider's event id (empty for operator changes).
    pub event_id: String,
    /// The event type (or the operator's action).
    pub event_type: String,
    /// The event's version in milliseconds.
    pub version: u64,
    /// What it meant.
    pub meaning: Meaning,
    /// The fields it changed; empty when every field it touches was already set by a
    /// newer event (an out-of-order delivery).
    pub changed: Vec<String>,
    /// Unix seconds when it was applied.
    pub applied_at: u64,
}

/// What the webhook log holds for one customer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CustomerWebhooks {
    /// Per field (`delinquent`, `cancelled`, `blocked`, `plan`), the newest version and value.
    pub fields: BTreeMap<String, FieldState>,
    /// The last events applied, oldest first (at most 20).
    pub recent: Vec<AppliedEvent>,
}

impl CustomerWebhooks {
    /// Records `value` at `version` unless the field holds a newer one; `true` when set.
    pub(crate) fn offer(&mut self, version: u64, value: FieldValue) -> bool {
        let field = value.field();
        if self.fields.get(field).is_some_and(|f| f.version > version) {
            return false;
        }
        self.fields
            .insert(field.to_owned(), FieldState { version, value });
        true
    }

    /// Appends an applied event, keeping the last [`RECENT`].
    pub(crate) fn push(&mut self, event: AppliedEvent) {
        self.recent.push(event);
        let extra = self.recent.len().saturating_sub(RECENT);
        self.recent.drain(..extra);
    }
}

/// Where the webhook processor keeps its memory. [`RedbStore`] implements it in the same
/// file as the customer state (each commit one transaction with the customer's state);
/// [`MemoryWebhookLog`] for tests and engines without a disk.
#[async_trait]
pub trait WebhookLog: Send + Sync + 'static {
    /// Whether the dedup key was committed and has not expired.
    async fn seen(&self, key: &str) -> Result<bool, StoreError>;

    /// What the log holds for a customer (empty when nothing).
    async fn customer(&self, customer: &CustomerId) -> Result<CustomerWebhooks, StoreError>;

    /// Every customer's record (read at start to re-apply the newest field values).
    async fn all(&self) -> Result<Vec<(CustomerId, CustomerWebhooks)>, StoreError>;

    /// In one transaction: marks `key` seen for `ttl` (when given), and replaces the
    /// customer's record and durable account state (when given).
    async fn commit(
        &self,
        key: Option<(&str, Duration)>,
        customer: Option<(&CustomerId, &CustomerWebhooks, &AccountState)>,
    ) -> Result<(), StoreError>;

    /// Deletes expired dedup keys, looking at no more than `max_rows` of them (resuming
    /// after the last one the previous call looked at, from the start again at the end);
    /// returns how many it deleted. An expired key is already not [`seen`](Self::seen):
    /// this only keeps the log from growing with every delivery ever made. The default
    /// deletes nothing.
    async fn prune_expired(&self, max_rows: usize) -> Result<usize, StoreError> {
        let _ = max_rows;
        Ok(0)
    }
}

/// A [`WebhookLog`] in memory: lost with the process (use [`RedbStore`] to remember
/// deliveries across restarts).
#[derive(Debug, Default)]
pub struct MemoryWebhookLog {
    marks: Mutex<HashMap<String, Instant>>,
    customers: Mutex<HashMap<CustomerId, CustomerWebhooks>>,
}

impl MemoryWebhookLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl WebhookLog for MemoryWebhookLog {
    async fn seen(&self, key: &str) -> Result<bool, StoreError> {
        Ok(lock(&self.marks)
            .get(key)
            .is_some_and(|exp| *exp > Instant::now()))
    }

    async fn customer(&self, customer: &CustomerId) -> Result<CustomerWebhooks, StoreError> {
        Ok(lock(&self.customers)
            .get(customer)
            .cloned()
            .unwrap_or_default())
    }

    async fn all(&self) -> Result<Vec<(CustomerId, CustomerWebhooks)>, StoreError> {
        Ok(lock(&self.customers)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn commit(
        &self,
        key: Option<(&str, Duration)>,
        customer: Option<(&CustomerId, &CustomerWebhooks, &AccountState)>,
    ) -> Result<(), StoreError> {
        if let Some((key, ttl)) = key {
            let now = Instant::now();
            let mut m = lock(&self.marks);
            m.retain(|_, exp| *exp > now);
            m.insert(key.to_owned(), now + ttl);
        }
        if let Some((id, record, _)) = customer {
            lock(&self.customers).insert(id.clone(), record.clone());
        }
        Ok(())
    }

    async fn prune_expired(&self, _max_rows: usize) -> Result<usize, StoreError> {
        let now = Instant::now();
        let mut m = lock(&self.marks);
        let before = m.len();
        m.retain(|_, exp| *exp > now);
        Ok(before - m.len())
    }
}

const WEBHOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("webhooks");

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode(key: &str, bytes: &[u8]) -> Result<CustomerWebhooks, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: format!("webhooks/{key}"),
        reason: e.to_string(),
    })
}

#[async_trait]
impl WebhookLog for RedbStore {
    async fn seen(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(unavailable)?;
            let t = txn
                .open_table(crate::store_redb::MARKS)
                .map_err(unavailable)?;
            Ok(t.get(key.as_str())
                .map_err(unavailable)?
                .is_some_and(|v| v.value() > now_ms()))
        })
        .await
    }

    async fn customer(&self, customer: &CustomerId) -> Result<CustomerWebhooks, StoreError> {
        let id = customer.clone();
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(unavailable)?;
            let t = match txn.open_table(WEBHOOKS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => {
                    return Ok(CustomerWebhooks::default());
                }
                Err(e) => return Err(unavailable(e)),
            };
            match t.get(id.as_str()).map_err(unavailable)? {
                Some(v) => decode(id.as_str(), v.value()),
                None => Ok(CustomerWebhooks::default()),
            }
        })
        .await
    }

    async fn all(&self) -> Result<Vec<(CustomerId, CustomerWebhooks)>, StoreError> {
        self.blocking(|db, _| {
            let txn = db.begin_read().map_err(unavailable)?;
            let t = match txn.open_table(WEBHOOKS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(unavailable(e)),
            };
            let mut out = Vec::new();
            for row in t.iter().map_err(unavailable)? {
                let (k, v) = row.map_err(unavailable)?;
                let key = k.value();
                let id = CustomerId::new(key).map_err(|e| StoreError::Corrupt {
                    key: format!("webhooks/{key}"),
                    reason: e.to_string(),
                })?;
                out.push((id, decode(key, v.value())?));
            }
            Ok(out)
        })
        .await
    }

    async fn commit(
        &self,
        key: Option<(&str, Duration)>,
        customer: Option<(&CustomerId, &CustomerWebhooks, &AccountState)>,
    ) -> Result<(), StoreError> {
        let key = key.map(|(k, ttl)| (k.to_owned(), ttl));
        let customer = match customer {
            Some((id, record, account)) => Some((
                id.clone(),
                serde_json::to_vec(record).map_err(unavailable)?,
                serde_json::to_vec(account).map_err(unavailable)?,
            )),
            None => None,
        };
        self.blocking(move |db, _| {
            let txn = db.begin_write().map_err(unavailable)?;
            if let Some((key, ttl)) = &key {
                let mut t = txn
                    .open_table(crate::store_redb::MARKS)
                    .map_err(unavailable)?;
                let until = now_ms().saturating_add(ttl.as_millis() as u64);
                t.insert(key.as_str(), until).map_err(unavailable)?;
            }
            if let Some((id, record, account)) = &customer {
                {
                    let mut t = txn.open_table(WEBHOOKS).map_err(unavailable)?;
                    t.insert(id.as_str(), record.as_slice())
                        .map_err(unavailable)?;
                }
                let mut t = txn
                    .open_table(crate::store_redb::ACCOUNTS)
                    .map_err(unavailable)?;
                t.insert(id.as_str(), account.as_slice())
                    .map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)
        })
        .await
    }

    async fn prune_expired(&self, max_rows: usize) -> Result<usize, StoreError> {
        let cursor = self.prune_cursor.clone();
        self.blocking(move |db, _| {
            let now = now_ms();
            let start = lock(&cursor).clone();
            // Looked at in a read transaction: most calls find nothing to delete and
            // write nothing.
            let (expired, next) = {
                let txn = db.begin_read().map_err(unavailable)?;
                let t = txn
                    .open_table(crate::store_redb::MARKS)
                    .map_err(unavailable)?;
                let rows = match &start {
                    Some(k) => t.range::<&str>((
                        std::ops::Bound::Excluded(k.as_str()),
                        std::ops::Bound::Unbounded,
                    )),
                    None => t.iter(),
                }
                .map_err(unavailable)?;
                let (mut expired, mut seen, mut last) = (Vec::new(), 0, None);
                for row in rows {
                    let (k, v) = row.map_err(unavailable)?;
                    seen += 1;
                    if v.value() <= now {
                        expired.push(k.value().to_owned());
                    }
                    if seen >= max_rows {
                        last = Some(k.value().to_owned());
                        break;
                    }
                }
                (expired, last)
            };
            let mut deleted = 0;
            if !expired.is_empty() {
                let txn = db.begin_write().map_err(unavailable)?;
                {
                    let mut t = txn
                        .open_table(crate::store_redb::MARKS)
                        .map_err(unavailable)?;
                    for k in &expired {
                        // Set again since it was looked at: keep it.
                        let still = t
                            .get(k.as_str())
                            .map_err(unavailable)?
                            .is_some_and(|v| v.value() <= now);
                        if still {
                            t.remove(k.as_str()).map_err(unavailable)?;
                            deleted += 1;
                        }
                    }
                }
                txn.commit().map_err(unavailable)?;
            }
            *lock(&cursor) = next;
            Ok(deleted)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::StateStore;

    fn record() -> CustomerWebhooks {
        let mut r = CustomerWebhooks::default();
        assert!(r.offer(10, FieldValue::Delinquent(true)));
        assert!(!r.offer(9, FieldValue::Delinquent(false)), "older loses");
        assert!(
            r.offer(10, FieldValue::Delinquent(true)),
            "same version applies"
        );
        r
    }

    #[tokio::test]
    async fn redb_log_survives_reopen_with_the_account_in_the_same_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let c = CustomerId::new("acme").unwrap();
        let account = AccountState {
            delinquent: true,
            ..Default::default()
        };
        {
            let s = RedbStore::open(&path).unwrap();
            assert!(!s.seen("webhook:stripe:evt_1").await.unwrap());
            assert_eq!(s.all().await.unwrap(), vec![]);
            s.commit(
                Some(("webhook:stripe:evt_1", Duration::from_secs(60))),
                Some((&c, &record(), &account)),
            )
            .await
            .unwrap();
            s.commit(Some(("gone", Duration::ZERO)), None)
                .await
                .unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert!(s.seen("webhook:stripe:evt_1").await.unwrap());
        assert!(!s.seen("gone").await.unwrap(), "expired keys are not seen");
        assert!(!s.seen("webhook:stripe:evt_2").await.unwrap());
        assert_eq!(s.customer(&c).await.unwrap(), record());
        assert_eq!(s.all().await.unwrap(), vec![(c.clone(), record())]);
        assert_eq!(StateStore::load(&s, &c).await.unwrap(), Some(account));
    }

    #[tokio::test]
    async fn memory_log_and_recent_is_bounded() {
        let log = MemoryWebhookLog::new();
        let c = CustomerId::new("acme").unwrap();
        let mut r = record();
        for i in 0..(RECENT as u64 + 5) {
            r.push(AppliedEvent {
                source: "stripe".into(),
                event_id: format!("evt_{i}"),
                event_type: "t".into(),
                version: i,
                meaning: Meaning::Paid,
                changed: vec![],
                applied_at: 0,
            });
        }
        assert_eq!(r.recent.len(), RECENT);
        assert_eq!(r.recent[0].event_id, "evt_5");
        log.commit(
            Some(("k", Duration::from_secs(60))),
            Some((&c, &r, &AccountState::default())),
        )
        .await
        .unwrap();
        assert!(log.seen("k").await.unwrap());
        assert_eq!(log.customer(&c).await.unwrap(), r);
    }

    /// The dedup keys in a redb file, expired or not.
    async fn mark_keys(s: &RedbStore) -> Vec<String> {
        s.blocking(|db, _| {
            let txn = db.begin_read().map_err(unavailable)?;
            let t = txn
                .open_table(crate::store_redb::MARKS)
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(unavailable)? {
                out.push(row.map_err(unavailable)?.0.value().to_owned());
            }
            Ok(out)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn expired_keys_are_pruned_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path().join("state.redb")).unwrap();
        for i in 0..7 {
            s.commit(Some((&format!("old:{i}"), Duration::from_millis(1))), None)
                .await
                .unwrap();
        }
        for i in 0..3 {
            s.commit(Some((&format!("live:{i}"), Duration::from_secs(600))), None)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(mark_keys(&s).await.len(), 10);
        // Batches of 4 rows: live:0-2 and old:0 first (in key order), then old:1-4, then
        // old:5-6 and the end (the next batch starts over).
        assert_eq!(s.prune_expired(4).await.unwrap(), 1);
        assert_eq!(s.prune_expired(4).await.unwrap(), 4);
        assert_eq!(s.prune_expired(4).await.unwrap(), 2);
        assert_eq!(s.prune_expired(4).await.unwrap(), 0);
        assert_eq!(mark_keys(&s).await, ["live:0", "live:1", "live:2"]);
        assert!(s.seen("live:1").await.unwrap());
        let m = MemoryWebhookLog::new();
        m.commit(Some(("a", Duration::ZERO)), None).await.unwrap();
        m.commit(Some(("b", Duration::from_secs(60))), None)
            .await
            .unwrap();
        assert_eq!(
            m.prune_expired(10).await.unwrap(),
            0,
            "a went at b's commit"
        );
        assert!(m.seen("b").await.unwrap());
    }

    /// A processor with a short dedup window: its deliveries' keys are deleted in the
    /// background once expired (each committed delivery starts a batch).
    #[tokio::test]
    async fn the_processor_prunes_expired_keys_after_its_deliveries() {
        use crate::webhook::{Delivery, WebhookProcessor};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path().join("state.redb")).unwrap());
        let engine = crate::Engine::for_tests(&["calls"]);
        let p = WebhookProcessor::with_dedup_ttl(engine, store.clone(), Duration::from_millis(50));
        let acme = CustomerId::new("acme").unwrap();
        let deliver = |id: String, meaning| {
            Delivery::new("stripe", id, "t", now_ms(), Some(acme.clone()), meaning)
        };
        for i in 0..5 {
            let m = if i % 2 == 0 {
                Meaning::PaymentFailed
            } else {
                Meaning::Paid
            };
            p.process(deliver(format!("evt_{i}"), m)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(80)).await;
        p.process(deliver("evt_last".into(), Meaning::PaymentFailed))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let keys = mark_keys(&store).await;
            if keys == ["webhook:stripe:evt_last"] {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not pruned: {keys:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.prune_expired().await.unwrap(), 0);
    }
}
