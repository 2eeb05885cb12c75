//! Meter configuration: filter, value source, aggregation and scale.

use serde::{Deserialize, Serialize};

use super::Aggregation;

/// One meter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MeterConfig {
    /// The meter's name (also the default provider event name).
    pub id: String,
    /// How values fold within a report window.
    #[serde(default)]
    pub aggregation: Aggregation,
    /// Which requests count.
    #[serde(default)]
    pub filter: FilterConfig,
    /// What a matching request adds.
    #[serde(default)]
    pub value: ValueConfig,
    /// Scaling into base units.
    #[serde(default)]
    pub scale: ScaleConfig,
    /// Reserve, then settle: base units whose cost is held before the handler runs on
    /// every request this meter's request-side filter matches (`402` when the balance
    /// cannot cover it), settled at the real value when the response comes (see
    /// `monetize_core::credits` and the tower `ReserveLayer`). Count and sum meters only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<u64>,
}

impl MeterConfig {
    /// A meter counting matching requests.
    pub fn count(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            aggregation: Aggregation::Count,
            filter: FilterConfig::default(),
            value: ValueConfig::Count,
            scale: ScaleConfig::default(),
            reserve: None,
        }
    }

    /// A meter summing `value` over matching requests.
    pub fn sum(id: impl Into<String>, value: ValueConfig) -> Self {
        Self {
            aggregation: Aggregation::Sum,
            value,
            ..Self::count(id)
        }
    }

    /// Reserves the cost of `estimate` base units before the handler runs (see
    /// [`MeterConfig::reserve`](MeterConfig#structfield.reserve)).
    pub fn reserve(mut self, estimate: u64) -> Self {
        self.reserve = Some(estimate);
        self
    }

    /// Sets the aggregation.
    pub fn aggregation(mut self, a: Aggregation) -> Self {
        self.aggregation = a;
        self
    }

    /// Sets the value source.
    pub fn value(mut self, v: ValueConfig) -> Self {
        self.value = v;
        self
    }

    /// Replaces the filter.
    pub fn filter(mut self, f: FilterConfig) -> Self {
        self.filter = f;
        self
    }

    /// Adds a route template to match (`/v1/users/{id}`, or a prefix `/v1/*`).
    pub fn route(mut self, r: impl Into<String>) -> Self {
        self.filter.route.push(r.into());
        self
    }

    /// Adds a method to match.
    pub fn method(mut self, m: impl Into<String>) -> Self {
        self.filter.method.push(m.into());
        self
    }

    /// Adds a status code, class (`2xx`) or range (`200-299`) to match.
    pub fn status(mut self, s: impl Into<String>) -> Self {
        self.filter.status.push(StatusSpec::Text(s.into()));
        self
    }

    /// Sets the scale.
    pub fn scale(mut self, multiply: u64, divide: u64, rounding: Rounding) -> Self {
        self.scale = ScaleConfig {
            multiply,
            divide,
            rounding,
        };
        self
    }
}

/// A filter: every field that is set must match (AND); `any` needs one of its filters,
/// `not` inverts. An empty filter matches every request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct FilterConfig {
    /// Methods, any of.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub method: Vec<String>,
    /// Route templates, any of; `*` at the end matches a prefix.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<String>,
    /// Status codes, classes (`2xx`) or ranges (`400-499`), any of.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<StatusSpec>,
    /// A request header that must be present (with this value, when given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderMatch>,
    /// A response header that must be present (with this value, when given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_header: Option<HeaderMatch>,
    /// A query parameter that must be present (with this value, when given); names and
    /// values are compared decoded (see [`QueryMatch`] for repeated parameters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<QueryMatch>,
    /// A handler-reported quantity that must be present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported: Option<String>,
    /// Filters that must all match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<FilterConfig>,
    /// Filters of which at least one must match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<FilterConfig>,
    /// A filter that must not match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<FilterConfig>>,
}

impl FilterConfig {
    /// An empty filter (matches every request); add conditions with the methods below.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a method to match (any of).
    pub fn method(mut self, m: impl Into<String>) -> Self {
        self.method.push(m.into());
        self
    }

    /// Adds a route template to match (any of); `*` at the end matches a prefix.
    pub fn route(mut self, r: impl Into<String>) -> Self {
        self.route.push(r.into());
        self
    }

    /// Adds a status code, class (`2xx`) or range (`400-499`) to match (any of).
    pub fn status(mut self, s: impl Into<String>) -> Self {
        self.status.push(StatusSpec::Text(s.into()));
        self
    }

    /// Requires a request header (with this value, when given).
    pub fn header(mut self, name: impl Into<String>, value: Option<&str>) -> Self {
        self.header = Some(HeaderMatch {
            name: name.into(),
            value: value.map(str::to_owned),
        });
        self
    }

    /// Requires a response header (with this value, when given).
    pub fn response_header(mut self, name: impl Into<String>, value: Option<&str>) -> Self {
        self.response_header = Some(HeaderMatch {
            name: name.into(),
            value: value.map(str::to_owned),
        });
        self
    }

    /// Requires a query parameter (with this value, when given).
    pub fn query(mut self, name: impl Into<String>, value: Option<&str>) -> Self {
        self.query = Some(QueryMatch {
            name: name.into(),
            value: value.map(str::to_owned),
        });
        self
    }

    /// Requires a handler-reported quantity.
    pub fn reported(mut self, name: impl Into<String>) -> Self {
        self.reported = Some(name.into());
        self
    }

    /// Requires at least one of these filters to match.
    pub fn any(mut self, filters: Vec<FilterConfig>) -> Self {
        self.any = filters;
        self
    }

    /// Requires this filter not to match.
    pub fn not(mut self, filter: FilterConfig) -> Self {
        self.not = Some(Box::new(filter));
        self
    }
}

/// A status code (`404`) or a text form (`"2xx"`, `"400-499"`, `"404"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum StatusSpec {
    /// One code.
    Code(u16),
    /// A class, range or code as text.
    Text(String),
}

impl std::fmt::Display for StatusSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusSpec::Code(c) => write!(f, "{c}"),
            StatusSpec::Text(t) => f.write_str(t),
        }
    }
}

/// A header to look for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HeaderMatch {
    /// The header name.
    pub name: String,
    /// The exact value, when it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A query parameter to look for.
///
/// The query string is decoded as `application/x-www-form-urlencoded` (what axum's
/// `Query` and serde_urlencoded read): `dry%5Frun=%31` is `dry_run=1`, `+` is a space,
/// invalid UTF-8 becomes U+FFFD. Names and values are compared exactly (case-sensitive)
/// after decoding; `?dry_run` (no `=`) has the empty value.
///
/// Repeated parameters: a test with a `value` matches only when the parameter is present
/// and **every** occurrence has that value; a test without `value` matches when the
/// parameter occurs at least once. So under `not = { query = { name = "dry_run", value =
/// "1" } }` a request is left unbilled only when whichever occurrence a handler reads
/// (first, last, any) says `dry_run=1`: `?dry_run=1&dry_run=0` is billed. Exclude
/// requests with a value test, not a presence test: a presence test also exempts
/// `?dry_run=0`, which a handler may serve as a real call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct QueryMatch {
    /// The parameter name (decoded form).
    pub name: String,
    /// The exact decoded value every occurrence must have, when it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Where a meter's value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ValueConfig {
    /// 1 per matching request.
    #[default]
    Count,
    /// Request body bytes: the data bytes of the body frames the API's service actually
    /// read, counted as it reads them (a chunked upload counts like one with
    /// `Content-Length`). A handler that does not read the body (or stops early) is billed
    /// for what it read: 0 when it never reads it, whatever `Content-Length` claims. With
    /// `monetize-tower` alone (no `monetize-axum`), wrap the body with
    /// `TapBody::from_request` inside the layer; without it the figure falls back to
    /// `Content-Length`. The exchange is then metered when the response body ends.
    RequestBytes,
    /// Response body bytes actually sent.
    ResponseBytes,
    /// A numeric request header.
    Header(String),
    /// A numeric response header.
    ResponseHeader(String),
    /// A quantity the handler reported (for example `tokens`).
    Reported(String),
    /// A JSON field of a body, read under a size cap.
    Json(JsonFieldConfig),
}

/// A JSON field to read a value from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JsonFieldConfig {
    /// An RFC 6901 pointer, such as `/usage/total_tokens`.
    pub pointer: String,
    /// Which body.
    #[serde(default)]
    pub from: BodySide,
    /// Bodies larger than this are not parsed (the meter records nothing for them).
    #[serde(default = "default_json_cap")]
    pub max_bytes: usize,
}

fn default_json_cap() -> usize {
    64 * 1024
}

impl JsonFieldConfig {
    /// A field of the response body, capped at 64 KiB.
    pub fn response(pointer: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            from: BodySide::Response,
            max_bytes: default_json_cap(),
        }
    }
}

/// Request or response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BodySide {
    /// The request body.
    Request,
    /// The response body.
    #[default]
    Response,
}

/// Scaling into base units: `value * multiply / divide`, rounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ScaleConfig {
    /// Multiplier, at least 1.
    pub multiply: u64,
    /// Divisor, at least 1.
    pub divide: u64,
    /// How a fraction rounds.
    pub rounding: Rounding,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        Self {
            multiply: 1,
            divide: 1,
            rounding: Rounding::Ceil,
        }
    }
}

/// How a scaled fraction rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rounding {
    /// Up (1.01 -> 2): never under-bills.
    #[default]
    Ceil,
    /// Down (1.99 -> 1).
    Floor,
    /// To the nearest, halves up.
    Nearest,
}
