//! Where customers' email addresses come from.

use async_trait::async_trait;

use crate::id::CustomerId;

/// The application's own list of customer addresses (its user database), asked in the
/// background before a customer email is sent; `None` falls back to the configuration's
/// `recipients`.
#[async_trait]
pub trait CustomerDirectory: Send + Sync + 'static {
    /// The customer's email address, if known.
    async fn email(&self, customer: &CustomerId) -> Option<String>;
}
