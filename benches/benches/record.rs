//! `record` on a resolved handle against a bare relaxed `fetch_add`, one and two threads.
//!
//! Ids (`<function>/<threads>`):
//! - `bare_fetch_add`: `AtomicU64::fetch_add(1, Relaxed)`, the floor.
//! - `record_unpriced`: `Engine::record` on the `tokens` meter (usage cell + period counter).
//! - `record_priced`: `Engine::record` on `api_calls`, priced on the customer's prepaid plan
//!   (usage cell + period counter + credit balance).
//!
//! Two threads: `2t_distinct` gives each thread its own atomic / its own customer's handle;
//! `2t_same` has both threads hit the same atomic / the same customer. Figures are wall time
//! per operation per thread (see `monetize_benches::timed_threads`).

use std::hint::black_box;
use std::sync::atomic::Ordering;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use monetize_benches::{PaddedU64, engine_with_customers, timed_threads};
use monetize_core::{CustomerHandle, Engine, MeterIndex};

fn record_loop(engine: &Engine, handle: &CustomerHandle, meter: MeterIndex, n: u64) {
    for _ in 0..n {
        engine.record(black_box(handle), meter, black_box(1));
    }
}

fn bench(c: &mut Criterion) {
    let (engine, ids) = engine_with_customers(2);
    let alice = engine.resolve(&ids[0]).expect("resolve");
    let bob = engine.resolve(&ids[1]).expect("resolve");
    let priced = engine.meter_index("api_calls").expect("api_calls");
    let unpriced = engine.meter_index("tokens").expect("tokens");
    let cells = [PaddedU64::default(), PaddedU64::default()];

    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));

    // One thread.
    g.bench_function(BenchmarkId::new("bare_fetch_add", "1t"), |b| {
        b.iter(|| black_box(&cells[0].0).fetch_add(black_box(1), Ordering::Relaxed))
    });
    g.bench_function(BenchmarkId::new("record_unpriced", "1t"), |b| {
        b.iter(|| engine.record(black_box(&alice), unpriced, black_box(1)))
    });
    g.bench_function(BenchmarkId::new("record_priced", "1t"), |b| {
        b.iter(|| engine.record(black_box(&alice), priced, black_box(1)))
    });

    // Two threads, each on its own atomic / customer, then both on the same one.
    for (label, same) in [("2t_distinct", false), ("2t_same", true)] {
        let handles = if same {
            [alice.clone(), alice.clone()]
        } else {
            [alice.clone(), bob.clone()]
        };
        g.bench_function(BenchmarkId::new("bare_fetch_add", label), |b| {
            b.iter_custom(|iters| {
                timed_threads(2, iters, |t, n| {
                    let cell = &cells[if same { 0 } else { t }].0;
                    for _ in 0..n {
                        black_box(cell).fetch_add(black_box(1), Ordering::Relaxed);
                    }
                })
            })
        });
        for (name, meter) in [("record_unpriced", unpriced), ("record_priced", priced)] {
            g.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter_custom(|iters| {
                    timed_threads(2, iters, |t, n| record_loop(&engine, &handles[t], meter, n))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
