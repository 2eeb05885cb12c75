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

pub use crate::meter::Delta;
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
