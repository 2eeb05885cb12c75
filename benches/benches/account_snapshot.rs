//! What durable spends (issue 10, item 8) add to the checkpoint task.
//!
//! - `snapshot_500k_customers`: reading the state of 500,000 customers one by one with
//!   `Engine::account` (the same lookups as the checkpoint's snapshot of the customers
//!   whose usage it took, which is crate-private);
//! - `merge_10k_customers/deltas_only` and `merge_10k_customers/with_accounts`: a redb
//!   merge of one checkpoint of 20,000 deltas (10,000 customers x 2 meters), without and
//!   with the 10,000 customers' account snapshots written in the same transaction. The
//!   ratio is the cost durable spends add to a merge.

use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use monetize_benches::engine_with_customers;
use monetize_core::meter::Measure;
use monetize_core::report::{Checkpoint, Delta, RedbSpool, Spool, SpoolRoute};
use monetize_core::{AccountState, CustomerId, MeterId};

const CUSTOMERS: usize = 500_000;
const MERGED: usize = 10_000;

fn bench(c: &mut Criterion) {
    let (engine, ids) = engine_with_customers(CUSTOMERS);
    let mut g = c.benchmark_group("account_snapshot");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("snapshot_500k_customers", |b| {
        b.iter(|| ids.iter().filter_map(|id| engine.account(id)).count())
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let spool = RedbSpool::open(dir.path().join("spool.redb")).expect("open");
    let routes = [SpoolRoute::all("ledger")];
    let meters = [
        MeterId::new("api_calls").expect("meter"),
        MeterId::new("tokens").expect("meter"),
    ];
    let customers: Vec<CustomerId> = ids[..MERGED]
        .iter()
        .map(|id| CustomerId::new(id.as_str()).expect("customer"))
        .collect();
    let deltas: Vec<Delta> = customers
        .iter()
        .flat_map(|c| {
            meters
                .iter()
                .map(|m| Delta::new(c.clone(), m.clone(), Measure::Sum(1)))
        })
        .collect();
    let accounts: Vec<(CustomerId, AccountState)> = ids[..MERGED]
        .iter()
        .zip(&customers)
        .map(|(id, c)| (c.clone(), engine.account(id).expect("account")))
        .collect();
    for (name, with_accounts) in [("deltas_only", false), ("with_accounts", true)] {
        g.bench_function(format!("merge_10k_customers/{name}"), |b| {
            b.iter(|| {
                let mut cp = Checkpoint::unsequenced(1_000_000, deltas.clone());
                if with_accounts {
                    cp = cp.with_accounts(accounts.clone());
                }
                spool.merge_checkpoints(&routes, &[cp], 60).expect("merge")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
