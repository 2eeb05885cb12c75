//! `Engine::checkpoint` over 1,000,000 non-zero usage cells (500,000 customers x 2 meters).
//! Every cell is refilled (one `record` each) in the untimed setup before each iteration;
//! the returned `Vec<Delta>` is dropped outside the timing (criterion's `iter_batched`).
//!
//! Ids: `engine_1m_cells`, and `swap_floor_1m_cells`: the floor for the same work on a flat
//! array (swap 1,000,000 `AtomicU64` to zero, push `(cell index, value)` into a `Vec`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use monetize_benches::engine_with_customers;
use monetize_core::CustomerHandle;

const CUSTOMERS: usize = 500_000;
const CELLS: usize = 2 * CUSTOMERS;

fn bench(c: &mut Criterion) {
    let (engine, ids) = engine_with_customers(CUSTOMERS);
    let handles: Vec<CustomerHandle> = ids
        .iter()
        .map(|id| engine.resolve(id).expect("resolve"))
        .collect();
    drop(ids);
    let meters = [
        engine.meter_index("api_calls").expect("api_calls"),
        engine.meter_index("tokens").expect("tokens"),
    ];
    let fill = || {
        for h in &handles {
            for m in meters {
                engine.record(h, m, 1);
            }
        }
    };
    fill();
    let n = engine.checkpoint().len();
    assert_eq!(n, CELLS, "every cell is non-zero before a checkpoint");

    let flat: Vec<AtomicU64> = (0..CELLS).map(|_| AtomicU64::new(0)).collect();

    let mut g = c.benchmark_group("checkpoint");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(CELLS as u64));
    g.bench_function("engine_1m_cells", |b| {
        b.iter_batched(fill, |()| engine.checkpoint(), BatchSize::PerIteration)
    });
    g.bench_function("swap_floor_1m_cells", |b| {
        b.iter_batched(
            || {
                for c in &flat {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            },
            |()| {
                let mut out = Vec::new();
                for (i, c) in flat.iter().enumerate() {
                    if c.load(Ordering::Relaxed) != 0 {
                        out.push((i as u32, c.swap(0, Ordering::AcqRel)));
                    }
                }
                out
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
