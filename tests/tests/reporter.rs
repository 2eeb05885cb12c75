//! The reporter end to end: engine → spool → provider.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use monetize_core::ledger::LedgerProvider;
use monetize_core::provider::{BillingProvider, ProviderError, RecordOutcome, UsageRecord};
use monetize_core::report::{
    Checkpoint, MemorySpool, ProviderRoute, RedbSpool, Reporter, ReporterOptions, Spool, SpoolError,
};
use monetize_core::{Engine, EventKind};
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
