//! Runs `examples/quickstart` with `--exit --port 0` and checks its narrated output: the
//! 402 for credits, the 429 with `Retry-After`, the 401s, the 403 for another customer's
//! usage, the emails in `outbox/` and the alerts in `alerts.jsonl`, the ledger table and the
//! clean shutdown.
//!
//! It runs the already-built `<target>/debug/examples/quickstart` when there is one
//! (`cargo test --workspace` builds examples first), else `cargo run --example quickstart`
//! from the workspace root. Set `MONETIZE_QUICKSTART_VIA_CARGO=1` to force the latter.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::process::Command;

/// The longest the scenario may take (including a `cargo run` build) before it is killed.
const LIMIT: Duration = Duration::from_secs(120);

/// The quickstart with `--exit --port 0`, and what runs.
fn quickstart() -> (Command, String) {
    let (mut cmd, what) = monetize_tests::quickstart::command();
    cmd.args(["--exit", "--port", "0"]);
    (cmd, what)
}

/// The first line containing every one of `parts`.
fn line_with<'a>(out: &'a str, parts: &[&str]) -> &'a str {
    out.lines()
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no line with {parts:?} in the output:\n{out}"))
}

/// The ledger table printed in step 8: `(customer, meter) -> quantity`.
fn ledger_table(out: &str) -> BTreeMap<(String, String), u64> {
    let mut lines = out.lines().skip_while(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.first() != Some(&"customer") || w.get(1) != Some(&"meter")
    });
    assert!(
        lines.next().is_some(),
        "no ledger table in the output:\n{out}"
    );
    let mut rows = BTreeMap::new();
    for l in lines.take_while(|l| !l.trim().is_empty()) {
        let w: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(w.len(), 4, "ledger row `{l}`");
        let q = w[2]
            .parse()
            .unwrap_or_else(|_| panic!("quantity in ledger row `{l}`"));
        rows.insert((w[0].to_owned(), w[1].to_owned()), q);
    }
    rows
}

/// The numbers of `shutdown: N records reported, P pending, D dead letters`.
fn shutdown_line(out: &str) -> (u64, u64, u64) {
    let l = line_with(out, &["shutdown:", "records reported"]);
    let nums: Vec<u64> = l
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("number"))
        .collect();
    assert!(nums.len() >= 3, "shutdown line `{l}`");
    assert!(
        l.contains(&format!(
            "shutdown: {} records reported, {} pending, {} dead letters",
            nums[0], nums[1], nums[2]
        )),
        "shutdown line `{l}`"
    );
    (nums[0], nums[1], nums[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_scenario_runs_and_tells_the_story() {
    let (mut cmd, what) = quickstart();
    let data = tempfile::tempdir().unwrap();
    cmd.arg("--data-dir").arg(data.path());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?} (killed)"))
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} exited with {}\nstdout:\n{out}\nstderr:\n{err}",
        output.status
    );

    // It served on a real loopback port (port 0 asked for any free one).
    let l = line_with(&out, &["API on http://127.0.0.1:"]);
    assert!(!l.contains("127.0.0.1:0 "), "{l}");

    // Prepaid credits spent: 402 with the JSON body.
    let l = line_with(&out, &["-> 402"]);
    assert!(l.contains("\"reason\":\"credits_exhausted\""), "{l}");
    assert!(l.contains("\"customer\":\"globex\""), "{l}");

    // Over the free quota: 429 with a Retry-After in seconds.
    let l = line_with(&out, &["-> 429", "Retry-After:"]);
    let retry = l
        .split("Retry-After:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no Retry-After seconds in `{l}`"));
    assert!(retry > 0, "{l}");
    assert!(l.contains("quota_exceeded"), "{l}");

    // No key and an unknown key: 401.
    let l = line_with(&out, &["no key", "-> 401"]);
    assert!(l.contains("missing_api_key"), "{l}");
    let l = line_with(&out, &["unknown key", "-> 401"]);
    assert!(l.contains("unknown_api_key"), "{l}");

    // Another customer's usage: 403.
    let l = line_with(&out, &["acme's usage", "-> 403"]);
    assert!(l.contains("other_customer"), "{l}");

    // The ledger got each customer's calls, once.
    let table = ledger_table(&out);
    let calls: BTreeMap<&str, u64> = table
        .iter()
        .filter(|((_, m), _)| m == "api_calls")
        .map(|((c, _), q)| (c.as_str(), *q))
        .collect();
    assert_eq!(
        calls,
        BTreeMap::from([("acme", 5), ("globex", 3), ("initech", 5)]),
        "api_calls in the ledger table:\n{out}"
    );

    // The emails, as .eml files (RFC 5322, as SMTP carries them), and the team alerts.
    let mut emails: Vec<String> = std::fs::read_dir(data.path().join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    emails.sort();
    assert_eq!(
        emails,
        [
            "0000-globex-credits_low.eml",
            "0001-globex-credits_exhausted.eml",
            "0002-initech-quota_warning.eml",
            "0003-initech-quota_reached.eml"
        ],
        "{out}"
    );
    let eml = std::fs::read_to_string(data.path().join("outbox").join(&emails[2])).unwrap();
    for part in [
        "From: \"Example API Billing\" <billing@example.com>\r\n",
        "To: \"Initech IT\" <it@initech.example>\r\n",
        "Subject: You have used 80 % of your api_calls quota\r\n",
        "Message-ID: <",
        "Content-Type: multipart/alternative;",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Type: text/html; charset=utf-8",
        "you have used 4 of 5 api_calls this period",
    ] {
        assert!(eml.contains(part), "{part:?} not in\n{eml}");
    }
    line_with(
        &out,
        &[
            "email  to Globex Billing",
            "Your prepaid credits are running low",
        ],
    );
    line_with(
        &out,
        &["email  to Initech IT", "Your api_calls quota is used up"],
    );
    let alerts = std::fs::read_to_string(data.path().join("alerts.jsonl")).unwrap();
    let blocked: Vec<(String, String)> = alerts
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            assert_eq!(v["event"]["kind"], "blocked", "{v}");
            (
                v["event"]["customer"].as_str().unwrap().to_owned(),
                v["event"]["rule"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        blocked,
        [
            ("globex".into(), "credits_exhausted".into()),
            ("initech".into(), "quota_exceeded".into()),
            ("acme".into(), "blocked".into())
        ],
        "one alert per blocked customer, though acme called twice"
    );
    line_with(&out, &["alert  [finance] acme keeps calling while refused"]);

    // A clean shutdown: everything reported, nothing left, nothing dead.
    let (reported, pending, dead) = shutdown_line(&out);
    assert_eq!((pending, dead), (0, 0), "{out}");
    assert!(
        reported >= table.len() as u64,
        "{reported} records reported, {} in the ledger table",
        table.len()
    );
}
