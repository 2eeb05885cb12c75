//! Credit grants as data: a [`Grant`] asked for, its [`GrantState`] as it is spent, the
//! journal of [`Operation`]s, and a customer's [`CreditsState`] (part of
//! [`AccountState`](crate::AccountState)). Below the store and the engine, which both keep
//! them; the API that changes them is [`crate::credits`].

use serde::{Deserialize, Serialize};

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
