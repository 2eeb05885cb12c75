//! Governance: rules evaluated per request against the customer's state, giving a
//! [`Decision`] to let the request through (maybe with headers) or to block it.

mod condition;
mod decision;
mod rule;

pub use condition::Predicate;
pub(crate) use condition::{Condition, Ctx, Facts};
pub use decision::{Allow, Block, Decision, QuotaInfo};
pub(crate) use rule::{Action as RuleAction, QuietCheck, Rule};
