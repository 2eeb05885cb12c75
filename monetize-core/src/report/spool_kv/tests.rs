use super::account_row::*;
use super::key::*;
use super::row::*;
use crate::report::MemorySpool;
use crate::report::spool::Spool;
use crate::report::spool::*;
use crate::report::spool_suite::*;
use crate::store::*;

#[test]
fn a_corrupt_account_row_is_skipped() {
    let s = MemorySpool::new();
    let cp = Checkpoint::new("w", 1, 100, Vec::new()).with_accounts(vec![(
        c("good"),
        AccountState {
            balance: 7,
            ..AccountState::default()
        },
    )]);
    s.merge_checkpoints(&routes(), &[cp], 60).unwrap();
    s.put_raw(Table::Accounts, account_key(&c("bad")), &[ROW_FORMAT, 0xff]);
    let got = s.accounts().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.as_str(), got[0].1.balance), ("good", 7));
}

#[test]
fn memory_spool_passes_the_suite() {
    crate::report::spool_suite::all(&|| Box::new(MemorySpool::new()));
}

fn raw(provider: &str, customer: &str, part: u32) -> RowKey {
    RowKey {
        provider: provider.into(),
        meter: "calls".into(),
        customer: customer.into(),
        window_start: 60,
        part,
    }
}

#[test]
fn corrupt_rows_are_named_and_skipped() {
    let s = MemorySpool::new();
    s.merge(
        &routes(),
        &[sum("c1", "calls", 1), sum("c3", "calls", 3)],
        100,
        60,
    )
    .unwrap();
    s.put_raw(Table::Pending, raw("ledger", "c2", 0), b"{not json");
    let err = s.pending(None).unwrap_err();
    assert!(
        matches!(&err, SpoolError::Corrupt { key, .. } if key == "ledger/calls/c2/60#0"),
        "{err}"
    );
    assert!(err.to_string().contains("ledger/calls/c2/60#0"));
    // take quarantines it (once) and hands out the others
    let t = s.take(&TakeRequest::new("ledger", "i", 200, 10)).unwrap();
    assert_eq!(t.records.len(), 2);
    assert_eq!(t.quarantined.len(), 1);
    assert_eq!(t.quarantined[0].0, "ledger/calls/c2/60#0");
    let q = s.quarantined().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].bytes, b"{not json");
    assert!(q[0].key.contains("ledger/calls/c2/60#0"), "{}", q[0].key);
    // the listings work again; the next take quarantines nothing
    assert_eq!(s.pending(None).unwrap().len(), 4, "2 ledger + 2 stripe");
    let t = s.take(&TakeRequest::new("ledger", "i", 200, 10)).unwrap();
    assert!(t.quarantined.is_empty());
    // a merge for the corrupt window goes to the next part
    s.merge(&routes(), &[sum("c2", "calls", 5)], 100, 60)
        .unwrap();
    let got = s.take_due("ledger", "i", 200, 10, false).unwrap();
    let c2 = got.iter().find(|r| r.customer.as_str() == "c2").unwrap();
    assert_eq!((c2.part, c2.quantity), (1, 5));
    assert_eq!(got.len(), 3);
}

#[test]
fn failed_operations_roll_back() {
    let s = MemorySpool::new();
    s.merge(&routes(), &[sum("c1", "calls", 1)], 100, 60)
        .unwrap();
    // the last part number is taken: merging c2 fails after c1 was updated
    s.put_raw(Table::Acked, raw("ledger", "c2", u32::MAX - 1), b"{}");
    let err = s
        .merge(
            &routes(),
            &[sum("c1", "calls", 1), sum("c2", "calls", 1)],
            100,
            60,
        )
        .unwrap_err();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
    assert_eq!(
        s.pending_total(None, "calls", "c1").unwrap(),
        2,
        "1 ledger + 1 stripe"
    );
}

#[test]
fn routes_filter_meters() {
    let r = SpoolRoute::only("stripe", vec![m("calls")]);
    assert!(r.takes(&m("calls")));
    assert!(!r.takes(&m("bytes")));
    assert!(SpoolRoute::all("x").takes(&m("bytes")));
}
