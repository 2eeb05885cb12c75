//! Value sources: what quantity a matching request adds to a meter, and how it is scaled.

use http::HeaderName;

use super::{Exchange, NameKey, stable_hash};
use crate::config::{BodySide, Rounding, ScaleConfig, ValueConfig};
use crate::error::ConfigError;

/// A compiled value source.
#[derive(Clone, Debug)]
pub(crate) enum ValueSource {
    One,
    RequestBytes,
    ResponseBytes,
    RequestHeader(HeaderName),
    ResponseHeader(HeaderName),
    Reported(NameKey),
    Json {
        pointer: String,
        side: BodySide,
        max_bytes: usize,
    },
}

impl ValueSource {
    pub(crate) fn compile(cfg: &ValueConfig, field: &str) -> Result<ValueSource, ConfigError> {
        let header = |name: &str, f: String| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::new(f, name, "not a valid HTTP header name"))
        };
        Ok(match cfg {
            ValueConfig::Count => ValueSource::One,
            ValueConfig::RequestBytes => ValueSource::RequestBytes,
            ValueConfig::ResponseBytes => ValueSource::ResponseBytes,
            ValueConfig::Header(h) => {
                ValueSource::RequestHeader(header(h, format!("{field}.header"))?)
            }
            ValueConfig::ResponseHeader(h) => {
                ValueSource::ResponseHeader(header(h, format!("{field}.response_header"))?)
            }
            ValueConfig::Reported(name) => {
                if name.is_empty() {
                    return Err(ConfigError::new(
                        format!("{field}.reported"),
                        "",
                        "name the handler-reported quantity (for example `tokens`)",
                    ));
                }
                ValueSource::Reported(NameKey::new(name))
            }
            ValueConfig::Json(j) => {
                if !(j.pointer.is_empty() || j.pointer.starts_with('/')) {
                    return Err(ConfigError::new(
                        format!("{field}.json.pointer"),
                        &j.pointer,
                        "a JSON pointer (RFC 6901) starts with `/`, for example `/usage/total_tokens`",
                    ));
                }
                if j.max_bytes == 0 || j.max_bytes > 16 * 1024 * 1024 {
                    return Err(ConfigError::new(
                        format!("{field}.json.max_bytes"),
                        j.max_bytes,
                        "must be between 1 and 16777216 (16 MiB)",
                    ));
                }
                ValueSource::Json {
                    pointer: j.pointer.clone(),
                    side: j.from,
                    max_bytes: j.max_bytes,
                }
            }
        })
    }

    /// The body capture this source needs: which side and how many bytes at most.
    pub(crate) fn json_capture(&self) -> Option<(BodySide, usize)> {
        match self {
            ValueSource::Json {
                side, max_bytes, ..
            } => Some((*side, *max_bytes)),
            _ => None,
        }
    }

    /// Records in `needs` what this source looks at.
    pub(crate) fn note_needs(&self, needs: &mut super::ExchangeNeeds) {
        match self {
            ValueSource::RequestBytes => needs.request_bytes = true,
            ValueSource::ResponseBytes => needs.response_bytes = true,
            ValueSource::RequestHeader(_) => needs.request_headers = true,
            ValueSource::ResponseHeader(_) => needs.response_headers = true,
            ValueSource::Reported(_) => needs.reported = true,
            ValueSource::One | ValueSource::Json { .. } => {}
        }
    }

    /// Whether the value reads the request's method, route, path, query or headers (a
    /// request header). Request bytes and the request body prefix are not counted: the
    /// HTTP layer carries those to the response on its own.
    pub(crate) fn reads_request_side(&self) -> bool {
        match self {
            ValueSource::RequestHeader(_) => true,
            ValueSource::One
            | ValueSource::RequestBytes
            | ValueSource::ResponseBytes
            | ValueSource::ResponseHeader(_)
            | ValueSource::Reported(_)
            | ValueSource::Json { .. } => false,
        }
    }

    /// The raw quantity, before scaling; `None` when the exchange does not carry it.
    #[inline]
    pub(crate) fn raw(&self, ex: &Exchange<'_>) -> Option<Raw> {
        match self {
            ValueSource::One => Some(Raw::Int(1)),
            ValueSource::RequestBytes => Some(Raw::Int(ex.request_bytes)),
            ValueSource::ResponseBytes => ex.response.map(|r| Raw::Int(r.bytes)),
            ValueSource::RequestHeader(n) => header_value(ex.request_headers.get(n)),
            ValueSource::ResponseHeader(n) => {
                ex.response.and_then(|r| header_value(r.headers.get(n)))
            }
            ValueSource::Reported(name) => ex.reported.and_then(|r| name.find(r)).map(Raw::Int),
            ValueSource::Json {
                pointer,
                side,
                max_bytes,
            } => {
                let body = match side {
                    BodySide::Request => ex.request_body,
                    BodySide::Response => ex.response_body,
                }?;
                // Each meter's own cap holds even when another meter captured more.
                if body.len() > *max_bytes {
                    return None;
                }
                let v: serde_json::Value = serde_json::from_slice(body).ok()?;
                match v.pointer(pointer)? {
                    serde_json::Value::Number(n) => match n.as_u64() {
                        Some(u) => Some(Raw::Int(u)),
                        None => n.as_f64().filter(|f| *f >= 0.0).map(Raw::Float),
                    },
                    serde_json::Value::String(s) => {
                        Some(Raw::Text(stable_hash(s.as_bytes()), s.parse().ok()))
                    }
                    serde_json::Value::Bool(b) => Some(Raw::Int(*b as u64)),
                    _ => None,
                }
            }
        }
    }
}

/// A value as read, before scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Raw {
    Int(u64),
    Float(f64),
    /// A text value: its hash (for distinct counts) and its number, when it is one.
    Text(u64, Option<u64>),
}

impl Raw {
    /// A hash that identifies the value, for distinct counting.
    pub(crate) fn identity(self) -> u64 {
        match self {
            Raw::Int(i) => super::mix64(i ^ 0x9e37_79b9_7f4a_7c15),
            Raw::Float(f) => super::mix64(f.to_bits()),
            Raw::Text(h, _) => h,
        }
    }
}

fn header_value(v: Option<&http::HeaderValue>) -> Option<Raw> {
    let s = v?.to_str().ok()?.trim();
    match s.parse::<u64>() {
        Ok(i) => Some(Raw::Int(i)),
        Err(_) => match s.parse::<f64>() {
            Ok(f) if f >= 0.0 && f.is_finite() => Some(Raw::Float(f)),
            _ => Some(Raw::Text(stable_hash(s.as_bytes()), None)),
        },
    }
}

/// Multiplies, divides and rounds a raw value into base units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Scale {
    multiply: u64,
    divide: u64,
    rounding: Rounding,
}

impl Scale {
    pub(crate) fn compile(cfg: &ScaleConfig, field: &str) -> Result<Scale, ConfigError> {
        if cfg.multiply == 0 {
            return Err(ConfigError::new(
                format!("{field}.multiply"),
                0,
                "must be at least 1",
            ));
        }
        if cfg.divide == 0 {
            return Err(ConfigError::new(
                format!("{field}.divide"),
                0,
                "must be at least 1 (division by zero)",
            ));
        }
        Ok(Scale {
            multiply: cfg.multiply,
            divide: cfg.divide,
            rounding: cfg.rounding,
        })
    }

    /// Whether integers come out as they went in (no multiplying or dividing).
    pub(crate) fn is_identity(self) -> bool {
        self.multiply == 1 && self.divide == 1
    }

    /// Scales a raw value; text that is not a number gives `None`.
    #[inline]
    pub(crate) fn apply(self, raw: Raw) -> Option<u64> {
        match raw {
            Raw::Int(i) => Some(self.apply_int(i)),
            Raw::Text(_, n) => n.map(|i| self.apply_int(i)),
            Raw::Float(f) => {
                let x = f * self.multiply as f64 / self.divide as f64;
                let r = match self.rounding {
                    Rounding::Ceil => x.ceil(),
                    Rounding::Floor => x.floor(),
                    Rounding::Nearest => x.round(),
                };
                (r.is_finite() && r >= 0.0).then_some(r.min(u64::MAX as f64) as u64)
            }
        }
    }

    #[inline]
    fn apply_int(self, i: u64) -> u64 {
        if self.is_identity() {
            return i;
        }
        let n = i as u128 * self.multiply as u128;
        let d = self.divide as u128;
        let q = match self.rounding {
            Rounding::Floor => n / d,
            Rounding::Ceil => n.div_ceil(d),
            Rounding::Nearest => (n + d / 2) / d,
        };
        q.min(u64::MAX as u128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scale(m: u64, d: u64, r: Rounding) -> Scale {
        Scale {
            multiply: m,
            divide: d,
            rounding: r,
        }
    }

    #[test]
    fn rounding_modes() {
        assert_eq!(
            scale(1, 1000, Rounding::Ceil).apply(Raw::Int(1001)),
            Some(2)
        );
        assert_eq!(
            scale(1, 1000, Rounding::Floor).apply(Raw::Int(1999)),
            Some(1)
        );
        assert_eq!(
            scale(1, 1000, Rounding::Nearest).apply(Raw::Int(1500)),
            Some(2)
        );
        assert_eq!(
            scale(1, 1000, Rounding::Nearest).apply(Raw::Int(1499)),
            Some(1)
        );
        assert_eq!(
            scale(3, 1, Rounding::Ceil).apply(Raw::Int(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(scale(1, 1, Rounding::Ceil).apply(Raw::Float(2.1)), Some(3));
        assert_eq!(scale(1, 1, Rounding::Ceil).apply(Raw::Text(1, None)), None);
    }

    #[test]
    fn header_values() {
        assert_eq!(
            header_value(Some(&http::HeaderValue::from_static(" 42 "))),
            Some(Raw::Int(42))
        );
        assert_eq!(
            header_value(Some(&http::HeaderValue::from_static("1.5"))),
            Some(Raw::Float(1.5))
        );
        assert!(matches!(
            header_value(Some(&http::HeaderValue::from_static("user-1"))),
            Some(Raw::Text(_, None))
        ));
    }
}
