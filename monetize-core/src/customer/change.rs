//! Changes to a customer's state, from webhooks, operators or code.

use crate::id::PlanId;

/// A change to one customer's state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateChange {
    /// An invoice became overdue or a payment failed (`true`), or was paid (`false`).
    Delinquent(bool),
    /// The subscription was cancelled (`true`) or reactivated (`false`).
    Cancelled(bool),
    /// An operator blocked (`true`) or unblocked (`false`) the customer.
    Blocked(bool),
    /// The customer moved to another plan.
    Plan(PlanId),
    /// Credits granted or topped up, in micro-credits (negative to take some back).
    GrantCredits(i64),
    /// The balance set outright, in micro-credits.
    SetBalance(i64),
}
