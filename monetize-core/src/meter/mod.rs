//! Meters: which requests count (filter), what they add (value), and how it folds
//! (aggregation).

mod aggregation;
mod cells;
mod exchange;
mod filter;
mod reported;
mod value;

pub use aggregation::{Aggregation, Measure};
pub(crate) use aggregation::{Sketch, mix64, stable_hash};
pub(crate) use cells::UsageCells;
pub use exchange::{Exchange, ExchangeNeeds, ResponseView};
pub(crate) use filter::Filter;
pub use reported::ReportedUsage;
pub(crate) use value::{Scale, ValueSource};

use crate::config::{BodySide, MeterConfig};
use crate::error::ConfigError;
use crate::id::{MeterId, MeterIndex};

/// A compiled meter.
#[derive(Clone, Debug)]
pub(crate) struct Meter {
    pub(crate) id: MeterId,
    pub(crate) index: MeterIndex,
    pub(crate) aggregation: Aggregation,
    pub(crate) filter: Filter,
    pub(crate) value: ValueSource,
    pub(crate) scale: Scale,
}

/// What a matching exchange contributes to a meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sample {
    Quantity(u64),
    Distinct(u64),
}

impl Meter {
    pub(crate) fn compile(
        cfg: &MeterConfig,
        field: &str,
        index: MeterIndex,
    ) -> Result<Meter, ConfigError> {
        let id = MeterId::new(&cfg.id)
            .map_err(|e| ConfigError::id(format!("{field}.id"), &cfg.id, e))?;
        let filter = Filter::compile(&cfg.filter, &format!("{field}.filter"))?;
        let value = ValueSource::compile(&cfg.value, &format!("{field}.value"))?;
        if cfg.aggregation == Aggregation::Count && !matches!(value, ValueSource::One) {
            return Err(ConfigError::new(
                format!("{field}.value"),
                format!("{:?}", cfg.value),
                "a `count` meter counts requests and takes no value; use `aggregation = \"sum\"` to add the value",
            ));
        }
        let scale = Scale::compile(&cfg.scale, &format!("{field}.scale"))?;
        Ok(Meter {
            id,
            index,
            aggregation: cfg.aggregation,
            filter,
            value,
            scale,
        })
    }

    /// What this exchange contributes, if the filter matches and the value is present.
    #[inline]
    pub(crate) fn sample(&self, ex: &Exchange<'_>) -> Option<Sample> {
        if !self.filter.matches(ex) {
            return None;
        }
        if self.aggregation == Aggregation::Count {
            return Some(Sample::Quantity(1));
        }
        let raw = self.value.raw(ex)?;
        if self.aggregation == Aggregation::UniqueCount {
            return Some(Sample::Distinct(raw.identity()));
        }
        let q = self.scale.apply(raw)?;
        (q > 0 || self.aggregation == Aggregation::Latest).then_some(Sample::Quantity(q))
    }

    /// Records in `needs` what this meter looks at.
    pub(crate) fn note_needs(&self, needs: &mut ExchangeNeeds) {
        if self.aggregation != Aggregation::Count {
            self.value.note_needs(needs);
        }
        self.filter.note_needs(needs);
    }

    /// The body capture this meter needs.
    pub(crate) fn json_capture(&self) -> Option<(BodySide, usize)> {
        self.value.json_capture()
    }
}
