//! Helper process for `tests/tests/crash_grants.rs`: grants credits through the durable
//! API as fast as it can, in an engine whose reporter checkpoints into a `RedbSpool`
//! every `CHECKPOINT_MS` and whose `StateSync` saves to a `RedbStore` only every minute
//! (so what reaches the store before a kill is what the durable calls wrote), until it is
//! killed (mode `run`); or it restarts on the same files, prints what it restored, retries
//! every grant and prints the result (mode `restore`).
//!
//! Usage: `grant_child DIR run|restore CHECKPOINT_MS`
//!
//! Mode `run` registers `pre`, creates `DIR/ready`, then grants `g1`, `g2`, ... of
//! `AMOUNT` each, each expiring far in the future, and a 1-credit call between grants.
//! After each grant returns it writes its number to `DIR/acked` (20 digits at offset 0,
//! one `pwrite`: a SIGKILL leaves the old or the new value).
//!
//! Mode `restore` starts `StateSync`, then the reporter (the documented order), reads
//! `DIR/acked` = N, prints `BALANCE GRANTS SPENT` as restored, then retries `g1..=g(N+1)`
//! and prints `DUPLICATES APPLIED BALANCE GRANTS`, and exits without a shutdown.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use monetize_core::config::{Config, MeterConfig, PlanConfig};
use monetize_core::credits::{Grant, GrantOutcome};
use monetize_core::ledger::LedgerProvider;
use monetize_core::report::{ProviderRoute, RedbSpool, Reporter, ReporterOptions};
use monetize_core::{Engine, RedbStore, StateSync};

/// Micro-credits per grant.
pub const AMOUNT: i64 = 1_000_000;
/// Far in the future (2100).
const EXPIRES: u64 = 4_102_444_800;

fn config() -> Config {
    Config::builder()
        .meter(MeterConfig::count("calls"))
        .plan(PlanConfig::new("prepaid").prepaid(0).price("calls", 1))
        .default_plan("prepaid")
        .build()
}

fn grant(n: u64) -> Grant {
    Grant::new(format!("g{n}"), AMOUNT).expires_at(EXPIRES)
}

fn main() -> ExitCode {
    monetize_tests::crash_child::main("grant_child", child)
}

async fn child(
    dir: PathBuf,
    restore: bool,
    checkpoint_ms: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::new(config())?;
    let store = Arc::new(RedbStore::open(dir.join("state.redb"))?);
    let _sync = StateSync::start(engine.clone(), store.clone(), Duration::from_secs(60)).await?;
    let spool = Arc::new(RedbSpool::open(dir.join("spool.redb"))?);
    let ledger = Arc::new(LedgerProvider::open(dir.join("ledger.jsonl"))?);
    let route = ProviderRoute::new(ledger).with_report_interval(Duration::from_secs(3600));
    let options = ReporterOptions::default()
        .with_checkpoint_interval(Duration::from_millis(checkpoint_ms))
        .with_window(Duration::from_secs(3600));
    let _reporter = Reporter::start(engine.clone(), spool, vec![route], options)?;
    if restore {
        let acked: u64 = std::fs::read_to_string(dir.join("acked"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0);
        let pre = engine.usage("pre").ok_or("pre was not restored")?;
        println!(
            "{} {} {}",
            pre.balance,
            engine.grants("pre").len(),
            pre.meters[0].used
        );
        let (mut duplicates, mut applied) = (0, 0);
        for n in 1..=acked + 1 {
            match engine
                .grant_durable(store.as_ref(), "pre", grant(n))
                .await?
            {
                GrantOutcome::Duplicate { .. } => duplicates += 1,
                _ => applied += 1,
            }
        }
        println!(
            "{duplicates} {applied} {} {}",
            engine.usage("pre").ok_or("pre")?.balance,
            engine.grants("pre").len()
        );
        std::process::exit(0);
    }
    let pre = engine.register("pre", "prepaid")?;
    let calls = engine.meter_index("calls").ok_or("no calls meter")?;
    let acked_file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("acked"))?;
    std::fs::write(dir.join("ready"), b"")?;
    let mut n: u64 = 0;
    loop {
        n += 1;
        engine
            .grant_durable(store.as_ref(), "pre", grant(n))
            .await?;
        acked_file.write_all_at(format!("{n:020}").as_bytes(), 0)?;
        engine.record(&pre, calls, 1);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
