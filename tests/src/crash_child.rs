//! What the kill -9 tests and their child processes share: the replayable seed, spawning a
//! child until it says it is ready, and the child's command line
//! (`NAME DIR run|restore CHECKPOINT_MS`).

use std::error::Error;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The seed of a crash run: `MONETIZE_CRASH_SEED` when set (to replay a run), else a
/// random one. Printed first, so a failure can be replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("MONETIZE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("MONETIZE_CRASH_SEED={seed}");
    seed
}

/// Spawns `cmd` (stdin and stdout closed, stderr to `DIR/run.log`) and waits until it
/// writes `DIR/ready`; panics, with the child's log, if it exits first or takes a minute.
pub fn spawn_until_ready(mut cmd: Command, dir: &Path, name: &str, seed: u64) -> Child {
    let log = std::fs::File::create(dir.join("run.log")).unwrap();
    let mut run = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let started = Instant::now();
    while !dir.join("ready").exists() {
        if let Some(status) = run.try_wait().unwrap() {
            panic!(
                "seed {seed}: {name} exited ({status}): {}",
                std::fs::read_to_string(dir.join("run.log")).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "seed {seed}: {name} never got ready"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    run
}

/// A child process's `main`: reads `DIR run|restore CHECKPOINT_MS` and runs
/// `child(dir, restore, checkpoint_ms)` on a two-thread tokio runtime. Exit codes: 64 for
/// a bad command line, 70 when tokio cannot start, 1 when `child` fails.
pub fn main<F, Fut>(name: &str, child: F) -> ExitCode
where
    F: FnOnce(PathBuf, bool, u64) -> Fut,
    Fut: Future<Output = Result<(), Box<dyn Error>>>,
{
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, mode, checkpoint_ms] = args.as_slice() else {
        eprintln!("usage: {name} DIR run|restore CHECKPOINT_MS");
        return ExitCode::from(64);
    };
    let Ok(checkpoint_ms) = checkpoint_ms.parse::<u64>() else {
        eprintln!("CHECKPOINT_MS must be a number");
        return ExitCode::from(64);
    };
    let restore = match mode.as_str() {
        "run" => false,
        "restore" => true,
        _ => {
            eprintln!("mode must be run or restore");
            return ExitCode::from(64);
        }
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
    match runtime.block_on(child(PathBuf::from(dir), restore, checkpoint_ms)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(1)
        }
    }
}
