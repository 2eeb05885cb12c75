//! Draining a backlog after an outage through each provider client, against a local mock
//! that enforces a rate limit the way the provider does (429 past it): drain time against
//! the ideal (records / allowed rate, in calls or events) and HTTP calls against the
//! fewest possible (ceil(records / records per call)).
//!
//! The clients are driven the way the reporter drives them (batches of `max_batch`, one
//! after another, throttles waited out), without the spool, so the figure is the client's
//! and its rate limiter's. Documented limits that would make one drain take minutes are
//! scaled up (mock and client alike); the scale is in each benchmark's name.
//!
//! `cargo bench -p monetize-benches --bench provider_drain`

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use monetize_core::{
    BillingProvider, CustomerId, MeterId, ProviderError, RecordOutcome, UsageRecord,
};
use monetize_providers::chargebee::ChargebeeProvider;
use monetize_providers::http::HttpSettings;
use monetize_providers::recurly::RecurlyProvider;
use monetize_providers::stripe::{StripeApi, StripeProvider};
use monetize_providers::{Mapping, MeterTarget};
use secrecy::SecretString;

/// The mock's books: its limiter (units per minute, burst), calls and refusals.
struct Mock {
    limiter: Mutex<Arc<DefaultDirectRateLimiter>>,
    per_minute: u32,
    burst: u32,
    calls: AtomicU64,
    throttled: AtomicU64,
}

impl Mock {
    fn reset(&self) {
        *self.limiter.lock().unwrap() = Arc::new(limiter(self.per_minute, self.burst));
        self.calls.store(0, Ordering::SeqCst);
        self.throttled.store(0, Ordering::SeqCst);
    }

    /// Takes `units`; `false`: over the limit.
    fn admit(&self, units: u32) -> bool {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let limiter = self.limiter.lock().unwrap().clone();
        let ok = matches!(
            limiter.check_n(NonZeroU32::new(units.max(1)).unwrap()),
            Ok(Ok(()))
        );
        if !ok {
            self.throttled.fetch_add(1, Ordering::SeqCst);
        }
        ok
    }
}

/// The 429 past the limit.
fn throttled() -> axum::response::Response {
    let body = r#"{"error":{"code":"rate_limit","message":"slow down"}}"#;
    (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], body).into_response()
}

fn limiter(per_minute: u32, burst: u32) -> DefaultDirectRateLimiter {
    let quota = Quota::with_period(Duration::from_secs(60) / per_minute)
        .unwrap()
        .allow_burst(NonZeroU32::new(burst).unwrap());
    RateLimiter::direct(quota)
}

fn json(status: StatusCode, body: &'static str) -> axum::response::Response {
    (status, [("content-type", "application/json")], body).into_response()
}

async fn one(State(m): State<Arc<Mock>>) -> axum::response::Response {
    if m.admit(1) {
        json(StatusCode::OK, "{}")
    } else {
        throttled()
    }
}

async fn session(State(_): State<Arc<Mock>>) -> axum::response::Response {
    json(
        StatusCode::OK,
        r#"{"id":"mes_1","object":"v2.billing.meter_event_session","authentication_token":"tok","expires_at":"2999-01-01T00:00:00Z","created":"2026-01-01T00:00:00Z","livemode":false}"#,
    )
}

async fn batch(State(m): State<Arc<Mock>>, body: axum::body::Bytes) -> axum::response::Response {
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let n = v["events"].as_array().map_or(1, |e| e.len()) as u32;
    if m.admit(n) {
        json(StatusCode::OK, r#"{"batch_id":"b","failed_events":[]}"#)
    } else {
        throttled()
    }
}

async fn serve(per_minute: u32, burst: u32) -> (String, Arc<Mock>) {
    let mock = Arc::new(Mock {
        limiter: Mutex::new(Arc::new(limiter(per_minute, burst))),
        per_minute,
        burst,
        calls: AtomicU64::new(0),
        throttled: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v2/billing/meter_events", post(one))
        .route("/v2/billing/meter_event_session", post(session))
        .route("/stream/v2/billing/meter_event_stream", post(one))
        .route("/subscriptions/{sub}/add_ons/{add_on}/usage", post(one))
        .route("/ingest/batch/usage_events", post(batch))
        .with_state(Arc::clone(&mock));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, mock)
}

fn backlog(n: usize, provider: &str) -> Vec<UsageRecord> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let start = (now - 4 * 3600) / 60 * 60;
    (0..n)
        .map(|i| {
            UsageRecord::new(
                "bench",
                provider,
                MeterId::new("calls").unwrap(),
                CustomerId::new(format!("c{}", i % 1000)).unwrap(),
                start + (i / 1000) as u64 * 60,
                60,
                0,
                1 + (i % 7) as u64,
            )
        })
        .collect()
}

/// Sends the backlog as the reporter would.
async fn drain(provider: &dyn BillingProvider, records: &[UsageRecord]) {
    for chunk in records.chunks(provider.max_batch()) {
        let mut pending = chunk.to_vec();
        while !pending.is_empty() {
            match provider.report(&pending).await {
                Ok(out) => {
                    let mut left = Vec::new();
                    for (r, o) in pending.into_iter().zip(out) {
                        match o {
                            RecordOutcome::Accepted => {}
                            RecordOutcome::Retry { .. } => left.push(r),
                            o => panic!("refused: {o:?}"),
                        }
                    }
                    pending = left;
                }
                Err(ProviderError::Throttled { retry_after, .. }) => {
                    tokio::time::sleep(retry_after).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

fn mapping() -> Arc<Mapping> {
    Arc::new(
        Mapping::new()
            .with_same_customer_ids(true)
            .with_meter(MeterId::new("calls").unwrap(), MeterTarget::new("calls")),
    )
}

struct Case {
    name: &'static str,
    records: usize,
    /// Units (calls, or events for Chargebee) per minute, enforced by mock and client.
    per_minute: u32,
    /// Units one record costs per call: calls = records / per_call.
    per_call: usize,
    /// Whether the limit counts events (Chargebee) rather than calls.
    counts_events: bool,
    build: fn(&str, u32) -> Arc<dyn BillingProvider>,
}

fn settings(per_minute: u32, burst: u32) -> HttpSettings {
    HttpSettings::default().with_rate_limit(per_minute, burst)
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "stripe_stream_100k_documented_10000_calls_per_s",
            records: 100_000,
            per_minute: 600_000,
            per_call: 100,
            counts_events: false,
            build: |url, pm| {
                Arc::new(
                    StripeProvider::builder(SecretString::from("sk"))
                        .api(StripeApi::MeterEventStream)
                        .base_url(url)
                        .stream_url(format!("{url}/stream"))
                        .mapper(mapping())
                        .http(settings(pm, pm / 60))
                        .build()
                        .unwrap(),
                )
            },
        },
        Case {
            name: "chargebee_events_100k_documented_10000_per_min_x120",
            records: 100_000,
            per_minute: 1_200_000,
            per_call: 500,
            counts_events: true,
            build: |url, pm| {
                Arc::new(
                    ChargebeeProvider::builder(SecretString::from("cb"), "x")
                        .ingest_url(format!("{url}/ingest"))
                        .mapper(mapping())
                        .http(settings(pm, 500))
                        .build()
                        .unwrap(),
                )
            },
        },
        Case {
            name: "stripe_v2_5k_documented_1000_calls_per_s",
            records: 5_000,
            per_minute: 60_000,
            per_call: 1,
            counts_events: false,
            build: |url, pm| {
                Arc::new(
                    StripeProvider::builder(SecretString::from("sk"))
                        .base_url(url)
                        .mapper(mapping())
                        .http(settings(pm, pm / 60))
                        .build()
                        .unwrap(),
                )
            },
        },
        Case {
            name: "recurly_10k_400_per_min_x300",
            records: 10_000,
            per_minute: 120_000,
            per_call: 1,
            counts_events: false,
            build: |url, pm| {
                Arc::new(
                    RecurlyProvider::builder(SecretString::from("rk"))
                        .base_url(url)
                        .mapper(Arc::new(
                            Mapping::new().with_same_customer_ids(true).with_meter(
                                MeterId::new("calls").unwrap(),
                                MeterTarget::new("code-calls"),
                            ),
                        ))
                        .lanes(8)
                        .http(settings(pm, pm / 60))
                        .build()
                        .unwrap(),
                )
            },
        },
    ]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("provider_drain");
    group.sample_size(10);
    // one drain per sample (the default linear mode would run 1 + 2 + ... + 10 drains)
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(100));
    for case in cases() {
        // The mock allows one second's worth of calls at once, or two batches of events
        // (the client takes one batch at a time: a little slack for arrival jitter).
        let burst = if case.counts_events {
            1_000
        } else {
            (case.per_minute / 60).max(1)
        };
        let (url, mock) = rt.block_on(serve(case.per_minute, burst));
        let records = backlog(case.records, "bench");
        let units = if case.counts_events {
            case.records
        } else {
            case.records.div_ceil(case.per_call)
        };
        let ideal = Duration::from_secs_f64(units as f64 * 60.0 / f64::from(case.per_minute));
        let min_calls = case.records.div_ceil(case.per_call) as u64;
        let runs: Arc<Mutex<Vec<(Duration, u64, u64)>>> = Arc::default();
        group.bench_function(case.name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    mock.reset();
                    let provider = (case.build)(&url, case.per_minute);
                    let start = Instant::now();
                    rt.block_on(drain(&*provider, &records));
                    let took = start.elapsed();
                    total += took;
                    runs.lock().unwrap().push((
                        took,
                        mock.calls.load(Ordering::SeqCst),
                        mock.throttled.load(Ordering::SeqCst),
                    ));
                }
                total
            })
        });
        let mut runs = runs.lock().unwrap().clone();
        runs.sort_by_key(|r| r.0);
        let (median, calls, throttled) = runs[runs.len() / 2];
        println!(
            "DRAIN {}: runs {}, median {:.3} s, ideal {:.3} s, ratio {:.3}, HTTP calls {} (minimum {}), 429s {}",
            case.name,
            runs.len(),
            median.as_secs_f64(),
            ideal.as_secs_f64(),
            median.as_secs_f64() / ideal.as_secs_f64(),
            calls,
            min_calls,
            throttled
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
