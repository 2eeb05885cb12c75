//! The reporter end to end: engine → spool → provider.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use monetize_core::ledger::LedgerProvider;
use monetize_core::meter::Aggregation;
use monetize_core::provider::{BillingProvider, ProviderError, RecordOutcome, UsageRecord};
use monetize_core::report::{
    Checkpoint, MemorySpool, ProviderRoute, RedbSpool, Reporter, ReporterError, ReporterOptions,
    Spool, SpoolError,
};
use monetize_core::{Engine, EventKind, MeterId};
use monetize_tests::spool::MergeHook;
use tokio::time::Instant;

/// The longest window accepted (a UTC day): it does not close during a test (unless the
/// test runs across midnight UTC), so only shutdown or flush sends it.
const NEVER_CLOSES: Duration = Duration::from_secs(86_400);

fn fast() -> ReporterOptions {
    ReporterOptions::default()
        .with_checkpoint_interval(Duration::from_millis(10))
        .with_window(NEVER_CLOSES)
        .with_call_timeout(Duration::from_millis(500))
        .with_min_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(20))
        .with_max_retries(2)
        .with_shutdown_timeout(Duration::from_secs(10))
}

fn route(p: Arc<dyn BillingProvider>) -> ProviderRoute {
    ProviderRoute::new(p).with_report_interval(Duration::from_millis(10))
}

/// Polls `cond` until it holds; fails after 20 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pending_total(spool: &dyn Spool, meter: &str, customer: &str) -> u64 {
    spool
        .pending_total(None, meter, customer)
        .expect("pending total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_everything_including_the_open_window() {
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let ledger = Arc::new(LedgerProvider::new());
    let spool = Arc::new(MemorySpool::new());
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(ledger.clone())],
        fast(),
    )
    .unwrap();
    for i in 0..100u64 {
        engine.record_by_id("c1", "meter_a", i).unwrap();
        engine.record_by_id("c2", "meter_b", 2).unwrap();
    }
    // Checkpoints move it to the spool, but the window stays open: nothing is sent.
    eventually("the checkpoint", || {
        pending_total(&*spool, "meter_a", "c1") == 4950
            && pending_total(&*spool, "meter_b", "c2") == 200
    })
    .await;
    assert!(
        ledger.is_empty(),
        "an open window is not reported before shutdown"
    );
    engine.record_by_id("c1", "meter_b", 7).unwrap();

    let summary = reporter.shutdown().await.unwrap();
    assert_eq!(ledger.total("meter_a", "c1"), 4950);
    assert_eq!(ledger.total("meter_b", "c2"), 200);
    assert_eq!(
        ledger.total("meter_b", "c1"),
        7,
        "recorded just before shutdown"
    );
    assert_eq!(summary.pending_left, 0);
    assert_eq!(summary.records_sent, 3);
    assert_eq!(summary.dead_letters, 0);
    assert_eq!(spool.acknowledged(None).unwrap().len(), 3);
}

/// Accepts through a ledger, except customer `bad` (rejected for good) and, when
/// `permanent` is set, whole batches.
struct Picky {
    ledger: LedgerProvider,
    permanent: bool,
}

#[async_trait]
impl BillingProvider for Picky {
    fn name(&self) -> &str {
        "picky"
    }

    async fn report(&self, records: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
        if self.permanent {
            return Err(ProviderError::Permanent {
                message: "invalid api key".into(),
            });
        }
        let mut out = Vec::new();
        for r in records {
            if r.customer.as_str() == "bad" {
                out.push(RecordOutcome::Rejected {
                    reason: "no such customer".into(),
                });
            } else {
                out.extend(self.ledger.report(std::slice::from_ref(r)).await?);
            }
        }
        Ok(out)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_records_go_to_the_dead_letter_list_and_raise_an_event() {
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let picky = Arc::new(Picky {
        ledger: LedgerProvider::new(),
        permanent: false,
    });
    let spool = Arc::new(MemorySpool::new());
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(picky.clone())],
        fast(),
    )
    .unwrap();
    engine.record_by_id("good", "meter_a", 5).unwrap();
    engine.record_by_id("bad", "meter_a", 3).unwrap();
    let summary = reporter.shutdown().await.unwrap();

    assert_eq!(picky.ledger.total("meter_a", "good"), 5);
    assert_eq!(picky.ledger.total("meter_a", "bad"), 0);
    assert_eq!((summary.records_sent, summary.dead_letters), (1, 1));
    assert_eq!(summary.pending_left, 0);
    let dead = spool.dead_letters(Some("picky")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "no such customer");
    assert_eq!(dead[0].record.customer.as_str(), "bad");
    assert_eq!(dead[0].record.quantity, 3);
    let events = engine.drain_events(100);
    let raised: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::DeadLetter {
                provider,
                idempotency_key,
                reason,
            } => Some((
                e.customer.as_ref().map(|c| c.to_string()),
                provider.clone(),
                idempotency_key.clone(),
                reason.clone(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        raised,
        vec![(
            Some("bad".to_owned()),
            "picky".to_owned(),
            dead[0].record.idempotency_key.clone(),
            "no such customer".to_owned()
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_provider_error_dead_letters_the_batch() {
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let picky = Arc::new(Picky {
        ledger: LedgerProvider::new(),
        permanent: true,
    });
    let spool = Arc::new(MemorySpool::new());
    let reporter =
        Reporter::start(engine.clone(), spool.clone(), vec![route(picky)], fast()).unwrap();
    engine.record_by_id("c1", "meter_a", 5).unwrap();
    engine.record_by_id("c2", "meter_b", 6).unwrap();
    let summary = reporter.shutdown().await.unwrap();
    assert_eq!((summary.records_sent, summary.dead_letters), (0, 2));
    let dead = spool.dead_letters(None).unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d.reason == "invalid api key"));
    let events = engine.drain_events(100);
    let n = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::DeadLetter { .. }))
        .count();
    assert_eq!(n, 2);
}

/// Named `ledger`, fails every call, and remembers what it was sent.
#[derive(Default)]
struct Down {
    seen: std::sync::Mutex<Vec<UsageRecord>>,
}

#[async_trait]
impl BillingProvider for Down {
    fn name(&self) -> &str {
        "ledger"
    }

    async fn report(&self, records: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
        self.seen.lock().unwrap().extend_from_slice(records);
        Err(ProviderError::Retryable {
            message: "503".into(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_entries_keep_key_and_quantity_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.redb");
    let opts = fast().with_shutdown_timeout(Duration::from_millis(300));

    // First life: the provider is down; a flush seals the entry and fails.
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let down = Arc::new(Down::default());
    let spool = Arc::new(RedbSpool::open(&path).unwrap());
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(down.clone())],
        opts.clone(),
    )
    .unwrap();
    engine.record_by_id("c1", "meter_a", 42).unwrap();
    let flushed = reporter.flush_now().await.unwrap();
    assert_eq!(flushed.pending_left, 1);
    let summary = reporter.shutdown().await.unwrap();
    assert_eq!(
        summary.pending_left, 1,
        "undelivered usage stays in the spool"
    );
    assert_eq!(summary.records_sent, 0);
    let first = down.seen.lock().unwrap()[0].clone();
    assert_eq!(first.quantity, 42);
    assert!(
        down.seen
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.idempotency_key == first.idempotency_key && r.quantity == 42),
        "every attempt carries the same key and quantity"
    );
    // Close the file (the reporter no longer holds it) so it can be reopened.
    drop(spool);

    // Second life on the same file, with a working provider and more usage in the same
    // (sealed) window.
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let spool = Arc::new(RedbSpool::open(&path).unwrap());
    let pending = spool.pending(None).unwrap();
    assert_eq!(pending.len(), 1);
    let sealed = pending[0]
        .sealed
        .clone()
        .expect("sealed before the restart");
    assert_eq!(sealed.idempotency_key, first.idempotency_key);
    assert_eq!(sealed.quantity, 42);

    let ledger = Arc::new(LedgerProvider::new());
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(ledger.clone())],
        opts,
    )
    .unwrap();
    engine.record_by_id("c1", "meter_a", 8).unwrap();
    let summary = reporter.shutdown().await.unwrap();
    assert_eq!(summary.pending_left, 0);
    let records = ledger.records();
    assert_eq!(records.len(), 2, "{records:?}");
    let part0 = records.iter().find(|r| r.part == 0).unwrap();
    let part1 = records.iter().find(|r| r.part == 1).unwrap();
    assert_eq!(part0.idempotency_key, first.idempotency_key);
    assert_eq!(part0.quantity, 42);
    assert!(part0.attempts >= 1, "the record says it was tried before");
    assert_eq!(
        part1.window_start, part0.window_start,
        "same window, next part"
    );
    assert_eq!(part1.quantity, 8);
    assert_ne!(part1.idempotency_key, part0.idempotency_key);
    assert_eq!(ledger.total("meter_a", "c1"), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_usage_for_a_sent_window_goes_to_a_new_part() {
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let ledger = Arc::new(LedgerProvider::new());
    let spool = Arc::new(MemorySpool::new());
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(ledger.clone())],
        fast(),
    )
    .unwrap();
    engine.record_by_id("c1", "meter_a", 5).unwrap();
    let flushed = reporter.flush_now().await.unwrap();
    assert_eq!((flushed.records_sent, flushed.pending_left), (1, 0));
    engine.record_by_id("c1", "meter_a", 3).unwrap();
    reporter.shutdown().await.unwrap();

    let records = ledger.records();
    assert_eq!(records.len(), 2);
    assert_eq!((records[0].part, records[0].quantity), (0, 5));
    assert_eq!((records[1].part, records[1].quantity), (1, 3));
    assert_eq!(records[0].window_start, records[1].window_start);
    assert_ne!(records[0].idempotency_key, records[1].idempotency_key);
    assert_eq!(ledger.conflicts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_merges_keep_the_deltas() {
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let ledger = Arc::new(LedgerProvider::new());
    // The first 5 merges fail, as on a full disk.
    let merges = Arc::new(AtomicUsize::new(0));
    let attempts = merges.clone();
    let spool = Arc::new(MergeHook::new(
        MemorySpool::new(),
        move |inner: &MemorySpool, routes, checkpoints: &[Checkpoint], window_secs| {
            if attempts.fetch_add(1, Ordering::SeqCst) < 5 {
                return Err(SpoolError::Unavailable {
                    reason: "disk full".into(),
                });
            }
            inner.merge_checkpoints(routes, checkpoints, window_secs)
        },
    ));
    engine.record_by_id("c1", "meter_a", 10).unwrap();
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(ledger.clone())],
        fast(),
    )
    .unwrap();
    // Record while merges fail; each failed merge keeps its deltas for the next one.
    let mut recorded = 10;
    while merges.load(Ordering::SeqCst) < 5 {
        engine.record_by_id("c1", "meter_a", 1).unwrap();
        recorded += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eventually("a merge to succeed", || {
        pending_total(spool.inner(), "meter_a", "c1") == recorded
    })
    .await;
    assert_eq!(reporter.stats().merge_failures, 5);
    let summary = reporter.shutdown().await.unwrap();
    assert_eq!(ledger.total("meter_a", "c1"), recorded, "no usage dropped");
    assert_eq!(summary.pending_left, 0);
    let keys: HashSet<_> = ledger
        .records()
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys.len(), ledger.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_send_each_provider_its_meters() {
    struct Named(LedgerProvider);
    #[async_trait]
    impl BillingProvider for Named {
        fn name(&self) -> &str {
            "only_b"
        }
        async fn report(
            &self,
            records: &[UsageRecord],
        ) -> Result<Vec<RecordOutcome>, ProviderError> {
            self.0.report(records).await
        }
    }
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let all = Arc::new(LedgerProvider::new());
    let only_b = Arc::new(Named(LedgerProvider::new()));
    let spool = Arc::new(MemorySpool::new());
    let reporter = Reporter::start(
        engine.clone(),
        spool,
        vec![
            route(all.clone()),
            route(only_b.clone())
                .with_meters(vec![monetize_core::MeterId::new("meter_b").unwrap()]),
        ],
        fast(),
    )
    .unwrap();
    engine.record_by_id("c1", "meter_a", 4).unwrap();
    engine.record_by_id("c1", "meter_b", 6).unwrap();
    reporter.shutdown().await.unwrap();
    assert_eq!(all.total_all(), 10);
    assert_eq!(only_b.0.total_all(), 6);
    assert_eq!(only_b.0.total("meter_b", "c1"), 6);
    // each provider's key is its own
    let a: HashSet<_> = all
        .records()
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect();
    assert!(
        only_b
            .0
            .records()
            .iter()
            .all(|r| !a.contains(&r.idempotency_key))
    );
}

/// Issue 10 item 2: a merge that committed and then reported an error (a lost reply, a
/// failed task) is not merged again by the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_that_commits_then_fails_is_not_added_twice() {
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let ledger = Arc::new(LedgerProvider::new());
    let merges = Arc::new(AtomicUsize::new(0));
    let attempts = merges.clone();
    let spool = Arc::new(MergeHook::new(
        MemorySpool::new(),
        move |inner: &MemorySpool, routes, checkpoints: &[Checkpoint], window_secs| {
            let n = inner.merge_checkpoints(routes, checkpoints, window_secs)?;
            if attempts.fetch_add(1, Ordering::SeqCst) < 3 {
                return Err(SpoolError::Unavailable {
                    reason: "committed, then the reply was lost".into(),
                });
            }
            Ok(n)
        },
    ));
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(ledger.clone())],
        fast(),
    )
    .unwrap();
    let mut recorded = 0;
    while merges.load(Ordering::SeqCst) < 4 {
        engine.record_by_id("c1", "meter_a", 1).unwrap();
        recorded += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let summary = reporter.shutdown().await.unwrap();
    assert_eq!(
        ledger.total("meter_a", "c1"),
        recorded,
        "each unit billed once"
    );
    assert_eq!(summary.pending_left, 0);
    assert!(summary.stats.checkpoints_already_merged >= 1);
}

/// Issue 10 item 6: deltas keep the window of their checkpoint's swap time, however late
/// the merge that stores them succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_merges_keep_the_window_of_their_swap() {
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let ledger = Arc::new(LedgerProvider::new());
    let first_try = Arc::new(std::sync::Mutex::new(None::<u64>));
    let seen = first_try.clone();
    let spool = Arc::new(MergeHook::new(
        MemorySpool::new(),
        move |inner: &MemorySpool, routes, checkpoints: &[Checkpoint], window_secs| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let mut first = seen.lock().unwrap();
            if let Some(c) = checkpoints.first() {
                let t = *first.get_or_insert(c.taken_unix);
                // fail until the clock is two windows (of 1 s) past the first attempt
                if now < t + 2 {
                    return Err(SpoolError::Unavailable {
                        reason: "disk full".into(),
                    });
                }
            }
            inner.merge_checkpoints(routes, checkpoints, window_secs)
        },
    ));
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(ledger.clone())],
        fast().with_window(Duration::from_secs(1)),
    )
    .unwrap();
    engine.record_by_id("c1", "meter_a", 9).unwrap();
    eventually("the delayed merge", || {
        spool.inner().pending(None).unwrap().len() + ledger.len() > 0
    })
    .await;
    reporter.shutdown().await.unwrap();
    let stamped = first_try.lock().unwrap().expect("a merge was tried");
    let records = ledger.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].quantity, 9);
    assert_eq!(
        records[0].window_start, stamped,
        "dated by the swap, not the successful merge"
    );
}

/// Issue 10 item 3: two routes with one provider name would add every delta twice into
/// one spool entry: refused at start-up.
#[tokio::test]
async fn two_routes_with_one_name_are_refused() {
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let err = Reporter::start(
        engine,
        Arc::new(MemorySpool::new()),
        vec![
            route(Arc::new(LedgerProvider::new())),
            route(Arc::new(LedgerProvider::new())),
        ],
        fast(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ReporterError::DuplicateProvider { name } if name == "ledger"),
        "{err}"
    );
}

/// A provider that refuses every meter at start-up.
struct RefusesMeters;

#[async_trait]
impl BillingProvider for RefusesMeters {
    fn name(&self) -> &str {
        "strict"
    }

    fn check_meter(&self, meter: &MeterId, aggregation: Aggregation) -> Result<(), String> {
        if meter.as_str() == "meter_b" {
            return Err(format!("cannot bill a {} meter", aggregation.as_str()));
        }
        Ok(())
    }

    async fn report(&self, _: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn a_meter_refused_by_its_provider_fails_the_start() {
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let err = Reporter::start(
        engine.clone(),
        Arc::new(MemorySpool::new()),
        vec![route(Arc::new(RefusesMeters))],
        fast(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ReporterError::MeterRefused { provider, meter, .. }
            if provider == "strict" && meter.as_str() == "meter_b"),
        "{err}"
    );
    // not routed there: accepted
    let ok = Reporter::start(
        engine,
        Arc::new(MemorySpool::new()),
        vec![route(Arc::new(RefusesMeters)).with_meters(vec![MeterId::new("meter_a").unwrap()])],
        fast(),
    );
    assert!(ok.is_ok());
    // and a window the config file would refuse is refused here too
    let err = Reporter::start(
        Engine::for_tests(&["meter_a"]),
        Arc::new(MemorySpool::new()),
        Vec::new(),
        fast().with_window(Duration::from_millis(1_500)),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ReporterError::InvalidOptions {
                field: "window",
                ..
            }
        ),
        "{err}"
    );
}

/// Times out every call (the outcome is unknown), remembers a short horizon.
#[derive(Default)]
struct Forgetful {
    calls: AtomicUsize,
}

#[async_trait]
impl BillingProvider for Forgetful {
    fn name(&self) -> &str {
        "forgetful"
    }

    fn dedup_horizon(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn report(&self, _: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(ProviderError::Retryable {
            message: "gateway timeout".into(),
        })
    }
}

/// Issue 10 item 4: past the provider's deduplication horizon, a record whose outcome is
/// unknown is never resent: it moves to the reconciliation list with an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_past_the_dedup_horizon_goes_to_reconciliation() {
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let provider = Arc::new(Forgetful::default());
    let spool = Arc::new(MemorySpool::new());
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(provider.clone())],
        fast(),
    )
    .unwrap();
    engine.record_by_id("c1", "meter_a", 6).unwrap();
    reporter.flush_now().await.unwrap();
    eventually("the reconciliation", || {
        !spool.to_reconcile(None).unwrap().is_empty()
    })
    .await;
    let calls = provider.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        calls,
        "never resent once past the horizon"
    );
    let summary = reporter.shutdown().await.unwrap();
    assert_eq!(summary.pending_left, 0);
    assert_eq!(summary.stats.to_reconcile, 1);
    let listed = spool.to_reconcile(Some("forgetful")).unwrap();
    assert_eq!(listed[0].record.quantity, 6);
    let events = engine.drain_events(100);
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        EventKind::NeedsReconciliation { provider, quantity: 6, .. } if provider == "forgetful"
    )));
}

/// Refuses the credentials until `fixed` is set, then bills through a ledger.
struct Rotating {
    ledger: LedgerProvider,
    fixed: std::sync::atomic::AtomicBool,
    refusals: AtomicUsize,
}

#[async_trait]
impl BillingProvider for Rotating {
    fn name(&self) -> &str {
        "rotating"
    }

    async fn report(&self, records: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
        if !self.fixed.load(Ordering::SeqCst) {
            self.refusals.fetch_add(1, Ordering::SeqCst);
            return Err(ProviderError::Unauthorized {
                message: "401 invalid api key".into(),
            });
        }
        self.ledger.report(records).await
    }
}

/// Issue 10 item 9: a 401 after a key rotation does not dead-letter anything: the records
/// wait, one alert is raised, and they are billed once the key is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_then_a_fixed_key_bills_everything_once() {
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let provider = Arc::new(Rotating {
        ledger: LedgerProvider::new(),
        fixed: std::sync::atomic::AtomicBool::new(false),
        refusals: AtomicUsize::new(0),
    });
    let spool = Arc::new(MemorySpool::new());
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(provider.clone())],
        fast(),
    )
    .unwrap();
    engine.record_by_id("c1", "meter_a", 5).unwrap();
    engine.record_by_id("c2", "meter_b", 7).unwrap();
    reporter.flush_now().await.unwrap();
    eventually("several refusals", || {
        provider.refusals.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert!(spool.dead_letters(None).unwrap().is_empty());
    provider.fixed.store(true, Ordering::SeqCst);
    let summary = reporter.shutdown().await.unwrap();
    assert_eq!(summary.dead_letters, 0);
    assert_eq!(summary.pending_left, 0);
    assert_eq!(provider.ledger.total("meter_a", "c1"), 5);
    assert_eq!(provider.ledger.total("meter_b", "c2"), 7);
    let alerts = engine
        .drain_events(100)
        .into_iter()
        .filter(|e| matches!(&e.kind, EventKind::ProviderUnauthorized { provider, .. } if provider == "rotating"))
        .count();
    assert_eq!(alerts, 1, "one alert per failure streak");
}

/// Issue 14: a provider failing for longer than the threshold raises one
/// `provider_failing` per failure streak, not one per failed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failing_longer_than_the_threshold_raises_one_event() {
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let provider = Arc::new(Rotating {
        ledger: LedgerProvider::new(),
        fixed: std::sync::atomic::AtomicBool::new(false),
        refusals: AtomicUsize::new(0),
    });
    let reporter = Reporter::start(
        engine.clone(),
        Arc::new(MemorySpool::new()),
        vec![route(provider.clone())],
        fast().with_provider_failing_after(Duration::from_millis(100)),
    )
    .unwrap();
    engine.record_by_id("c1", "meter_a", 5).unwrap();
    let mut failing = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline && provider.refusals.load(Ordering::SeqCst) < 20 {
        let _ = reporter.flush_now().await;
        failing.extend(
            engine
                .drain_events(100)
                .into_iter()
                .filter_map(|e| match e.kind {
                    EventKind::ProviderFailing {
                        provider, message, ..
                    } => Some((provider, message)),
                    _ => None,
                }),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(provider.refusals.load(Ordering::SeqCst) >= 20);
    assert_eq!(
        failing,
        [("rotating".to_owned(), "401 invalid api key".to_owned())],
        "one event for the streak"
    );
    provider.fixed.store(true, Ordering::SeqCst);
    let summary = reporter.shutdown().await.unwrap();
    assert_eq!(summary.pending_left, 0);
}

/// Issue 11 item 1: a meter whose aggregation changed across a restart, with usage still
/// pending under the old one, is a start-up error naming the meter.
#[tokio::test]
async fn a_meter_whose_aggregation_changed_is_refused_at_start() {
    use monetize_core::meter::Measure;
    use monetize_core::report::{Delta, SpoolRoute};
    let spool = Arc::new(MemorySpool::new());
    let peak = Delta::new(
        monetize_core::CustomerId::new("c1").unwrap(),
        MeterId::new("meter_a").unwrap(),
        Measure::Max(5),
    );
    spool
        .merge(&[SpoolRoute::all("ledger")], &[peak], 100, 60)
        .unwrap();
    let err = Reporter::start(
        Engine::for_tests(&["meter_a", "meter_b"]),
        spool.clone(),
        vec![route(Arc::new(LedgerProvider::new()))],
        fast(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ReporterError::AggregationChanged { meter, stored: Aggregation::Max, configured: Aggregation::Sum }
            if meter.as_str() == "meter_a"),
        "{err}"
    );
    assert!(err.to_string().contains("meter_a"), "{err}");
    // the stored value is untouched
    assert_eq!(spool.pending(None).unwrap()[0].quantity(), 5);
}
