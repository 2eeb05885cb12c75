//! Unit tests of the reporter's parts: checkpoint compaction, options and routes from the
//! configuration, quarantined rows.

use super::checkpoint::compact;
use super::*;
use crate::meter::Measure;
use crate::report::Spool;

fn d(c: &str, m: &str, measure: Measure) -> Delta {
    Delta::new(
        CustomerId::new(c).unwrap(),
        MeterId::new(m).unwrap(),
        measure,
    )
}

#[test]
fn compact_folds_same_cell_in_order() {
    let out = compact(vec![
        d("c1", "a", Measure::Sum(1)),
        d("c2", "a", Measure::Sum(2)),
        d("c1", "a", Measure::Sum(3)),
        d("c1", "g", Measure::Latest(5)),
        d("c1", "g", Measure::Latest(4)),
    ]);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].measure, Measure::Sum(4));
    assert_eq!(out[1].measure, Measure::Sum(2));
    assert_eq!(out[2].measure, Measure::Latest(4), "newer gauge wins");
}

#[test]
fn options_and_routes_follow_the_config() {
    let mut config = crate::config::ReportingConfig {
        checkpoint_interval_ms: 250,
        window_secs: 3600,
        ..Default::default()
    };
    let mut entry = crate::config::ProviderRouteConfig::new("ledger");
    entry.report_interval_ms = 500;
    entry.meters = Some(vec!["calls".into()]);
    config.providers.push(entry);
    let o = ReporterOptions::from(&config);
    assert_eq!(o.checkpoint_interval, Duration::from_millis(250));
    assert_eq!(o.window, Duration::from_secs(3600));
    let ledger = Arc::new(crate::ledger::LedgerProvider::new());
    let r = ProviderRoute::from_config(ledger, &config);
    assert_eq!(r.report_interval, Duration::from_millis(500));
    assert_eq!(r.meters, Some(vec![MeterId::new("calls").unwrap()]));
    let other = Arc::new(crate::ledger::LedgerProvider::new().with_name("stripe"));
    let r = ProviderRoute::from_config(other, &config);
    assert_eq!(
        (r.report_interval, r.meters),
        (Duration::from_secs(10), None)
    );
}

/// Issue 10 item 9: a corrupt row is quarantined once with an event, and the rest is
/// reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_is_quarantined_with_an_event() {
    use crate::report::MemorySpool;
    use crate::report::spool_kv::{RowKey, Table};
    let engine = Engine::for_tests(&["calls"]);
    let spool = Arc::new(MemorySpool::new());
    let bad = RowKey {
        provider: "ledger".into(),
        meter: "calls".into(),
        customer: "c0".into(),
        window_start: 60,
        part: 0,
    };
    spool.put_raw(Table::Pending, bad, &[7, 7, 7]);
    let ledger = Arc::new(crate::ledger::LedgerProvider::new());
    let reporter = Reporter::start(
        engine.clone(),
        spool.clone(),
        vec![ProviderRoute::new(ledger.clone())],
        ReporterOptions::default().with_checkpoint_interval(Duration::from_millis(10)),
    )
    .unwrap();
    engine.record_by_id("c1", "calls", 3).unwrap();
    let summary = reporter.shutdown().await.unwrap();
    assert_eq!(ledger.total("calls", "c1"), 3);
    assert_eq!(
        summary.pending_left, 0,
        "the corrupt row no longer blocks anything"
    );
    assert_eq!(summary.stats.quarantined, 1);
    let events = engine.drain_events(100);
    let quarantined: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::SpoolRowQuarantined { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(quarantined, vec!["ledger/calls/c0/60#0".to_owned()]);
    assert_eq!(spool.quarantined().unwrap().len(), 1);
}

#[test]
fn options_have_safe_defaults() {
    let o = ReporterOptions::default()
        .with_window(Duration::from_millis(10))
        .with_max_retries(2)
        .with_min_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(1));
    assert_eq!(o.window_secs(), 1);
    let delays: Vec<Duration> = o.backoff().collect();
    assert_eq!(delays.len(), 2);
    // jitter adds at most the delay itself; the max never goes below the min
    assert!(delays.iter().all(|d| *d >= Duration::from_millis(5)));
    assert!(delays.iter().all(|d| *d <= Duration::from_millis(10)));
}
