//! The HTTP layer's cost in-process (issue 3): the same minimal axum app (`GET /v1/hello`
//! answering `hello`) plain, with the full monetize layer (API-key identification over
//! 1,000 rotating keys, default rules, two meters, prepaid credits; with and without the
//! verified-key cache) and with `tower_governor` alone, in one group so they run back to
//! back. See `src/http_app.rs` for the variants.
//!
//! Each iteration sends one request with `oneshot` on a clone of the router and reads the
//! response body to the end (the layer meters at the end of the body). Requests are built
//! outside the timed part with `iter_batched(.., BatchSize::SmallInput)`: the setup
//! closure builds a `Request<Body>` for the next key (a `HeaderValue` clone from a
//! prebuilt `Vec`), the routine serves it; dropping the outputs is not timed either.
//!
//! ```text
//! cargo bench -p monetize-benches --bench http_layer -- --warm-up-time 1 --measurement-time 3
//! benches/scripts/http_criterion.sh      # the same, then a table of medians and differences
//! ```

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

#[path = "../src/http_app.rs"]
#[allow(dead_code)] // the command-line helpers serve the bins
mod http_app;

use http_app::{CUSTOMERS, Variant};

fn http_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let keys = http_app::key_values();
    let mut group = c.benchmark_group("http_layer");
    for variant in Variant::ALL {
        let (app, _engine) = http_app::checked_app(variant, &keys, &rt);
        let mut k = 0;
        group.bench_function(variant.name(), |b| {
            b.iter_batched(
                || {
                    k = if k + 1 == CUSTOMERS { 0 } else { k + 1 };
                    http_app::request(variant, &keys[k])
                },
                |req| black_box(rt.block_on(http_app::serve_to_end(&app, req))),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, http_layer);
criterion_main!(benches);
