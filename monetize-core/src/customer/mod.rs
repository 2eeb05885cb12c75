//! Customers: the live state of each customer and the registry that resolves it.

mod change;
mod handle;
mod handle_cache;
mod hashed_id;
pub(crate) mod metering;
mod registry;
mod resident;
mod state;
mod token;

pub use change::StateChange;
pub use handle::{CustomerHandle, CustomerStatus};
pub(crate) use state::CustomerState;
pub use token::CustomerToken;
pub(crate) mod handle_flags {
    pub(crate) use super::state::{BLOCKED, CANCELLED, DELINQUENT, NO_PLAN};
}
pub(crate) use registry::Registry;
pub(crate) mod registry_admission {
    pub(crate) use super::registry::Admission;
}
