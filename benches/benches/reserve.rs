//! Reserve, then settle, against a plain priced spend (issue 13, "Credits").
//!
//! Ids (`reserve/<function>`), one thread, one prepaid customer with a balance that never
//! runs out, meter `tokens` priced at 2 micro-credits a token:
//! - `plain_priced_record`: `Engine::record(handle, tokens, 40)`, what the metering of a
//!   priced meter costs without a reservation (cell, period counter, balance).
//! - `reserve_settle`: `Engine::reserve(handle, tokens, 100)` then `Reservation::settle(40)`
//!   (a compare-and-swap on the balance, the held-credits counter, then the cell, period
//!   counter and one add on the balance).
//! - `reserve_release`: `Engine::reserve` then dropping the reservation (a handler that
//!   failed).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use monetize_core::Engine;
use monetize_core::config::{Config, MeterConfig, PlanConfig, ValueConfig};

fn bench(c: &mut Criterion) {
    let cfg = Config::builder()
        .meter(
            MeterConfig::sum("tokens", ValueConfig::Reported("tokens".into()))
                .route("/v1/chat")
                .reserve(100),
        )
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(i64::MAX / 4)
                .price("tokens", 2),
        )
        .default_plan("prepaid")
        .build();
    let engine = Engine::new(cfg).expect("valid config");
    let handle = engine.resolve("cus_0123456789abcd").expect("resolve");
    let tokens = engine.meter_index("tokens").expect("tokens");

    let mut g = c.benchmark_group("reserve");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("plain_priced_record", "1t"), |b| {
        b.iter(|| engine.record(black_box(&handle), tokens, black_box(40)))
    });
    g.bench_function(BenchmarkId::new("reserve_settle", "1t"), |b| {
        b.iter(|| {
            let r = engine
                .reserve(black_box(&handle), tokens, black_box(100))
                .expect("covered");
            black_box(r.settle(black_box(40)))
        })
    });
    g.bench_function(BenchmarkId::new("reserve_release", "1t"), |b| {
        b.iter(|| {
            drop(black_box(
                engine
                    .reserve(black_box(&handle), tokens, black_box(100))
                    .expect("covered"),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
