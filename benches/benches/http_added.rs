//! What each layer adds per request over the plain app (issue 3), in-process, measured
//! interleaved so that the shared machine's drift cancels.
//!
//! `http_layer` times each variant on its own, a few seconds each, back to back; on this
//! machine the speed drifts by ±15 % over tens of seconds, so the difference of two such
//! medians moves by hundreds of nanoseconds from run to run. Here every sample alternates
//! chunks of [`CHUNK`] requests to the baseline app and to the variant (requests built
//! outside the timed part, each sent with `oneshot` on a clone of the app and its body read
//! to the end; the two in turn going first), and the sample's time is the variant's minus the baseline's: criterion's
//! median of it is the time the layer adds per request. A sample where the baseline came out
//! slower counts as zero (the figure can only err high). The baseline is `plain`, except for
//! `governor-ip`: `plain-ci`.
//!
//! ```text
//! cargo bench -p monetize-benches --bench http_added -- --warm-up-time 1 --measurement-time 5
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../src/http_app.rs"]
#[allow(dead_code)] // the command-line helpers serve the bins
mod http_app;

use http_app::{App, Variant};

/// Requests per chunk: long enough to time (tens of microseconds), short enough that the
/// machine's speed cannot change between a chunk and the next.
const CHUNK: u64 = 32;

/// One side of the comparison: an app, its variant and where it is in the key rotation.
struct Side {
    variant: Variant,
    app: App,
    next_key: usize,
}

impl Side {
    fn new(variant: Variant, keys: &[http::HeaderValue], rt: &tokio::runtime::Runtime) -> Self {
        let (app, _engine) = http_app::checked_app(variant, keys, rt);
        Self {
            variant,
            app,
            next_key: 0,
        }
    }

    /// Times `n` requests, built before the clock starts.
    fn time(
        &mut self,
        n: u64,
        keys: &[http::HeaderValue],
        rt: &tokio::runtime::Runtime,
    ) -> Duration {
        let reqs: Vec<_> = (0..n)
            .map(|_| {
                self.next_key = (self.next_key + 1) % keys.len();
                http_app::request(self.variant, &keys[self.next_key])
            })
            .collect();
        let start = Instant::now();
        for req in reqs {
            black_box(rt.block_on(http_app::serve_to_end(&self.app, req)));
        }
        start.elapsed()
    }
}

fn http_added(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let keys = http_app::key_values();
    let mut plain = Side::new(Variant::Plain, &keys, &rt);
    let mut plain_ci = Side::new(Variant::PlainCi, &keys, &rt);
    let mut group = c.benchmark_group("http_added");
    for variant in [
        Variant::NoopLayer,
        Variant::Monetize,
        Variant::MonetizeRouter,
        Variant::MonetizeTokens,
        Variant::Governor,
        Variant::GovernorRouter,
        Variant::GovernorIp,
    ] {
        let mut side = Side::new(variant, &keys, &rt);
        let base = if variant == Variant::GovernorIp {
            &mut plain_ci
        } else {
            &mut plain
        };
        group.bench_function(variant.name(), |b| {
            b.iter_custom(|iters| {
                let (mut base_time, mut side_time) = (Duration::ZERO, Duration::ZERO);
                let (mut left, mut base_first) = (iters, true);
                while left > 0 {
                    // A B, then B A: neither side always runs on what the other warmed.
                    let n = left.min(CHUNK);
                    if base_first {
                        base_time += base.time(n, &keys, &rt);
                        side_time += side.time(n, &keys, &rt);
                    } else {
                        side_time += side.time(n, &keys, &rt);
                        base_time += base.time(n, &keys, &rt);
                    }
                    base_first = !base_first;
                    left -= n;
                }
                side_time.saturating_sub(base_time)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, http_added);
criterion_main!(benches);
