//! The whole core decision for one request, 100,000 customers, API keys taken in a fixed
//! shuffled order:
//!
//! 1. API key -> customer id: a `HashMap<String, CustomerId>` (foldhash) standing in for
//!    the key directory (the real one lives in `monetize-tower`);
//! 2. `Engine::resolve`;
//! 3. `Engine::decide` with the default rules (blocked, cancelled, delinquent, credits
//!    exhausted, quota exceeded, rate limited) on a prepaid plan;
//! 4. `Engine::meter` on the completed exchange with two meters: `api_calls` (count on
//!    `/v1/*`, priced: takes credits) and `tokens` (sum of the handler-reported `tokens`).
//!
//! Groups: `decision` (100,000 customers, the figure the target is about) and
//! `decision_hot` (1,000 customers, all in cache: the compute cost alone).
//!
//! Ids: `key_lookup` (step 1 alone, the share of the stand-in), `resolve_decide_meter`
//! (steps 2-4, customer id already known), `full` (1-4).

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, StatusCode};
use monetize_benches::{engine_with_customers, query_order, splitmix64};
use monetize_core::{CustomerId, Engine, Exchange, ReportedUsage};

const CUSTOMERS: usize = 100_000;
/// A hot set that stays in cache: the compute cost without cache misses.
const HOT_CUSTOMERS: usize = 1_000;

struct Request {
    method: Method,
    path: &'static str,
    route: &'static str,
    headers: HeaderMap,
    response_headers: HeaderMap,
    reported: ReportedUsage,
}

impl Request {
    fn new() -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer mk_live_x"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static("bench/1.0"));
        let mut response_headers = HeaderMap::new();
        response_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut reported = ReportedUsage::new();
        reported.add("tokens", 1_234);
        Self {
            method: Method::POST,
            path: "/v1/completions/42",
            route: "/v1/completions/{id}",
            headers,
            response_headers,
            reported,
        }
    }
}

/// Steps 2-4 for one request; returns whether it was allowed.
#[inline]
fn resolve_decide_meter(engine: &Engine, customer: &str, r: &Request) -> bool {
    let Ok(handle) = engine.resolve(customer) else {
        return false;
    };
    let ex = Exchange::new(&r.method, r.path, &r.headers).route(Some(r.route));
    if !engine.decide(&handle, &ex).is_allow() {
        return false;
    }
    let done = ex
        .response(StatusCode::OK, &r.response_headers, 512)
        .reported(Some(&r.reported));
    engine.meter(&handle, &done);
    true
}

fn bench(c: &mut Criterion) {
    run_group(c, "decision", CUSTOMERS);
    run_group(c, "decision_hot", HOT_CUSTOMERS);
}

fn run_group(c: &mut Criterion, name: &str, customers: usize) {
    let (engine, ids) = engine_with_customers(customers);
    let keys: Vec<String> = (0..customers as u64)
        .map(|i| {
            format!(
                "mk_live_{:016x}{:016x}",
                splitmix64(i ^ 0xabc),
                splitmix64(i ^ 0xdef)
            )
        })
        .collect();
    let directory: HashMap<String, CustomerId, foldhash::fast::RandomState> = keys
        .iter()
        .zip(&ids)
        .map(|(k, id)| (k.clone(), CustomerId::new(id).expect("id")))
        .collect();
    // Filled in admission order, queried in a shuffled order (see `query_order`).
    let keys = query_order(&keys, 0xdec1de);
    let ids = query_order(&ids, 0xdec1de);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let r = Request::new();
    assert!(
        resolve_decide_meter(&engine, ids[0], &r),
        "the bench request is allowed"
    );

    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("key_lookup", |b| {
        b.iter(|| {
            i = if i + 1 == keys.len() { 0 } else { i + 1 };
            directory.get(black_box(keys[i])).map(CustomerId::as_str)
        })
    });
    let mut i = 0;
    g.bench_function("resolve_decide_meter", |b| {
        b.iter(|| {
            i = if i + 1 == ids.len() { 0 } else { i + 1 };
            resolve_decide_meter(&engine, black_box(ids[i]), &r)
        })
    });
    let mut i = 0;
    g.bench_function("full", |b| {
        b.iter(|| {
            i = if i + 1 == keys.len() { 0 } else { i + 1 };
            match directory.get(black_box(keys[i])) {
                Some(id) => resolve_decide_meter(&engine, id.as_str(), &r),
                None => false,
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
