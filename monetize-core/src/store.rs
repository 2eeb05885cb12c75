//! Customer state that outlives the process or is shared between instances: status, plan,
//! balance, and once-only markers (notification dedup). The engine keeps the live copy in
//! memory; a store is read and written by background tasks only, never on the request path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::customer::CustomerStatus;
use crate::id::{CustomerId, MeterId, PlanId};

/// One customer's durable state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AccountState {
    /// Delinquent / cancelled / blocked.
    pub delinquent: bool,
    /// The subscription is cancelled.
    pub cancelled: bool,
    /// An operator blocked the customer.
    pub blocked: bool,
    /// The plan, if assigned.
    pub plan: Option<PlanId>,
    /// Prepaid balance in micro-credits.
    pub balance: i64,
    /// Usage counted towards quotas in the current period, per meter (only non-zero ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub period_usage: Vec<PeriodUsage>,
    /// The customer's billing anchor, unix seconds ([`StateChange::BillingAnchor`]), if
    /// one was set: restored with the rest, so `billing_cycle` quotas keep their day.
    ///
    /// [`StateChange::BillingAnchor`]: crate::StateChange::BillingAnchor
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_anchor: Option<u64>,
    /// Grants, the credits journal and the customer's own low-balance threshold
    /// ([`crate::credits`]); a state store keeps them, a spool checkpoint does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<crate::grant::CreditsState>,
    /// The number of the last credits operation the balance includes: on restore, the
    /// journal's later operations (from the state store) are added to a spool's balance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_seq: Option<u64>,
    /// When code last changed `delinquent`, `cancelled`, `blocked` or `plan` directly
    /// ([`Engine::apply`](crate::Engine::apply)), in wall-clock milliseconds, per field:
    /// ordered with the webhook log's versions, so that re-applying the log at start
    /// never undoes a newer direct change.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub field_versions: std::collections::BTreeMap<String, u64>,
    /// Per meter, the periods in a row the customer's usage reached its plan's
    /// allowance (for `upsell_candidate`; only meters with a streak).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsell: Vec<UpsellStreak>,
}

/// One meter's usage within one quota period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeriodUsage {
    /// The meter.
    pub meter: MeterId,
    /// Unix seconds at which the period began; restored only while it is still current.
    pub period_start: u64,
    /// Used in the period.
    pub used: u64,
}

impl PeriodUsage {
    /// A meter's usage in the period that began at `period_start`.
    pub fn new(meter: MeterId, period_start: u64, used: u64) -> Self {
        Self {
            meter,
            period_start,
            used,
        }
    }
}

/// How many periods in a row a customer's usage of a meter reached its plan's
/// allowance (see `PlanConfig::upsell_after_periods`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UpsellStreak {
    /// The meter.
    pub meter: MeterId,
    /// Periods in a row at or above the allowance.
    pub periods: u32,
    /// Unix seconds at which the last period counted began (a period is counted once).
    pub period_start: u64,
}

impl UpsellStreak {
    /// A streak of `periods` periods, the last one beginning at `period_start`.
    pub fn new(meter: MeterId, periods: u32, period_start: u64) -> Self {
        Self {
            meter,
            periods,
            period_start,
        }
    }
}

impl AccountState {
    /// The status flags as a [`CustomerStatus`].
    pub fn status(&self) -> CustomerStatus {
        CustomerStatus {
            delinquent: self.delinquent,
            cancelled: self.cancelled,
            blocked: self.blocked,
        }
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or answered an error: retry later; the engine keeps
    /// serving from memory meanwhile.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be decoded: it names the key; fix or delete it.
    #[error("state store value for `{key}` is corrupt: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
}

/// Where customer state and once-only markers live beyond one process.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// A customer's state, if stored.
    async fn load(&self, customer: &CustomerId) -> Result<Option<AccountState>, StoreError>;

    /// Every stored customer's state (read once at start-up).
    async fn load_all(&self) -> Result<Vec<(CustomerId, AccountState)>, StoreError>;

    /// Replaces a customer's state.
    async fn save(&self, customer: &CustomerId, state: &AccountState) -> Result<(), StoreError>;

    /// Adds `delta` micro-credits to the stored balance atomically; returns the new balance.
    async fn adjust_balance(&self, customer: &CustomerId, delta: i64) -> Result<i64, StoreError>;

    /// Sets a marker unless it is already set; `true` when this call set it. Markers expire
    /// after `ttl`. Used to send a notification once per customer, event and period.
    async fn mark_once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Removes a marker set by [`StateStore::mark_once`], so that the next `mark_once` of
    /// `key` sets it again: a notification that failed for good gives its claim back and
    /// a later crossing in the same period may send. Removing an absent marker is not an
    /// error. A shared store does it in one step (Redis: `DEL key`).
    async fn unmark(&self, key: &str) -> Result<(), StoreError>;
}

/// The in-process store: a map behind a mutex (never touched on the request path).
#[derive(Debug, Default)]
pub struct MemoryStore {
    accounts: Mutex<HashMap<CustomerId, AccountState>>,
    marks: Mutex<HashMap<String, Instant>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn load(&self, customer: &CustomerId) -> Result<Option<AccountState>, StoreError> {
        Ok(lock(&self.accounts).get(customer).cloned())
    }

    async fn load_all(&self) -> Result<Vec<(CustomerId, AccountState)>, StoreError> {
        Ok(lock(&self.accounts)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn save(&self, customer: &CustomerId, state: &AccountState) -> Result<(), StoreError> {
        lock(&self.accounts).insert(customer.clone(), state.clone());
        Ok(())
    }

    async fn adjust_balance(&self, customer: &CustomerId, delta: i64) -> Result<i64, StoreError> {
        let mut a = lock(&self.accounts);
        let s = a.entry(customer.clone()).or_default();
        s.balance = s.balance.saturating_add(delta);
        Ok(s.balance)
    }

    async fn mark_once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut m = lock(&self.marks);
        m.retain(|_, exp| *exp > now);
        if m.contains_key(key) {
            return Ok(false);
        }
        m.insert(key.to_owned(), now + ttl);
        Ok(true)
    }

    async fn unmark(&self, key: &str) -> Result<(), StoreError> {
        lock(&self.marks).remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_round_trips_and_marks_once() {
        let s = MemoryStore::new();
        let c = CustomerId::new("c").unwrap();
        assert_eq!(s.load(&c).await.unwrap(), None);
        let st = AccountState {
            delinquent: true,
            plan: Some(PlanId::new("pro").unwrap()),
            balance: 10,
            ..Default::default()
        };
        s.save(&c, &st).await.unwrap();
        assert_eq!(s.load(&c).await.unwrap(), Some(st));
        assert_eq!(s.adjust_balance(&c, -15).await.unwrap(), -5);
        assert!(s.mark_once("k", Duration::from_secs(60)).await.unwrap());
        assert!(!s.mark_once("k", Duration::from_secs(60)).await.unwrap());
        assert!(s.mark_once("short", Duration::ZERO).await.unwrap());
        assert!(
            s.mark_once("short", Duration::ZERO).await.unwrap(),
            "expired marks can be set again"
        );
        s.unmark("k").await.unwrap();
        assert!(
            s.mark_once("k", Duration::from_secs(60)).await.unwrap(),
            "an unmarked key can be set again"
        );
        s.unmark("absent").await.unwrap();
    }
}
