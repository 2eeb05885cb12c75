//! monetize's own GCRA and HyperLogLog against the well-kept crates that do the same job
//! (issue 11, "Also"): `governor` for the rate limit, `hyperloglockless` for distinct
//! counts. Only what the request path does is timed: one rate-limit check on the allow
//! path, one sketch insert. Figures and the decision in `benches/README.md`.
//!
//! ```sh
//! cargo bench -p monetize-benches --bench peers
//! ```

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use hyperloglockless::AtomicHyperLogLog;
use monetize_core::BenchGcra;
use monetize_core::meter::{BenchSketch, bench_stable_hash};

/// SplitMix64: well-mixed hashes of a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn gcra(c: &mut Criterion) {
    let mut g = c.benchmark_group("gcra_allow");
    // Never refuses: one request a nanosecond, bursts of a billion.
    let ours = BenchGcra::new(1_000_000_000, 1, 1_000_000_000).expect("valid limit");
    let epoch = Instant::now();
    g.bench_function("monetize", |b| {
        b.iter(|| black_box(ours.check(epoch.elapsed().as_nanos() as u64)))
    });
    // The check alone, on a clock that costs nothing (a counter): the engine reads
    // `Instant` once per request for it, where governor reads its own (quanta) clock.
    let ours_counter = BenchGcra::new(1_000_000_000, 1, 1_000_000_000).expect("valid limit");
    let mut now = 0u64;
    g.bench_function("monetize_no_clock", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(ours_counter.check(now))
        })
    });
    g.bench_function("instant_elapsed", |b| {
        b.iter(|| black_box(epoch.elapsed().as_nanos() as u64))
    });
    let quota = Quota::per_second(NonZeroU32::MAX);
    let plain = RateLimiter::direct(quota);
    g.bench_function("governor", |b| b.iter(|| black_box(plain.check().is_ok())));
    // What the layer needs for `RateLimit-Remaining`: the state after the check.
    let info = RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>();
    g.bench_function("governor_state_info", |b| {
        b.iter(|| black_box(info.check().map(|s| s.remaining_burst_capacity())))
    });
    g.finish();
}

fn distinct(c: &mut Criterion) {
    let mut g = c.benchmark_group("distinct_insert");
    // Distinct values: a fresh sketch gets 4,096 of them, then is emptied (a checkpoint).
    const PER_SKETCH: u64 = 4096;
    g.bench_function("monetize_fresh", |b| {
        let s = BenchSketch::new();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            if i.is_multiple_of(PER_SKETCH) {
                black_box(s.take_count());
            }
            s.add_hash(mix(i));
        })
    });
    g.bench_function("hyperloglockless_fresh", |b| {
        let mut s = AtomicHyperLogLog::seeded(10, 7);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            if i.is_multiple_of(PER_SKETCH) {
                black_box(s.count());
                s = AtomicHyperLogLog::seeded(10, 7);
            }
            s.insert_hash(mix(i));
        })
    });
    // A customer's few users again and again: registers no longer change.
    g.bench_function("monetize_repeat", |b| {
        let s = BenchSketch::new();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            s.add_hash(mix(i % 64));
        })
    });
    g.bench_function("hyperloglockless_repeat", |b| {
        let s = AtomicHyperLogLog::seeded(10, 7);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            s.insert_hash(mix(i % 64));
        })
    });
    // Two threads adding distinct values to one sketch (hyperloglockless also updates two
    // shared counters per register raise).
    g.bench_function("monetize_2threads", |b| {
        b.iter_custom(|n| two_threads(n, BenchSketch::new, |s, h| s.add_hash(h)))
    });
    g.bench_function("hyperloglockless_2threads", |b| {
        b.iter_custom(|n| {
            two_threads(
                n,
                || AtomicHyperLogLog::seeded(10, 7),
                |s, h| s.insert_hash(h),
            )
        })
    });
    // The hash of a text value (a user id header): FNV-1a + SplitMix64.
    g.bench_function("stable_hash_16_bytes", |b| {
        b.iter(|| black_box(bench_stable_hash(black_box(b"user-0123456789a"))))
    });
    g.finish();
}

/// `n` inserts per thread on two threads, into a fresh sketch every 2^18 inserts.
fn two_threads<S: Sync>(n: u64, make: fn() -> S, add: fn(&S, u64)) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(1 << 18);
        let s = make();
        let start = Instant::now();
        std::thread::scope(|t| {
            for k in 0..2u64 {
                let s = &s;
                t.spawn(move || {
                    for i in 0..batch {
                        add(s, mix(i * 2 + k));
                    }
                });
            }
        });
        total += start.elapsed();
        done += batch;
    }
    total
}

criterion_group!(benches, gcra, distinct);
criterion_main!(benches);
