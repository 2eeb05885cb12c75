//! Reporting configuration.

use serde::{Deserialize, Serialize};

/// When usage is checkpointed and reported, and where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ReportingConfig {
    /// How often usage cells are swapped into the spool, in milliseconds (the most usage a
    /// `kill -9` can lose). 10 to 60,000.
    pub checkpoint_interval_ms: u64,
    /// Length of a report window in seconds: one usage record per meter, customer and
    /// window. 1 to 86,400.
    pub window_secs: u64,
    /// Which providers take which meters. Empty: every configured provider takes every meter.
    pub providers: Vec<ProviderRouteConfig>,
}

impl Default for ReportingConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval_ms: 1000,
            window_secs: 60,
            providers: Vec::new(),
        }
    }
}

/// A provider's share of the meters and its report interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProviderRouteConfig {
    /// The provider's name (`stripe`, `ledger`, ...).
    pub name: String,
    /// How often closed windows are sent, in milliseconds.
    #[serde(default = "default_report_ms")]
    pub report_interval_ms: u64,
    /// The meters this provider takes; `None`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meters: Option<Vec<String>>,
}

fn default_report_ms() -> u64 {
    10_000
}

impl ProviderRouteConfig {
    /// A route for a provider taking all meters every 10 s.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            report_interval_ms: default_report_ms(),
            meters: None,
        }
    }
}
