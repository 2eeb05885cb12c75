//! Notification dedup across processes, with a real SMTP server (aiosmtpd) receiving:
//! a burst of 100 concurrent crossings sends one email; a restart, and a `kill -9`, do
//! not send it again (the dedup mark is in the redb file); the next period sends again.
//!
//! The helper `notify_child` (tests/src/bin/notify_child.rs) raises the same quota
//! warning from 100 tasks, waits until the dispatcher is idle, prints
//! `idle SENT DEDUPLICATED FAILED` and then either exits or waits to be SIGKILLed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use monetize_tests::smtp::SmtpSink;

/// Runs the child until it is idle; kills it with SIGKILL in `wait` mode. Returns its
/// (sent, deduplicated, failed).
fn run(dir: &Path, port: u16, month: u32, mode: &str) -> (u64, u64, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_notify_child"))
        .arg(dir)
        .arg(port.to_string())
        .arg(month.to_string())
        .arg(mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if mode == "wait" {
        child.kill().unwrap(); // SIGKILL
    }
    let status = child.wait().unwrap();
    if mode == "exit" {
        assert!(status.success());
    }
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(n.len(), 3, "child said {line:?}");
    (n[0], n[1], n[2])
}

#[test]
fn one_email_per_period_across_bursts_restarts_and_kill_9() {
    let sink = SmtpSink::start(None);
    let dir = tempfile::tempdir().unwrap();

    // 100 concurrent crossings: one email.
    assert_eq!(run(dir.path(), sink.port, 0, "wait"), (1, 99, 0));
    let got = sink.wait_for(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].to, ["ops@acme.test"]);
    assert!(
        got[0]
            .data
            .contains("Subject: You used 80 % of your api_calls quota")
    );

    // Killed with SIGKILL after sending; the next process sends nothing.
    assert_eq!(run(dir.path(), sink.port, 0, "wait"), (0, 100, 0));
    // A graceful restart sends nothing either.
    assert_eq!(run(dir.path(), sink.port, 0, "exit"), (0, 100, 0));
    assert_eq!(sink.received().len(), 1);

    // The next month sends again, once.
    assert_eq!(run(dir.path(), sink.port, 1, "exit"), (1, 99, 0));
    let got = sink.wait_for(2);
    assert_eq!(got.len(), 2);
    assert!(
        got[1].data.contains("until 2027-02-01T00:00:00Z"),
        "{}",
        got[1].data
    );
}
