//! [`Operator`]: the operator's controls in Rust (the admin routes of `monetize-axum`
//! call it): block and unblock, grant credits (through the credits ledger), change plan, read a customer's
//! whole state, list delinquent and blocked customers. Every change is logged (tracing,
//! target `monetize::operator`) with who made it, and, with a [`WebhookProcessor`],
//! recorded in its [`WebhookLog`](crate::webhook::WebhookLog) with the customer's state before the call returns (so
//! it survives a restart, and a webhook older than the change does not undo it).

use serde::Serialize;

use crate::credits::{CreditsError, Grant, GrantOutcome, MAX_ID_LEN};
use crate::customer::StateChange;
use crate::engine::{CustomerUsage, Engine};
use crate::error::CoreError;
use crate::id::{CustomerId, PlanId};
use crate::store::StoreError;
use crate::webhook::{AppliedEvent, FieldValue, Meaning, WebhookProcessor};

/// Why an operator's call failed (nothing changed, except where a variant says
/// otherwise).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// No customer with this id is known: check the id.
    #[error("unknown customer `{0}`")]
    UnknownCustomer(String),
    /// The request is invalid (a malformed id, a plan the config lacks): the message says
    /// what to fix.
    #[error("{0}")]
    Invalid(String),
    /// The change could not be persisted: retry (the message says whether it was
    /// undone, or applied and to be retried with the same id).
    #[error("not persisted: {0}")]
    Unavailable(String),
    /// The id was used before for a different operation: repeat the original call
    /// exactly, or pick a new id.
    #[error("{0}")]
    Conflict(String),
}

/// A credits error as an operator's.
fn credits(e: CreditsError) -> OperatorError {
    match e {
        CreditsError::IdReused { .. } => OperatorError::Conflict(e.to_string()),
        CreditsError::InvalidId | CreditsError::InvalidAmount { .. } => {
            OperatorError::Invalid(e.to_string())
        }
        CreditsError::Customer(e) => e.into(),
        e => OperatorError::Unavailable(e.to_string()),
    }
}

fn log_grant(actor: &str, customer: &str, grant: &Grant, applied: bool) {
    if applied {
        tracing::info!(target: "monetize::operator", actor, customer, action = "grant", grant = %grant.id, amount = grant.amount, expires_at = ?grant.expires_at, priority = grant.priority, "operator change");
    } else {
        tracing::info!(target: "monetize::operator", actor, customer, action = "grant", grant = %grant.id, "repeated grant ignored");
    }
}

impl From<CoreError> for OperatorError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::UnknownPlan(_) | CoreError::Id { .. } => {
                OperatorError::Invalid(e.to_string())
            }
            e => OperatorError::Unavailable(e.to_string()),
        }
    }
}

impl From<StoreError> for OperatorError {
    fn from(e: StoreError) -> Self {
        OperatorError::Unavailable(e.to_string())
    }
}

/// Which customers to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Listing {
    /// Delinquent customers.
    Delinquent,
    /// Customers an operator blocked.
    Blocked,
    /// Cancelled (or paused) customers.
    Cancelled,
}

/// A customer's whole state, as an operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CustomerView {
    /// Plan, status, balance and quota usage per meter.
    #[serde(flatten)]
    pub usage: CustomerUsage,
    /// The last webhook events (and operator changes) applied, oldest first.
    pub recent_events: Vec<AppliedEvent>,
    /// The customer's credit grants, live and expired, with what is left of each
    /// ([`Engine::grants`]).
    pub grants: Vec<crate::grant::GrantState>,
}

/// The operator's controls over an [`Engine`].
#[derive(Clone, Debug)]
pub struct Operator {
    engine: Engine,
    webhooks: Option<WebhookProcessor>,
}

impl Operator {
    /// Controls over `engine`; changes live in the engine (and in its state store at the
    /// next sync).
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            webhooks: None,
        }
    }

    /// Records every change in the processor's log too (persisted before the call
    /// returns, shown among the customer's recent events, and re-applied at start by
    /// [`WebhookProcessor::restore`]).
    pub fn with_webhooks(mut self, processor: WebhookProcessor) -> Self {
        self.webhooks = Some(processor);
        self
    }

    /// Blocks (`true`) or unblocks the customer (admitting it if new).
    pub async fn block(&self, actor: &str, customer: &str, on: bool) -> Result<(), OperatorError> {
        let action = if on { "block" } else { "unblock" };
        self.change(actor, customer, action, StateChange::Blocked(on))
            .await
    }

    /// Moves the customer to `plan`.
    pub async fn set_plan(
        &self,
        actor: &str,
        customer: &str,
        plan: &str,
    ) -> Result<(), OperatorError> {
        let plan =
            PlanId::new(plan).map_err(|e| OperatorError::Invalid(format!("plan `{plan}`: {e}")))?;
        self.change(actor, customer, "set_plan", StateChange::Plan(plan))
            .await
    }

    /// Grants credits to the customer (admitting it if new) through the credits ledger
    /// ([`Engine::grant`]): `grant.amount` micro-credits (above zero), spent in the
    /// ledger's order and, with an `expires_at` (unix seconds, in the future), no longer
    /// counting after it; listed in the customer's grants ([`Operator::customer`]).
    ///
    /// Idempotent on `grant.id`, across restarts: a repeat of the same grant changes
    /// nothing and returns `false`; the same id with another amount, expiry or priority is
    /// [`OperatorError::Conflict`]. With a [`WebhookProcessor`], the customer's state (its
    /// grants and journal with it) is written to the log's store before this returns; if
    /// that write fails the grant stays applied in memory and the error is
    /// [`OperatorError::Unavailable`]: retry with the same id (it is not applied twice,
    /// and is saved again).
    pub async fn grant(
        &self,
        actor: &str,
        customer: &str,
        grant: Grant,
    ) -> Result<bool, OperatorError> {
        let id = CustomerId::new(customer)
            .map_err(|e| OperatorError::Invalid(format!("customer `{customer}`: {e}")))?;
        self.check_grant(&grant)?;
        let gid = grant.id.clone();
        let Some(w) = &self.webhooks else {
            let outcome = self
                .engine
                .grant(customer, grant.clone())
                .map_err(credits)?;
            let applied = matches!(outcome, GrantOutcome::Applied { .. });
            log_grant(actor, customer, &grant, applied);
            return Ok(applied);
        };
        let _one_at_a_time = w.lock().await;
        // Grants made before grants went through the ledger were remembered by a mark.
        if w.log().seen(&format!("grant:{customer}:{gid}")).await? {
            log_grant(actor, customer, &grant, false);
            return Ok(false);
        }
        // No state save between the grant and its commit (an older snapshot would undo
        // it on disk).
        let _write = self.engine.ledger().write_lock().await;
        let outcome = self
            .engine
            .grant(customer, grant.clone())
            .map_err(credits)?;
        let applied = matches!(outcome, GrantOutcome::Applied { .. });
        let mut record = w.log().customer(&id).await?;
        if applied {
            let now = crate::webhook::now_ms();
            record.push(AppliedEvent {
                source: format!("operator:{actor}"),
                event_id: gid.clone(),
                event_type: "grant".to_owned(),
                version: now,
                meaning: Meaning::CreditsGranted,
                changed: vec!["balance".to_owned(), "grants".to_owned()],
                applied_at: now / 1000,
            });
        }
        // Saved again for a repeat too: the first call may have failed to save it.
        let after = self.engine.account(customer).unwrap_or_default();
        if let Err(e) = w.log().commit(None, Some((&id, &record, &after))).await {
            tracing::error!(target: "monetize::operator", actor, customer, grant = %gid, error = %e, "grant applied but not saved; retry with the same id");
            return Err(OperatorError::Unavailable(format!(
                "grant `{gid}` applied but not saved ({e}): retry with the same id"
            )));
        }
        log_grant(actor, customer, &grant, applied);
        Ok(applied)
    }

    /// Refuses a grant the ledger would refuse, or whose expiry has passed, naming the
    /// field.
    fn check_grant(&self, grant: &Grant) -> Result<(), OperatorError> {
        if grant.id.is_empty() || grant.id.len() > MAX_ID_LEN {
            return Err(OperatorError::Invalid(format!(
                "`id` must be 1 to {MAX_ID_LEN} bytes"
            )));
        }
        if grant.amount <= 0 {
            return Err(OperatorError::Invalid(format!(
                "`amount` must be above zero (got {})",
                grant.amount
            )));
        }
        let now = self.engine.now();
        if let Some(t) = grant.expires_at
            && t <= now
        {
            return Err(OperatorError::Invalid(format!(
                "`expires_at` {t} is not in the future (now {now}, unix seconds)"
            )));
        }
        Ok(())
    }

    /// A customer's whole state, or `None` when unknown.
    pub async fn customer(&self, customer: &str) -> Result<Option<CustomerView>, OperatorError> {
        let Some(usage) = self.engine.usage(customer) else {
            return Ok(None);
        };
        let recent_events = match &self.webhooks {
            Some(w) => w.log().customer(&usage.customer).await?.recent,
            None => Vec::new(),
        };
        let grants = self.engine.grants(customer);
        Ok(Some(CustomerView {
            usage,
            recent_events,
            grants,
        }))
    }

    /// The customers in `which` state, sorted by id.
    pub fn list(&self, which: Listing) -> Vec<CustomerId> {
        let mut out: Vec<CustomerId> = self
            .engine
            .accounts()
            .into_iter()
            .filter(|(_, a)| match which {
                Listing::Delinquent => a.delinquent,
                Listing::Blocked => a.blocked,
                Listing::Cancelled => a.cancelled,
            })
            .map(|(id, _)| id)
            .collect();
        out.sort();
        out
    }

    async fn change(
        &self,
        actor: &str,
        customer: &str,
        action: &str,
        change: StateChange,
    ) -> Result<(), OperatorError> {
        let id = CustomerId::new(customer)
            .map_err(|e| OperatorError::Invalid(format!("customer `{customer}`: {e}")))?;
        let Some(w) = &self.webhooks else {
            self.engine.apply(customer, change.clone())?;
            tracing::info!(target: "monetize::operator", actor, customer, action, change = ?change, "operator change");
            return Ok(());
        };
        let _one_at_a_time = w.lock().await;
        let before = self.engine.account(customer).unwrap_or_default();
        self.engine.apply_sourced(customer, change.clone())?;
        let mut record = w.log().customer(&id).await?;
        let now = crate::webhook::now_ms();
        if let Some(v) = FieldValue::of(&change) {
            record.offer(now, v);
        }
        record.push(AppliedEvent {
            source: format!("operator:{actor}"),
            event_id: String::new(),
            event_type: action.to_owned(),
            version: now,
            meaning: Meaning::Ignored,
            changed: vec![v_name(&change)],
            applied_at: now / 1000,
        });
        let after = self.engine.account(customer).unwrap_or_default();
        let committed = w.log().commit(None, Some((&id, &record, &after))).await;
        if let Err(e) = committed {
            crate::webhook::revert(&self.engine, &id, &before, std::slice::from_ref(&change));
            tracing::error!(target: "monetize::operator", actor, customer, action, error = %e, "operator change not persisted; undone");
            return Err(OperatorError::Unavailable(format!("{e}; undone, retry")));
        }
        tracing::info!(target: "monetize::operator", actor, customer, action, change = ?change, "operator change");
        Ok(())
    }
}

fn v_name(change: &StateChange) -> String {
    crate::webhook::field_name(change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MeterConfig, PlanConfig};
    use crate::webhook::MemoryWebhookLog;
    use std::sync::Arc;

    #[tokio::test]
    async fn controls_and_listing() {
        let engine = Engine::new(
            Config::builder()
                .meter(MeterConfig::count("calls"))
                .plan(PlanConfig::new("free"))
                .plan(PlanConfig::new("prepaid").prepaid(0))
                .build(),
        )
        .unwrap();
        let hooks = WebhookProcessor::new(engine.clone(), Arc::new(MemoryWebhookLog::new()));
        let op = Operator::new(engine.clone()).with_webhooks(hooks);
        op.block("ops", "acme", true).await.unwrap();
        op.block("ops", "globex", true).await.unwrap();
        op.block("ops", "globex", false).await.unwrap();
        assert_eq!(
            op.list(Listing::Blocked),
            vec![CustomerId::new("acme").unwrap()]
        );
        assert!(op.list(Listing::Delinquent).is_empty());
        op.set_plan("ops", "acme", "prepaid").await.unwrap();
        assert!(matches!(
            op.set_plan("ops", "acme", "gold").await,
            Err(OperatorError::Invalid(_))
        ));
        assert!(
            op.grant("ops", "acme", Grant::new("g1", 500))
                .await
                .unwrap()
        );
        assert!(
            !op.grant("ops", "acme", Grant::new("g1", 500))
                .await
                .unwrap(),
            "same id: once"
        );
        assert!(matches!(
            op.grant("ops", "acme", Grant::new("g1", 501)).await,
            Err(OperatorError::Conflict(_))
        ));
        let later = engine.now() + 3_600;
        let expiring = Grant::new("g2", 25).expires_at(later).priority(3);
        assert!(op.grant("ops", "acme", expiring).await.unwrap());
        for (bad, field) in [
            (Grant::new("g3", 0), "`amount`"),
            (Grant::new("g3", -5), "`amount`"),
            (Grant::new("", 5), "`id`"),
            (
                Grant::new("g3", 5).expires_at(engine.now() - 1),
                "`expires_at`",
            ),
        ] {
            match op.grant("ops", "acme", bad).await {
                Err(OperatorError::Invalid(m)) => assert!(m.contains(field), "{m}"),
                other => panic!("{field}: {other:?}"),
            }
        }
        let view = op.customer("acme").await.unwrap().unwrap();
        assert_eq!(view.usage.balance, 525);
        assert_eq!(
            view.usage.plan.as_ref().map(|p| p.as_str()),
            Some("prepaid")
        );
        assert!(view.usage.status.blocked);
        let actions: Vec<_> = view
            .recent_events
            .iter()
            .map(|e| (e.source.as_str(), e.event_type.as_str()))
            .collect();
        assert_eq!(
            actions,
            vec![
                ("operator:ops", "block"),
                ("operator:ops", "set_plan"),
                ("operator:ops", "grant"),
                ("operator:ops", "grant")
            ]
        );
        let grants: Vec<_> = view
            .grants
            .iter()
            .map(|g| (g.id.as_str(), g.amount, g.expires_at, g.priority))
            .collect();
        assert_eq!(
            grants,
            vec![("g1", 500, None, 0), ("g2", 25, Some(later), 3)],
            "operator grants go through the ledger"
        );
        // A grant made through the credits API is part of the customer's view too.
        let grant = crate::credits::Grant::new("promo-1", 300).expires_at(u64::MAX / 2);
        engine.grant("acme", grant).unwrap();
        let view = op.customer("acme").await.unwrap().unwrap();
        assert_eq!(view.grants.len(), 3);
        assert_eq!(view.grants[2].id, "promo-1");
        assert_eq!(view.usage.balance, 825);
        assert!(op.customer("nobody").await.unwrap().is_none());
    }
}
