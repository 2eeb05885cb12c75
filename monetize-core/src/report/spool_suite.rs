//! A behaviour suite every spool must pass; run on [`MemorySpool`](crate::report::MemorySpool)
//! by `spool_kv`'s tests and on `RedbSpool` in its module.

use crate::id::{CustomerId, MeterId};
use crate::meter::{Aggregation, Measure};
use crate::report::Delta;
use crate::report::spool::{Checkpoint, Settled, Spool, SpoolKey, SpoolRoute, TakeRequest};
use crate::store::{AccountState, PeriodUsage};

pub(crate) fn m(s: &str) -> MeterId {
    MeterId::new(s).unwrap()
}

pub(crate) fn c(s: &str) -> CustomerId {
    CustomerId::new(s).unwrap()
}

pub(crate) fn sum(customer: &str, meter: &str, v: u64) -> Delta {
    Delta::new(c(customer), m(meter), Measure::Sum(v))
}

pub(crate) fn routes() -> Vec<SpoolRoute> {
    vec![
        SpoolRoute::all("ledger"),
        SpoolRoute::only("stripe", vec![m("calls")]),
    ]
}

/// Windows of 60 s; t=100 is in [60, 120).
pub(crate) fn closes_windows_only(s: &dyn Spool) {
    s.merge(
        &routes(),
        &[sum("c1", "calls", 2), sum("c1", "bytes", 10)],
        100,
        60,
    )
    .unwrap();
    s.merge(&routes(), &[sum("c1", "calls", 3)], 110, 60)
        .unwrap();
    assert!(
        s.take_due("ledger", "i", 119, 10, false)
            .unwrap()
            .is_empty()
    );
    let got = s.take_due("ledger", "i", 120, 10, false).unwrap();
    assert_eq!(got.len(), 2);
    let calls = got.iter().find(|r| r.meter.as_str() == "calls").unwrap();
    assert_eq!((calls.quantity, calls.window_start, calls.part), (5, 60, 0));
    assert_eq!(calls.attempts, 0);
    // stripe only takes calls
    let stripe = s.take_due("stripe", "i", 120, 10, false).unwrap();
    assert_eq!(stripe.len(), 1);
    assert_eq!(stripe[0].quantity, 5);
    assert_ne!(stripe[0].idempotency_key, calls.idempotency_key);
}

pub(crate) fn include_open_takes_everything(s: &dyn Spool) {
    s.merge(&routes(), &[sum("c1", "calls", 4)], 100, 60)
        .unwrap();
    assert!(
        s.take_due("ledger", "i", 100, 10, false)
            .unwrap()
            .is_empty()
    );
    let got = s.take_due("ledger", "i", 100, 10, true).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].quantity, 4);
}

pub(crate) fn sealed_entries_are_stable(s: &dyn Spool) {
    s.merge(&routes(), &[sum("c1", "calls", 7)], 100, 60)
        .unwrap();
    let first = s.take_due("ledger", "i", 200, 10, false).unwrap();
    // a late merge into the sealed window goes to part 1
    s.merge(&routes(), &[sum("c1", "calls", 5)], 100, 60)
        .unwrap();
    let again = s
        .take_due("ledger", "other-instance", 200, 10, false)
        .unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(again[0].idempotency_key, first[0].idempotency_key);
    assert_eq!(again[0].quantity, 7);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[1].part, 1);
    assert_eq!(again[1].quantity, 5);
    assert_eq!(again[1].attempts, 0);
    assert_ne!(again[1].idempotency_key, first[0].idempotency_key);
    let third = s.take_due("ledger", "i", 200, 10, false).unwrap();
    assert_eq!((third[0].attempts, third[1].attempts), (2, 1));
    let pending = s.pending(Some("ledger")).unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].sealed.as_ref().unwrap().handouts, 3);
    assert_eq!(s.pending_total(Some("ledger"), "calls", "c1").unwrap(), 12);
}

pub(crate) fn ack_and_dead_letter_move_entries(s: &dyn Spool) {
    s.merge(
        &routes(),
        &[
            sum("c1", "calls", 1),
            sum("c2", "calls", 2),
            sum("c3", "calls", 3),
        ],
        100,
        60,
    )
    .unwrap();
    let got = s.take_due("ledger", "i", 200, 10, false).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(s.ack(&got[..1], 300).unwrap(), 1);
    assert_eq!(
        s.dead_letter(&got[1..2], "unknown customer", 301).unwrap(),
        1
    );
    // acking again or acking a record with a foreign key does nothing
    assert_eq!(s.ack(&got[..1], 300).unwrap(), 0);
    let mut forged = got[2].clone();
    forged.idempotency_key = "mz1_forged".into();
    assert_eq!(s.ack(&[forged], 300).unwrap(), 0);
    let acked = s.acknowledged(Some("ledger")).unwrap();
    assert_eq!(acked.len(), 1);
    assert_eq!(acked[0].record.idempotency_key, got[0].idempotency_key);
    assert_eq!(acked[0].at_unix, 300);
    let dead = s.dead_letters(None).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "unknown customer");
    assert_eq!(dead[0].record.quantity, 2);
    assert_eq!(s.pending_count(Some("ledger")).unwrap(), 1);
    // usage merged later into the acknowledged window never reuses part 0
    s.merge(
        &routes(),
        &[sum("c1", "calls", 9), sum("c2", "calls", 9)],
        110,
        60,
    )
    .unwrap();
    let late = s.take_due("ledger", "i", 200, 10, false).unwrap();
    let parts: Vec<(String, u32, u64)> = late
        .iter()
        .map(|r| (r.customer.to_string(), r.part, r.quantity))
        .collect();
    assert!(parts.contains(&("c1".into(), 1, 9)), "{parts:?}");
    assert!(parts.contains(&("c2".into(), 1, 9)), "{parts:?}");
    assert!(parts.contains(&("c3".into(), 0, 3)), "{parts:?}");
    // prune: by the end of the record's window (120), not by the acknowledgement time
    assert_eq!(s.prune_acknowledged(119).unwrap(), 0);
    assert_eq!(s.prune_acknowledged(120).unwrap(), 1);
    assert!(s.acknowledged(None).unwrap().is_empty());
}

pub(crate) fn limit_is_respected(s: &dyn Spool) {
    let deltas: Vec<Delta> = (0..5).map(|i| sum(&format!("c{i}"), "calls", 1)).collect();
    s.merge(&routes(), &deltas, 100, 60).unwrap();
    assert_eq!(s.take_due("ledger", "i", 200, 2, false).unwrap().len(), 2);
    // the two sealed ones come first (key order), then two more
    assert_eq!(s.take_due("ledger", "i", 200, 4, false).unwrap().len(), 4);
    assert!(s.take_due("ledger", "i", 200, 0, false).unwrap().is_empty());
    let all = s.take_due("ledger", "i", 200, 100, false).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all.iter().map(|r| r.quantity).sum::<u64>(), 5);
}

pub(crate) fn measures_merge_by_kind(s: &dyn Spool) {
    let max = |v| Delta::new(c("c1"), m("peak"), Measure::Max(v));
    s.merge(&routes(), &[max(3), max(9), max(4)], 100, 60)
        .unwrap();
    let got = s.take_due("ledger", "i", 200, 10, false).unwrap();
    assert_eq!(got[0].quantity, 9);
    // zero sums are not stored
    s.merge(&routes(), &[sum("c9", "calls", 0)], 100, 60)
        .unwrap();
    assert_eq!(s.pending_total(None, "calls", "c9").unwrap(), 0);
    assert_eq!(s.pending_count(None).unwrap(), 1);
}

/// Issue 10 item 1: the same instance name on two spools never gives the same key.
pub(crate) fn keys_are_unique_per_spool(a: &dyn Spool, b: &dyn Spool) {
    for s in [a, b] {
        s.merge(&routes(), &[sum("c1", "calls", 3)], 100, 60)
            .unwrap();
    }
    let ka = a.take_due("ledger", "default", 200, 10, false).unwrap();
    let kb = b.take_due("ledger", "default", 200, 10, false).unwrap();
    assert_eq!((ka.len(), kb.len()), (1, 1));
    assert_eq!((ka[0].part, kb[0].part), (0, 0));
    assert_ne!(ka[0].idempotency_key, kb[0].idempotency_key);
}

/// Issue 10 item 2: a checkpoint merged again (a retry after an error that came after
/// the commit) adds nothing.
pub(crate) fn checkpoints_merge_once(s: &dyn Spool) {
    let cp = |seq, v| Checkpoint::new("w1", seq, 100, vec![sum("c1", "calls", v)]);
    s.merge_checkpoints(&routes(), &[cp(1, 5)], 60).unwrap();
    // the retry carries the same checkpoint and the next one
    s.merge_checkpoints(&routes(), &[cp(1, 5), cp(2, 7)], 60)
        .unwrap();
    assert_eq!(s.last_checkpoint("w1").unwrap(), 2);
    assert_eq!(s.last_checkpoint("other").unwrap(), 0);
    assert_eq!(s.pending_total(Some("ledger"), "calls", "c1").unwrap(), 12);
    // another writer's numbers are its own
    let other = Checkpoint::new("w2", 1, 100, vec![sum("c1", "calls", 1)]);
    s.merge_checkpoints(&routes(), &[other], 60).unwrap();
    assert_eq!(s.pending_total(Some("ledger"), "calls", "c1").unwrap(), 13);
}

/// Issue 10 item 6: usage is dated by its checkpoint's swap time, not the merge time.
pub(crate) fn checkpoints_keep_their_window(s: &dyn Spool) {
    let late = Checkpoint::new("w1", 1, 100, vec![sum("c1", "calls", 4)]);
    s.merge_checkpoints(&routes(), &[late], 60).unwrap();
    let p = s.pending(Some("ledger")).unwrap();
    assert_eq!(p[0].key.window_start, 60);
}

/// Issue 10 item 5: an acknowledged part of a window still open is not pruned, and
/// part numbers are never reused, even after pruning.
pub(crate) fn prune_never_frees_a_part_number(s: &dyn Spool) {
    // a one-hour window [3600, 7200), flushed early at 3700
    s.merge(&routes(), &[sum("c1", "calls", 5)], 3650, 3600)
        .unwrap();
    let first = s.take_due("ledger", "i", 3700, 10, true).unwrap();
    assert_eq!(s.ack(&first, 3700).unwrap(), 1);
    // audit retention of 10 s: the window is still open, nothing goes
    assert_eq!(s.prune_acknowledged(3711).unwrap(), 0);
    s.merge(&routes(), &[sum("c1", "calls", 2)], 3720, 3600)
        .unwrap();
    let second = s.take_due("ledger", "i", 7200, 10, false).unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].part, second[0].quantity), (1, 2));
    assert_ne!(second[0].idempotency_key, first[0].idempotency_key);
    s.ack(&second, 7200).unwrap();
    // once the window ended, both go; usage dated in it afterwards (a clock stepped
    // back) goes to the first window not pruned, never to a reused part
    assert_eq!(s.prune_acknowledged(7200).unwrap(), 2);
    s.merge(&routes(), &[sum("c1", "calls", 1)], 3750, 3600)
        .unwrap();
    let p = s.pending(Some("ledger")).unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].key.window_start, p[0].key.part), (7200, 0));
}

/// Issue 10 item 4: a sealed record first sent before the horizon is never resent: it
/// moves to the reconciliation list, and a requeue sends it with a new key.
pub(crate) fn past_the_horizon_goes_to_reconciliation(s: &dyn Spool) {
    s.merge(&routes(), &[sum("c1", "calls", 5)], 100, 60)
        .unwrap();
    let first = s.take_due("ledger", "i", 200, 10, false).unwrap();
    let req = TakeRequest::new("ledger", "i", 1_000, 10).resend_before(150);
    let again = s.take(&req).unwrap();
    assert_eq!(again.records.len(), 1, "sealed at 200, after the horizon");
    let req = TakeRequest::new("ledger", "i", 1_000, 10).resend_before(201);
    let taken = s.take(&req).unwrap();
    assert!(taken.records.is_empty());
    assert_eq!(taken.to_reconcile.len(), 1);
    assert_eq!(
        taken.to_reconcile[0].idempotency_key,
        first[0].idempotency_key
    );
    let listed = s.to_reconcile(Some("ledger")).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record.quantity, 5);
    assert_eq!(s.pending_count(Some("ledger")).unwrap(), 0);
    // an operator checked: not billed. Requeued with a new key and the same quantity
    let key = SpoolKey::of(&listed[0].record);
    assert_eq!(
        s.requeue(Settled::Reconciliation, &[key], "i", 1_000)
            .unwrap(),
        1
    );
    assert!(s.to_reconcile(None).unwrap().is_empty());
    let resent = s.take_due("ledger", "i", 1_000, 10, false).unwrap();
    assert_eq!(resent.len(), 1);
    assert_eq!((resent[0].quantity, resent[0].part), (5, 1));
    assert_ne!(resent[0].idempotency_key, first[0].idempotency_key);
}

/// Issue 10 item 9: dead letters can be requeued after a fix.
pub(crate) fn dead_letters_can_be_requeued(s: &dyn Spool) {
    s.merge(&routes(), &[sum("c1", "calls", 4)], 100, 60)
        .unwrap();
    let got = s.take_due("stripe", "i", 200, 10, false).unwrap();
    s.dead_letter(&got, "no such customer", 200).unwrap();
    let dead = s.dead_letters(Some("stripe")).unwrap();
    let key = SpoolKey::of(&dead[0].record);
    assert_eq!(
        s.requeue(Settled::DeadLetters, std::slice::from_ref(&key), "i", 300)
            .unwrap(),
        1
    );
    assert_eq!(
        s.requeue(Settled::DeadLetters, &[key], "i", 300).unwrap(),
        0
    );
    assert!(s.dead_letters(None).unwrap().is_empty());
    let again = s.take_due("stripe", "i", 300, 10, false).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].quantity, again[0].part, again[0].attempts),
        (4, 1, 0)
    );
    assert_ne!(again[0].idempotency_key, got[0].idempotency_key);
}

/// Issue 10 item 10: one take examines a bounded number of rows, and a cursor goes on.
pub(crate) fn take_is_bounded(s: &dyn Spool) {
    let deltas: Vec<Delta> = (0..600)
        .map(|i| sum(&format!("c{i:04}"), "calls", 1))
        .collect();
    // all in an open window: nothing due, but a take never walks all 600
    s.merge(&routes(), &deltas, 100, 60).unwrap();
    let t = s.take(&TakeRequest::new("ledger", "i", 110, 1)).unwrap();
    assert!(t.records.is_empty());
    assert!(t.next.is_some(), "the scan stopped at its bound");
    let mut after = t.next;
    let mut rounds = 1;
    while let Some(k) = after {
        let t = s
            .take(&TakeRequest::new("ledger", "i", 110, 1).after(Some(k)))
            .unwrap();
        after = t.next;
        rounds += 1;
    }
    assert!(rounds >= 3, "{rounds}");
    // closed: the provider's 600 come out, in bounded batches
    assert_eq!(
        s.take_due("ledger", "i", 120, 1_000, false).unwrap().len(),
        600
    );
}

/// Issue 11 item 1: count and sum stay apart, and a non-additive window is never split
/// by a flush into parts a provider would sum.
pub(crate) fn aggregations_survive(s: &dyn Spool) {
    let count = sum("c1", "calls", 3).with_aggregation(Aggregation::Count);
    let peak = Delta::new(c("c1"), m("seats"), Measure::Max(7));
    s.merge(&routes(), &[count, peak], 100, 60).unwrap();
    // a flush seals the open count window but not the max one
    let flushed = s.take_due("ledger", "i", 100, 10, true).unwrap();
    assert_eq!(flushed.len(), 1);
    assert_eq!(flushed[0].aggregation, Aggregation::Count);
    s.ack(&flushed, 100).unwrap();
    let late = Delta::new(c("c1"), m("seats"), Measure::Max(5));
    s.merge(&routes(), &[late], 110, 60).unwrap();
    let closed = s.take_due("ledger", "i", 120, 10, false).unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].aggregation, Aggregation::Max);
    assert_eq!((closed[0].part, closed[0].quantity), (0, 7));
    s.ack(&closed, 120).unwrap();
    // usage that arrives after the window was sealed: the next part carries the whole
    // window's value (it supersedes part 0), never the late samples alone
    let later = Delta::new(c("c1"), m("seats"), Measure::Max(9));
    s.merge(&routes(), &[later], 115, 60).unwrap();
    let again = s.take_due("ledger", "i", 130, 10, false).unwrap();
    let seats: Vec<_> = again
        .iter()
        .filter(|r| r.meter.as_str() == "seats")
        .collect();
    assert_eq!((seats[0].part, seats[0].quantity), (1, 9));
    let lower = Delta::new(c("c2"), m("seats"), Measure::Max(9));
    s.merge(&routes(), &[lower], 100, 60).unwrap();
    let t = s.take_due("ledger", "i", 130, 10, false).unwrap();
    s.ack(&t, 130).unwrap();
    s.merge(
        &routes(),
        &[Delta::new(c("c2"), m("seats"), Measure::Max(2))],
        100,
        60,
    )
    .unwrap();
    let t = s.take_due("ledger", "i", 130, 10, false).unwrap();
    assert_eq!(
        (t[0].part, t[0].quantity),
        (1, 9),
        "the window's max, not 2"
    );
}

fn account(balance: i64, used: u64) -> AccountState {
    AccountState {
        plan: Some(crate::id::PlanId::new("prepaid").unwrap()),
        balance,
        period_usage: vec![PeriodUsage::new(m("calls"), 60, used)],
        blocked: used > 100,
        upsell: vec![crate::store::UpsellStreak::new(m("calls"), 2, 60)],
        ..AccountState::default()
    }
}

/// Account snapshots are written with the checkpoint's deltas, newest wins, and a
/// checkpoint skipped as already merged does not write its (older) snapshots.
pub(crate) fn accounts_ride_with_checkpoints(s: &dyn Spool) {
    assert!(s.accounts().unwrap().is_empty());
    let first = Checkpoint::new("w", 1, 100, vec![sum("c1", "calls", 3)])
        .with_accounts(vec![(c("c1"), account(97, 3)), (c("c2"), account(5, 0))]);
    s.merge_checkpoints(&routes(), std::slice::from_ref(&first), 60)
        .unwrap();
    let second = Checkpoint::new("w", 2, 101, vec![sum("c1", "calls", 2)])
        .with_accounts(vec![(c("c1"), account(95, 205))]);
    s.merge_checkpoints(&routes(), &[first.clone(), second], 60)
        .unwrap();
    // A late retry of the first checkpoint alone (its merge committed and errored).
    assert_eq!(s.merge_checkpoints(&routes(), &[first], 60).unwrap(), 0);
    assert_eq!(
        s.accounts().unwrap(),
        vec![(c("c1"), account(95, 205)), (c("c2"), account(5, 0))],
        "the retried first checkpoint did not bring back c1's older state"
    );
    assert_eq!(s.pending_total(Some("ledger"), "calls", "c1").unwrap(), 5);
    // A checkpoint with accounts and no deltas (operator changes only).
    let third =
        Checkpoint::new("w", 3, 102, Vec::new()).with_accounts(vec![(c("c2"), account(-4, 0))]);
    assert_eq!(s.merge_checkpoints(&routes(), &[third], 60).unwrap(), 0);
    assert_eq!(s.accounts().unwrap()[1], (c("c2"), account(-4, 0)));
    assert_eq!(s.last_checkpoint("w").unwrap(), 3);
}

pub(crate) fn all(make: &dyn Fn() -> Box<dyn Spool>) {
    accounts_ride_with_checkpoints(&*make());
    keys_are_unique_per_spool(&*make(), &*make());
    checkpoints_merge_once(&*make());
    checkpoints_keep_their_window(&*make());
    prune_never_frees_a_part_number(&*make());
    past_the_horizon_goes_to_reconciliation(&*make());
    dead_letters_can_be_requeued(&*make());
    take_is_bounded(&*make());
    aggregations_survive(&*make());
    closes_windows_only(&*make());
    include_open_takes_everything(&*make());
    sealed_entries_are_stable(&*make());
    ack_and_dead_letter_move_entries(&*make());
    limit_is_respected(&*make());
    measures_merge_by_kind(&*make());
}
