//! Credits: grants, top-ups and adjustments of a customer's prepaid balance, each
//! idempotent on a caller-given id, and reservations that hold credits while a request
//! runs ([`Reservation`]).
//!
//! # One balance on the request path, grants beside it
//!
//! The request path spends from one atomic balance per customer, as before: a grant adds
//! its amount to that balance, and nothing on the request path knows about grants. Which
//! grant a spend came from is worked out off the request path (when grants are listed,
//! changed, or at every [`Engine::tick`](crate::Engine::tick)): whatever the balance went down by since the last
//! look is taken from the live grants in spending order, **the grant that expires first,
//! then the lowest `priority` number, then the oldest**; credits that belong to no grant
//! (the plan's `initial_credits`, top-ups, adjustments, `StateChange::GrantCredits`) never
//! expire and are spent last. When a grant expires, the tick takes what is left of it off
//! the balance (an `expiry` operation), so expired credits stop counting at the first tick
//! past their expiry (one checkpoint interval with a reporter).
//!
//! # Idempotent and durable
//!
//! Every operation ([`Engine::grant`](crate::Engine::grant), [`Engine::top_up`](crate::Engine::top_up), [`Engine::adjust`](crate::Engine::adjust)) carries an
//! id, unique per customer: a second call with the same id changes nothing and answers
//! [`GrantOutcome::Duplicate`] (or [`CreditsError::IdReused`] when it asks for something
//! else). Ids are remembered for [`ID_RETENTION_SECS`] (and as long as their grant is
//! listed), across restarts.
//!
//! The in-memory calls are saved like the rest of the customer's state (at the next
//! [`StateSync`](crate::StateSync) save and reporter checkpoint). To have the operation
//! on disk before answering a caller (an admin route, a webhook), use the `_durable`
//! forms ([`Engine::grant_durable`](crate::Engine::grant_durable)...), which write the customer's state to the
//! [`StateStore`](crate::StateStore) before they return: a grant they acknowledged survives a `kill -9`, and
//! a retry after the restart is a no-op. On restart the store's operations journal is
//! merged with the spool's balance: operations the spool's last checkpoint had not seen
//! are added to it (see [`AccountState::ledger_seq`](crate::AccountState::ledger_seq)).
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
pub mod reservation;

pub use reservation::{RESERVATION_RULE, Reservation, ReserveRefused, SettledMeters, Settlement};

pub use crate::grant::{
    CreditsState, Grant, GrantOutcome, GrantState, ID_RETENTION_SECS, MAX_ID_LEN, Operation,
    OperationKind,
};
pub(crate) use ledger::Ledger;

use crate::error::CoreError;
use crate::store::StoreError;

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
