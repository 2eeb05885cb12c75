//! [`Operator`]: the operator's controls in Rust (the admin routes of `monetize-axum`
//! call it): block and unblock, grant and top up credits, change plan, read a customer's
//! whole state, list delinquent and blocked customers. Every change is logged (tracing,
//! target `monetize::operator`) with who made it, and, with a [`WebhookProcessor`],
//! recorded in its [`WebhookLog`](crate::webhook::WebhookLog) with the customer's state before the call returns (so
//! it survives a restart, and a webhook older than the change does not undo it).

use std::time::Duration;

use serde::Serialize;

use crate::customer::StateChange;
use crate::engine::{CustomerUsage, Engine};
use crate::error::CoreError;
use crate::id::{CustomerId, PlanId};
use crate::store::StoreError;
use crate::webhook::{AppliedEvent, FieldValue, Meaning, WebhookProcessor};

/// How long a grant's id is remembered against repeats.
const GRANT_ID_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Why an operator's call failed (nothing changed).
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
    /// The change could not be persisted; it was undone: retry.
    #[error("not persisted, undone: {0}")]
    Unavailable(String),
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
        self.change(actor, customer, action, StateChange::Blocked(on), None)
            .await
            .map(drop)
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
        self.change(actor, customer, "set_plan", StateChange::Plan(plan), None)
            .await
            .map(drop)
    }

    /// Grants (or tops up) `amount` micro-credits (negative to take some back); `id`
    /// names the grant: with a [`WebhookProcessor`], a repeat with the same id changes
    /// nothing, across restarts (without one every call grants). Returns `false` for a
    /// repeat.
    pub async fn grant(
        &self,
        actor: &str,
        customer: &str,
        id: &str,
        amount: i64,
    ) -> Result<bool, OperatorError> {
        if id.is_empty() || id.len() > 200 {
            return Err(OperatorError::Invalid(
                "a grant needs an `id` of 1 to 200 characters".into(),
            ));
        }
        self.change(
            actor,
            customer,
            "grant",
            Self::grant_change(amount),
            Some(id),
        )
        .await
    }

    /// The one place a grant becomes a state change (to be replaced by the engine's
    /// idempotent grants).
    fn grant_change(amount: i64) -> StateChange {
        StateChange::GrantCredits(amount)
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
        once: Option<&str>,
    ) -> Result<bool, OperatorError> {
        let id = CustomerId::new(customer)
            .map_err(|e| OperatorError::Invalid(format!("customer `{customer}`: {e}")))?;
        let Some(w) = &self.webhooks else {
            self.engine.apply(customer, change.clone())?;
            tracing::info!(target: "monetize::operator", actor, customer, action, change = ?change, "operator change");
            return Ok(true);
        };
        let _one_at_a_time = w.lock().await;
        let key = once.map(|g| format!("grant:{customer}:{g}"));
        if let Some(k) = &key
            && w.log().seen(k).await?
        {
            tracing::info!(target: "monetize::operator", actor, customer, action, grant = once, "repeated grant ignored");
            return Ok(false);
        }
        let before = self.engine.account(customer).unwrap_or_default();
        self.engine.apply(customer, change.clone())?;
        let mut record = w.log().customer(&id).await?;
        let now = crate::webhook::now_ms();
        let changed = match FieldValue::of(&change) {
            Some(v) => {
                record.offer(now, v);
                vec![v_name(&change)]
            }
            None => vec![v_name(&change)],
        };
        record.push(AppliedEvent {
            source: format!("operator:{actor}"),
            event_id: once.unwrap_or_default().to_owned(),
            event_type: action.to_owned(),
            version: now,
            meaning: Meaning::Ignored,
            changed,
            applied_at: now / 1000,
        });
        let after = self.engine.account(customer).unwrap_or_default();
        let committed = w
            .log()
            .commit(
                key.as_deref().map(|k| (k, GRANT_ID_TTL)),
                Some((&id, &record, &after)),
            )
            .await;
        if let Err(e) = committed {
            crate::webhook::revert(&self.engine, &id, &before, std::slice::from_ref(&change));
            tracing::error!(target: "monetize::operator", actor, customer, action, error = %e, "operator change not persisted; undone");
            return Err(e.into());
        }
        tracing::info!(target: "monetize::operator", actor, customer, action, change = ?change, "operator change");
        Ok(true)
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
        assert!(op.grant("ops", "acme", "g1", 500).await.unwrap());
        assert!(
            !op.grant("ops", "acme", "g1", 500).await.unwrap(),
            "same id: once"
        );
        assert!(op.grant("ops", "acme", "g2", 25).await.unwrap());
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
        assert!(view.grants.is_empty(), "operator top-ups are not grants");
        // A grant made through the credits API is part of the customer's view.
        let grant = crate::credits::Grant::new("promo-1", 300).expires_at(u64::MAX / 2);
        engine.grant("acme", grant).unwrap();
        let view = op.customer("acme").await.unwrap().unwrap();
        assert_eq!(view.grants.len(), 1);
        assert_eq!(view.grants[0].id, "promo-1");
        assert_eq!(view.usage.balance, 825);
        assert!(op.customer("nobody").await.unwrap().is_none());
    }
}
