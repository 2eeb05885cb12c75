//! Configuration: meters, plans, rules, customers and reporting, loadable from TOML or
//! JSON and buildable in code. [`crate::Engine::new`] validates it; every error names the
//! offending field and value.
//!
//! ```
//! use monetize_core::config::{Config, MeterConfig, PlanConfig, QuotaConfig, Period};
//!
//! let toml = r#"
//!     instance = "api-1"
//!     [customers]
//!     default_plan = "free"
//!     [[meters]]
//!     id = "api_calls"
//!     filter = { route = ["/v1/*"], status = ["2xx"] }
//!     [[plans]]
//!     id = "free"
//!     quotas = [{ meter = "api_calls", limit = 1000, period = "month" }]
//! "#;
//! let from_file = Config::from_toml_str(toml).unwrap();
//!
//! let in_code = Config::builder()
//!     .instance("api-1")
//!     .default_plan("free")
//!     .meter(MeterConfig::count("api_calls").route("/v1/*").status("2xx"))
//!     .plan(PlanConfig::new("free").quota(QuotaConfig::new("api_calls", 1000, Period::Month)))
//!     .build();
//! assert_eq!(from_file, in_code);
//! ```

mod aggregation;
mod builder;
mod meter;
mod plan;
mod reporting;
mod rule;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use aggregation::Aggregation;
pub use builder::ConfigBuilder;
pub use meter::{
    BodySide, FilterConfig, HeaderMatch, JsonFieldConfig, MeterConfig, QueryMatch, Rounding,
    ScaleConfig, StatusSpec, ValueConfig,
};
pub use plan::{Period, PlanConfig, PlanMeterConfig, QuotaConfig, RateLimitConfig};
pub use reporting::{ProviderRouteConfig, ReportingConfig};
pub use rule::{ActionConfig, BlockConfig, ConditionConfig, Mode, RuleConfig};

use crate::error::CoreError;

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Config {
    /// This process's name, part of every idempotency key: give each API instance its own.
    pub instance: String,
    /// Customer registry settings.
    pub customers: CustomersConfig,
    /// The meters, in order; at most 65,535.
    pub meters: Vec<MeterConfig>,
    /// The plans.
    pub plans: Vec<PlanConfig>,
    /// The governance rules, evaluated in order; the first that blocks wins. `None` uses
    /// the default rules (see [`RuleConfig::defaults`]).
    pub rules: Option<Vec<RuleConfig>>,
    /// Checkpoint and report timing, and which provider takes which meters.
    pub reporting: ReportingConfig,
    /// The IANA time zone (`Europe/Paris`, `America/New_York`) whose calendar days and
    /// months quota periods follow, and billing cycles are counted in; `UTC` by default.
    /// Minute and hour periods are fixed lengths, whatever the zone. Cannot change while
    /// the engine runs.
    pub time_zone: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            instance: "default".into(),
            customers: CustomersConfig::default(),
            meters: Vec::new(),
            plans: Vec::new(),
            rules: None,
            reporting: ReportingConfig::default(),
            time_zone: "UTC".into(),
        }
    }
}

/// What happens to a new customer once the customer cap is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// Refuse to admit the customer (the HTTP layer answers 503).
    #[default]
    Reject,
    /// Account the customer's usage to the shared overflow customer.
    Overflow,
}

/// Customer registry settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct CustomersConfig {
    /// The most customers held in memory at once.
    pub max: usize,
    /// What to do with a new customer past `max`.
    pub overflow: OverflowPolicy,
    /// The customer id that overflowed usage is accounted to.
    pub overflow_customer: String,
    /// The plan of customers not otherwise assigned one. `None`: the first plan, or no
    /// plan at all when none is configured.
    pub default_plan: Option<String>,
    /// Customers idle for this many seconds are evicted from memory (their state is kept
    /// in a compact dormant record, and their usage is checkpointed first). `None`: never.
    pub evict_idle_secs: Option<u64>,
}

impl Default for CustomersConfig {
    fn default() -> Self {
        Self {
            max: 1_000_000,
            overflow: OverflowPolicy::Reject,
            overflow_customer: "_overflow".into(),
            default_plan: None,
            evict_idle_secs: None,
        }
    }
}

impl Config {
    /// A builder producing the same structure as a config file.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Parses TOML. Unknown fields are errors, so typos do not pass silently.
    pub fn from_toml_str(s: &str) -> Result<Config, CoreError> {
        toml::from_str(s).map_err(|e| CoreError::Parse {
            format: "toml",
            message: e.to_string(),
        })
    }

    /// Parses JSON. Unknown fields are errors, so typos do not pass silently.
    pub fn from_json_str(s: &str) -> Result<Config, CoreError> {
        serde_json::from_str(s).map_err(|e| CoreError::Parse {
            format: "json",
            message: e.to_string(),
        })
    }

    /// Reads a `.toml` or `.json` file (by its extension).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, CoreError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| CoreError::Io {
            path: path.display().to_string(),
            source,
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Self::from_json_str(&text),
            _ => Self::from_toml_str(&text),
        }
    }
}
