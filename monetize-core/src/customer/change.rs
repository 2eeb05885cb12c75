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
    /// The customer's billing anchor, in unix seconds (for example when the
    /// subscription started): their `billing_cycle` quotas reset every month on that day
    /// and time (in the config's time zone). The current cycle's usage is kept; the next
    /// reset is at the next cycle start. Saved with the customer's state (the spool's
    /// checkpoints and a [`StateStore`](crate::StateStore)) and restored at start.
    BillingAnchor(u64),
}
