//! Response bodies over real HTTP: exact byte counts, a streaming body cut short by a
//! client that disconnects (metered for what the body handed to the server), quantities
//! reported by handlers through the `Usage` extractor, and a JSON-field meter that reads
//! the response without changing what the client receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream;
use http::Method;
use monetize_axum::{RouterExt, Usage};
use monetize_core::Engine;
use monetize_core::config::{Config, JsonFieldConfig, MeterConfig, PlanConfig, ValueConfig};
use monetize_tests::http::{
    TestServer, api_key_layer, checkpoint_totals, eventually, key_of, used, wait_for_used, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const CUSTOMERS: [&str; 3] = ["acme", "globex", "initech"];

const CALLS: &str = "calls"; // count, /v1/* with 2xx
const EGRESS: &str = "egress_bytes"; // sum of response body bytes, /v1/*
const TOKENS: &str = "tokens"; // sum of handler-reported `tokens`
const JSON_TOKENS: &str = "json_tokens"; // sum of the response's /usage/total_tokens

/// Bytes per chunk of the streaming route.
const CHUNK: usize = 1_000;
/// Pause between two chunks of the streaming route.
const CHUNK_DELAY: Duration = Duration::from_millis(20);
/// The JSON-field meter's cap (the default, 64 KiB).
const JSON_CAP: usize = 64 * 1024;

fn engine() -> Engine {
    let config = Config::builder()
        .meter(MeterConfig::count(CALLS).route("/v1/*").status("2xx"))
        .meter(MeterConfig::sum(EGRESS, ValueConfig::ResponseBytes).route("/v1/*"))
        .meter(MeterConfig::sum(
            TOKENS,
            ValueConfig::Reported("tokens".into()),
        ))
        .meter(MeterConfig::sum(
            JSON_TOKENS,
            ValueConfig::Json(JsonFieldConfig::response("/usage/total_tokens")),
        ))
        .plan(PlanConfig::new("postpaid"))
        .default_plan("postpaid")
        .build();
    Engine::new(config).expect("valid config")
}

/// Chunks the streaming route has handed to the server so far.
#[derive(Clone, Default)]
struct Streamed(Arc<AtomicU64>);

/// `n` bytes: `0123456789012...`.
fn bytes_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'0' + (i % 10) as u8).collect()
}

/// Chunk `i` of the streaming route: `CHUNK` copies of one letter.
fn chunk(i: u64) -> Bytes {
    Bytes::from(vec![b'a' + (i % 26) as u8; CHUNK])
}

/// A completion-like JSON document, pretty-printed with non-ASCII text, reporting `n`
/// total tokens, padded with `pad` extra bytes of text.
fn completion_json(n: u64, pad: usize) -> String {
    format!(
        "{{\n  \"id\": \"cmpl-{n}\",\n  \"text\": \"héllo wörld ✓\",\n  \"padding\": \"{}\",\n  \"usage\": {{ \"prompt_tokens\": 3, \"total_tokens\": {n} }}\n}}\n",
        "p".repeat(pad)
    )
}

fn json_response(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn app(engine: &Engine, streamed: Streamed) -> Router {
    Router::new()
        .route(
            "/v1/bytes/{n}",
            get(|Path(n): Path<usize>| async move { bytes_body(n) }),
        )
        // `n` chunks of CHUNK bytes, CHUNK_DELAY apart.
        .route(
            "/v1/stream/{n}",
            get(
                |State(s): State<Streamed>, Path(n): Path<u64>| async move {
                    let chunks = stream::unfold(0u64, move |i| {
                        let s = s.clone();
                        async move {
                            if i == n {
                                return None;
                            }
                            if i > 0 {
                                tokio::time::sleep(CHUNK_DELAY).await;
                            }
                            s.0.fetch_add(1, Ordering::SeqCst);
                            Some((Ok::<_, Infallible>(chunk(i)), i + 1))
                        }
                    });
                    Body::from_stream(chunks)
                },
            ),
        )
        // Reports one token per word of the prompt, then (after an await) one more.
        .route(
            "/v1/complete",
            post(|usage: Usage, prompt: String| async move {
                let words = prompt.split_whitespace().count() as u64;
                usage.add("tokens", words);
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                usage.add("tokens", 1);
                format!("{{\"tokens\":{}}}", words + 1)
            }),
        )
        // Reports tokens and fails: the tokens still count (the meter has no filter).
        .route(
            "/v1/complete-fails",
            post(|usage: Usage| async move {
                usage.add("tokens", 7);
                (StatusCode::INTERNAL_SERVER_ERROR, "model unavailable")
            }),
        )
        .route(
            "/v1/json/{n}",
            get(|Path(n): Path<u64>| async move {
                json_response(Body::from(completion_json(n, 0)))
            }),
        )
        // The same document in three chunks, split inside the `total_tokens` number.
        .route(
            "/v1/json-chunked/{n}",
            get(|Path(n): Path<u64>| async move {
                let doc = completion_json(n, 0).into_bytes();
                let at = doc
                    .windows(b"\"total_tokens\": ".len())
                    .position(|w| w == b"\"total_tokens\": ")
                    .expect("field present")
                    + "\"total_tokens\": ".len()
                    + 1;
                let parts: Vec<Result<Bytes, Infallible>> = vec![
                    Ok(Bytes::copy_from_slice(&doc[..at - 10])),
                    Ok(Bytes::copy_from_slice(&doc[at - 10..at])),
                    Ok(Bytes::copy_from_slice(&doc[at..])),
                ];
                json_response(Body::from_stream(stream::iter(parts)))
            }),
        )
        // A document larger than the JSON meter's cap.
        .route(
            "/v1/json-big/{n}",
            get(|Path(n): Path<u64>| async move {
                json_response(Body::from(completion_json(n, JSON_CAP)))
            }),
        )
        .with_state(streamed)
        .monetize(api_key_layer(engine, &CUSTOMERS))
}

async fn start() -> (Engine, TestServer, Streamed) {
    let engine = engine();
    let streamed = Streamed::default();
    let server = TestServer::start(app(&engine, streamed.clone())).await;
    (engine, server, streamed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bytes_are_counted_exactly() {
    let (engine, server, _) = start().await;
    let client = server.client();
    let sizes = [0usize, 1, 1_234, 100_000];
    for n in sizes {
        let r = client.get(&format!("/v1/bytes/{n}"), Some("acme")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, bytes_body(n), "{n} bytes received unchanged");
    }
    let total: usize = sizes.iter().sum();
    wait_for_used(&engine, "acme", CALLS, sizes.len() as u64).await;
    wait_for_used(&engine, "acme", EGRESS, total as u64).await;

    let deltas = checkpoint_totals(&engine);
    assert_eq!(deltas[&("acme".into(), EGRESS.into())], total as u64);
    assert_eq!(deltas[&("acme".into(), CALLS.into())], sizes.len() as u64);
    assert_eq!(used(&engine, "globex", EGRESS), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_read_to_the_end_is_metered_in_full() {
    let (engine, server, streamed) = start().await;
    let n = 10u64;
    let r = server
        .client()
        .get(&format!("/v1/stream/{n}"), Some("acme"))
        .await;
    assert_eq!(r.status, 200);
    let expected: Vec<u8> = (0..n).flat_map(|i| chunk(i).to_vec()).collect();
    assert_eq!(r.body, expected);
    wait_for_used(&engine, "acme", EGRESS, n * CHUNK as u64).await;
    wait_for_used(&engine, "acme", CALLS, 1).await;
    assert_eq!(streamed.0.load(Ordering::SeqCst), n);
    server.shutdown().await;
}

/// Sends `GET path` with `customer`'s key over a raw TCP connection, reads the head and
/// the first chunk of a chunked body, and returns that chunk's data (the connection is
/// then dropped by the caller).
async fn read_head_and_first_chunk(
    stream: &mut TcpStream,
    addr: SocketAddr,
    path: &str,
    customer: &str,
) -> Vec<u8> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {}\r\n\r\n",
        key_of(customer)
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = stream.read(&mut tmp).await.expect("read response");
        assert!(
            n > 0,
            "server closed early: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&tmp[..n]);
        let Some(head_end) = find(&buf, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "head: {head}");
        assert!(head.contains("transfer-encoding: chunked"), "head: {head}");
        let body = &buf[head_end + 4..];
        let Some(line_end) = find(body, b"\r\n") else {
            continue;
        };
        let size_line = std::str::from_utf8(&body[..line_end]).expect("chunk size line");
        let size = usize::from_str_radix(size_line.trim(), 16).expect("hex chunk size");
        let data = &body[line_end + 2..];
        if data.len() >= size {
            return data[..size].to_vec();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_body_is_metered_for_what_was_sent() {
    let (engine, server, streamed) = start().await;
    // 50 chunks, 20 ms apart: a full second of body, of which the client takes one chunk.
    let n = 50u64;
    let mut tcp = TcpStream::connect(server.addr()).await.expect("connect");
    let first = within(
        "the first chunk",
        read_head_and_first_chunk(
            &mut tcp,
            server.addr(),
            &format!("/v1/stream/{n}"),
            "globex",
        ),
    )
    .await;
    assert_eq!(first, chunk(0).to_vec());
    drop(tcp);

    // The server notices at its next writes, drops the body, and that meters the exchange.
    eventually("the cut-short response to be metered", || {
        used(&engine, "globex", EGRESS) > 0
    })
    .await;
    let metered = used(&engine, "globex", EGRESS);
    let handed = streamed.0.load(Ordering::SeqCst);
    assert_eq!(
        metered,
        handed * CHUNK as u64,
        "metered bytes are exactly the chunks the body handed to the server"
    );
    assert!(
        metered >= first.len() as u64,
        "at least what the client received ({metered} bytes metered)"
    );
    assert!(
        handed < n,
        "the body was cut short ({handed} of {n} chunks), and never sent in full"
    );
    wait_for_used(&engine, "globex", CALLS, 1).await; // status 200: one call
    // Metered once: the figure does not move afterwards.
    tokio::time::sleep(CHUNK_DELAY * 5).await;
    assert_eq!(used(&engine, "globex", EGRESS), metered);
    assert_eq!(streamed.0.load(Ordering::SeqCst), handed);
    assert_eq!(
        checkpoint_totals(&engine)[&("globex".into(), EGRESS.into())],
        metered
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_reported_tokens_are_metered_exactly_per_customer() {
    let (engine, server, _) = start().await;
    let client = server.client();

    // Two customers at once, 40 prompts each, of different lengths.
    let mut tasks = JoinSet::new();
    for (c, words_per_prompt) in [("acme", 3usize), ("globex", 11usize)] {
        for i in 0..40usize {
            let client = client.clone();
            tasks.spawn(async move {
                let words = words_per_prompt + i % 4;
                let prompt = vec!["word"; words].join(" ");
                let r = client
                    .send(
                        Method::POST,
                        "/v1/complete",
                        Some(c),
                        Some(prompt.into_bytes()),
                    )
                    .await;
                assert_eq!(r.status, 200);
                assert_eq!(r.text(), format!("{{\"tokens\":{}}}", words + 1));
                (c, words as u64 + 1)
            });
        }
    }
    let mut expected = std::collections::BTreeMap::<&str, u64>::new();
    within("all completions", async {
        while let Some(r) = tasks.join_next().await {
            let (c, tokens) = r.expect("request task");
            *expected.entry(c).or_insert(0) += tokens;
        }
    })
    .await;
    // acme: 40 * (3 + 1) + 10 * (0 + 1 + 2 + 3) = 220; globex: 40 * (11 + 1) + 60 = 540.
    assert_eq!(expected["acme"], 220);
    assert_eq!(expected["globex"], 540);

    // A failing handler's report still counts; it is not a successful call.
    let r = client
        .send(Method::POST, "/v1/complete-fails", Some("initech"), None)
        .await;
    assert_eq!((r.status, r.text()), (500, "model unavailable".into()));

    wait_for_used(&engine, "acme", TOKENS, 220).await;
    wait_for_used(&engine, "globex", TOKENS, 540).await;
    wait_for_used(&engine, "initech", TOKENS, 7).await;
    wait_for_used(&engine, "acme", CALLS, 40).await;
    wait_for_used(&engine, "globex", CALLS, 40).await;
    assert_eq!(used(&engine, "initech", CALLS), 0);

    let deltas = checkpoint_totals(&engine);
    assert_eq!(deltas[&("acme".into(), TOKENS.into())], 220);
    assert_eq!(deltas[&("globex".into(), TOKENS.into())], 540);
    assert_eq!(deltas[&("initech".into(), TOKENS.into())], 7);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_field_meter_reads_the_response_and_the_client_gets_it_unchanged() {
    let (engine, server, _) = start().await;
    let client = server.client();
    let mut egress = 0u64;

    // Whole bodies.
    for n in [42u64, 1_000, 7] {
        let r = client.get(&format!("/v1/json/{n}"), Some("acme")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, completion_json(n, 0).into_bytes(), "exact bytes");
        egress += r.body.len() as u64;
    }
    wait_for_used(&engine, "acme", JSON_TOKENS, 42 + 1_000 + 7).await;

    // A document streamed in chunks, split inside the number it reads.
    let r = client.get("/v1/json-chunked/12345", Some("acme")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, completion_json(12_345, 0).into_bytes());
    egress += r.body.len() as u64;
    wait_for_used(&engine, "acme", JSON_TOKENS, 1_049 + 12_345).await;

    // Larger than the cap: not parsed, still sent in full and counted as bytes.
    let r = client.get("/v1/json-big/500", Some("acme")).await;
    assert_eq!(r.status, 200);
    assert!(r.body.len() > JSON_CAP);
    assert_eq!(r.body, completion_json(500, JSON_CAP).into_bytes());
    egress += r.body.len() as u64;
    wait_for_used(&engine, "acme", CALLS, 5).await;
    wait_for_used(&engine, "acme", EGRESS, egress).await;
    assert_eq!(
        used(&engine, "acme", JSON_TOKENS),
        13_394,
        "the big body adds nothing"
    );

    let deltas = checkpoint_totals(&engine);
    assert_eq!(deltas[&("acme".into(), JSON_TOKENS.into())], 13_394);
    assert_eq!(deltas[&("acme".into(), EGRESS.into())], egress);
    server.shutdown().await;
}

/// `max_bytes` of a JSON-field meter: a body longer than the meter's cap is not parsed
/// (the meter records nothing for it), a shorter one is, and this holds per meter even when
/// another JSON meter with a larger cap makes the layer capture more of the body. The
/// client receives every body unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_json_meter_skips_bodies_longer_than_its_own_cap() {
    const WIDE: &str = "json_tokens_wide"; // the same field, default 64 KiB cap
    let mut field = JsonFieldConfig::response("/n");
    field.max_bytes = 64;
    let engine = Engine::new(
        Config::builder()
            .meter(MeterConfig::count(CALLS))
            .meter(MeterConfig::sum(JSON_TOKENS, ValueConfig::Json(field)))
            .meter(MeterConfig::sum(
                WIDE,
                ValueConfig::Json(JsonFieldConfig::response("/n")),
            ))
            .meter(MeterConfig::sum(EGRESS, ValueConfig::ResponseBytes))
            .build(),
    )
    .expect("valid config");
    let app = Router::new()
        .route(
            "/v1/doc/{pad}",
            get(|Path(pad): Path<usize>| async move {
                json_response(Body::from(format!(
                    "{{\"n\": 5, \"pad\": \"{}\"}}",
                    "x".repeat(pad)
                )))
            }),
        )
        .monetize(api_key_layer(&engine, &CUSTOMERS));
    let server = TestServer::start(app).await;
    let client = server.client();
    let mut egress = 0;
    // 19 + pad bytes: 64 fits the small cap (pad 45), 65 does not (pad 46).
    for (pad, small_adds) in [(10usize, 5u64), (45, 5), (46, 0), (1_000, 0)] {
        let small = used(&engine, "acme", JSON_TOKENS);
        let wide = used(&engine, "acme", WIDE);
        let r = client.get(&format!("/v1/doc/{pad}"), Some("acme")).await;
        assert_eq!(r.body.len(), 19 + pad);
        assert_eq!(
            r.text(),
            format!("{{\"n\": 5, \"pad\": \"{}\"}}", "x".repeat(pad))
        );
        egress += r.body.len() as u64;
        // The byte meter comes after the JSON meters: once it shows this response, they
        // have had their say.
        wait_for_used(&engine, "acme", EGRESS, egress).await;
        wait_for_used(&engine, "acme", WIDE, wide + 5).await;
        wait_for_used(&engine, "acme", JSON_TOKENS, small + small_adds).await;
        assert_eq!(
            used(&engine, "acme", JSON_TOKENS),
            small + small_adds,
            "a {}-byte body against a 64-byte cap",
            19 + pad
        );
    }
    wait_for_used(&engine, "acme", CALLS, 4).await;
    wait_for_used(&engine, "acme", EGRESS, egress).await;
    server.shutdown().await;
}
