//! # monetize-providers
//!
//! Everything in `monetize` that speaks to an outside system over the network: billing
//! providers (Stripe, Recurly, Chargebee), notification channels (SMTP, Slack, PagerDuty,
//! webhooks, Twilio) and the Redis store, each behind its own cargo feature.
//!
//! The billing providers, each behind its cargo feature, share one HTTP client
//! ([`http`]: reqwest with rustls, timeouts, a `governor` rate limiter, and the error
//! taxonomy the reporter acts on):
//!
//! - `stripe`: [`stripe::StripeProvider`], meter events v1/v2, the v2 meter event stream,
//!   adjustments, reconciliation, legacy usage records (opt-in);
//! - `recurly`: [`recurly::RecurlyProvider`], v3 usage with check-before-resend;
//! - `chargebee`: [`chargebee::ChargebeeProvider`], usage-event batches and classic usages.
//!
//! They are configured without code by `[[providers]]` tables next to the core
//! configuration ([`config`]); [`routes_from_toml`] turns a file into reporter routes, and
//! [`split_toml`] gives `monetize_core::config::Config` the rest of the file. Ids are mapped
//! by [`Mapping`] (from the file) or your own [`IdMapper`]. With no provider configured the
//! embedded default is [`monetize_core::ledger::LedgerProvider`], and any other provider
//! is one trait implementation away. A provider receives closed report windows in
//! batches, each with an idempotency key that stays the same on every retry and after
//! restarts:
//!
//! ```
//! use async_trait::async_trait;
//! use monetize_core::{BillingProvider, ProviderError, RecordOutcome, UsageRecord};
//!
//! /// Sends usage to an in-house billing service.
//! struct InHouse;
//!
//! #[async_trait]
//! impl BillingProvider for InHouse {
//!     fn name(&self) -> &str {
//!         "in-house"
//!     }
//!
//!     fn max_batch(&self) -> usize {
//!         500
//!     }
//!
//!     async fn report(&self, records: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
//!         // POST the batch with each record's `idempotency_key`; map the answer:
//!         // 2xx -> Accepted, 429 -> Err(Throttled), 5xx -> Err(Retryable), 4xx -> Rejected.
//!         Ok(records.iter().map(|_| RecordOutcome::Accepted).collect())
//!     }
//! }
//!
//! let provider: std::sync::Arc<dyn BillingProvider> = std::sync::Arc::new(InHouse);
//! assert_eq!(provider.name(), "in-house");
//! ```
//!
//! ## Modules, in the order a usage record meets them
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`config`] and `routes` | the `[[providers]]` sections, their validation, and the reporter routes they build |
//! | [`mapping`] | our customer and meter ids to the provider's |
//! | `stripe`, `recurly`, `chargebee` | the clients, each behind its feature of the same name |
//! | `batch` | per-record sending on parallel lanes, keys deduplicated, the throttle gate |
//! | [`webhook`] and each provider's `webhook` | incoming webhooks: [`stripe::StripeWebhook`], [`recurly::RecurlyWebhook`], [`chargebee::ChargebeeWebhook`] (signatures or Basic auth in constant time), the [`webhook::CustomerMap`] |
//! | [`http`] | the one HTTP client (reqwest with rustls), its rate limiter and the error taxonomy ([`error`]) |

#![warn(missing_docs)]
// Without a provider feature only the configuration and HTTP layers are compiled.
#![cfg_attr(
    not(any(feature = "stripe", feature = "recurly", feature = "chargebee")),
    allow(dead_code, unused_imports)
)]

mod batch;
#[cfg(feature = "chargebee")]
pub mod chargebee;
pub mod config;
pub mod error;
pub mod http;
pub mod mapping;
pub mod notify;
#[cfg(feature = "recurly")]
pub mod recurly;
mod routes;
#[cfg(feature = "stripe")]
pub mod stripe;
#[cfg(any(feature = "stripe", feature = "recurly", feature = "chargebee"))]
pub mod webhook;
#[cfg(any(feature = "stripe", feature = "recurly", feature = "chargebee"))]
mod webhook_config;
#[cfg(any(feature = "recurly", feature = "chargebee"))]
mod webhook_lookup;

pub use config::{ProviderKind, ProviderSection, ProvidersConfig, split_toml};
pub use error::{FieldError, ProvidersError};
pub use http::HttpSettings;
pub(crate) use http::path_segment;
pub use mapping::{Formula, IdMapper, Mapping, MeterTarget};
pub use routes::{routes_from_config, routes_from_toml, routes_with_env};
#[cfg(any(feature = "stripe", feature = "recurly", feature = "chargebee"))]
pub use webhook_config::{WebhookMount, webhooks_with_env};
