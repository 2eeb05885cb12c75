//! The billing provider trait: where closed report windows are delivered.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::id::{CustomerId, MeterId};
use crate::meter::Aggregation;

/// How long a provider is assumed to remember an idempotency key when it does not say
/// (Stripe documents 24 hours).
pub const DEFAULT_DEDUP_HORIZON: Duration = Duration::from_secs(24 * 3600);

/// One closed report window of one meter for one customer, ready to deliver.
///
/// `idempotency_key` is derived from (instance, provider, meter, customer, window, part) and
/// is the same on every attempt, across restarts: a provider that deduplicates on it never
/// bills the record twice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsageRecord {
    /// Stable deduplication key (36 ASCII characters: fits Stripe, Recurly and Chargebee).
    pub idempotency_key: String,
    /// The provider this record is for.
    pub provider: String,
    /// The meter.
    pub meter: MeterId,
    /// The customer billed.
    pub customer: CustomerId,
    /// Start of the report window, unix seconds.
    pub window_start: u64,
    /// Length of the report window, seconds.
    pub window_secs: u64,
    /// 0 for a window's first record; higher when usage arrived after the window was sealed.
    pub part: u32,
    /// The quantity, in the meter's base units.
    pub quantity: u64,
    /// How many delivery attempts came before this one. Above zero, an earlier attempt may
    /// have reached the provider: a provider without idempotency keys should check what it
    /// holds before sending again.
    pub attempts: u32,
    /// How the meter aggregates: a provider maps it to its own (Stripe: sum, count, last)
    /// and must never sum parts of a non-additive meter (`max`, `latest`,
    /// `unique_count`).
    #[serde(default)]
    pub aggregation: Aggregation,
}

impl UsageRecord {
    /// Builds a record; the idempotency key is computed from the other fields.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        instance: &str,
        provider: &str,
        meter: MeterId,
        customer: CustomerId,
        window_start: u64,
        window_secs: u64,
        part: u32,
        quantity: u64,
    ) -> Self {
        let idempotency_key =
            idempotency_key(instance, provider, &meter, &customer, window_start, part);
        Self {
            idempotency_key,
            provider: provider.to_owned(),
            meter,
            customer,
            window_start,
            window_secs,
            part,
            quantity,
            attempts: 0,
            aggregation: Aggregation::Count,
        }
    }

    /// Sets how the record's meter aggregates ([`Aggregation::Count`] by default).
    pub fn with_aggregation(mut self, aggregation: Aggregation) -> Self {
        self.aggregation = aggregation;
        self
    }

    /// Unix seconds at which the usage is dated when a provider wants one timestamp:
    /// the window's last second, so it falls inside the window's billing period.
    pub fn timestamp(&self) -> u64 {
        self.window_start + self.window_secs.saturating_sub(1)
    }
}

/// The deterministic idempotency key: `mz1_` and 32 hex digits of a SHA-256 over the parts.
pub fn idempotency_key(
    instance: &str,
    provider: &str,
    meter: &MeterId,
    customer: &CustomerId,
    window_start: u64,
    part: u32,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for field in [instance, provider, meter.as_str(), customer.as_str()] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.update(window_start.to_le_bytes());
    h.update(part.to_le_bytes());
    let digest = h.finalize();
    format!("mz1_{}", hex::encode(&digest[..16]))
}

/// What became of one record of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordOutcome {
    /// The provider holds the record (newly, or it already had this idempotency key).
    Accepted,
    /// The provider refused the record for good (unknown customer, meter archived, ...):
    /// it goes to the dead letter list and raises an alert.
    Rejected {
        /// What the provider said.
        reason: String,
    },
    /// This record failed in a way worth retrying; it stays pending.
    Retry {
        /// What the provider said.
        reason: String,
    },
}

/// A failure of a whole provider call; every record of the batch stays pending unless
/// the error is [`ProviderError::Permanent`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// A network error, a timeout or a 5xx: retry with backoff.
    #[error("retryable provider failure: {message}")]
    Retryable {
        /// What happened.
        message: String,
    },
    /// The provider asked to slow down: wait at least `retry_after` before the next call.
    #[error("provider throttled, retry after {retry_after:?}: {message}")]
    Throttled {
        /// How long to wait.
        retry_after: Duration,
        /// What the provider said.
        message: String,
    },
    /// The provider refused the credentials (401/403): keys get rotated, so the records
    /// stay pending and are retried with backoff, and an alert is raised so that somebody
    /// fixes the key.
    #[error("provider refused the credentials: {message}")]
    Unauthorized {
        /// What the provider said.
        message: String,
    },
    /// The call can never succeed as sent (malformed request, unknown customer): the
    /// records go to the dead letter list and an alert is raised.
    #[error("permanent provider failure: {message}")]
    Permanent {
        /// What the provider said.
        message: String,
    },
}

/// A billing provider: Stripe, Recurly, Chargebee, the [`crate::ledger::LedgerProvider`],
/// or your own.
///
/// Implementations own their wire format and may retry inside `report` for transport
/// errors; the reporter retries whole calls with exponential backoff and full jitter, and
/// reuses each record's idempotency key on every attempt.
#[async_trait]
pub trait BillingProvider: Send + Sync + 'static {
    /// A short stable name (`stripe`, `ledger`): part of each idempotency key and spool key.
    fn name(&self) -> &str;

    /// The most records one `report` call takes.
    fn max_batch(&self) -> usize {
        100
    }

    /// How long the provider remembers an idempotency key (default
    /// [`DEFAULT_DEDUP_HORIZON`], 24 h). A record whose first delivery is older than this
    /// and whose outcome is unknown is never re-sent blindly: it moves to the
    /// reconciliation list instead. Return [`Duration::MAX`] for a provider that checks
    /// what it holds before re-sending (see [`UsageRecord::attempts`]).
    fn dedup_horizon(&self) -> Duration {
        DEFAULT_DEDUP_HORIZON
    }

    /// Called at start-up for every meter routed to this provider: refuse a meter it
    /// cannot bill honestly (a `max` meter sent to a provider meter that sums, say) with
    /// a message naming what is wrong. The default accepts every meter.
    fn check_meter(&self, meter: &MeterId, aggregation: Aggregation) -> Result<(), String> {
        let _ = (meter, aggregation);
        Ok(())
    }

    /// Delivers a batch. On `Ok`, the vector has one outcome per record, in order.
    async fn report(&self, records: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_and_distinct() {
        let m = MeterId::new("calls").unwrap();
        let c = CustomerId::new("c1").unwrap();
        let a = idempotency_key("i", "stripe", &m, &c, 60, 0);
        assert_eq!(a, idempotency_key("i", "stripe", &m, &c, 60, 0));
        assert_eq!(a.len(), 36);
        assert_ne!(a, idempotency_key("i", "stripe", &m, &c, 60, 1));
        assert_ne!(a, idempotency_key("i", "stripe", &m, &c, 120, 0));
        assert_ne!(a, idempotency_key("j", "stripe", &m, &c, 60, 0));
        // length prefixes keep ("ab","c") and ("a","bc") apart
        let x = idempotency_key("ab", "c", &m, &c, 0, 0);
        let y = idempotency_key("a", "bc", &m, &c, 0, 0);
        assert_ne!(x, y);
    }
}
