//! Reporting: checkpoints move usage from memory to the spool; the reporter moves closed
//! report windows from the spool to billing providers, exactly once.

pub mod dead_letter;
pub mod reporter;
pub mod spool;
pub(crate) mod spool_kv;
pub mod spool_memory;
pub mod spool_redb;
#[cfg(test)]
pub(crate) mod spool_suite;
pub mod window;

pub use dead_letter::DeadLetter;
pub use reporter::{
    ProviderRoute, ReportSummary, Reporter, ReporterError, ReporterHandle, ReporterOptions,
    ReporterStats,
};
pub use spool::{
    Acknowledged, Checkpoint, PendingEntry, Pruned, Quarantined, Sealed, Settled, Spool,
    SpoolError, SpoolKey, SpoolRoute, TakeRequest, Taken,
};
pub use spool_memory::MemorySpool;
pub use spool_redb::RedbSpool;
pub use window::ReportWindow;

use crate::id::{CustomerId, MeterId};
use crate::meter::{Aggregation, Measure};

/// What one checkpoint took out of one usage cell.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delta {
    /// The customer.
    pub customer: CustomerId,
    /// The meter.
    pub meter: MeterId,
    /// The amount taken out of the cell since the previous checkpoint.
    pub measure: Measure,
    /// How the meter aggregates (stored with the spool entry, so Count and Sum survive).
    pub aggregation: Aggregation,
}

impl Delta {
    /// A delta of a meter aggregated as the measure says (a `Sum` measure is taken as
    /// [`Aggregation::Sum`]); see [`Delta::with_aggregation`].
    pub fn new(customer: CustomerId, meter: MeterId, measure: Measure) -> Self {
        let aggregation = match measure {
            Measure::Max(_) => Aggregation::Max,
            Measure::Latest(_) => Aggregation::Latest,
            Measure::Sketch(_) => Aggregation::UniqueCount,
            _ => Aggregation::Sum,
        };
        Self {
            customer,
            meter,
            measure,
            aggregation,
        }
    }

    /// Sets how the meter aggregates.
    pub fn with_aggregation(mut self, aggregation: Aggregation) -> Self {
        self.aggregation = aggregation;
        self
    }
}
