//! Shared helpers for the `monetize` benchmarks: the engine under test, customer ids in a
//! fixed shuffled order, and a two-thread timing harness.
//!
//! See `benches/README.md` for the figures and how they were measured.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use monetize_core::Engine;
use monetize_core::config::{Config, MeterConfig, OverflowPolicy, PlanConfig, ValueConfig};

/// The credits every benchmark customer starts with: enough that no benchmark ever spends
/// them (the default `credits_exhausted` rule would start blocking).
pub const CREDITS: i64 = 1_000_000_000_000_000;

/// The benchmark configuration: `api_calls` (count on `/v1/*`, priced at 1 micro-credit)
/// and `tokens` (sum of the handler-reported `tokens`, unpriced), one prepaid plan that
/// every customer is on, the default governance rules, and room for `max_customers`.
pub fn config(max_customers: usize) -> Config {
    Config::builder()
        .meter(MeterConfig::count("api_calls").route("/v1/*"))
        .meter(MeterConfig::sum(
            "tokens",
            ValueConfig::Reported("tokens".into()),
        ))
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(CREDITS)
                .price("api_calls", 1),
        )
        .default_plan("prepaid")
        .max_customers(max_customers, OverflowPolicy::Reject)
        .build()
}

/// A config with `meters` unpriced `sum` meters (`m0`, `m1`, ...) and a postpaid plan.
pub fn config_with_meters(meters: usize, max_customers: usize) -> Config {
    let mut b = Config::builder();
    for i in 0..meters {
        b = b.meter(MeterConfig::sum(format!("m{i}"), ValueConfig::Count));
    }
    b.plan(PlanConfig::new("postpaid"))
        .default_plan("postpaid")
        .max_customers(max_customers, OverflowPolicy::Reject)
        .build()
}

/// An engine on [`config`] with `customers` customers already admitted (from
/// [`customer_ids`]). Returns the engine and the ids in admission order.
pub fn engine_with_customers(customers: usize) -> (Engine, Vec<String>) {
    let engine = match Engine::new(config(customers.max(16) + 16)) {
        Ok(e) => e,
        Err(e) => panic!("bench config: {e}"),
    };
    let ids = customer_ids(customers);
    for id in &ids {
        if let Err(e) = engine.resolve(id) {
            panic!("admit {id}: {e}");
        }
    }
    (engine, ids)
}

/// `n` distinct customer ids shaped like billing-provider ids (`cus_` and 14 hex digits).
pub fn customer_ids(n: usize) -> Vec<String> {
    (0..n as u64)
        .map(|i| format!("cus_{:014x}", splitmix64(i) >> 8))
        .collect()
}

/// A copy of `items` in a fixed pseudo-random order (Fisher–Yates with a fixed seed), so
/// that consecutive operations touch unrelated customers and cache lines.
pub fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut v = items.to_vec();
    let mut state = seed;
    for i in (1..v.len()).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let j = (splitmix64(state) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// The ids in a fixed shuffled order, each copied into a fresh allocation in that order.
///
/// Stored keys (in the engine and in every peer) are allocated in admission order, so the
/// shuffled order reaches them at random, as requests from many customers would. The
/// query strings themselves are laid out one after the other, as if each had just arrived
/// in a request buffer: reading them streams through memory and is not what is measured.
pub fn query_order(ids: &[String], seed: u64) -> Vec<String> {
    shuffled(ids, seed)
        .iter()
        .map(|id| id.as_str().to_owned())
        .collect()
}

/// SplitMix64: a good, cheap, deterministic 64-bit mix.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs `work(thread_index, iters)` on `threads` scoped threads that start together (a
/// barrier), and returns the longest per-thread time, measured from the barrier. Thread
/// start-up is outside the measurement. Each thread does `iters` operations, so the result
/// divided by `iters` is the wall time per operation *per thread*: equal to the
/// single-thread figure when the threads do not slow each other down.
pub fn timed_threads<F>(threads: usize, iters: u64, work: F) -> Duration
where
    F: Fn(usize, u64) + Sync,
{
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, work) = (&barrier, &work);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    work(t, iters);
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(d) => d,
                Err(e) => std::panic::resume_unwind(e),
            })
            .max()
            .unwrap_or_default()
    })
}

/// An `AtomicU64` alone on its cache line(s), for the bare-add baseline.
#[repr(align(128))]
#[derive(Default)]
pub struct PaddedU64(pub std::sync::atomic::AtomicU64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_shuffle_is_a_permutation() {
        let ids = customer_ids(10_000);
        let set: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
        let mut s = shuffled(&ids, 7);
        assert_ne!(s, ids);
        s.sort();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(s, sorted);
    }

    #[test]
    fn engine_admits_and_records() {
        let (engine, ids) = engine_with_customers(100);
        let idx = engine.meter_index("api_calls").unwrap();
        let h = engine.resolve(&ids[3]).unwrap();
        engine.record(&h, idx, 1);
        engine.record_by_id(&ids[4], "tokens", 5).unwrap();
        assert_eq!(engine.checkpoint().len(), 2);
        assert_eq!(engine.stats().customers, 100);
    }
}
