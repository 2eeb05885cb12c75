//! [`WebhookProcessor`]: applies verified deliveries to the engine exactly once.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::log::{AppliedEvent, FieldValue, WebhookLog};
use super::{Delivery, WebhookError};
use crate::customer::StateChange;
use crate::engine::Engine;
use crate::error::CoreError;
use crate::event::{Event, EventKind};
use crate::id::CustomerId;
use crate::store::{AccountState, StoreError};

/// How long event ids are remembered by default: 7 days (Stripe retries for 3 days,
/// Chargebee for 2, Recurly for about 3).
pub const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many dedup keys one [`WebhookProcessor::prune_expired`] batch looks at: each
/// delivery adds one key and prunes a batch, so the pruning keeps up with the deliveries.
pub const PRUNE_ROWS: usize = 256;

/// What became of an accepted delivery (every outcome is answered with 2xx).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Applied: the customer's fields it changed (empty when every field it touches was
    /// already set by a newer event: an out-of-order delivery).
    Applied {
        /// The customer.
        customer: CustomerId,
        /// The fields changed (`delinquent`, `cancelled`, ...).
        changed: Vec<String>,
    },
    /// The event id was processed before: nothing done.
    Duplicate,
    /// Acknowledged without a change: an event type that means nothing, or no customer.
    Ignored {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// A short word for the answer's body: `applied`, `stale`, `duplicate`, `ignored`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Applied { changed, .. } if changed.is_empty() => "stale",
            Outcome::Applied { .. } => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored { .. } => "ignored",
        }
    }
}

/// Applies deliveries to an [`Engine`]: each event id once (remembered in the
/// [`WebhookLog`] for [`DEFAULT_DEDUP_TTL`]), an older event never overriding a field a
/// newer one set, and the customer's new state committed to the log (with the dedup key,
/// in one transaction) before [`process`](Self::process) returns, so that a crash after
/// the route's 2xx loses nothing and a retry after a restart is a duplicate.
///
/// Deliveries are processed one at a time (webhooks are few; the request path never
/// waits on this lock). Clone it freely: clones share the lock.
#[derive(Clone)]
pub struct WebhookProcessor {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    log: Arc<dyn WebhookLog>,
    dedup_ttl: Duration,
    lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for WebhookProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookProcessor")
            .field("dedup_ttl", &self.inner.dedup_ttl)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl WebhookProcessor {
    /// A processor applying deliveries to `engine`, remembering them in `log` (a
    /// [`RedbStore`](crate::RedbStore) to survive restarts: pass the one the engine's
    /// [`StateSync`](crate::StateSync) uses).
    pub fn new(engine: Engine, log: Arc<dyn WebhookLog>) -> Self {
        Self::with_dedup_ttl(engine, log, DEFAULT_DEDUP_TTL)
    }

    /// Like [`new`](Self::new), remembering event ids for `ttl` (at least the providers'
    /// retry window).
    pub fn with_dedup_ttl(engine: Engine, log: Arc<dyn WebhookLog>, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                log,
                dedup_ttl: ttl,
                lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The log.
    pub fn log(&self) -> &Arc<dyn WebhookLog> {
        &self.inner.log
    }

    /// The lock deliveries are processed under (operators' changes take it too, so a
    /// customer's log record is never written by both at once).
    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.lock.lock().await
    }

    /// Applies a verified delivery. Errors change nothing (the provider retries).
    pub async fn process(&self, d: Delivery) -> Result<Outcome, WebhookError> {
        let key = format!("webhook:{}:{}", d.provider, d.event_id);
        let _one_at_a_time = self.inner.lock.lock().await;
        if self.inner.log.seen(&key).await? {
            tracing::info!(provider = %d.provider, event = %d.event_id, "webhook duplicate ignored");
            return Ok(Outcome::Duplicate);
        }
        let mut changes = d.meaning.changes();
        changes.extend(d.carried.iter().cloned());
        let Some(customer) = d.customer.clone() else {
            let reason = format!("`{}` names no customer we know", d.event_type);
            tracing::warn!(provider = %d.provider, event = %d.event_id, "{reason}");
            return Ok(Outcome::Ignored { reason });
        };
        if changes.is_empty() {
            let reason = format!("`{}` changes nothing", d.event_type);
            tracing::debug!(provider = %d.provider, event = %d.event_id, "{reason}");
            return Ok(Outcome::Ignored { reason });
        }
        let engine = &self.inner.engine;
        let mut record = self.inner.log.customer(&customer).await?;
        let before = engine.account(customer.as_str()).unwrap_or_default();
        let mut applied = Vec::new();
        for change in changes {
            let newest = match FieldValue::of(&change) {
                // Not older than the field's last direct change, nor its last delivery.
                Some(v) => {
                    engine
                        .direct_version(&customer, v.field())
                        .is_none_or(|direct| direct <= d.version)
                        && record.offer(d.version, v)
                }
                None => true,
            };
            if !newest {
                continue;
            }
            if let Err(e) = engine.apply_sourced(customer.as_str(), change.clone()) {
                revert(engine, &customer, &before, &applied);
                return Err(match e {
                    CoreError::UnknownPlan(_) | CoreError::Id { .. } => {
                        WebhookError::Malformed(e.to_string())
                    }
                    e => WebhookError::Unavailable(e.to_string()),
                });
            }
            applied.push(change);
        }
        let changed: Vec<String> = applied.iter().map(field_name).collect();
        record.push(AppliedEvent {
            source: d.provider.clone(),
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            version: d.version,
            meaning: d.meaning,
            changed: changed.clone(),
            applied_at: now_ms() / 1000,
        });
        let after = engine.account(customer.as_str()).unwrap_or_default();
        if let Err(e) = self
            .inner
            .log
            .commit(
                Some((&key, self.inner.dedup_ttl)),
                Some((&customer, &record, &after)),
            )
            .await
        {
            revert(engine, &customer, &before, &applied);
            tracing::error!(provider = %d.provider, event = %d.event_id, error = %e, "webhook not persisted; undone, the provider will retry");
            return Err(e.into());
        }
        // Old dedup keys go away a batch at a time, off the delivery's answer.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let p = self.clone();
            rt.spawn(async move {
                if let Err(e) = p.prune_expired().await {
                    tracing::warn!(error = %e, "expired webhook dedup keys not pruned");
                }
            });
        }
        if !applied.is_empty() {
            if let Some(kind) = d.event.clone() {
                engine.raise(Event::new(Some(customer.clone()), kind));
            }
            if before.delinquent && !after.delinquent {
                engine.raise(Event::new(
                    Some(customer.clone()),
                    EventKind::PaymentRecovered {
                        provider: d.provider.clone(),
                        invoice: None,
                    },
                ));
            }
        }
        tracing::info!(
            provider = %d.provider,
            event = %d.event_id,
            event_type = %d.event_type,
            customer = %customer,
            changed = ?changed,
            "webhook applied"
        );
        Ok(Outcome::Applied { customer, changed })
    }

    /// Deletes a batch of expired dedup keys from the log (at most [`PRUNE_ROWS`] looked
    /// at, resuming where the last batch stopped); returns how many. Every committed
    /// delivery starts one in the background, so the log holds about one dedup window of
    /// keys, not every delivery ever made.
    pub async fn prune_expired(&self) -> Result<usize, StoreError> {
        self.inner.log.prune_expired(PRUNE_ROWS).await
    }

    /// Re-applies, for every customer in the log, the newest value of every field a
    /// delivery or an operator set, unless code changed that field directly later
    /// ([`AccountState::field_versions`] of the restored state). Call it once at start, after the state store and the
    /// reporter restored their copies (which may predate the last delivery). Returns how
    /// many customers it touched.
    pub async fn restore(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        let engine = &self.inner.engine;
        for (customer, record) in self.inner.log.all().await? {
            for field in record.fields.values() {
                // Code changed the field directly after this value was set: the restored
                // state holds the newer value.
                if engine
                    .direct_version(&customer, field.value.field())
                    .is_some_and(|direct| direct > field.version)
                {
                    continue;
                }
                if let Err(e) = engine.apply_sourced(customer.as_str(), field.value.change()) {
                    tracing::warn!(customer = %customer, error = %e, "webhook state not restored");
                }
            }
            n += 1;
        }
        Ok(n)
    }
}

pub(crate) fn field_name(change: &StateChange) -> String {
    match FieldValue::of(change) {
        Some(v) => v.field().to_owned(),
        None => match change {
            StateChange::GrantCredits(_) | StateChange::SetBalance(_) => "balance".to_owned(),
            _ => "other".to_owned(),
        },
    }
}

/// Undoes `applied` (flags back to `before`; grants taken back).
pub(crate) fn revert(
    engine: &Engine,
    customer: &CustomerId,
    before: &AccountState,
    applied: &[StateChange],
) {
    for change in applied.iter().rev() {
        let undo = match change {
            StateChange::Delinquent(_) => StateChange::Delinquent(before.delinquent),
            StateChange::Cancelled(_) => StateChange::Cancelled(before.cancelled),
            StateChange::Blocked(_) => StateChange::Blocked(before.blocked),
            StateChange::GrantCredits(n) => StateChange::GrantCredits(n.saturating_neg()),
            StateChange::Plan(_) => match &before.plan {
                Some(p) => StateChange::Plan(p.clone()),
                None => continue,
            },
            _ => continue,
        };
        if let Err(e) = engine.apply_sourced(customer.as_str(), undo) {
            tracing::error!(customer = %customer, error = %e, "could not undo a webhook change");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::{Meaning, MemoryWebhookLog};

    fn delivery(id: &str, version: u64, meaning: Meaning) -> Delivery {
        Delivery::new(
            "stripe",
            id,
            "t",
            version,
            Some(CustomerId::new("acme").unwrap()),
            meaning,
        )
    }

    #[tokio::test]
    async fn once_per_event_and_newest_wins() {
        let engine = Engine::for_tests(&["calls"]);
        let p = WebhookProcessor::new(engine.clone(), Arc::new(MemoryWebhookLog::new()));
        let delinquent = || engine.account("acme").unwrap().delinquent;
        let out = p
            .process(delivery("e1", 2_000, Meaning::PaymentFailed))
            .await
            .unwrap();
        assert_eq!(out.as_str(), "applied");
        assert!(delinquent());
        // The older "paid" arrives late: it changes nothing.
        let out = p
            .process(delivery("e0", 1_000, Meaning::Paid))
            .await
            .unwrap();
        assert_eq!(out.as_str(), "stale");
        assert!(delinquent());
        // A newer "paid" restores; its retry is a duplicate even after a manual flag flip.
        assert_eq!(
            p.process(delivery("e2", 3_000, Meaning::Paid))
                .await
                .unwrap()
                .as_str(),
            "applied"
        );
        assert!(!delinquent());
        engine.apply("acme", StateChange::Delinquent(true)).unwrap();
        assert_eq!(
            p.process(delivery("e2", 3_000, Meaning::Paid))
                .await
                .unwrap(),
            Outcome::Duplicate
        );
        assert!(delinquent(), "a duplicate changes nothing");
        // Events: payment failed, then recovered.
        let kinds: Vec<_> = engine
            .drain_events(10)
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(
            kinds
                .iter()
                .any(|k| matches!(k, EventKind::PaymentRecovered { .. })),
            "{kinds:?}"
        );
        // Unknown types and unknown customers change nothing.
        let mut d = delivery("e3", 4_000, Meaning::Ignored);
        assert_eq!(p.process(d.clone()).await.unwrap().as_str(), "ignored");
        d.meaning = Meaning::Paid;
        d.customer = None;
        assert_eq!(p.process(d).await.unwrap().as_str(), "ignored");
        assert!(delinquent());
    }

    #[tokio::test]
    async fn carried_plans_are_ordered_and_credits_granted_once() {
        let engine = Engine::new(
            crate::config::Config::builder()
                .meter(crate::config::MeterConfig::count("calls"))
                .plan(crate::config::PlanConfig::new("free"))
                .plan(crate::config::PlanConfig::new("pro").prepaid(0))
                .build(),
        )
        .unwrap();
        let p = WebhookProcessor::new(engine.clone(), Arc::new(MemoryWebhookLog::new()));
        let plan = |id: &str| crate::id::PlanId::new(id).unwrap();
        let d =
            delivery("e1", 2_000, Meaning::PlanChanged).with_change(StateChange::Plan(plan("pro")));
        assert_eq!(p.process(d).await.unwrap().as_str(), "applied");
        let d = delivery("e0", 1_000, Meaning::PlanChanged)
            .with_change(StateChange::Plan(plan("free")));
        assert_eq!(p.process(d).await.unwrap().as_str(), "stale");
        assert_eq!(engine.account("acme").unwrap().plan, Some(plan("pro")));
        let grant = || {
            delivery("g1", 500, Meaning::CreditsGranted).with_change(StateChange::GrantCredits(700))
        };
        assert_eq!(
            p.process(grant()).await.unwrap().as_str(),
            "applied",
            "credits add up, whatever their time"
        );
        assert_eq!(p.process(grant()).await.unwrap(), Outcome::Duplicate);
        assert_eq!(engine.account("acme").unwrap().balance, 700);
    }

    /// One ordering across sources: a direct [`Engine::apply`] newer than a delivery wins
    /// over it, live and when the log is re-applied at start; fields no direct change
    /// touched are still restored from the log.
    #[tokio::test]
    async fn restore_never_undoes_a_newer_direct_change() {
        use crate::store::StateStore;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::RedbStore::open(dir.path().join("state.redb")).unwrap());
        let acme = CustomerId::new("acme").unwrap();
        let t = now_ms();
        {
            let engine = Engine::for_tests(&["calls"]);
            let p = WebhookProcessor::new(engine.clone(), store.clone());
            let d = delivery("e1", t - 5_000, Meaning::PaymentFailed);
            assert_eq!(p.process(d).await.unwrap().as_str(), "applied");
            // The application's own code clears it (say, after an out-of-band payment).
            engine
                .apply("acme", StateChange::Delinquent(false))
                .unwrap();
            // A delivery older than that direct change is stale.
            let d = delivery("e2", t - 4_000, Meaning::PaymentFailed);
            assert_eq!(p.process(d).await.unwrap().as_str(), "stale");
            assert!(!engine.account("acme").unwrap().delinquent);
            // The state store's copy is saved (as StateSync does), then a cancellation
            // arrives and is committed; a late save of the older copy overwrites the row.
            let older = engine.account("acme").unwrap();
            assert!(older.field_versions.contains_key("delinquent"));
            store.save(&acme, &older).await.unwrap();
            let d = delivery("e3", t - 3_000, Meaning::Cancelled);
            assert_eq!(p.process(d).await.unwrap().as_str(), "applied");
            store.save(&acme, &older).await.unwrap();
        }
        // Restart: the store's copy, then the log.
        let engine = Engine::for_tests(&["calls"]);
        let row = store.load(&acme).await.unwrap().unwrap();
        assert!(!row.delinquent && !row.cancelled);
        engine.restore_account("acme", &row).unwrap();
        let p = WebhookProcessor::new(engine.clone(), store.clone());
        assert_eq!(p.restore().await.unwrap(), 1);
        let after = engine.account("acme").unwrap();
        assert!(!after.delinquent, "the newer direct change stands");
        assert!(
            after.cancelled,
            "the log's newer cancellation is re-applied"
        );
    }
}
