//! Credits and quota usage are exactly as durable as the usage that spent them: the
//! reporter's checkpoint writes the customers' balances and quota usage into the spool in
//! the merge's transaction, and `Reporter::start` restores them. A restart after a crash
//! (here: the first run's handles are leaked, never shut down, and a second engine starts
//! on the same spool and store) resumes with the spends of the last merged checkpoint,
//! never hands credits or quota back for usage the spool holds.
//!
//! The real `kill -9` version of this test is `tests/tests/crash_spend.rs`.

use std::sync::Arc;
use std::time::Duration;

use monetize_core::config::{Config, MeterConfig, Period, PlanConfig, QuotaConfig};
use monetize_core::ledger::LedgerProvider;
use monetize_core::report::{MemorySpool, ProviderRoute, Reporter, ReporterOptions, Spool};
use monetize_core::{Engine, MemoryStore, StateChange, StateSync};

const INITIAL: i64 = 1_000_000;
const PRICE: u64 = 1_000;

fn config() -> Config {
    Config::builder()
        .meter(MeterConfig::count("calls"))
        .plan(PlanConfig::new("free").quota(QuotaConfig::new("calls", 1_000, Period::Month)))
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(INITIAL)
                .price("calls", PRICE),
        )
        .default_plan("free")
        .build()
}

fn calls(engine: &Engine, customer: &str, n: u64) {
    let h = engine.resolve(customer).unwrap();
    for _ in 0..n {
        engine.record(&h, engine.meter_index("calls").unwrap(), 1);
    }
}

/// Checkpoints only when asked (the first tick is an hour after the start).
fn options() -> ReporterOptions {
    ReporterOptions::default().with_checkpoint_interval(Duration::from_secs(3600))
}

fn route(dir: &std::path::Path) -> ProviderRoute {
    let ledger = Arc::new(LedgerProvider::open(dir.join("ledger.jsonl")).unwrap());
    ProviderRoute::new(ledger).with_report_interval(Duration::from_secs(3600))
}

/// The usage of `customer` that reached the spool (pending or acknowledged).
fn in_spool(spool: &MemorySpool, customer: &str) -> u64 {
    let acked: u64 = spool
        .acknowledged(None)
        .unwrap()
        .iter()
        .filter(|a| a.record.customer.as_str() == customer)
        .map(|a| a.record.quantity)
        .sum();
    acked + spool.pending_total(None, "calls", customer).unwrap()
}

#[tokio::test]
async fn a_crash_keeps_the_spends_and_quota_usage_of_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(MemorySpool::new());
    let store = Arc::new(MemoryStore::new());

    // First run: state sync every hour (a crash always lands within its interval).
    {
        let engine = Engine::new(config()).unwrap();
        let sync = StateSync::start(engine.clone(), store.clone(), Duration::from_secs(3600))
            .await
            .unwrap();
        let reporter = Reporter::start(
            engine.clone(),
            spool.clone(),
            vec![route(dir.path())],
            options(),
        )
        .unwrap();
        // Past the state sync's first (immediate) save: the spends below fall within its
        // interval, as in a crash between two saves.
        tokio::time::sleep(Duration::from_millis(50)).await;
        engine.register("pre", "prepaid").unwrap();
        // The state store knows the prepaid customer with its initial credits.
        assert_eq!(sync.sync_now().await.unwrap(), 1);
        calls(&engine, "pre", 7);
        calls(&engine, "quota", 11);
        reporter.flush_now().await.unwrap();
        // After the last merged checkpoint: lost by the crash, usage and spends alike.
        calls(&engine, "pre", 5);
        calls(&engine, "quota", 3);
        std::mem::forget(reporter);
        std::mem::forget(sync);
    }
    let billed_pre = in_spool(&spool, "pre");
    let billed_quota = in_spool(&spool, "quota");
    assert_eq!((billed_pre, billed_quota), (7, 11));

    // Restart on the same spool and store, in the documented order.
    let engine = Engine::new(config()).unwrap();
    let _sync = StateSync::start(engine.clone(), store.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(dir.path())],
        options(),
    )
    .unwrap();
    let pre = engine.usage("pre").unwrap();
    assert_eq!(
        pre.balance,
        INITIAL - (billed_pre * PRICE) as i64,
        "credits spent by usage in the spool are not handed back"
    );
    let quota = engine.usage("quota").unwrap();
    assert_eq!(
        quota.meters[0].used, billed_quota,
        "quota usage matches the usage in the spool"
    );
    assert_eq!(pre.meters[0].used, billed_pre);
    assert_eq!(reporter.stats().accounts_restored, 2);
    reporter.shutdown().await.unwrap();
}

#[tokio::test]
async fn operator_changes_are_saved_by_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(MemorySpool::new());
    {
        let engine = Engine::new(config()).unwrap();
        let reporter = Reporter::start(
            engine.clone(),
            spool.clone(),
            vec![route(dir.path())],
            options(),
        )
        .unwrap();
        engine.register("pre", "prepaid").unwrap();
        engine.apply("pre", StateChange::GrantCredits(500)).unwrap();
        engine.apply("bad", StateChange::Blocked(true)).unwrap();
        // No usage at all: the checkpoint still writes the changed customers.
        reporter.flush_now().await.unwrap();
        std::mem::forget(reporter);
    }
    assert_eq!(spool.pending_count(None).unwrap(), 0);
    let engine = Engine::new(config()).unwrap();
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(dir.path())],
        options(),
    )
    .unwrap();
    assert_eq!(engine.usage("pre").unwrap().balance, INITIAL + 500);
    assert!(engine.usage("pre").unwrap().prepaid);
    assert!(engine.account("bad").unwrap().blocked);
    reporter.shutdown().await.unwrap();
}

#[tokio::test]
async fn failed_merges_keep_spends_with_their_usage() {
    use monetize_core::report::{Checkpoint, SpoolError};
    use monetize_tests::spool::MergeHook;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    // The first two merges fail: the first after committing (its reply lost), the second
    // before; the third carries everything.
    let spool = Arc::new(MergeHook::new(
        MemorySpool::new(),
        move |inner: &MemorySpool, routes, checkpoints: &[Checkpoint], window_secs| match seen
            .fetch_add(1, Ordering::SeqCst)
        {
            0 => {
                inner.merge_checkpoints(routes, checkpoints, window_secs)?;
                Err(SpoolError::Unavailable {
                    reason: "committed, then the reply was lost".into(),
                })
            }
            1 => Err(SpoolError::Unavailable {
                reason: "disk full".into(),
            }),
            _ => inner.merge_checkpoints(routes, checkpoints, window_secs),
        },
    ));
    let engine = Engine::new(config()).unwrap();
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(dir.path())],
        options(),
    )
    .unwrap();
    engine.register("pre", "prepaid").unwrap();
    for n in [3, 4, 5] {
        calls(&engine, "pre", n);
        let _ = reporter.flush_now().await;
    }
    assert!(attempts.load(Ordering::SeqCst) >= 3);
    let stored = spool.inner().accounts().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].1.balance,
        INITIAL - 12 * PRICE as i64,
        "the newest snapshot is stored"
    );
    assert_eq!(stored[0].1.period_usage[0].used, 12);
    assert_eq!(in_spool(spool.inner(), "pre"), 12, "usage merged once");
    reporter.shutdown().await.unwrap();
}

#[tokio::test]
async fn quota_usage_the_spool_does_not_hold_is_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(MemorySpool::new());
    let store = Arc::new(MemoryStore::new());
    {
        let engine = Engine::new(config()).unwrap();
        let sync = StateSync::start(engine.clone(), store.clone(), Duration::from_secs(3600))
            .await
            .unwrap();
        let reporter = Reporter::start(
            engine.clone(),
            spool.clone(),
            vec![route(dir.path())],
            options(),
        )
        .unwrap();
        // The spool holds q with no usage this period...
        engine.apply("q", StateChange::Delinquent(false)).unwrap();
        reporter.flush_now().await.unwrap();
        // ...the store, saved later, 5 calls whose usage the crash loses.
        calls(&engine, "q", 5);
        sync.sync_now().await.unwrap();
        std::mem::forget(reporter);
        std::mem::forget(sync);
    }
    assert_eq!(in_spool(&spool, "q"), 0);
    let engine = Engine::new(config()).unwrap();
    let _sync = StateSync::start(engine.clone(), store.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        engine.usage("q").unwrap().meters[0].used,
        5,
        "the store's copy"
    );
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![route(dir.path())],
        options(),
    )
    .unwrap();
    assert_eq!(
        engine.usage("q").unwrap().meters[0].used,
        0,
        "quota usage matches the usage in the spool"
    );
    reporter.shutdown().await.unwrap();
}
