//! The spool's per-batch costs as the backlog grows (issue 10, item 10): `take` of one
//! provider batch (100 records) and one `prune_batch` (500 acknowledged rows examined), on
//! a `RedbSpool` file holding 10,000 and then `BACKLOG` pending and acknowledged rows.
//! The cost of a batch must not grow with the backlog: compare the two sizes.
//!
//! Setup (untimed): `rows` deltas merged for the provider `ledger` into closed windows
//! (1,000 customers x `rows / 1,000` windows), the same number again acknowledged (merged,
//! taken, acked) for the provider `audit`. Timed:
//! - `take_100/ROWS`: `Spool::take` of 100 due records of `ledger`, from the first key
//!   (after the first iteration these are the same 100 sealed entries handed out again:
//!   one read and one write per record, plus the bounded scan);
//! - `prune_500/ROWS`: `Spool::prune_batch` over 500 acknowledged rows whose windows are
//!   not yet past the horizon (read and decode each, delete none: the state stays the same
//!   between iterations).
//!
//! `BACKLOG` is 1,000,000 unless `MONETIZE_SPOOL_BACKLOG` says otherwise (setup of the
//! million-row file takes a while; see benches/README.md).

use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use monetize_core::meter::Measure;
use monetize_core::report::{Checkpoint, Delta, RedbSpool, Spool, SpoolRoute, TakeRequest};
use monetize_core::{CustomerId, MeterId};

const WINDOW: u64 = 60;
const CUSTOMERS: usize = 1_000;

fn backlog() -> usize {
    std::env::var("MONETIZE_SPOOL_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// A spool with `rows` pending rows of `ledger` and `rows` acknowledged rows of `audit`.
fn spool_with(dir: &std::path::Path, rows: usize) -> RedbSpool {
    let spool = RedbSpool::open(dir.join(format!("spool-{rows}.redb"))).expect("open");
    let meter = MeterId::new("api_calls").expect("meter");
    let customers: Vec<CustomerId> = (0..CUSTOMERS)
        .map(|i| CustomerId::new(format!("c{i:06}")).expect("customer"))
        .collect();
    let windows = rows.div_ceil(CUSTOMERS);
    for (provider, acked) in [("ledger", false), ("audit", true)] {
        let routes = [SpoolRoute::all(provider)];
        for w in 0..windows {
            let deltas: Vec<Delta> = customers
                .iter()
                .map(|c| Delta::new(c.clone(), meter.clone(), Measure::Sum(1)))
                .collect();
            let at = 1_000_000 + w as u64 * WINDOW;
            spool
                .merge_checkpoints(&routes, &[Checkpoint::unsequenced(at, deltas)], WINDOW)
                .expect("merge");
            if acked {
                let now = 1_000_000 + windows as u64 * WINDOW;
                let taken = spool
                    .take_due(provider, "bench", now, CUSTOMERS, false)
                    .expect("take");
                spool.ack(&taken, now).expect("ack");
            }
        }
    }
    spool
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("spool");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1));
    for rows in [10_000, backlog()] {
        let spool = spool_with(dir.path(), rows);
        assert_eq!(spool.pending_count(Some("ledger")).expect("count"), rows);
        let now = 1_000_000 + (rows.div_ceil(CUSTOMERS) as u64 + 1) * WINDOW;
        g.bench_function(format!("take_100/{rows}"), |b| {
            b.iter(|| {
                let t = spool
                    .take(&TakeRequest::new("ledger", "bench", now, 100))
                    .expect("take");
                assert_eq!(t.records.len(), 100);
                t
            })
        });
        g.bench_function(format!("prune_500/{rows}"), |b| {
            b.iter(|| {
                let p = spool.prune_batch(0, None, 500).expect("prune");
                assert_eq!(p.deleted, 0);
                assert!(p.next.is_some());
                p
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
