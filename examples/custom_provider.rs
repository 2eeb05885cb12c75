//! A complete provider for an in-house billing endpoint, as a user writes it: batches POSTed
//! with their idempotency keys, answers mapped. Run: `cargo run --example custom_provider`.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::{Json, Router, routing::post};
use monetize_core::config::Config;
use monetize_core::report::{MemorySpool, ProviderRoute, Reporter, ReporterOptions};
use monetize_core::{BillingProvider, Engine, ProviderError, RecordOutcome, UsageRecord};
use serde_json::{Value, json};

/// `POST {url}/usage` with `{"items":[{key, customer, meter, quantity, at}]}`; the
/// endpoint deduplicates on `key` and answers `{"results":[{"ok", "error"}]}` in order.
struct InHouseBilling {
    url: String,
    token: String,
    http: reqwest::Client,
}

fn item(r: &UsageRecord) -> Value {
    let (customer, meter) = (r.customer.as_str(), r.meter.as_str());
    json!({ "key": r.idempotency_key, "customer": customer, "meter": meter,
            "quantity": r.quantity, "at": r.timestamp() })
}

fn failure(status: u16, message: String) -> ProviderError {
    match status {
        401 | 403 => ProviderError::Unauthorized { message },
        429 => ProviderError::Throttled {
            retry_after: Duration::from_secs(1),
            message,
        },
        400..=499 => ProviderError::Permanent { message },
        _ => ProviderError::Retryable { message },
    }
}

#[async_trait]
impl BillingProvider for InHouseBilling {
    fn name(&self) -> &str {
        "in-house"
    }

    async fn report(&self, records: &[UsageRecord]) -> Result<Vec<RecordOutcome>, ProviderError> {
        let body = json!({ "items": records.iter().map(item).collect::<Vec<_>>() });
        let retry = |e: reqwest::Error| failure(0, e.to_string()); // 0: retryable
        let request = self.http.post(format!("{}/usage", self.url));
        let answer = request.bearer_auth(&self.token).json(&body).send();
        let answer = answer.await.map_err(retry)?;
        if !answer.status().is_success() {
            let message = format!("in-house billing answered {}", answer.status());
            return Err(failure(answer.status().as_u16(), message));
        }
        let body: Value = answer.json().await.map_err(retry)?;
        let results = body["results"].as_array().cloned().unwrap_or_default();
        let outcome = |r: &Value| match (r["ok"].as_bool(), r["error"].as_str()) {
            (Some(true), _) => RecordOutcome::Accepted,
            (_, reason) => RecordOutcome::Rejected {
                reason: reason.unwrap_or("?").into(),
            },
        };
        Ok(results.iter().map(outcome).collect())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The in-house endpoint (in-process for the demo): one entry per key.
    let billed: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
    let books = billed.clone();
    let endpoint = |Json(body): Json<Value>| async move {
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let mut books = books.lock().unwrap();
        for i in &items {
            books.insert(i["key"].as_str().unwrap_or_default().to_owned(), i.clone());
        }
        Json(json!({ "results": vec![json!({ "ok": true }); items.len()] }))
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = Router::new().route("/usage", post(endpoint));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let engine = Engine::new(Config::from_toml_str("[[meters]]\nid = \"api_calls\"")?)?;
    let (token, http) = ("in-house-token".into(), reqwest::Client::new());
    let route = ProviderRoute::new(Arc::new(InHouseBilling { url, token, http }));
    let (spool, options) = (Arc::new(MemorySpool::new()), ReporterOptions::default());
    let reporter = Reporter::start(engine.clone(), spool, vec![route], options)?;
    engine.record_by_id("acme", "api_calls", 3)?;
    engine.record_by_id("globex", "api_calls", 2)?;
    let summary = reporter.shutdown().await?;
    println!("billed {:?}", billed.lock().unwrap().values());
    assert_eq!((summary.records_sent, billed.lock().unwrap().len()), (2, 2));
    Ok(())
}
