//! Request bytes over real TCP: chunked uploads of known sizes (written by hand on the
//! socket, `Transfer-Encoding: chunked`, no `Content-Length`) are billed for every byte
//! the handler read; a body the handler never reads is billed 0, whatever
//! `Content-Length` claims (documented on `ValueConfig::RequestBytes`).

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use monetize_axum::RouterExt;
use monetize_core::Engine;
use monetize_core::config::{Config, MeterConfig, PlanConfig, ValueConfig};
use monetize_tests::http::{TestServer, api_key_layer, key_of, used, wait_for_used, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INGRESS: &str = "ingress_bytes";
const CALLS: &str = "calls";

fn engine() -> Engine {
    let config = Config::builder()
        .meter(MeterConfig::sum(INGRESS, ValueConfig::RequestBytes))
        .meter(MeterConfig::count(CALLS))
        .plan(PlanConfig::new("postpaid"))
        .default_plan("postpaid")
        .build();
    Engine::new(config).expect("valid config")
}

fn app(engine: &Engine) -> Router {
    Router::new()
        // Reads the whole body and answers its length.
        .route(
            "/v1/upload",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        // Never reads the body.
        .route("/v1/ignore", post(|| async { "ignored" }))
        .monetize(api_key_layer(engine, &["acme"]))
}

/// Sends `POST path` with a chunked body of `chunks` (each filled with `x`) or, with
/// `content_length`, a plain body of that many bytes; returns the status and body.
async fn raw_post(
    server: &TestServer,
    path: &str,
    chunks: &[usize],
    content_length: Option<usize>,
) -> (u16, String) {
    let mut s = TcpStream::connect(server.addr()).await.expect("connect");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\nx-api-key: {}\r\nconnection: close\r\n",
        key_of("acme")
    )
    .into_bytes();
    match content_length {
        Some(n) => {
            req.extend(format!("content-length: {n}\r\n\r\n").bytes());
            req.extend(std::iter::repeat_n(b'x', n));
        }
        None => {
            req.extend(b"transfer-encoding: chunked\r\n\r\n");
            for &n in chunks {
                req.extend(format!("{n:x}\r\n").bytes());
                req.extend(std::iter::repeat_n(b'x', n));
                req.extend(b"\r\n");
            }
            req.extend(b"0\r\n\r\n");
        }
    }
    s.write_all(&req).await.expect("write request");
    let mut res = Vec::new();
    // The server may close before reading an unread body: a reset after the answer is fine.
    let _ = s.read_to_end(&mut res).await;
    let text = String::from_utf8_lossy(&res).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_are_billed_for_the_bytes_read() {
    let engine = engine();
    let server = TestServer::start(app(&engine)).await;
    let mut calls = 0;
    let mut billed = 0u64;
    for chunks in [vec![1000, 1, 70_000], vec![5], vec![16_384; 9], vec![]] {
        let total: usize = chunks.iter().sum();
        let (status, body) = within("upload", raw_post(&server, "/v1/upload", &chunks, None)).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(&total.to_string()),
            "handler read {body:?}, sent {total}"
        );
        calls += 1;
        billed += total as u64;
        wait_for_used(&engine, "acme", CALLS, calls).await;
        wait_for_used(&engine, "acme", INGRESS, billed).await;
    }
    // With `Content-Length`, the same figure.
    let (status, _) = within("sized", raw_post(&server, "/v1/upload", &[], Some(4321))).await;
    assert_eq!(status, 200);
    wait_for_used(&engine, "acme", CALLS, calls + 1).await;
    wait_for_used(&engine, "acme", INGRESS, billed + 4321).await;
    assert_eq!(
        used(&engine, "acme", INGRESS),
        71_001 + 5 + 9 * 16_384 + 4321
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_handler_never_reads_is_billed_nothing() {
    let engine = engine();
    let server = TestServer::start(app(&engine)).await;
    let (status, _) = within("sized", raw_post(&server, "/v1/ignore", &[], Some(2000))).await;
    assert_eq!(status, 200);
    wait_for_used(&engine, "acme", CALLS, 1).await;
    let (status, _) = within("chunked", raw_post(&server, "/v1/ignore", &[3000, 7], None)).await;
    assert_eq!(status, 200);
    wait_for_used(&engine, "acme", CALLS, 2).await;
    assert_eq!(
        used(&engine, "acme", INGRESS),
        0,
        "the handler read no byte of either body"
    );
    server.shutdown().await;
}
