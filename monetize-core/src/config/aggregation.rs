//! How a meter folds the values of many requests into one figure per report window: the
//! configuration's name for it (the folding itself is in `meter::aggregation`).

use serde::{Deserialize, Serialize};

/// How a meter aggregates values within a report window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Aggregation {
    /// Number of matching requests (the value source is ignored; each adds 1).
    #[default]
    Count,
    /// Sum of the values.
    Sum,
    /// Largest value seen in the window.
    Max,
    /// The value of the last checkpoint in the window (a gauge such as seats or storage).
    Latest,
    /// Approximate number of distinct values: a HyperLogLog sketch with 2^10 registers
    /// (standard error about 3.25 %; small counts use linear counting and are close to exact).
    UniqueCount,
}

impl Aggregation {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Count => "count",
            Aggregation::Sum => "sum",
            Aggregation::Max => "max",
            Aggregation::Latest => "latest",
            Aggregation::UniqueCount => "unique_count",
        }
    }
}
