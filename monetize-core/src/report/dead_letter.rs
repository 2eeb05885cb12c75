//! Dead letters: usage records a billing provider refused for good.
//!
//! A dead letter is kept in the spool (never deleted by the reporter) so that an operator
//! can see what was not billed and why, fix the cause (create the customer at the provider,
//! unarchive the meter, rotate the credentials) and bill it by hand. Each one also raises an
//! [`EventKind::DeadLetter`](crate::event::EventKind::DeadLetter) event.

use serde::{Deserialize, Serialize};

use crate::provider::UsageRecord;

/// A usage record the provider refused for good, with the reason and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The record as it was last sent (same idempotency key and quantity as every attempt).
    pub record: UsageRecord,
    /// What the provider said.
    pub reason: String,
    /// When the record was moved to the dead letter list, unix seconds.
    pub at_unix: u64,
}

impl DeadLetter {
    /// A dead letter for `record`, refused for `reason` at `at_unix`.
    pub fn new(record: UsageRecord, reason: impl Into<String>, at_unix: u64) -> Self {
        Self {
            record,
            reason: reason.into(),
            at_unix,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{CustomerId, MeterId};

    #[test]
    fn round_trips_through_json() {
        let record = UsageRecord::new(
            "i1",
            "ledger",
            MeterId::new("calls").unwrap(),
            CustomerId::new("c1").unwrap(),
            60,
            60,
            0,
            7,
        );
        let dl = DeadLetter::new(record, "unknown customer", 99);
        let json = serde_json::to_string(&dl).unwrap();
        let back: DeadLetter = serde_json::from_str(&json).unwrap();
        assert_eq!(back, dl);
        assert_eq!(back.record.quantity, 7);
        assert_eq!(back.reason, "unknown customer");
    }
}
