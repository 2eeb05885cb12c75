//! A billing provider that fails in every way a network provider does — errors, throttles,
//! hangs before and after billing, per-record retries — while usage is recorded from
//! several tasks: every unit is billed exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use monetize_core::Engine;
use monetize_core::ledger::LedgerProvider;
use monetize_core::provider::{BillingProvider, ProviderError, RecordOutcome, UsageRecord};
use monetize_core::report::{ProviderRoute, RedbSpool, Reporter, ReporterOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

const SEED: u64 = 0x0bad_5eed;
const CALL_TIMEOUT: Duration = Duration::from_millis(100);
const RETRY_AFTER: Duration = Duration::from_millis(50);
const METERS: [&str; 2] = ["meter_a", "meter_b"];
const CUSTOMERS: usize = 5;
const RECORDERS: u64 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fault {
    /// 503: nothing billed.
    Retryable,
    /// 429 with retry-after: nothing billed.
    Throttled,
    /// Hangs past the call timeout before billing: nothing billed.
    HangBefore,
    /// Bills, then hangs past the call timeout: billed, but the reporter cannot know.
    HangAfter,
    /// Bills some records of the batch and answers `Retry` for the others.
    PartialRetry,
}

const FAULTS: [Fault; 5] = [
    Fault::Retryable,
    Fault::Throttled,
    Fault::HangBefore,
    Fault::HangAfter,
    Fault::PartialRetry,
];

/// The ledger behind a faulty network.
struct Faulty {
    inner: LedgerProvider,
    rng: Mutex<StdRng>,
    faults_on: AtomicBool,
    injected: Mutex<HashMap<Fault, u64>>,
    /// Quantity first seen per idempotency key, and how often a key came back with
    /// another one.
    seen: Mutex<HashMap<String, u64>>,
    key_reused: AtomicU64,
    /// When the last throttle was answered, and calls that came too early after one.
    throttled_at: Mutex<Option<Instant>>,
    too_early: AtomicU64,
    calls: AtomicU64,
}

impl Faulty {
    fn new() -> Self {
        Self {
            inner: LedgerProvider::new().with_max_batch(4),
            rng: Mutex::new(StdRng::seed_from_u64(SEED)),
            faults_on: AtomicBool::new(true),
            injected: Mutex::default(),
            seen: Mutex::default(),
            key_reused: AtomicU64::new(0),
            throttled_at: Mutex::default(),
            too_early: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    fn draw(&self) -> Option<Fault> {
        if !self.faults_on.load(Ordering::SeqCst) {
            return None;
        }
        let roll: f64 = self.rng.lock().unwrap().random();
        let fault = match roll {
            r if r < 0.30 => Fault::Retryable,
            r if r < 0.38 => Fault::Throttled,
            r if r < 0.44 => Fault::HangBefore,
            r if r < 0.52 => Fault::HangAfter,
            r if r < 0.62 => Fault::PartialRetry,
            _ => return None,
        };
        *self.injected.lock().unwrap().entry(fault).or_default() += 1;
        Some(fault)
    }

    fn covered(&self) -> bool {
        let injected = self.injected.lock().unwrap();
        FAULTS
            .iter()
            .all(|f| injected.get(f).copied().unwrap_or(0) > 0)
    }
}

#[async_trait]
impl BillingProvider for Faulty {
    fn name(&self) -> &str {
        "ledger"
    }

    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }

    async fn report(&self, records: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let throttled_at = self.throttled_at.lock().unwrap().take();
        if throttled_at.is_some_and(|t| Instant::now() < t + RETRY_AFTER) {
            self.too_early.fetch_add(1, Ordering::SeqCst);
        }
        {
            let mut seen = self.seen.lock().unwrap();
            for r in records {
                let first = *seen.entry(r.idempotency_key.clone()).or_insert(r.quantity);
                if first != r.quantity {
                    self.key_reused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let hang = CALL_TIMEOUT * 3;
        match self.draw() {
            None => self.inner.report(records).await,
            Some(Fault::Retryable) => Err(ProviderError::Retryable {
                message: "503 service unavailable".into(),
            }),
            Some(Fault::Throttled) => {
                *self.throttled_at.lock().unwrap() = Some(Instant::now());
                Err(ProviderError::Throttled {
                    retry_after: RETRY_AFTER,
                    message: "429 too many requests".into(),
                })
            }
            Some(Fault::HangBefore) => {
                tokio::time::sleep(hang).await;
                self.inner.report(records).await
            }
            Some(Fault::HangAfter) => {
                let out = self.inner.report(records).await;
                tokio::time::sleep(hang).await;
                out
            }
            Some(Fault::PartialRetry) => {
                let retry: Vec<bool> = {
                    let mut rng = self.rng.lock().unwrap();
                    records.iter().map(|_| rng.random_bool(0.5)).collect()
                };
                let mut out = Vec::with_capacity(records.len());
                for (r, retry) in records.iter().zip(retry) {
                    if retry {
                        out.push(RecordOutcome::Retry {
                            reason: "lock timeout".into(),
                        });
                    } else {
                        out.extend(self.inner.report(std::slice::from_ref(r)).await?);
                    }
                }
                Ok(out)
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unit_is_billed_once_through_provider_faults() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::for_tests(&METERS);
    let faulty = Arc::new(Faulty::new());
    let spool = Arc::new(RedbSpool::open(dir.path().join("spool.redb")).unwrap());
    let options = ReporterOptions::default()
        .with_checkpoint_interval(Duration::from_millis(20))
        .with_window(Duration::from_secs(1))
        .with_call_timeout(CALL_TIMEOUT)
        .with_min_backoff(Duration::from_millis(10))
        .with_max_backoff(Duration::from_millis(80))
        .with_max_retries(3)
        .with_shutdown_timeout(Duration::from_secs(30));
    let route = ProviderRoute::new(faulty.clone()).with_report_interval(Duration::from_millis(50));
    let reporter = Reporter::start(engine.clone(), spool.clone(), vec![route], options).unwrap();

    // Several tasks record a known total until every kind of fault has happened.
    let stop = Arc::new(AtomicBool::new(false));
    let recorders: Vec<_> = (0..RECORDERS)
        .map(|t| {
            let (engine, stop) = (engine.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(SEED + t);
                let mut expected: HashMap<(String, String), u64> = HashMap::new();
                while !stop.load(Ordering::SeqCst) {
                    let customer = format!("c{}", rng.random_range(0..CUSTOMERS));
                    let meter = METERS[rng.random_range(0..METERS.len())];
                    let value = rng.random_range(1..=10u64);
                    engine.record_by_id(&customer, meter, value).unwrap();
                    *expected.entry((meter.to_owned(), customer)).or_default() += value;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                expected
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Several windows delivered under faults, through many calls, and every fault seen.
    while !(faulty.covered()
        && faulty.inner.len() >= 3 * CUSTOMERS * METERS.len()
        && faulty.calls.load(Ordering::SeqCst) >= 40)
    {
        assert!(
            Instant::now() < deadline,
            "faults not all exercised: {:?}",
            faulty.injected.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut expected: HashMap<(String, String), u64> = HashMap::new();
    for r in recorders {
        for (k, v) in r.await.unwrap() {
            *expected.entry(k).or_default() += v;
        }
    }

    // The network heals; a graceful shutdown sends the rest.
    faulty.faults_on.store(false, Ordering::SeqCst);
    let summary = reporter.shutdown().await.unwrap();
    println!(
        "calls {}, faults {:?}, summary {summary:?}",
        faulty.calls.load(Ordering::SeqCst),
        faulty.injected.lock().unwrap()
    );

    let ledger = &faulty.inner;
    for ((meter, customer), want) in &expected {
        assert_eq!(
            ledger.total(meter, customer),
            *want,
            "billed total of {meter} for {customer}"
        );
    }
    assert_eq!(ledger.total_all(), expected.values().sum::<u64>());
    assert_eq!(
        ledger.conflicts(),
        0,
        "no key came back with another quantity"
    );
    assert_eq!(faulty.key_reused.load(Ordering::SeqCst), 0);
    assert_eq!(
        faulty.too_early.load(Ordering::SeqCst),
        0,
        "no call came before a throttle's retry-after"
    );

    let records = ledger.records();
    let keys: HashSet<_> = records.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), records.len(), "no idempotency key stored twice");
    let slots: HashSet<_> = records
        .iter()
        .map(|r| (r.meter.clone(), r.customer.clone(), r.window_start, r.part))
        .collect();
    assert_eq!(slots.len(), records.len(), "one record per window part");
    // Unknown outcomes were resent with the same key and recognised.
    assert!(ledger.deliveries().values().any(|&n| n > 1));
    assert!(summary.stats.call_failures > 0);
    assert_eq!(summary.pending_left, 0);
    assert_eq!(summary.dead_letters, 0);
    assert_eq!(summary.records_sent as usize, records.len());
}
