use serde::Serialize;

use super::account_row::*;
use super::key::*;
use super::row::*;
use crate::id::MeterId;
use crate::meter::{Aggregation, Measure};
use crate::report::MemorySpool;
use crate::report::spool::Spool;
use crate::report::spool_suite::*;
use crate::store::*;

fn key(customer: &str) -> RowKey {
    RowKey {
        provider: "ledger".into(),
        meter: "calls".into(),
        customer: customer.into(),
        window_start: 60,
        part: 0,
    }
}

#[test]
fn rows_written_as_json_by_earlier_releases_are_read() {
    let s = MemorySpool::new();
    let json = br#"{"measure":{"sum":6},"window_secs":60,"updated_unix":100}"#;
    s.put_raw(Table::Pending, key("c1"), json);
    let got = s.take_due("ledger", "i", 200, 10, false).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].quantity, 6);
    // rewritten in the binary format when sealed, and still the same entry
    let p = s.pending(None).unwrap();
    assert_eq!(p[0].sealed.as_ref().unwrap().quantity, 6);
    assert!(s.quarantined().unwrap().is_empty());
}

/// Account rows written before `ledger_seq` existed (postcard has no defaults) are
/// still read, with no journal number; rows of this release keep it.
#[test]
fn account_rows_without_a_journal_number_are_still_read() {
    #[derive(Serialize)]
    struct Old {
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
    let k = key("c1");
    let old = Old {
        writer: "w".into(),
        seq: 3,
        taken_unix: 100,
        delinquent: true,
        cancelled: false,
        blocked: false,
        plan: Some("pro".into()),
        balance: -42,
        period_usage: vec![("calls".into(), 0, 7)],
        billing_anchor: Some(5),
    };
    let row = decode_account(&k, &encode(&k, &old).unwrap()).unwrap();
    assert_eq!((row.balance, row.ledger_seq), (-42, None));
    let state = row.state(&k).unwrap();
    assert!(state.delinquent);
    assert_eq!(state.billing_anchor, Some(5));
    let new = AccountRow {
        ledger_seq: Some(9),
        ..row
    };
    let back = decode_account(&k, &encode_account(&k, &new).unwrap()).unwrap();
    assert_eq!(back.ledger_seq, Some(9));
    assert_eq!(back.state(&k).unwrap().ledger_seq, Some(9));
}

/// Account rows written before upsell streaks existed (with `ledger_seq`, without
/// `upsell`) are still read, with no streaks; rows of this release keep them.
#[test]
fn account_rows_without_upsell_streaks_are_still_read() {
    #[derive(Serialize)]
    struct Old {
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
    let k = key("c1");
    let old = Old {
        writer: "w".into(),
        seq: 3,
        taken_unix: 100,
        delinquent: false,
        cancelled: true,
        blocked: false,
        plan: Some("pro".into()),
        balance: 42,
        period_usage: vec![("calls".into(), 0, 7)],
        billing_anchor: None,
        ledger_seq: Some(11),
    };
    let row = decode_account(&k, &encode(&k, &old).unwrap()).unwrap();
    assert_eq!((row.balance, row.ledger_seq), (42, Some(11)));
    assert!(row.upsell.is_empty());
    let state = row.state(&k).unwrap();
    assert!(state.cancelled);
    assert_eq!(state.period_usage[0].used, 7);
    let new = AccountRow {
        upsell: vec![("calls".into(), 2, 1_796_083_200)],
        ..row
    };
    let back = decode_account(&k, &encode_account(&k, &new).unwrap()).unwrap();
    assert_eq!(back.ledger_seq, Some(11));
    assert_eq!(
        back.state(&k).unwrap().upsell,
        [UpsellStreak::new(
            MeterId::new("calls").unwrap(),
            2,
            1_796_083_200
        )]
    );
}

#[test]
fn rows_are_compact_and_versioned() {
    let row = PendingRow {
        measure: Measure::Sketch(vec![3; 1024]),
        window_secs: 60,
        sealed: None,
        updated_unix: 100,
        aggregation: Some(Aggregation::UniqueCount),
    };
    let bytes = encode(&key("c1"), &row).unwrap();
    assert_eq!(bytes[0], ROW_FORMAT);
    assert!(bytes.len() < 1_100, "{}", bytes.len());
    let json = serde_json::to_vec(&row).unwrap();
    assert!(json.len() > 2_000, "{}", json.len());
    let back: PendingRow = decode(&key("c1"), &bytes).unwrap();
    assert_eq!(back.measure, row.measure);
    let err = decode::<PendingRow>(&key("c1"), &[9, 0]).unwrap_err();
    assert!(err.to_string().contains("unknown row format 9"), "{err}");
    let _ = sum("c1", "calls", 1);
}

/// Account rows carry a format byte of their own: this release writes
/// [`ACCOUNT_FORMAT`], reads it back without trying other shapes, and names a format it
/// does not know.
#[test]
fn account_rows_have_their_own_format_byte() {
    let k = key("c1");
    let row = AccountRow {
        writer: "w".into(),
        seq: 4,
        taken_unix: 100,
        delinquent: true,
        cancelled: false,
        blocked: false,
        plan: None,
        balance: -5,
        period_usage: vec![("calls".into(), 0, 9)],
        billing_anchor: Some(50),
        ledger_seq: Some(12),
        upsell: vec![("calls".into(), 1, 0)],
    };
    let bytes = encode_account(&k, &row).unwrap();
    assert_eq!(bytes[0], ACCOUNT_FORMAT);
    assert_ne!(ACCOUNT_FORMAT, ROW_FORMAT);
    let back = decode_account(&k, &bytes).unwrap();
    assert_eq!(
        (back.balance, back.ledger_seq, back.upsell.len()),
        (-5, Some(12), 1)
    );
    // A row of this release truncated is corrupt, not read as an older shape.
    let err = decode_account(&k, &bytes[..bytes.len() - 3]).unwrap_err();
    assert!(err.to_string().contains("format 2"), "{err}");
    let err = decode_account(&k, &[7, 0, 0]).unwrap_err();
    assert!(err.to_string().contains("unknown row format 7"), "{err}");
}
