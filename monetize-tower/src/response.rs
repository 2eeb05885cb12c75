//! Responses the layer answers by itself: blocks and identification refusals.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use monetize_core::{Allow, Block, CoreError};

/// A block turned into what goes on the wire: status, headers and the JSON body.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BlockParts {
    /// The status (402, 429, 401, 403, 503, ...).
    pub status: StatusCode,
    /// `Content-Type: application/json`, `Cache-Control: no-store`, and the block's
    /// headers (`Retry-After`, `RateLimit-*`, `X-Credits-Remaining`, the rule's own).
    pub headers: HeaderMap,
    /// The JSON body from [`Block::body`].
    pub body: Bytes,
}

impl BlockParts {
    /// Renders a block.
    pub fn new(block: &Block) -> Self {
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (k, v) in block.response_headers() {
            headers.insert(k, v);
        }
        let body = serde_json::to_vec(&block.body()).map_or_else(|_| Bytes::new(), Bytes::from);
        Self {
            status: block.status,
            headers,
            body,
        }
    }

    /// As an `http::Response` with any body that can be made from `Bytes`.
    pub fn into_response<B: From<Bytes>>(self) -> http::Response<B> {
        let mut r = http::Response::new(B::from(self.body));
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers;
        r
    }
}

const X_CREDITS_REMAINING: HeaderName = HeaderName::from_static("x-credits-remaining");
const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Adds an allowed request's headers to its response: what [`Allow::apply_headers`] adds
/// (`X-Credits-Remaining`, `RateLimit-*`, the rule's headers), with number values that
/// do not allocate ([`number_value`]; `HeaderValue::from(i64)` allocates twice).
// TODO: drop in favour of `Allow::apply_headers` once monetize-core formats numbers this
// way; `same_headers_as_core` checks the two agree.
pub(crate) fn apply_allow(allow: &Allow, headers: &mut HeaderMap) {
    if let Some(b) = allow.credits_remaining {
        headers.insert(X_CREDITS_REMAINING, number_value(b));
    }
    if let Some(rl) = &allow.rate_limit {
        let n = |v: u64| number_value(i64::try_from(v).unwrap_or(i64::MAX));
        headers.insert(RATELIMIT_LIMIT, n(rl.limit));
        headers.insert(RATELIMIT_REMAINING, n(rl.remaining));
        headers.insert(RATELIMIT_RESET, n(rl.reset_secs));
    }
    if let Some(hs) = &allow.headers {
        for (k, v) in hs.iter() {
            headers.insert(k.clone(), v.clone());
        }
    }
}

/// Bytes of a thread's number header values: values are cut from a shared chunk (a
/// reference count each) instead of allocated one by one. A chunk is freed when the last
/// response holding one of its values is dropped, so a slow client keeps at most one
/// chunk alive.
const CHUNK: usize = 512;

thread_local! {
    static DIGITS: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `n` in decimal as a header value, without allocating (but once per [`CHUNK`] bytes).
pub(crate) fn number_value(n: i64) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n).as_bytes();
    let bytes = DIGITS
        .try_with(|d| {
            let mut d = d.borrow_mut();
            if d.capacity() < digits.len() {
                *d = BytesMut::with_capacity(CHUNK);
            }
            d.extend_from_slice(digits);
            d.split().freeze()
        })
        .unwrap_or_else(|_| Bytes::copy_from_slice(digits));
    // Decimal digits and a leading `-` are always a valid header value; the checked
    // constructor says so rather than an `unsafe` promise.
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from(n))
}

/// The refusal for a customer id the engine would not resolve.
pub(crate) fn resolve_refusal(e: &CoreError) -> Block {
    match e {
        CoreError::CustomerCapReached { .. } => Block::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "customer_cap_reached",
            "The service cannot take on new customers right now; retry later.",
        ),
        CoreError::Id { .. } => Block::new(
            StatusCode::UNAUTHORIZED,
            "invalid_customer_id",
            "The credentials sent name a customer id that is not valid.",
        ),
        _ => Block::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The customer could not be resolved; retry later.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_json_and_headers() {
        let mut b = Block::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", "Wait.");
        b.retry_after_secs = Some(7);
        let p = BlockParts::new(&b);
        assert_eq!(p.status, 429);
        assert_eq!(p.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(p.headers[header::RETRY_AFTER], "7");
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["reason"], "quota_exceeded");
        assert_eq!(v["retry_after"], 7);
    }

    #[test]
    fn numbers_render_like_the_standard_library() {
        let mut kept = Vec::new();
        for n in [
            0,
            7,
            -7,
            10,
            99,
            1_000,
            -1_000_000,
            i64::MAX,
            i64::MIN,
            123_456_789,
        ] {
            let v = number_value(n);
            assert_eq!(v.to_str().unwrap(), n.to_string());
            kept.push((n, v));
        }
        // Many values over several chunks stay intact while others are dropped.
        for n in 0..2_000i64 {
            let v = number_value(n * 1_000_003);
            if n % 3 == 0 {
                kept.push((n * 1_000_003, v));
            }
        }
        for (n, v) in kept {
            assert_eq!(v, HeaderValue::from(n));
        }
    }

    #[test]
    fn same_headers_as_core() {
        use monetize_core::config::{Config, MeterConfig, PlanConfig, RateLimitConfig};
        use monetize_core::{Decision, Engine, Exchange};
        let engine = Engine::new(
            Config::builder()
                .meter(MeterConfig::count("calls"))
                .plan(
                    PlanConfig::new("prepaid")
                        .prepaid(1_000)
                        .price("calls", 1)
                        .rate_limit(RateLimitConfig::new(100, 60)),
                )
                .default_plan("prepaid")
                .build(),
        )
        .unwrap();
        let h = engine.resolve("acme").unwrap();
        let (m, hs) = (http::Method::GET, HeaderMap::new());
        let Decision::Allow(mut allow) = engine.decide(&h, &Exchange::new(&m, "/", &hs)) else {
            panic!("allowed");
        };
        assert_eq!(allow.credits_remaining, Some(1_000));
        assert!(allow.rate_limit.is_some(), "{allow:?}");
        check(allow.clone());
        allow.credits_remaining = Some(-42);
        check(allow);
    }

    fn check(mut allow: Allow) {
        allow.headers = Some(std::sync::Arc::new([(
            HeaderName::from_static("x-plan"),
            HeaderValue::from_static("pro"),
        )]));
        let (mut ours, mut core) = (HeaderMap::new(), HeaderMap::new());
        apply_allow(&allow, &mut ours);
        allow.apply_headers(&mut core);
        assert_eq!(ours, core);
        assert!(ours.len() >= 2, "{ours:?}");
        let (mut ours, mut core) = (HeaderMap::new(), HeaderMap::new());
        apply_allow(&Allow::default(), &mut ours);
        Allow::default().apply_headers(&mut core);
        assert!(ours.is_empty() && core.is_empty());
    }
}
