//! The quickstart's webhook and admin routes, as a user drives them: a signed Stripe
//! `invoice.payment_failed` naming the quickstart's customer `acme` turns its very next
//! call into a 402; the process is killed with SIGKILL and restarted on the same data
//! folder: `acme` is still delinquent and Stripe's retry of the delivery is a duplicate;
//! `invoice.paid` lets it call again; the admin routes need `MONETIZE_ADMIN_TOKEN`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

const SECRET: &str = "whsec_quickstart_test";
const TOKEN: &str = "quickstart-admin-token";

fn fixture_for_acme(name: &str) -> Vec<u8> {
    let p = format!("{}/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
    text.replace(
        "\"customer\": \"cus_TAb3kZ9wQ1xY2z\"",
        "\"customer\": \"acme\"",
    )
    .into_bytes()
}

fn signature(body: &[u8]) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts the quickstart serving on a free port; returns it and its base URL.
async fn start(data_dir: &std::path::Path) -> (Child, String) {
    let (mut cmd, what) = monetize_tests::quickstart::command();
    cmd.args(["--no-scenario", "--port", "0", "--data-dir"])
        .arg(data_dir)
        .env("STRIPE_WEBHOOK_SECRET", SECRET)
        .env("MONETIZE_ADMIN_TOKEN", TOKEN)
        .env_remove("RECURLY_WEBHOOK_SECRET")
        .env_remove("CHARGEBEE_WEBHOOK_USER")
        .env_remove("CHARGEBEE_WEBHOOK_PASSWORD");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let base = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if let Some(rest) = line.split("Still serving on http://").nth(1) {
                return format!("http://{}", rest.split_whitespace().next().unwrap());
            }
        }
        panic!("the quickstart ended before serving: {seen:?}");
    })
    .await
    .expect("the quickstart serves within 2 minutes");
    assert!(
        seen.iter()
            .any(|l| l.contains("webhooks: POST") && l.contains("/webhooks/stripe")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("/webhooks/recurly")),
        "{seen:?}"
    );
    // Keep reading stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base)
}

async fn hello(http: &reqwest::Client, base: &str) -> u16 {
    http.get(format!("{base}/v1/hello"))
        .header("x-api-key", "sk_live_acme")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn webhook(http: &reqwest::Client, base: &str, body: &[u8]) -> (u16, Value) {
    let res = http
        .post(format!("{base}/webhooks/stripe"))
        .header("stripe-signature", signature(body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_signed_webhook_turns_acme_delinquent_across_a_kill_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let failed = fixture_for_acme("stripe_invoice.payment_failed.json");
    let paid = fixture_for_acme("stripe_invoice.paid.json");

    let (mut child, base) = start(dir.path()).await;
    assert_eq!(hello(&http, &base).await, 200);
    let (status, body) = webhook(&http, &base, &failed).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    assert_eq!(hello(&http, &base).await, 402);
    // A wrong signature is refused and changes nothing.
    let res = http
        .post(format!("{base}/webhooks/stripe"))
        .header("stripe-signature", "t=1,v1=00")
        .body(paid.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(hello(&http, &base).await, 402);

    // kill -9, then the same data folder.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let (mut child, base) = start(dir.path()).await;
    assert_eq!(
        hello(&http, &base).await,
        402,
        "still delinquent after the kill"
    );
    let (status, body) = webhook(&http, &base, &failed).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );
    let (status, body) = webhook(&http, &base, &paid).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    assert_eq!(hello(&http, &base).await, 200);

    // The admin routes: the token, never a customer key.
    let admin = |token: &str| {
        http.get(format!("{base}/admin/customers/acme"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(admin("sk_live_acme").await.unwrap().status().as_u16(), 401);
    let res = admin(TOKEN).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let v: Value = res.json().await.unwrap();
    let events: Vec<&str> = v["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["invoice.payment_failed", "invoice.paid"]);
    assert_eq!(v["status"]["delinquent"], false);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
