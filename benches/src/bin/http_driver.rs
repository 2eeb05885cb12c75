//! A driver for instruction counts of the HTTP-layer benchmark (issue 3): builds the app of
//! one variant, then serves N `GET /v1/hello` requests in-process (`oneshot` in a loop on a
//! current-thread runtime, rotating over the 1,000 customers' API keys, each response body
//! read to the end, where metering happens).
//!
//! First it serves one request per key (1,000) unmeasured, as a warm-up; then N requests in
//! `measured`. Run it under callgrind for two values of N, counting only inside `measured`;
//! the difference in instructions divided by the difference in N is the marginal cost of one
//! request (start-up and one-time costs cancel out):
//!
//! ```text
//! cargo build --release -p monetize-benches --bin http_driver
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*http_driver::measured*' \
//!     --callgrind-out-file=cg.monetize.2000 target/release/http_driver monetize 2000
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*http_driver::measured*' \
//!     --callgrind-out-file=cg.monetize.12000 target/release/http_driver monetize 12000
//! ```
//!
//! `benches/scripts/http_callgrind.sh` does this for every variant and prints the table.

use std::process::ExitCode;

use http_body_util::BodyExt;
use tokio::runtime::Runtime;

#[path = "../http_app.rs"]
#[allow(dead_code)] // the criterion benches' helpers
mod http_app;

use http::HeaderValue;
use http_app::{App, BODY, CUSTOMERS, Variant};

/// Serves `n` requests, rotating over the keys from `keys[0]`; returns how many were
/// answered `200 hello`.
async fn serve_n(app: &App, variant: Variant, keys: &[HeaderValue], n: u64) -> u64 {
    let mut ok = 0u64;
    let mut k = 0;
    for _ in 0..n {
        let req = http_app::request(variant, &keys[k]);
        k = if k + 1 == keys.len() { 0 } else { k + 1 };
        let res = app.serve(req).await;
        let status = res.status();
        let body = res.into_body().collect().await.map(|b| b.to_bytes());
        if status == http::StatusCode::OK && body.is_ok_and(|b| b == BODY) {
            ok += 1;
        }
    }
    ok
}

/// The measured part: callgrind counts only inside this function when run with
/// `--collect-atstart=no --toggle-collect=*http_driver::measured*`.
#[inline(never)]
fn measured(rt: &Runtime, app: &App, variant: Variant, keys: &[HeaderValue], n: u64) -> u64 {
    rt.block_on(serve_n(app, variant, keys, n))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(variant), Some(n)) = (
        args.get(1).and_then(|v| Variant::parse(v)),
        args.get(2).and_then(|n| n.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: http_driver <{}> <N>", Variant::names());
        return ExitCode::from(2);
    };
    let (app, engine) = http_app::app(variant);
    let keys = http_app::key_values();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    // Warm-up, not measured: one request per key (first-use costs: per-key state of the
    // governor, the verified-key cache, lazily initialised clocks and thread-locals).
    let warm = CUSTOMERS as u64;
    let ok =
        rt.block_on(serve_n(&app, variant, &keys, warm)) + measured(&rt, &app, variant, &keys, n);
    let metered = engine.as_ref().map(http_app::metered);
    eprintln!(
        "http_driver {}: {ok}/{} answered 200 {BODY:?}; metered (api_calls, requests or tokens) = {metered:?}",
        variant.name(),
        warm + n,
    );
    let metered_ok = metered.is_none_or(|m| m == variant.expected(warm + n));
    if ok == warm + n && metered_ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("http_driver: unexpected answers or metering");
        ExitCode::FAILURE
    }
}
