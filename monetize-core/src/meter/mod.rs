//! Meters: which requests count (filter), what they add (value), and how it folds
//! (aggregation).

mod aggregation;
mod cells;
mod exchange;
mod filter;
mod meter_match;
mod reported;
mod value;

pub use aggregation::{Aggregation, Measure};
pub(crate) use aggregation::{Sketch, mix64, stable_hash};
pub(crate) use cells::UsageCells;
pub use exchange::{Exchange, ExchangeNeeds, ResponseView};
pub(crate) use filter::{Filter, Side};
pub use meter_match::MeterMatch;
pub(crate) use meter_match::MeterPhases;
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
    /// The whole filter, as [`crate::Engine::meter`] evaluates it.
    pub(crate) filter: Filter,
    /// The request-side part of `filter`, evaluated by [`crate::Engine::meter_request`]
    /// (`True` when the filter is mixed).
    pub(crate) request_filter: Filter,
    /// The response-side part of `filter`, evaluated by [`crate::Engine::meter_response`]
    /// (the whole filter when it is mixed).
    pub(crate) response_filter: Filter,
    /// The filter does not split into a request part and a response part (an `any` or a
    /// `not` reads both sides): it is evaluated whole at the response.
    pub(crate) mixed: bool,
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
        let (request_filter, response_filter, mixed) = match filter.split() {
            Some((request, response)) => (request, response, false),
            None => (Filter::True, filter.clone(), true),
        };
        Ok(Meter {
            id,
            index,
            aggregation: cfg.aggregation,
            filter,
            request_filter,
            response_filter,
            mixed,
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
        self.value_of(ex)
    }

    /// What a matching exchange contributes, if the value is present (the filter is not
    /// looked at).
    #[inline]
    pub(crate) fn value_of(&self, ex: &Exchange<'_>) -> Option<Sample> {
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

    /// Whether the two-phase path evaluates this meter's whole filter at the response:
    /// its filter is mixed, or its index does not fit in a [`MeterMatch`] (64 and up).
    pub(crate) fn whole_at_response(&self) -> bool {
        self.mixed || self.index.get() >= MeterMatch::CAPACITY
    }

    /// Whether [`crate::Engine::meter_response`] reads this meter's request side (method,
    /// route, path, query, request headers) from the response-time exchange: its whole
    /// filter is evaluated there and reads the request, or its value is a request header.
    /// Request bytes and the request body prefix do not count: the layer passes those at
    /// the response anyway.
    pub(crate) fn request_at_response(&self) -> bool {
        let filter =
            self.whole_at_response() && matches!(self.filter.side(), Side::Request | Side::Both);
        let value = self.aggregation != Aggregation::Count && self.value.reads_request_side();
        filter || value
    }

    /// The body capture this meter needs.
    pub(crate) fn json_capture(&self) -> Option<(BodySide, usize)> {
        self.value.json_capture()
    }
}
