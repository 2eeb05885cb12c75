//! A customer's state as the accounts table stores it, and the shapes earlier releases
//! wrote.

use serde::{Deserialize, Serialize};

use super::key::RowKey;
use super::row::{decode, decode_postcard, encode_as};
use crate::id::{CustomerId, MeterId};
use crate::report::spool::{Checkpoint, SpoolError};
use crate::store::{AccountState, PeriodUsage, UpsellStreak};

/// The format byte of account rows written by this release (see [`super::row`]). The
/// next change of [`AccountRow`]'s shape takes a new byte and keeps this shape as the one
/// format 2 decodes to.
pub(super) const ACCOUNT_FORMAT: u8 = 2;

/// A customer's state as stored in the accounts table (its own plain shape: postcard is
/// not self-describing, so no skipped or defaulted fields).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct AccountRow {
    /// Who wrote it, and the checkpoint: `(writer, seq, taken_unix)`.
    pub(super) writer: String,
    pub(super) seq: u64,
    pub(super) taken_unix: u64,
    pub(super) delinquent: bool,
    pub(super) cancelled: bool,
    pub(super) blocked: bool,
    pub(super) plan: Option<String>,
    pub(super) balance: i64,
    /// (meter, period start, used).
    pub(super) period_usage: Vec<(String, u64, u64)>,
    /// The billing anchor, unix seconds.
    pub(super) billing_anchor: Option<u64>,
    /// The last credits operation the balance includes (absent from format 1 rows written
    /// before credits journals existed: see [`decode_account`]).
    pub(super) ledger_seq: Option<u64>,
    /// Upsell streaks: (meter, periods in a row, start of the last period counted); none
    /// in format 1 rows.
    pub(super) upsell: Vec<(String, u32, u64)>,
}

/// A format 1 account row with the credits journal number (postcard rows have no
/// defaults, so each shape is its own type).
#[derive(Deserialize)]
struct AccountRowV2 {
    writer: String,
    seq: u64,
    taken_unix: u64,
    delinquent: bool,
    cancelled: bool,
    blocked: bool,
    plan: Option<String>,
    balance: i64,
    period_usage: Vec<(String, u64, u64)>,
    billing_anchor: Option<u64>,
    ledger_seq: Option<u64>,
}

/// A format 1 (or JSON) account row as written before the credits journal number.
#[derive(Deserialize)]
struct AccountRowV1 {
    writer: String,
    seq: u64,
    taken_unix: u64,
    delinquent: bool,
    cancelled: bool,
    blocked: bool,
    plan: Option<String>,
    balance: i64,
    period_usage: Vec<(String, u64, u64)>,
    billing_anchor: Option<u64>,
}

/// Encodes an account row in this release's format, [`ACCOUNT_FORMAT`].
pub(super) fn encode_account(key: &RowKey, row: &AccountRow) -> Result<Vec<u8>, SpoolError> {
    encode_as(key, ACCOUNT_FORMAT, row)
}

/// Decodes an account row by its format byte: [`ACCOUNT_FORMAT`] is this release's shape.
/// Format 1 and JSON rows come from the releases before it, in one of two shapes that
/// the byte does not tell apart (the second a prefix of the first): the row with the
/// credits journal number is tried first, then the one without.
pub(super) fn decode_account(key: &RowKey, bytes: &[u8]) -> Result<AccountRow, SpoolError> {
    if bytes.first() == Some(&ACCOUNT_FORMAT) {
        return decode_postcard(key, ACCOUNT_FORMAT, &bytes[1..]);
    }
    decode_format_1(key, bytes)
}

/// A format 1 or JSON account row (see [`decode_account`]).
fn decode_format_1(key: &RowKey, bytes: &[u8]) -> Result<AccountRow, SpoolError> {
    let r = match decode::<AccountRowV2>(key, bytes) {
        Ok(r) => r,
        Err(e) => match decode::<AccountRowV1>(key, bytes) {
            Ok(r) => AccountRowV2 {
                writer: r.writer,
                seq: r.seq,
                taken_unix: r.taken_unix,
                delinquent: r.delinquent,
                cancelled: r.cancelled,
                blocked: r.blocked,
                plan: r.plan,
                balance: r.balance,
                period_usage: r.period_usage,
                billing_anchor: r.billing_anchor,
                ledger_seq: None,
            },
            Err(_) => return Err(e),
        },
    };
    Ok(AccountRow {
        writer: r.writer,
        seq: r.seq,
        taken_unix: r.taken_unix,
        delinquent: r.delinquent,
        cancelled: r.cancelled,
        blocked: r.blocked,
        plan: r.plan,
        balance: r.balance,
        period_usage: r.period_usage,
        billing_anchor: r.billing_anchor,
        ledger_seq: r.ledger_seq,
        upsell: Vec::new(),
    })
}

impl AccountRow {
    pub(super) fn of(cp: &Checkpoint, state: &AccountState) -> Self {
        Self {
            writer: cp.writer.clone(),
            seq: cp.seq,
            taken_unix: cp.taken_unix,
            delinquent: state.delinquent,
            cancelled: state.cancelled,
            blocked: state.blocked,
            plan: state.plan.as_ref().map(|p| p.as_str().to_owned()),
            balance: state.balance,
            period_usage: state
                .period_usage
                .iter()
                .map(|u| (u.meter.as_str().to_owned(), u.period_start, u.used))
                .collect(),
            billing_anchor: state.billing_anchor,
            ledger_seq: state.ledger_seq,
            upsell: state
                .upsell
                .iter()
                .map(|u| (u.meter.as_str().to_owned(), u.periods, u.period_start))
                .collect(),
        }
    }

    pub(super) fn state(&self, key: &RowKey) -> Result<AccountState, SpoolError> {
        let corrupt = |reason: String| SpoolError::Corrupt {
            key: key.to_string(),
            reason,
        };
        let plan = match &self.plan {
            Some(p) => Some(crate::id::PlanId::new(p).map_err(|e| corrupt(format!("plan: {e}")))?),
            None => None,
        };
        let mut period_usage = Vec::with_capacity(self.period_usage.len());
        for (meter, start, used) in &self.period_usage {
            let meter = MeterId::new(meter).map_err(|e| corrupt(format!("meter: {e}")))?;
            period_usage.push(PeriodUsage::new(meter, *start, *used));
        }
        let mut upsell = Vec::with_capacity(self.upsell.len());
        for (meter, periods, start) in &self.upsell {
            let meter = MeterId::new(meter).map_err(|e| corrupt(format!("meter: {e}")))?;
            upsell.push(UpsellStreak::new(meter, *periods, *start));
        }
        let mut state = AccountState {
            upsell,
            plan,
            balance: self.balance,
            period_usage,
            billing_anchor: self.billing_anchor,
            ledger_seq: self.ledger_seq,
            ..AccountState::default()
        };
        state.delinquent = self.delinquent;
        state.cancelled = self.cancelled;
        state.blocked = self.blocked;
        Ok(state)
    }
}

pub(super) fn account_key(customer: &CustomerId) -> RowKey {
    RowKey {
        provider: String::new(),
        meter: String::new(),
        customer: customer.as_str().to_owned(),
        window_start: 0,
        part: 0,
    }
}
