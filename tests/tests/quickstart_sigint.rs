//! Issue 10 item 7 through the quickstart itself: Ctrl-C (SIGINT) while clients are
//! calling it over real HTTP bills every call a client saw answered.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use monetize_core::provider::UsageRecord;
use tokio::io::{AsyncBufReadExt, BufReader};

const LIMIT: Duration = Duration::from_secs(120);

/// The `api_calls` billed to `customer` in a ledger file.
fn billed(ledger: &Path, customer: &str) -> u64 {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<UsageRecord>(l).expect("ledger line"))
        .filter(|r| r.meter.as_str() == "api_calls" && r.customer.as_str() == customer)
        .map(|r| r.quantity)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_under_load_bills_every_answered_call() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cmd, _) = monetize_tests::quickstart::command();
    let mut child = cmd
        .args(["--port", "0", "--data-dir"])
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the quickstart");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(LIMIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("Still serving on http://").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("the quickstart ended before serving");
    })
    .await
    .expect("the scenario took too long");
    let ledger = dir.path().join("ledger.jsonl");
    // The scenario flushed everything before this line.
    let before = billed(&ledger, "acme");

    let answered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (answered, done, addr) = (answered.clone(), done.clone(), addr.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let url = format!("http://{addr}/v1/hello");
            while !done.load(Ordering::SeqCst) {
                match http
                    .get(&url)
                    .header("x-api-key", "sk_live_acme")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        if r.bytes().await.is_ok() {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }));
    }
    while answered.load(Ordering::SeqCst) < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("the quickstart did not stop")
        .unwrap();
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push_str(&line);
        rest.push('\n');
    }
    let answered = answered.load(Ordering::SeqCst);
    assert_eq!(
        billed(&ledger, "acme") - before,
        answered,
        "every answered call billed once; the quickstart said:\n{rest}"
    );
    assert!(rest.contains(" 0 pending"), "{rest}");
}
