//! Issue 10 item 7: stopping a monetized server under load loses no answered call.
//!
//! Clients hammer a real server over TCP; the server is stopped gracefully while calls
//! are in flight, and `ReporterHandle::shutdown_after` waits for it before the final
//! checkpoint. Every call a client saw answered with 200 must be in the ledger.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use monetize_axum::RouterExt;
use monetize_core::Engine;
use monetize_core::ledger::LedgerProvider;
use monetize_core::report::{MemorySpool, ProviderRoute, Reporter, ReporterOptions};
use monetize_tests::http::{api_key_layer, key_of};

const CUSTOMERS: [&str; 2] = ["c1", "c2"];
const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_under_load_bills_every_answered_call() {
    for round in 0..3 {
        let engine = Engine::for_tests(&["calls"]);
        let ledger = Arc::new(LedgerProvider::new());
        let reporter = Reporter::start(
            engine.clone(),
            Arc::new(MemorySpool::new()),
            vec![
                ProviderRoute::new(ledger.clone()).with_report_interval(Duration::from_millis(20)),
            ],
            ReporterOptions::default()
                .with_checkpoint_interval(Duration::from_millis(20))
                .with_window(Duration::from_secs(86_400)),
        )
        .unwrap();
        let app = Router::new()
            .route("/v1/hello", get(|| async { "hello" }))
            .monetize(api_key_layer(&engine, &CUSTOMERS));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let server = tokio::spawn(async move { server.await });

        let answered = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let answered = answered.clone();
            let done = done.clone();
            let customer = CUSTOMERS[i % CUSTOMERS.len()];
            clients.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                let url = format!("http://{addr}/v1/hello");
                while !done.load(Ordering::SeqCst) {
                    match http
                        .get(&url)
                        .header("x-api-key", key_of(customer))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => {
                            if r.bytes().await.is_ok() {
                                answered.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        // the server stopped accepting
                        Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            }));
        }
        // Let traffic flow, then stop the server while calls are in flight.
        while answered.load(Ordering::SeqCst) < 300 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop.send(());
        let summary = reporter
            .shutdown_after(async move { server.await.unwrap() })
            .await
            .unwrap();
        done.store(true, Ordering::SeqCst);
        for c in clients {
            c.await.unwrap();
        }
        let answered = answered.load(Ordering::SeqCst);
        let billed: u64 = CUSTOMERS.iter().map(|c| ledger.total("calls", c)).sum();
        assert_eq!(
            billed, answered,
            "round {round}: every answered call billed once"
        );
        assert_eq!(summary.late_cells, 0, "round {round}");
        assert_eq!(summary.pending_left, 0, "round {round}");
    }
}
