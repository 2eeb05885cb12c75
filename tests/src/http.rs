//! Helpers for the end-to-end HTTP tests (`tests/tests/http_*.rs`): serve an axum app on
//! an ephemeral loopback port over real TCP, call it with a real client, and read what the
//! engine metered.
//!
//! Metering happens when the server is done with a response body (it ends, fails or is
//! dropped), which can be a moment *after* the client has read the last byte. Tests
//! therefore never read a meter right after a response: they wait with a deadline
//! ([`eventually`], [`wait_for_used`], [`wait_for_usage`]) for the figure they expect, and
//! then assert exact equality (a figure that overshoots still fails).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use http::{HeaderMap, Method};
use monetize_core::{CustomerId, Engine};
use monetize_tower::MonetizeLayer;
use monetize_tower::identify::{ApiKey, KeyDirectory};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a bounded wait waits before failing the test.
pub const WAIT: Duration = Duration::from_secs(15);

/// The API key of a test customer: `sk_test_<customer>`.
pub fn key_of(customer: &str) -> String {
    format!("sk_test_{customer}")
}

/// A key directory holding [`key_of`] for each of `customers`.
pub fn keys(customers: &[&str]) -> KeyDirectory {
    let keys = KeyDirectory::new();
    for c in customers {
        keys.insert(key_of(c), CustomerId::new(c).expect("valid customer id"));
    }
    keys
}

/// A layer identifying `customers` by their `x-api-key` ([`key_of`]); missing and unknown
/// keys are refused with `401`.
pub fn api_key_layer(engine: &Engine, customers: &[&str]) -> MonetizeLayer {
    MonetizeLayer::new(engine.clone(), ApiKey::new(keys(customers)))
}

/// An app served with `axum::serve` on `127.0.0.1:0`.
///
/// Dropping it aborts the server task; [`TestServer::shutdown`] stops it gracefully.
pub struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Binds an ephemeral loopback port and serves `app` on it.
    pub async fn start(app: Router) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        TestServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The address the app listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A client for this server.
    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// Stops accepting, lets open connections finish (at most [`WAIT`]), and fails the
    /// test if the server ended with an error.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let res = tokio::time::timeout(WAIT, task)
                .await
                .expect("server did not shut down in time")
                .expect("server task panicked");
            res.expect("server failed");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A small HTTP client over real TCP (reqwest, connection pooling, 30 s timeout).
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

/// A response read to the end.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body bytes exactly as received.
    pub body: Vec<u8>,
}

impl Reply {
    /// A header's value as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A header parsed as an unsigned integer; panics when absent or not a number.
    pub fn header_u64(&self, name: &str) -> u64 {
        let v = self
            .header(name)
            .unwrap_or_else(|| panic!("header `{name}` missing; headers: {:?}", self.headers));
        v.parse()
            .unwrap_or_else(|_| panic!("header `{name}` is not a number: {v:?}"))
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    /// The body parsed as JSON; panics (showing the body) when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

impl Client {
    /// A client for the server at `addr`.
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("reqwest client"),
            base: format!("http://{addr}"),
        }
    }

    /// Sends `method path` with the API key of `customer` (none when `None`) and an
    /// optional body, and reads the whole response.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        customer: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        self.send_with_key(method, path, customer.map(key_of).as_deref(), body)
            .await
    }

    /// Like [`Client::send`], with a raw `x-api-key` value (for unknown keys).
    pub async fn send_with_key(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"))
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// `GET path` as `customer`.
    pub async fn get(&self, path: &str, customer: Option<&str>) -> Reply {
        self.send(Method::GET, path, customer, None).await
    }
}

/// What `customer` used of `meter` in the current period (0 when unknown).
pub fn used(engine: &Engine, customer: &str, meter: &str) -> u64 {
    engine.usage(customer).map_or(0, |u| {
        u.meters
            .iter()
            .find(|m| m.meter.as_str() == meter)
            .map_or(0, |m| m.used)
    })
}

/// Every non-zero `(customer, meter) -> used` figure of `customers`, from
/// [`Engine::usage`].
pub fn usage_map(engine: &Engine, customers: &[&str]) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for c in customers {
        if let Some(u) = engine.usage(c) {
            for m in u.meters.iter().filter(|m| m.used > 0) {
                out.insert((c.to_string(), m.meter.to_string()), m.used);
            }
        }
    }
    out
}

/// Takes a checkpoint and sums its deltas per `(customer, meter)` (non-zero only).
pub fn checkpoint_totals(engine: &Engine) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for d in engine.checkpoint() {
        let q = d.measure.quantity();
        if q > 0 {
            *out.entry((d.customer.to_string(), d.meter.to_string()))
                .or_insert(0) += q;
        }
    }
    out
}

/// Polls `cond` every 5 ms until it holds; fails the test after [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `customer`'s `meter` shows exactly `expected` (then returns), failing with
/// the figure seen when it does not within [`WAIT`].
pub async fn wait_for_used(engine: &Engine, customer: &str, meter: &str, expected: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = used(engine, customer, meter);
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{customer}/{meter}: metered {now}, expected {expected} (waited {WAIT:?})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until [`usage_map`] of `customers` equals `expected`; on timeout fails with
/// both maps.
pub async fn wait_for_usage(
    engine: &Engine,
    customers: &[&str],
    expected: &BTreeMap<(String, String), u64>,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = usage_map(engine, customers);
        if &now == expected {
            return;
        }
        if Instant::now() >= deadline {
            assert_eq!(&now, expected, "metered usage after waiting {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `fut` with a [`WAIT`] deadline, failing the test with `what` when it passes.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}
