//! Reporting: checkpoints move usage from memory to the spool; the reporter moves closed
//! report windows from the spool to billing providers, exactly once.

pub mod dead_letter;
pub mod reporter;
pub mod spool;
pub mod spool_redb;
pub mod window;

pub use dead_letter::DeadLetter;
pub use reporter::{
    ProviderRoute, ReportSummary, Reporter, ReporterError, ReporterHandle, ReporterOptions,
    ReporterStats,
};
pub use spool::{
    Acknowledged, MemorySpool, PendingEntry, Sealed, Spool, SpoolError, SpoolKey, SpoolRoute,
};
pub use spool_redb::RedbSpool;
pub use window::ReportWindow;

use crate::id::{CustomerId, MeterId};
use crate::meter::Measure;

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
}

impl Delta {
    /// A delta.
    pub fn new(customer: CustomerId, meter: MeterId, measure: Measure) -> Self {
        Self {
            customer,
            meter,
            measure,
        }
    }
}
