//! `kill -9` right after credit spends: the restart keeps exactly the spends and quota
//! usage of the usage that reached the spool, and loses at most one checkpoint interval
//! plus the commit allowance of both (never more of one than of the other).
//!
//! The helper `spend_child` (tests/src/bin/spend_child.rs) makes one call per 1 ms tick
//! for a prepaid customer (`pre`, each call costs `PRICE` credits) and one for a customer
//! with a quota (`quota`), checkpointing every `CHECKPOINT_MS` into a `RedbSpool`, with a
//! `StateSync` saving to a `RedbStore` every second (which saved `pre` with its initial
//! credits just before the calls began). This test SIGKILLs it at a random moment within
//! that second, reads how much usage reached the spool, restarts it in `restore` mode on
//! the same files and asserts, per kill:
//! - `pre`'s restored balance is `INITIAL - PRICE * usage in the spool`, give or take the
//!   one call that may race with the checkpoint's swap (the old code restored the state
//!   store's balance: every credit spent since its last save was handed back);
//! - the restored quota usage of `quota` and of `pre` equals their usage in the spool;
//! - calls made minus usage in the spool is at most `LOSS_BOUND`, one checkpoint interval
//!   plus the commit allowance at the child's rate (the figure the README states).
//!
//! Set `MONETIZE_CRASH_SEED` to replay a run; the seed is printed first and in every
//! failure message.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use monetize_core::report::{RedbSpool, Spool};
use monetize_tests::crash_child;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The child's checkpoint interval.
const CHECKPOINT_MS: u64 = 50;
/// The commit allowance (as in `crash.rs` and the README).
const ALLOWANCE_MS: u64 = 100;
/// Calls (one per 1 ms tick) one kill may lose: one checkpoint interval plus the
/// allowance, plus the one call the child announces before making it.
const LOSS_BOUND: u64 = CHECKPOINT_MS + ALLOWANCE_MS + 1;
/// As in `spend_child`.
const INITIAL: i64 = 1_000_000_000;
const PRICE: i64 = 1_000;
/// Kills, each in a fresh directory.
const KILLS: usize = 3;

fn child(dir: &Path, mode: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spend_child"));
    c.arg(dir).arg(mode).arg(CHECKPOINT_MS.to_string());
    c
}

/// The usage of `customer` that reached the spool (pending or acknowledged).
fn in_spool(spool: &RedbSpool, customer: &str) -> u64 {
    let acked: u64 = spool
        .acknowledged(None)
        .unwrap()
        .iter()
        .filter(|a| a.record.customer.as_str() == customer)
        .map(|a| a.record.quantity)
        .sum();
    acked + spool.pending_total(None, "calls", customer).unwrap()
}

#[test]
fn kill_minus_nine_right_after_credit_spends_hands_no_credit_back() {
    let seed = crash_child::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for kill in 0..KILLS {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut run = crash_child::spawn_until_ready(child(dir, "run"), dir, "spend_child", seed);
        // Within the state sync's interval (1 s) after the store saved the credits.
        let offset = Duration::from_millis(rng.random_range(150..700));
        std::thread::sleep(offset);
        run.kill().expect("SIGKILL");
        run.wait().unwrap();
        let made: u64 = std::fs::read_to_string(dir.join("recorded"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();

        let (pre, quota) = {
            let spool = RedbSpool::open(dir.join("spool.redb")).unwrap();
            (in_spool(&spool, "pre"), in_spool(&spool, "quota"))
        };
        let ctx = format!(
            "seed {seed}, kill {kill} at {offset:?}: {made} calls made, {pre}/{quota} in the spool"
        );
        assert!(pre > 0, "{ctx}: no checkpoint merged before the kill");
        assert!(made >= pre && made >= quota, "{ctx}");
        assert!(
            made - pre <= LOSS_BOUND && made - quota <= LOSS_BOUND,
            "{ctx}: more than {LOSS_BOUND} calls lost"
        );

        let out = child(dir, "restore")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run spend_child restore");
        assert!(out.status.success(), "{ctx}: restore failed");
        let text = String::from_utf8(out.stdout).unwrap();
        let fields: Vec<i64> = text
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        let [balance, used_pre, used_quota, restored] = fields[..] else {
            panic!("{ctx}: restore printed {text:?}");
        };
        let spent = INITIAL - balance;
        let billed = PRICE * pre as i64;
        assert!(
            (spent - billed).abs() <= PRICE,
            "{ctx}: restored balance {balance} spends {spent} credits for {billed} credits of \
             usage in the spool (credits handed back: {})",
            billed - spent
        );
        assert_eq!(used_pre as u64, pre, "{ctx}: quota usage of pre");
        assert_eq!(used_quota as u64, quota, "{ctx}: quota usage of quota");
        assert_eq!(restored, 2, "{ctx}: customers restored from the spool");
    }
}
