//! Helper process for `tests/tests/crash.rs`: records usage at a bounded rate into an
//! engine whose reporter checkpoints into a `RedbSpool` and reports to a file-backed
//! `LedgerProvider`, until it is killed (mode `run`), or records a fixed amount, shuts down
//! gracefully and exits (mode `drain`).
//!
//! Usage: `crash_child DIR run|drain RUN_ID CHECKPOINT_MS UNITS_PER_TICK DRAIN_UNITS`
//!
//! `CHECKPOINT_MS` is the reporter's checkpoint interval; every 1 ms tick records
//! `UNITS_PER_TICK` units (missed ticks are skipped, never caught up, so the rate is
//! bounded); mode `drain` stops after `DRAIN_UNITS` units.
//!
//! Files it writes in `DIR`:
//! - `spool.redb`, `ledger.jsonl`: shared by every run;
//! - `recorded-RUN_ID`: how many units this run recorded, written *before* each record
//!   call (so it is at least the true figure, and at most one tick's units above it);
//! - `journal-RUN_ID`: every merge attempt, written (one `write` per attempt) *before*
//!   the merge is called: a block `B` line, one `C writer seq window_start customer meter
//!   quantity` line per delta of each checkpoint, and an `E` line. The spool stores the
//!   highest checkpoint number merged per writer in the merge's transaction, so the test
//!   knows exactly which journaled checkpoints committed before a kill;
//! - `held-RUN_ID`: how many provider calls the ledger has accepted in this run; each
//!   answer is then held back for `HOLD_MS` before it reaches the reporter, so a kill in
//!   that time leaves records billed by the ledger but not acknowledged in the spool.
//!
//! Both counters are 20-digit decimals written at offset 0 with one `pwrite`, so a SIGKILL
//! leaves either the old or the new value. Every run records for its own customer
//! (`run-RUN_ID`), so the ledger's total for that customer is exactly what the run got
//! into the spool.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use monetize_core::Engine;
use monetize_core::ledger::LedgerProvider;
use monetize_core::provider::{BillingProvider, ProviderError, RecordOutcome, UsageRecord};
use monetize_core::report::{
    Checkpoint, ProviderRoute, RedbSpool, ReportWindow, Reporter, ReporterOptions, Spool,
    SpoolError,
};
use monetize_tests::spool::MergeHook;

/// What the test asked for.
struct Params {
    dir: PathBuf,
    drain: bool,
    run: String,
    checkpoint_ms: u64,
    units_per_tick: u64,
    drain_units: u64,
}

fn parse(args: &[String]) -> Option<Params> {
    let [
        _,
        dir,
        mode,
        run,
        checkpoint_ms,
        units_per_tick,
        drain_units,
    ] = args
    else {
        return None;
    };
    Some(Params {
        dir: PathBuf::from(dir),
        drain: match mode.as_str() {
            "run" => false,
            "drain" => true,
            _ => return None,
        },
        run: run.clone(),
        checkpoint_ms: checkpoint_ms.parse().ok()?,
        units_per_tick: units_per_tick.parse().ok()?,
        drain_units: drain_units.parse().ok()?,
    })
}

fn counter_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn write_counter(file: &File, value: u64) -> std::io::Result<()> {
    file.write_all_at(format!("{value:020}").as_bytes(), 0)
}

/// How long the ledger's answers are held back.
const HOLD_MS: u64 = 250;

/// The file ledger, answering `HOLD_MS` late after counting each accepted call.
struct HeldLedger {
    inner: Arc<LedgerProvider>,
    calls: AtomicU64,
    file: File,
}

#[async_trait]
impl BillingProvider for HeldLedger {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn report(&self, records: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
        let out = self.inner.report(records).await?;
        let calls = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Err(e) = write_counter(&self.file, calls) {
            eprintln!("cannot write the held counter: {e}");
        }
        tokio::time::sleep(Duration::from_millis(HOLD_MS)).await;
        Ok(out)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(params) = parse(&args) else {
        eprintln!(
            "usage: crash_child DIR run|drain RUN_ID CHECKPOINT_MS UNITS_PER_TICK DRAIN_UNITS"
        );
        return ExitCode::from(64);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(child(params)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash_child: {e}");
            ExitCode::from(1)
        }
    }
}

async fn child(p: Params) -> Result<(), Box<dyn std::error::Error>> {
    let (dir, run) = (&p.dir, &p.run);
    let customer = format!("run-{run}");
    // Journals every merge attempt before it is made (see the module docs).
    let journal = std::sync::Mutex::new(
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join(format!("journal-{run}")))?,
    );
    let spool = Arc::new(MergeHook::new(
        RedbSpool::open(dir.join("spool.redb"))?,
        move |inner: &RedbSpool, routes, checkpoints: &[Checkpoint], window_secs| {
            let mut block = String::from("B\n");
            for c in checkpoints {
                let window = ReportWindow::containing(c.taken_unix, window_secs).start();
                for d in &c.deltas {
                    block.push_str(&format!(
                        "C {} {} {window} {} {} {}\n",
                        if c.writer.is_empty() { "-" } else { &c.writer },
                        c.seq,
                        d.customer,
                        d.meter,
                        d.measure.quantity()
                    ));
                }
            }
            block.push_str("E\n");
            let mut file = journal.lock().unwrap_or_else(|e| e.into_inner());
            file.write_all(block.as_bytes())
                .map_err(|e| SpoolError::Unavailable {
                    reason: format!("cannot write the journal: {e}"),
                })?;
            drop(file);
            inner.merge_checkpoints(routes, checkpoints, window_secs)
        },
    ));
    let recorded_file = counter_file(&dir.join(format!("recorded-{run}")))?;
    let ledger = Arc::new(LedgerProvider::open(dir.join("ledger.jsonl"))?);
    let engine = Engine::for_tests(&["meter_a", "meter_b"]);
    let options = ReporterOptions::default()
        .with_checkpoint_interval(Duration::from_millis(p.checkpoint_ms))
        .with_window(Duration::from_secs(1))
        .with_call_timeout(Duration::from_secs(2))
        .with_min_backoff(Duration::from_millis(20))
        .with_max_backoff(Duration::from_millis(200))
        .with_shutdown_timeout(Duration::from_secs(30));
    let held = Arc::new(HeldLedger {
        inner: ledger.clone(),
        calls: AtomicU64::new(0),
        file: counter_file(&dir.join(format!("held-{run}")))?,
    });
    let route = ProviderRoute::new(held).with_report_interval(Duration::from_millis(100));
    let reporter = Reporter::start(engine.clone(), spool.clone(), vec![route], options)?;

    let mut recorded: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    // Never catch up on missed ticks: at most `units_per_tick` units per millisecond.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if p.drain && recorded >= p.drain_units {
            break;
        }
        tick.tick().await;
        // Write-ahead: the counter never reads below what was recorded.
        write_counter(&recorded_file, recorded + p.units_per_tick)?;
        for i in 0..p.units_per_tick {
            let meter = if (recorded + i).is_multiple_of(2) {
                "meter_a"
            } else {
                "meter_b"
            };
            engine.record_by_id(&customer, meter, 1)?;
        }
        recorded += p.units_per_tick;
    }
    let summary = reporter.shutdown().await?;
    if summary.pending_left != 0 {
        return Err(format!("{} entries left pending", summary.pending_left).into());
    }
    println!(
        "drained: sent {} records, ledger holds {}",
        summary.records_sent,
        ledger.len()
    );
    Ok(())
}
