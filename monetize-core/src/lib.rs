//! # monetize-core
//!
//! The domain and the lock-free usage engine of `monetize`: meters, customers, plans,
//! governance rules, credits and quotas, the spool and the reporter that deliver usage to
//! billing providers exactly once. No web framework, no vendor, no network client.
//!
//! ```
//! use monetize_core::config::{Config, MeterConfig, PlanConfig};
//! use monetize_core::{Decision, Engine, Exchange};
//!
//! let config = Config::builder()
//!     .meter(MeterConfig::count("api_calls").route("/v1/*"))
//!     .plan(PlanConfig::new("prepaid").prepaid(2_000).price("api_calls", 1_000))
//!     .build();
//! let engine = Engine::new(config).unwrap();
//!
//! let customer = engine.resolve("acme").unwrap();
//! let (method, headers) = (http::Method::GET, http::HeaderMap::new());
//! for _ in 0..2 {
//!     let request = Exchange::new(&method, "/v1/things", &headers);
//!     assert!(engine.decide(&customer, &request).is_allow());
//!     let done = request.response(http::StatusCode::OK, &headers, 2);
//!     engine.meter(&customer, &done);
//! }
//! // Two calls at 1,000 micro-credits spent the balance: the third is refused with 402.
//! let request = Exchange::new(&method, "/v1/things", &headers);
//! match engine.decide(&customer, &request) {
//!     Decision::Block(b) => assert_eq!(b.status.as_u16(), 402),
//!     _ => panic!("expected a block"),
//! }
//! // A checkpoint takes what was recorded since the last one.
//! let deltas = engine.checkpoint();
//! assert_eq!(deltas[0].measure.quantity(), 2);
//! ```
//!
//! ## Modules, in the order a request meets them
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`id`] | customer, meter and plan ids, checked once |
//! | `customer` | the registry that resolves an id to a [`CustomerHandle`] (one map read), the customer's live state and its reference protocol, and `customer::metering`, which applies meters to that state and takes credits |
//! | `plan` | a compiled plan: prices, quotas and rate limits per meter |
//! | `govern` | the compiled rules and the [`Decision`] (allow, or a block with its status and body), credits, quotas (`quota`) and rate limits (`rate_limit`) |
//! | [`meter`] | filters, value sources, aggregations, the usage cells a metered exchange adds to, and the [`Delta`](meter::Delta) a checkpoint takes out of them |
//! | [`event`] | what the engine, the reporter and providers raise for notifications |
//! | [`report`] | checkpoints into the [`Spool`](report::Spool), and the [`Reporter`](report::Reporter) that delivers usage to each [`BillingProvider`] exactly once |
//! | [`provider`] | the [`BillingProvider`] trait and [`UsageRecord`]; [`ledger`] is the embedded one |
//! | [`store`] | customer state across restarts ([`StateSync`], [`RedbStore`]) |
//! | [`webhook`] | provider webhooks applied exactly once ([`webhook::WebhookProcessor`]); [`operator`], the operator's controls |
//! | [`config`] | the TOML/JSON configuration (serde types only); `compiled` validates it into what the engine runs on, held in an `arc-swap` cell that [`Engine::reload`] replaces; [`notify`], the [`Notifier`] trait |

mod compiled;
pub mod config;
mod customer;
mod engine;
pub mod error;
pub mod event;
mod govern;
mod grant;
pub mod id;
pub mod ledger;
pub mod meter;
pub mod notify;
pub mod operator;
mod plan;
pub mod provider;
mod quota;
mod rate_limit;
pub mod report;
mod state_sync;
pub mod store;
mod store_redb;
mod tier;
pub mod webhook;

pub use customer::{CustomerHandle, CustomerStatus, CustomerToken, StateChange};
pub use engine::credits;
pub use engine::{CustomerUsage, Engine, EngineBuilder, EngineStats, MeterUsage};
pub use error::{ConfigError, CoreError};
pub use event::{Event, EventKind};
pub use govern::{Allow, Block, Decision, Predicate, QuotaInfo};
pub use id::{CustomerId, MeterId, MeterIndex, PlanId};
pub use meter::{Exchange, ExchangeNeeds, MeterMatch, ReportedUsage, ResponseView};
pub use notify::{Dispatcher, MemoryNotifier, Notification, Notifier, NotifyConfig, NotifyError};
pub use provider::{BillingProvider, ProviderError, RecordOutcome, UsageRecord};
#[doc(hidden)]
pub use rate_limit::BenchGcra;
pub use rate_limit::RateLimitInfo;
pub use state_sync::{RestoreSummary, StateSync, StateSyncHandle};
pub use store::{AccountState, MemoryStore, PeriodUsage, StateStore, StoreError, UpsellStreak};
pub use store_redb::RedbStore;
