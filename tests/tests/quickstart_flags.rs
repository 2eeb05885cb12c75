//! The quickstart's command line: `--help` is generated, `--config FILE` loads a user's
//! file (a bad one is refused with the library's validation error naming the field, exit
//! status 2), and `--no-scenario --exit` serves nothing of the scenario and exits cleanly.
//!
//! Runs the already-built `<target>/debug/examples/quickstart` when there is one, else
//! `cargo run --example quickstart` (as `tests/quickstart.rs` does).

use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

const LIMIT: Duration = Duration::from_secs(120);

fn quickstart(args: &[&str]) -> Command {
    let (mut cmd, _) = monetize_tests::quickstart::command();
    cmd.args(args);
    cmd
}

async fn run(args: &[&str]) -> (Output, String, String) {
    let out = tokio::time::timeout(LIMIT, quickstart(args).output())
        .await
        .unwrap_or_else(|_| panic!("quickstart {args:?} did not finish in {LIMIT:?}"))
        .expect("run the quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[tokio::test]
async fn help_lists_every_flag() {
    let (out, stdout, stderr) = run(&["--help"]).await;
    assert!(out.status.success(), "{stderr}");
    for flag in [
        "--exit",
        "--port",
        "--data-dir",
        "--config",
        "--no-scenario",
    ] {
        assert!(
            stdout.contains(flag),
            "`{flag}` missing from --help:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn a_bad_config_file_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[meters]]\nid = \"calls\"\naggregation = \"count\"\n\n[[plans]]\nid = \"free\"\n\
         [[plans.quotas]]\nmeter = \"nope\"\nlimit = 3\nperiod = \"month\"\n",
    )
    .expect("write the file");
    let path = bad.display().to_string();
    let (out, _, stderr) = run(&["--config", &path, "--exit", "--port", "0"]).await;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("config field `plans[0].quotas[0].meter` = `nope`: no meter has this id"),
        "{stderr}"
    );
    std::fs::write(&bad, "time_zone = \"Mars/Olympus_Mons\"\n").expect("write the file");
    let (out, _, stderr) = run(&["--config", &path, "--exit", "--port", "0"]).await;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`time_zone` = `Mars/Olympus_Mons`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn its_own_file_serves_without_the_scenario() {
    let (out, stdout, stderr) = run(&[
        "--config",
        "examples/quickstart.toml",
        "--no-scenario",
        "--exit",
        "--port",
        "0",
    ])
    .await;
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("API on http://127.0.0.1:"), "{stdout}");
    assert!(!stdout.contains("[1]"), "no scenario step ran:\n{stdout}");
    assert!(stdout.contains("0 records reported"), "{stdout}");
}
