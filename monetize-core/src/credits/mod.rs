//! Credits: grants, top-ups and adjustments of a customer's prepaid balance, each
//! idempotent on a caller-given id, and reservations that hold credits while a request
//! runs ([`Reservation`]).
//!
//! # One balance on the request path, grants beside it
//!
//! The request path spends from one atomic balance per customer, as before: a grant adds
//! its amount to that balance, and nothing on the request path knows about grants. Which
//! grant a spend came from is worked out off the request path (when grants are listed,
//! changed, or at every [`Engine::tick`]): whatever the balance went down by since the last
//! look is taken from the live grants in spending order, **the grant that expires first,
//! then the lowest `priority` number, then the oldest**; credits that belong to no grant
//! (the plan's `initial_credits`, top-ups, adjustments, `StateChange::GrantCredits`) never
//! expire and are spent last. When a grant expires, the tick takes what is left of it off
//! the balance (an `expiry` operation), so expired credits stop counting at the first tick
//! past their expiry (one checkpoint interval with a reporter).
//!
//! # Idempotent and durable
//!
//! Every operation ([`Engine::grant`], [`Engine::top_up`], [`Engine::adjust`]) carries an
//! id, unique per customer: a second call with the same id changes nothing and answers
//! [`GrantOutcome::Duplicate`] (or [`CreditsError::IdReused`] when it asks for something
//! else). Ids are remembered for [`ID_RETENTION_SECS`] (and as long as their grant is
//! listed), across restarts.
//!
//! The in-memory calls are saved like the rest of the customer's state (at the next
//! [`StateSync`](crate::StateSync) save and reporter checkpoint). To have the operation
//! on disk before answering a caller (an admin route, a webhook), use the `_durable`
//! forms ([`Engine::grant_durable`]...), which write the customer's state to the
//! [`StateStore`] before they return: a grant they acknowledged survives a `kill -9`, and
//! a retry after the restart is a no-op. On restart the store's operations journal is
//! merged with the spool's balance: operations the spool's last checkpoint had not seen
//! are added to it (see [`AccountState::ledger_seq`]).
//!
//! ```
//! use monetize_core::config::{Config, MeterConfig, PlanConfig};
//! use monetize_core::credits::{Grant, GrantOutcome};
//! use monetize_core::Engine;
//!
//! let config = Config::builder()
//!     .meter(MeterConfig::count("calls"))
//!     .plan(PlanConfig::new("prepaid").prepaid(0).price("calls", 100))
//!     .build();
//! let engine = Engine::new(config).unwrap();
//! engine.register("acme", "prepaid").unwrap();
//! let grant = Grant::new("promo-2026-12", 5_000).expires_at(1_900_000_000);
//! assert!(matches!(engine.grant("acme", grant.clone()), Ok(GrantOutcome::Applied { balance: 5_000 })));
//! // A retry is a no-op.
//! assert!(matches!(engine.grant("acme", grant), Ok(GrantOutcome::Duplicate { balance: 5_000 })));
//! assert_eq!(engine.grants("acme")[0].remaining, 5_000);
//! ```

mod ledger;
mod reservation;

use serde::{Deserialize, Serialize};

pub use reservation::{Reservation, ReserveRefused, SettledMeters, Settlement};

pub(crate) use ledger::Ledger;

use crate::error::CoreError;
use crate::store::StoreError;

/// Operation ids are remembered at least this long (90 days), so a retry within that time
/// is a no-op; a grant's id is remembered as long as the grant is listed.
pub const ID_RETENTION_SECS: u64 = 90 * 24 * 3600;

/// Longest operation id accepted, in bytes.
pub const MAX_ID_LEN: usize = 200;

/// A credit grant: an amount that may expire, spent before credits that do not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Grant {
    /// The caller's id for this grant (an invoice id, a promotion code and customer...):
    /// granting the same id again is a no-op.
    pub id: String,
    /// Micro-credits granted (above zero).
    pub amount: i64,
    /// Unix seconds at which what is left of the grant stops counting; `None` never.
    pub expires_at: Option<u64>,
    /// Among grants expiring at the same time, lower numbers are spent first (default 0).
    pub priority: u32,
}

impl Grant {
    /// A grant of `amount` micro-credits that never expires, priority 0.
    pub fn new(id: impl Into<String>, amount: i64) -> Self {
        Self {
            id: id.into(),
            amount,
            expires_at: None,
            priority: 0,
        }
    }

    /// Expires at `unix_secs`.
    pub fn expires_at(mut self, unix_secs: u64) -> Self {
        self.expires_at = Some(unix_secs);
        self
    }

    /// Sets the priority (lower is spent first among grants expiring together).
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }
}

/// What a credits operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum GrantOutcome {
    /// Applied now; the balance after it.
    Applied {
        /// Micro-credits.
        balance: i64,
    },
    /// This id was applied before: nothing changed; the balance now.
    Duplicate {
        /// Micro-credits.
        balance: i64,
    },
}

impl GrantOutcome {
    /// The balance after the call.
    pub fn balance(&self) -> i64 {
        match self {
            GrantOutcome::Applied { balance } | GrantOutcome::Duplicate { balance } => *balance,
        }
    }
}

/// A grant as listed by [`Engine::grants`](crate::Engine::grants) and kept in
/// [`CreditsState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GrantState {
    /// The caller's id.
    pub id: String,
    /// Micro-credits granted.
    pub amount: i64,
    /// Micro-credits not yet spent (0 once expired).
    pub remaining: i64,
    /// Unix seconds of expiry, if any.
    pub expires_at: Option<u64>,
    /// Spending order among grants expiring together (lower first).
    pub priority: u32,
    /// Unix seconds at which it was granted.
    pub granted_at: u64,
    /// It expired: what was left of it was taken off the balance.
    pub expired: bool,
}

/// What a journal entry did to the balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OperationKind {
    /// [`Engine::grant`](crate::Engine::grant).
    Grant,
    /// [`Engine::top_up`](crate::Engine::top_up).
    TopUp,
    /// [`Engine::adjust`](crate::Engine::adjust).
    Adjustment,
    /// A grant expired (its id is `expiry:` and the grant's id).
    Expiry,
}

/// One entry of a customer's credits journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Operation {
    /// The caller's id (for an expiry, `expiry:` and the grant's id).
    pub id: String,
    /// What it was.
    pub kind: OperationKind,
    /// What it added to the balance (negative: took off), micro-credits.
    pub delta: i64,
    /// Its number in the customer's journal, from 1.
    pub seq: u64,
    /// Unix seconds at which it was applied.
    pub at: u64,
}

/// A customer's credits beyond the balance: grants, the operations journal and the
/// low-balance threshold; part of [`AccountState`](crate::AccountState).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CreditsState {
    /// Grants, live and expired.
    #[serde(default)]
    pub grants: Vec<GrantState>,
    /// Operations of the last [`ID_RETENTION_SECS`] (and those of listed grants).
    #[serde(default)]
    pub operations: Vec<Operation>,
    /// The number of the last operation.
    #[serde(default)]
    pub seq: u64,
    /// This customer's low-balance threshold (micro-credits), over the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_at: Option<i64>,
}

/// Why a credits operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreditsError {
    /// The customer could not be resolved (invalid id, cap reached): see the inner error.
    #[error(transparent)]
    Customer(#[from] CoreError),
    /// The id was used before for a different operation: pick a new id, or repeat the
    /// original call exactly.
    #[error("credits operation id `{id}` was already used for a different operation")]
    IdReused {
        /// The id.
        id: String,
    },
    /// The id is empty or longer than [`MAX_ID_LEN`]: give a non-empty id up to that length.
    #[error("credits operation id must be 1 to {MAX_ID_LEN} bytes")]
    InvalidId,
    /// A grant or top-up must add credits, an adjustment must change them: pass a non-zero
    /// (for grants and top-ups, positive) amount.
    #[error("invalid amount {amount}: {reason}")]
    InvalidAmount {
        /// The amount given.
        amount: i64,
        /// What it must be.
        reason: &'static str,
    },
    /// The operation was applied in memory but the state store could not save it: the
    /// caller must not acknowledge it yet; retrying with the same id saves it (and does not
    /// apply it twice).
    #[error("credits operation applied but not saved: {0}")]
    NotSaved(#[from] StoreError),
}
