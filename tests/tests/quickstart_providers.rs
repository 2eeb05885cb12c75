//! Issue 12's main job: the quickstart reports to a billing provider when its `--config`
//! file has a `[[providers]]` section. `examples/stripe.toml` is run as a user would, with
//! its key and base URL from the environment variables it names, against a local server
//! that speaks Stripe's v2 meter events: every unit the local ledger holds reaches Stripe
//! once, under Stripe's customer ids, and no identifier is sent twice. Without the key the
//! quickstart refuses to start and names the variable.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use monetize_core::provider::UsageRecord;
use monetize_tests::billing_mock::{MockRequest, MockServer, Reply};
use monetize_tests::quickstart;

const LIMIT: Duration = Duration::from_secs(120);
const KEY: &str = "sk_test_quickstart";

/// What the fake Stripe received: identifier -> (Stripe customer, event name, value, times).
type Received = Arc<Mutex<HashMap<String, (String, String, u64, u32)>>>;

fn fake_stripe(received: Received) -> monetize_tests::billing_mock::Handler {
    Arc::new(move |req: MockRequest| {
        if req.method != "POST" || req.path() != "/v2/billing/meter_events" {
            return Reply::json(404, serde_json::json!({"error": {"message": "no route"}}));
        }
        if req.header("authorization") != Some(&format!("Bearer {KEY}")) {
            return Reply::json(401, serde_json::json!({"error": {"message": "bad key"}}));
        }
        let b = req.json();
        let id = b["identifier"].as_str().unwrap_or_default().to_owned();
        assert_eq!(req.header("idempotency-key"), Some(id.as_str()));
        let customer = b["payload"]["stripe_customer_id"]
            .as_str()
            .unwrap_or_default();
        let event = b["event_name"].as_str().unwrap_or_default();
        let value: u64 = b["payload"]["value"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut got = received.lock().unwrap();
        let entry = got
            .entry(id)
            .or_insert_with(|| (customer.to_owned(), event.to_owned(), value, 0));
        entry.3 += 1;
        Reply::json(200, serde_json::json!({"object": "v2.billing.meter_event"}))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_reports_to_stripe_what_its_ledger_holds() {
    let received: Received = Arc::default();
    let stripe = MockServer::start(fake_stripe(received.clone())).await;
    let data = tempfile::tempdir().unwrap();
    let (mut cmd, what) = quickstart::command();
    cmd.args(["--config", "examples/stripe.toml", "--exit", "--port", "0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("STRIPE_API_KEY", KEY)
        .env("STRIPE_BASE_URL", stripe.url());
    let out = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("reporting to stripe as well as the local ledger"),
        "{stdout}"
    );

    // The ledger's units of the meters the Stripe section maps, per (customer, meter).
    let mut ledger: BTreeMap<(String, String), u64> = BTreeMap::new();
    let text = std::fs::read_to_string(data.path().join("ledger.jsonl")).unwrap();
    for line in text.lines() {
        let r: UsageRecord = serde_json::from_str(line).unwrap();
        if ["api_calls", "tokens"].contains(&r.meter.as_str()) {
            *ledger
                .entry((r.customer.to_string(), r.meter.to_string()))
                .or_default() += r.quantity;
        }
    }
    assert!(
        ledger.get(&("acme".into(), "tokens".into())) > Some(&0)
            && ledger.get(&("globex".into(), "api_calls".into())) > Some(&0),
        "the scenario bills calls and tokens: {ledger:?}"
    );

    // What Stripe received, under our ids again (examples/stripe.toml's customer map).
    let got = received.lock().unwrap().clone();
    let mut billed: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (id, (customer, event, value, times)) in &got {
        assert_eq!(*times, 1, "identifier {id} sent {times} times");
        let ours = customer
            .strip_prefix("cus_")
            .and_then(|c| c.strip_suffix("_replace_me"))
            .unwrap_or_else(|| panic!("unmapped Stripe customer {customer}"));
        *billed.entry((ours.to_owned(), event.clone())).or_default() += value;
    }
    assert_eq!(billed, ledger, "Stripe holds what the ledger holds");
    assert!(
        stdout.contains(" 0 dead letters"),
        "nothing dead-lettered:\n{stdout}"
    );
}

#[tokio::test]
async fn without_its_key_the_quickstart_names_the_variable() {
    let (mut cmd, what) = quickstart::command();
    cmd.args(["--config", "examples/stripe.toml", "--exit", "--port", "0"])
        .env_remove("STRIPE_API_KEY");
    let out = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("STRIPE_API_KEY"), "{stderr}");
}
