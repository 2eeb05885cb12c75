//! Upsell streaks are as durable as the usage: the reporter's checkpoint (which ticks the
//! engine, rolling periods over) writes the customer's streak into the spool's account
//! row on disk (redb), and `Reporter::start` restores it, so a restart between two periods
//! at the quota does not reset the count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use monetize_core::config::{Config, MeterConfig, Period, PlanConfig, QuotaConfig};
use monetize_core::ledger::LedgerProvider;
use monetize_core::report::{ProviderRoute, RedbSpool, Reporter, ReporterOptions};
use monetize_core::{Engine, EventKind, MeterId, UpsellStreak};

/// 2026-11-01T00:00:00Z, and the next two month starts.
const NOV: u64 = 1_793_491_200;
const DEC: u64 = 1_796_083_200;
const JAN: u64 = 1_798_761_600;

fn engine(now: &Arc<AtomicU64>) -> Engine {
    let config = Config::builder()
        .meter(MeterConfig::count("calls"))
        .plan(
            PlanConfig::new("growth")
                .quota(QuotaConfig::new("calls", 5, Period::Month))
                .upsell_after_periods(2),
        )
        .default_plan("growth")
        .build();
    let clock = now.clone();
    Engine::builder(config)
        .wall_clock(move || clock.load(Ordering::Relaxed))
        .build()
        .unwrap()
}

fn reporter(engine: &Engine, dir: &std::path::Path) -> monetize_core::report::ReporterHandle {
    let spool = Arc::new(RedbSpool::open(dir.join("spool.redb")).unwrap());
    let ledger = Arc::new(LedgerProvider::open(dir.join("ledger.jsonl")).unwrap());
    Reporter::start(
        engine.clone(),
        spool,
        vec![ProviderRoute::new(ledger).with_report_interval(Duration::from_secs(3600))],
        // Checkpoints (and ticks) only when asked.
        ReporterOptions::default().with_checkpoint_interval(Duration::from_secs(3600)),
    )
    .unwrap()
}

fn calls(engine: &Engine, n: u64) {
    let h = engine.resolve("acme").unwrap();
    for _ in 0..n {
        engine.record(&h, engine.meter_index("calls").unwrap(), 1);
    }
}

fn upsells(engine: &Engine) -> Vec<(u32, u64)> {
    engine
        .drain_events(1_000)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::UpsellCandidate { periods, usage, .. } => Some((periods, usage)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_restart_between_two_periods_at_the_quota_keeps_the_streak() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(NOV + 3_600));
    {
        let engine = engine(&now);
        let reporter = reporter(&engine, dir.path());
        calls(&engine, 5);
        reporter.flush_now().await.unwrap();
        // November ends: the next checkpoint's tick counts it, and the checkpoint writes
        // the streak with the account.
        now.store(DEC + 60, Ordering::Relaxed);
        reporter.flush_now().await.unwrap();
        assert_eq!(upsells(&engine), [], "one period is not two");
        reporter.shutdown().await.unwrap();
    }
    let engine = engine(&now);
    let reporter = reporter(&engine, dir.path());
    assert_eq!(reporter.stats().accounts_restored, 1);
    assert_eq!(
        engine.account("acme").unwrap().upsell,
        [UpsellStreak::new(MeterId::new("calls").unwrap(), 1, NOV)],
        "restored from the spool"
    );
    calls(&engine, 6);
    reporter.flush_now().await.unwrap();
    now.store(JAN + 60, Ordering::Relaxed);
    reporter.flush_now().await.unwrap();
    assert_eq!(
        upsells(&engine),
        [(2, 6)],
        "November and December, across the restart"
    );
    reporter.shutdown().await.unwrap();
}
