//! [`Delta`]: what a checkpoint takes out of a usage cell, handed to the spool.

use super::{Aggregation, Measure};
use crate::id::{CustomerId, MeterId};

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
