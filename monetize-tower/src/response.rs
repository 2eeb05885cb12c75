//! Responses the layer answers by itself: blocks and identification refusals.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use monetize_core::{Block, CoreError};

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
}
