//! Helper process for `tests/tests/crash_spend.rs`: a prepaid customer spends credits and
//! a quota'd customer uses its quota, one call each per 1 ms tick, in an engine whose
//! reporter checkpoints into a `RedbSpool` every `CHECKPOINT_MS` and whose `StateSync`
//! saves to a `RedbStore` every second (the quickstart's settings), until it is killed
//! (mode `run`); or it restarts on the same files, prints what it restored and exits
//! (mode `restore`).
//!
//! Usage: `spend_child DIR run|restore CHECKPOINT_MS`
//!
//! Mode `run` registers `pre` on the prepaid plan, saves it to the state store (so the
//! store holds its initial credits), creates `DIR/ready`, then records. Before each call it
//! writes the number of calls made so far plus one to `DIR/recorded` (20 digits at offset 0,
//! one `pwrite`: a SIGKILL leaves the old or the new value).
//!
//! Mode `restore` starts `StateSync` and then the reporter (the documented order), prints
//! `balance USED_PRE USED_QUOTA REPLACED` on stdout and exits without a shutdown.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use monetize_core::config::{Config, MeterConfig, Period, PlanConfig, QuotaConfig};
use monetize_core::ledger::LedgerProvider;
use monetize_core::report::{ProviderRoute, RedbSpool, Reporter, ReporterOptions};
use monetize_core::{Engine, RedbStore, StateSync};

/// The prepaid plan's initial credits.
pub const INITIAL: i64 = 1_000_000_000;
/// Credits one call costs.
pub const PRICE: u64 = 1_000;

fn config() -> Config {
    Config::builder()
        .meter(MeterConfig::count("calls"))
        .plan(PlanConfig::new("free").quota(QuotaConfig::new("calls", 1_000_000, Period::Month)))
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(INITIAL)
                .price("calls", PRICE),
        )
        .default_plan("free")
        .build()
}

fn main() -> ExitCode {
    monetize_tests::crash_child::main("spend_child", child)
}

async fn child(
    dir: PathBuf,
    restore: bool,
    checkpoint_ms: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::new(config())?;
    let store = Arc::new(RedbStore::open(dir.join("state.redb"))?);
    let sync = StateSync::start(engine.clone(), store, Duration::from_secs(1)).await?;
    let spool = Arc::new(RedbSpool::open(dir.join("spool.redb"))?);
    let ledger = Arc::new(LedgerProvider::open(dir.join("ledger.jsonl"))?);
    // Reports only closed windows, rarely: the usage stays in the spool for the test.
    let route = ProviderRoute::new(ledger).with_report_interval(Duration::from_secs(3600));
    let options = ReporterOptions::default()
        .with_checkpoint_interval(Duration::from_millis(checkpoint_ms))
        .with_window(Duration::from_secs(3600));
    let reporter = Reporter::start(engine.clone(), spool, vec![route], options)?;
    if restore {
        let pre = engine.usage("pre").ok_or("pre was not restored")?;
        let quota = engine.usage("quota").ok_or("quota was not restored")?;
        println!(
            "{} {} {} {}",
            pre.balance,
            pre.meters[0].used,
            quota.meters[0].used,
            reporter.stats().accounts_restored
        );
        std::process::exit(0);
    }
    engine.register("pre", "prepaid")?;
    engine.resolve("quota")?;
    sync.sync_now().await?;
    let recorded_file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("recorded"))?;
    std::fs::write(dir.join("ready"), b"")?;
    let pre = engine.resolve("pre")?;
    let quota = engine.resolve("quota")?;
    let calls = engine.meter_index("calls").ok_or("no calls meter")?;
    let mut made: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        // Write-ahead: the counter never reads below the calls made.
        recorded_file.write_all_at(format!("{:020}", made + 1).as_bytes(), 0)?;
        engine.record(&pre, calls, 1);
        engine.record(&quota, calls, 1);
        made += 1;
    }
}
