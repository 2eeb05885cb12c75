//! `kill -9` while credits are granted through the durable API: every grant acknowledged
//! before the kill is there after the restart, none is counted twice (the spool's balance,
//! checkpointed before some of them, gets the ones it had not seen from the store's
//! journal), and retrying every grant after the restart applies only the one that was in
//! flight, if it was not saved.
//!
//! The helper `grant_child` (tests/src/bin/grant_child.rs) grants `g1`, `g2`, ... through
//! `Engine::grant_durable` into a `RedbStore`, with a reporter checkpointing every
//! `CHECKPOINT_MS` into a `RedbSpool` and a 1-credit call between grants. This test
//! SIGKILLs it at a random moment, restarts it in `restore` mode on the same files, and
//! asserts the figures it prints.
//!
//! Set `MONETIZE_CRASH_SEED` to replay a run; the seed is printed first and in every
//! failure message.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use monetize_tests::crash_child;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHECKPOINT_MS: u64 = 50;
/// As in `grant_child`.
const AMOUNT: i64 = 1_000_000;
const KILLS: usize = 3;
/// Calls (1 credit each, one per grant) a kill may lose: one checkpoint interval plus the
/// commit allowance, at most one call per millisecond.
const CALLS_LOSS_BOUND: i64 = 50 + 100 + 1;

fn child(dir: &Path, mode: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_grant_child"));
    c.arg(dir).arg(mode).arg(CHECKPOINT_MS.to_string());
    c
}

#[test]
fn kill_minus_nine_keeps_every_acknowledged_grant_once() {
    let seed = crash_child::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for kill in 0..KILLS {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut run = crash_child::spawn_until_ready(child(dir, "run"), dir, "grant_child", seed);
        let offset = Duration::from_millis(rng.random_range(200..900));
        std::thread::sleep(offset);
        run.kill().expect("SIGKILL");
        run.wait().unwrap();
        let acked: i64 = std::fs::read_to_string(dir.join("acked"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let ctx = format!("seed {seed}, kill {kill} at {offset:?}: {acked} grants acknowledged");
        assert!(acked > 0, "{ctx}: no grant before the kill");

        let out = child(dir, "restore")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run grant_child restore");
        assert!(out.status.success(), "{ctx}: restore failed");
        let text = String::from_utf8(out.stdout).unwrap();
        let fields: Vec<i64> = text
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        let [
            balance,
            grants,
            used,
            duplicates,
            applied,
            balance_after,
            grants_after,
        ] = fields[..]
        else {
            panic!("{ctx}: restore printed {text:?}");
        };
        let ctx = format!("{ctx}; restored balance {balance}, {grants} grants, {used} calls");
        // Every acknowledged grant was restored; at most the one in flight besides.
        assert!(
            grants == acked || grants == acked + 1,
            "{ctx}: grants restored"
        );
        // Each restored grant counts once in the balance, less the calls that reached the
        // spool (1 credit each).
        assert_eq!(balance, grants * AMOUNT - used, "{ctx}: restored balance");
        assert!(
            used <= grants && grants - used <= CALLS_LOSS_BOUND,
            "{ctx}: calls kept"
        );
        // The retries: the acknowledged ones are no-ops; the one in flight is applied
        // unless it was saved.
        assert_eq!(duplicates + applied, acked + 1, "{ctx}");
        assert_eq!(applied, acked + 1 - grants, "{ctx}: retries applied");
        assert_eq!(grants_after, acked + 1, "{ctx}");
        assert_eq!(balance_after, (acked + 1) * AMOUNT - used, "{ctx}");
    }
}
