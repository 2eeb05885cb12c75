//! How rows are stored: one format byte, then the row.
//!
//! | first byte | format |
//! | --- | --- |
//! | `1` ([`ROW_FORMAT`]) | [postcard](https://docs.rs/postcard) of the row shapes below, every table |
//! | `2` | postcard of an account row with credits journal and upsell streaks ([`super::account_row`]) |
//! | `{` | JSON, written by releases before postcard (still read) |
//!
//! A row kind that changes shape gets a format byte of its own, so that a reader
//! dispatches on the byte rather than trying one shape after another. A row of an unknown
//! format is reported as corrupt (and quarantined by `take`).

use serde::{Deserialize, Serialize};

use super::key::RowKey;
use crate::meter::{Aggregation, Measure};
use crate::report::spool::{Acknowledged, Sealed, SpoolError};

/// The format byte of every row kind that has kept its first postcard shape.
pub(super) const ROW_FORMAT: u8 = 1;

/// A pending row as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PendingRow {
    pub(super) measure: Measure,
    pub(super) window_secs: u64,
    pub(super) sealed: Option<Sealed>,
    pub(super) updated_unix: u64,
    /// Absent from rows written as JSON by earlier releases (guessed from the measure).
    #[serde(default)]
    pub(super) aggregation: Option<Aggregation>,
}

impl PendingRow {
    pub(super) fn aggregation(&self) -> Aggregation {
        self.aggregation.unwrap_or(match self.measure {
            Measure::Max(_) => Aggregation::Max,
            Measure::Latest(_) => Aggregation::Latest,
            Measure::Sketch(_) => Aggregation::UniqueCount,
            _ => Aggregation::Sum,
        })
    }
}

/// An acknowledged row as stored: the record, and the measure it was sealed from (so that
/// a late part of a non-additive window can carry the whole window's value).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct AckRow {
    pub(super) ack: Acknowledged,
    pub(super) measure: Option<Measure>,
}

/// A quarantined row as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct QuarantineRow {
    pub(super) table: String,
    pub(super) key: String,
    pub(super) reason: String,
    pub(super) bytes: Vec<u8>,
}

pub(super) fn encode<T: Serialize>(key: &RowKey, value: &T) -> Result<Vec<u8>, SpoolError> {
    encode_as(key, ROW_FORMAT, value)
}

/// `value` in postcard after the format byte `format`.
pub(super) fn encode_as<T: Serialize>(
    key: &RowKey,
    format: u8,
    value: &T,
) -> Result<Vec<u8>, SpoolError> {
    let mut out = vec![format];
    let body = postcard::to_allocvec(value).map_err(|e| SpoolError::Corrupt {
        key: key.to_string(),
        reason: format!("cannot encode: {e}"),
    })?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// `bytes` (what follows a format byte `format`) in postcard.
pub(super) fn decode_postcard<T: for<'de> Deserialize<'de>>(
    key: &RowKey,
    format: u8,
    bytes: &[u8],
) -> Result<T, SpoolError> {
    postcard::from_bytes(bytes).map_err(|e| SpoolError::Corrupt {
        key: key.to_string(),
        reason: format!("cannot decode (format {format}): {e}"),
    })
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(
    key: &RowKey,
    bytes: &[u8],
) -> Result<T, SpoolError> {
    let corrupt = |reason: String| SpoolError::Corrupt {
        key: key.to_string(),
        reason,
    };
    match bytes.first() {
        Some(&ROW_FORMAT) => decode_postcard(key, ROW_FORMAT, &bytes[1..]),
        Some(b'{') => {
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("cannot decode JSON: {e}")))
        }
        Some(v) => Err(corrupt(format!(
            "unknown row format {v} (written by a newer release?)"
        ))),
        None => Err(corrupt("empty row".into())),
    }
}

pub(super) fn decode_ack(key: &RowKey, bytes: &[u8]) -> Result<AckRow, SpoolError> {
    if bytes.first() == Some(&b'{') {
        let ack: Acknowledged = decode(key, bytes)?;
        return Ok(AckRow { ack, measure: None });
    }
    decode(key, bytes)
}

pub(super) fn is_additive(a: Aggregation) -> bool {
    matches!(a, Aggregation::Count | Aggregation::Sum)
}
