//! Meters: which requests count (filter), what they add (value), and how it folds
//! (aggregation).

mod aggregation;
mod cells;
mod delta;
mod exchange;
mod filter;
mod meter_match;
mod name_key;
mod reported;
mod value;

pub use aggregation::{Aggregation, Measure};
#[doc(hidden)]
pub use aggregation::{BenchSketch, bench_stable_hash};
pub(crate) use aggregation::{Sketch, mix64, stable_hash};
pub(crate) use cells::{SAMPLE_CAP, UsageCells};
pub use delta::Delta;
pub use exchange::{Exchange, ExchangeNeeds, ResponseView};
pub(crate) use filter::{Filter, Side};
pub use meter_match::MeterMatch;
pub(crate) use meter_match::MeterPhases;
pub(crate) use name_key::NameKey;
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
    /// `value`, `scale` and `aggregation` folded, when they allow, into a value read with
    /// no further dispatch: see [`Meter::value_of`].
    quick: QuickValue,
}

/// The common ways a meter's value is read, decided when the config is compiled: a count
/// adds one, and an integer source with no scaling adds what it reads, dropping zeros
/// unless the meter keeps the latest value. Anything else takes the general path.
#[derive(Clone, Debug)]
enum QuickValue {
    One,
    RequestBytes { keep_zero: bool },
    ResponseBytes { keep_zero: bool },
    Reported { name: NameKey, keep_zero: bool },
    General,
}

impl QuickValue {
    fn of(value: &ValueSource, scale: Scale, aggregation: Aggregation) -> QuickValue {
        let keep_zero = aggregation == Aggregation::Latest;
        match (value, aggregation) {
            (_, Aggregation::Count) => QuickValue::One,
            (_, Aggregation::UniqueCount) => QuickValue::General,
            _ if !scale.is_identity() => QuickValue::General,
            // One, unscaled, is never zero.
            (ValueSource::One, _) => QuickValue::One,
            (ValueSource::RequestBytes, _) => QuickValue::RequestBytes { keep_zero },
            (ValueSource::ResponseBytes, _) => QuickValue::ResponseBytes { keep_zero },
            (ValueSource::Reported(name), _) => QuickValue::Reported {
                name: name.clone(),
                keep_zero,
            },
            _ => QuickValue::General,
        }
    }
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
            quick: QuickValue::of(&value, scale, cfg.aggregation),
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
    /// looked at). Counts and unscaled integer sources are read here; the rest out of
    /// line.
    #[inline]
    pub(crate) fn value_of(&self, ex: &Exchange<'_>) -> Option<Sample> {
        let (q, keep_zero) = match &self.quick {
            QuickValue::One => return Some(Sample::Quantity(1)),
            QuickValue::Reported { name, keep_zero } => (name.find(ex.reported?)?, *keep_zero),
            QuickValue::ResponseBytes { keep_zero } => (ex.response?.bytes, *keep_zero),
            QuickValue::RequestBytes { keep_zero } => (ex.request_bytes, *keep_zero),
            QuickValue::General => return self.value_general(ex),
        };
        (q > 0 || keep_zero).then_some(Sample::Quantity(q))
    }

    /// [`Meter::value_of`] for any value source, scale and aggregation.
    #[inline(never)]
    fn value_general(&self, ex: &Exchange<'_>) -> Option<Sample> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Rounding, ValueConfig};
    use http::{HeaderMap, HeaderValue, Method, StatusCode};

    /// Every value source, scale and aggregation the quick path may take, on exchanges
    /// with and without each quantity (zero and not): the quick path and the general one
    /// agree.
    #[test]
    fn quick_values_agree_with_the_general_path() {
        let sources = [
            ValueConfig::Count,
            ValueConfig::RequestBytes,
            ValueConfig::ResponseBytes,
            ValueConfig::Reported("tokens".into()),
            ValueConfig::Reported("a_rather_long_quantity_name".into()),
            ValueConfig::Header("x-n".into()),
            ValueConfig::ResponseHeader("x-n".into()),
        ];
        let aggs = [
            Aggregation::Sum,
            Aggregation::Max,
            Aggregation::Latest,
            Aggregation::UniqueCount,
        ];
        let scales = [(1, 1), (3, 1), (1, 2), (2, 3)];
        let mut meters = vec![MeterConfig::count("count")];
        for v in &sources {
            for a in aggs {
                for (mul, div) in scales {
                    meters.push(MeterConfig::sum("m", v.clone()).aggregation(a).scale(
                        mul,
                        div,
                        Rounding::Ceil,
                    ));
                }
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert("x-n", HeaderValue::from_static("7"));
        let none = HeaderMap::new();
        let mut reported = Vec::new();
        for items in [
            vec![],
            vec![("tokens", 0)],
            vec![("tokens", 5)],
            vec![("rows", 2), ("tokens", 9)],
            vec![
                ("token", 4),
                ("tokenz", 4),
                ("a_rather_long_quantity_name", 11),
            ],
            vec![("a_rather_long_quantity_namf", 11)],
        ] {
            let mut r = ReportedUsage::new();
            for (n, q) in items {
                r.add(n, q);
            }
            reported.push(r);
        }
        let get = Method::GET;
        let mut exchanges = Vec::new();
        for request_bytes in [0, 5] {
            for response in [None, Some(0), Some(13)] {
                for r in std::iter::once(None).chain(reported.iter().map(Some)) {
                    for hs in [&none, &headers] {
                        let mut ex = Exchange::new(&get, "/", hs)
                            .request_bytes(request_bytes)
                            .reported(r);
                        if let Some(bytes) = response {
                            ex = ex.response(StatusCode::OK, hs, bytes);
                        }
                        exchanges.push(ex);
                    }
                }
            }
        }
        let mut quick = 0;
        for (i, cfg) in meters.iter().enumerate() {
            let m = match Meter::compile(cfg, "m", MeterIndex(0)) {
                Ok(m) => m,
                Err(e) => panic!("meter {i}: {e}"),
            };
            quick += usize::from(!matches!(m.quick, QuickValue::General));
            for ex in &exchanges {
                assert_eq!(
                    m.value_of(ex),
                    m.value_general(ex),
                    "meter {cfg:?} ({:?}) on {ex:?}",
                    m.quick
                );
            }
        }
        assert!(quick > 10, "the quick path is taken ({quick} meters)");
    }
}
