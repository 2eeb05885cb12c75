//! A driver for instruction counts: sets up the engine, then does N operations of one kind.
//! Run it under callgrind for two values of N; the difference in instructions divided by
//! the difference in N is the marginal cost of one operation (setup cancels out).
//!
//! ```text
//! ops <record_priced|record_unpriced|resolve_record|record_by_id|decide_meter> <N>
//! ```
//!
//! `decide_meter` is `resolve` + `decide` + `meter` as in the `decision` bench (without
//! the key lookup). The `resolve_*`, `record_by_id` and `decide_meter` kinds admit 100,000 customers and take their ids in
//! a fixed shuffled order, as the criterion bench does.

use std::hint::black_box;

use http::{HeaderMap, Method, StatusCode};
use monetize_benches::{engine_with_customers, query_order};
use monetize_core::{Exchange, ReportedUsage};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(kind), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok()))
    else {
        eprintln!(
            "usage: ops <record_priced|record_unpriced|resolve_record|record_by_id|decide_meter> <N>"
        );
        std::process::exit(2);
    };
    let (engine, ids) = engine_with_customers(100_000);
    let ids = query_order(&ids, 0x5eed);
    let priced = engine.meter_index("api_calls").expect("api_calls");
    let unpriced = engine.meter_index("tokens").expect("tokens");
    let handle = engine.resolve(&ids[0]).expect("resolve");
    let mut i = 0;
    let mut next = || {
        i = if i + 1 == ids.len() { 0 } else { i + 1 };
        black_box(ids[i].as_str())
    };
    match kind.as_str() {
        "record_priced" => (0..n).for_each(|_| engine.record(black_box(&handle), priced, 1)),
        "record_unpriced" => (0..n).for_each(|_| engine.record(black_box(&handle), unpriced, 1)),
        "resolve_record" => (0..n).for_each(|_| {
            if let Ok(h) = engine.resolve(next()) {
                engine.record(&h, priced, 1);
            }
        }),
        "record_by_id" => (0..n).for_each(|_| {
            let _ = engine.record_by_id(next(), "api_calls", 1);
        }),
        "decide_meter" => {
            let (method, headers) = (Method::POST, HeaderMap::new());
            let mut reported = ReportedUsage::new();
            reported.add("tokens", 1_234);
            (0..n).for_each(|_| {
                if let Ok(h) = engine.resolve(next()) {
                    let ex = Exchange::new(&method, "/v1/completions/42", &headers)
                        .route(Some("/v1/completions/{id}"));
                    if engine.decide(&h, &ex).is_allow() {
                        let done = ex
                            .response(StatusCode::OK, &headers, 512)
                            .reported(Some(&reported));
                        engine.meter(&h, &done);
                    }
                }
            })
        }
        other => {
            eprintln!("unknown kind {other}");
            std::process::exit(2);
        }
    }
    println!("{kind} {n} done, {} deltas", engine.checkpoint().len());
}
