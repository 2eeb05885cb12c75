//! Resolve a customer by id and add 1 to its per-customer count, 100,000 customers
//! pre-admitted, ids taken in a fixed shuffled order; the engine against peers doing the
//! same per-customer count, one and two threads.
//!
//! Ids (`<function>/<threads>`):
//! - `engine_record_by_id`: `Engine::record_by_id(id, "api_calls", 1)`.
//! - `engine_resolve_record`: `Engine::resolve(id)` then `Engine::record(&handle, idx, 1)`.
//! - `mutex_hashmap`: `Mutex<HashMap<String, u64>>` (std hasher), lock, `get_mut`, `+= 1`.
//! - `dashmap_std`: `DashMap<String, AtomicU64>` (std hasher), `get`, relaxed `fetch_add`.
//! - `otel_counter`: an OpenTelemetry SDK `Counter<u64>` with one `customer` attribute
//!   (pre-built `KeyValue` per customer, no allocation per call), `SdkMeterProvider` with a
//!   `ManualReader` (aggregates in memory, never collected during the run) and the
//!   cardinality limit raised to 200,000 so that every customer gets its own series.
//! - `metrics_counter`: `metrics::counter!("api_calls", "customer" => id).increment(1)` with
//!   the id as a pre-built `Arc<str>` (no string copy; the macro still builds a `Key` with a
//!   one-label `Vec`), through a global recorder that is a thin wrapper around
//!   `metrics_util::registry::Registry<Key, AtomicStorage>` (what exporters such as the
//!   Prometheus one build on).
//! - `governor_check_key`: `governor::RateLimiter::dashmap(quota).check_key(&id)` with a
//!   quota that never refuses.
//!
//! Every structure is filled in admission order and queried in a fixed shuffled order
//! (`monetize_benches::query_order`), so stored keys and per-customer state are reached at
//! random while the query strings stream. Two threads start at opposite ends of the
//! shuffled list; figures are wall time per operation per thread.
//!
//! Groups: `resolve_record` (100,000 customers, 1 and 2 threads, the figures the targets
//! are about) and `resolve_record_hot` (1,000 customers, 1 thread: the compute cost
//! without cache misses).

use std::collections::HashMap;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dashmap::DashMap;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use monetize_benches::{engine_with_customers, query_order, timed_threads};
use monetize_core::{Engine, MeterIndex};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::{KeyValue, StringValue, Value};
use opentelemetry_sdk::metrics::{Instrument, ManualReader, SdkMeterProvider, Stream};

const CUSTOMERS: usize = 100_000;
const HOT_CUSTOMERS: usize = 1_000;

/// A `metrics` recorder that keeps counters in memory: `metrics-util`'s registry with
/// atomic storage, nothing else (no exporter, no description bookkeeping).
struct AtomicRecorder {
    registry: Registry<Key, AtomicStorage>,
}

impl Recorder for AtomicRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

/// Takes `n` ids from `ids`, starting at this thread's offset and wrapping around.
fn cycle<T>(ids: &[T], threads: usize, t: usize, n: u64, mut f: impl FnMut(&T)) {
    let mut i = t * ids.len() / threads;
    for _ in 0..n {
        f(black_box(&ids[i]));
        i += 1;
        if i == ids.len() {
            i = 0;
        }
    }
}

/// The engine and every peer, holding the same customers, with the query order.
struct Setup {
    engine: Engine,
    idx: MeterIndex,
    /// Ids in query order (shuffled, laid out one after the other).
    query: Vec<String>,
    mutex_map: Mutex<HashMap<String, u64>>,
    dash_map: DashMap<String, AtomicU64>,
    otel: opentelemetry::metrics::Counter<u64>,
    /// One attribute set per query id, in query order.
    otel_attrs: Vec<[KeyValue; 1]>,
    _provider: SdkMeterProvider,
    /// Query ids as `Arc<str>` for the `metrics` label, in query order.
    metric_ids: Vec<Arc<str>>,
    limiter: governor::DefaultKeyedRateLimiter<String>,
}

impl Setup {
    /// `customers` customers, admitted (engine) and inserted or first counted (peers) in
    /// admission order, so their stored keys are reached at random by the query order.
    fn new(customers: usize) -> Setup {
        let (engine, ids) = engine_with_customers(customers);
        let idx = engine.meter_index("api_calls").expect("api_calls");
        for id in &ids {
            engine.record_by_id(id, "api_calls", 1).expect("record");
        }
        let mutex_map = Mutex::new(ids.iter().map(|id| (id.clone(), 0)).collect());
        let dash_map = ids
            .iter()
            .map(|id| (id.clone(), AtomicU64::new(0)))
            .collect();

        let limit = 2 * customers;
        let provider = SdkMeterProvider::builder()
            .with_reader(ManualReader::builder().build())
            .with_view(move |i: &Instrument| {
                (i.name() == "api_calls")
                    .then(|| Stream::builder().with_cardinality_limit(limit).build().ok())
                    .flatten()
            })
            .build();
        let otel = provider.meter("bench").u64_counter("api_calls").build();
        let attr = |id: &str| {
            let v = Value::String(StringValue::from(Arc::<str>::from(id)));
            [KeyValue::new("customer", v)]
        };
        for id in &ids {
            otel.add(1, &attr(id));
        }
        for id in &ids {
            let id: Arc<str> = Arc::from(id.as_str());
            metrics::counter!("api_calls", "customer" => id).increment(1);
        }
        let limiter = governor::RateLimiter::dashmap(governor::Quota::per_second(NonZeroU32::MAX));
        for id in &ids {
            if limiter.check_key(id).is_err() {
                panic!("governor refused with a quota of u32::MAX per second");
            }
        }

        let query = query_order(&ids, 0x5eed);
        let otel_attrs = query.iter().map(|id| attr(id)).collect();
        let metric_ids = query.iter().map(|id| Arc::from(id.as_str())).collect();
        Setup {
            engine,
            idx,
            query,
            mutex_map,
            dash_map,
            otel,
            otel_attrs,
            _provider: provider,
            metric_ids,
            limiter,
        }
    }
}

fn run_group(c: &mut Criterion, name: &str, s: &Setup, thread_counts: &[usize]) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    let q = &s.query;
    for &threads in thread_counts {
        let p = format!("{threads}t");
        g.bench_function(BenchmarkId::new("engine_record_by_id", &p), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, |t, n| {
                    cycle(q, threads, t, n, |id| {
                        let _ = s.engine.record_by_id(id, "api_calls", 1);
                    })
                })
            })
        });
        g.bench_function(BenchmarkId::new("engine_resolve_record", &p), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, |t, n| {
                    cycle(q, threads, t, n, |id| {
                        if let Ok(h) = s.engine.resolve(id) {
                            s.engine.record(&h, s.idx, 1);
                        }
                    })
                })
            })
        });
        g.bench_function(BenchmarkId::new("mutex_hashmap", &p), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, |t, n| {
                    cycle(q, threads, t, n, |id| {
                        let mut m = s.mutex_map.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(v) = m.get_mut(id.as_str()) {
                            *v += 1;
                        }
                    })
                })
            })
        });
        g.bench_function(BenchmarkId::new("dashmap_std", &p), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, |t, n| {
                    cycle(q, threads, t, n, |id| {
                        if let Some(v) = s.dash_map.get(id.as_str()) {
                            v.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
            })
        });
        g.bench_function(BenchmarkId::new("otel_counter", &p), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, |t, n| {
                    cycle(&s.otel_attrs, threads, t, n, |a| s.otel.add(1, a))
                })
            })
        });
        g.bench_function(BenchmarkId::new("metrics_counter", &p), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, |t, n| {
                    cycle(&s.metric_ids, threads, t, n, |id| {
                        metrics::counter!("api_calls", "customer" => id.clone()).increment(1)
                    })
                })
            })
        });
        g.bench_function(BenchmarkId::new("governor_check_key", &p), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, |t, n| {
                    cycle(q, threads, t, n, |id| {
                        let _ = black_box(s.limiter.check_key(id));
                    })
                })
            })
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let recorder = AtomicRecorder {
        registry: Registry::atomic(),
    };
    if metrics::set_global_recorder(recorder).is_err() {
        panic!("a global metrics recorder was already installed");
    }
    // The figure the targets are about: 100,000 customers, one and two threads.
    let setup = Setup::new(CUSTOMERS);
    run_group(c, "resolve_record", &setup, &[1, 2]);
    drop(setup);
    // The same with a hot set of 1,000 customers (all in L1/L2 cache): the compute cost
    // without the cache misses of a large customer set.
    let hot = Setup::new(HOT_CUSTOMERS);
    run_group(c, "resolve_record_hot", &hot, &[1]);
}

criterion_group!(benches, bench);
criterion_main!(benches);
