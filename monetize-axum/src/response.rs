//! [`BlockResponse`]: a block decision as an axum response.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use monetize_core::Block;
use monetize_tower::BlockParts;

/// A block decision as a response: its status, JSON body and headers, exactly as the
/// layer sends them. Useful in handlers that decide themselves (for example with
/// [`Engine::decide`](monetize_core::Engine::decide) on a second, costlier operation).
#[derive(Clone, Debug)]
pub struct BlockResponse(pub Box<Block>);

impl From<Block> for BlockResponse {
    fn from(b: Block) -> Self {
        Self(Box::new(b))
    }
}

impl From<Box<Block>> for BlockResponse {
    fn from(b: Box<Block>) -> Self {
        Self(b)
    }
}

impl IntoResponse for BlockResponse {
    fn into_response(self) -> Response {
        BlockParts::new(&self.0).into_response::<Body>()
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;
    use crate::test_support::json;

    #[tokio::test]
    async fn block_response_has_status_headers_and_json() {
        let mut b = Block::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Slow down.");
        b.retry_after_secs = Some(3);
        let res = BlockResponse::from(b).into_response();
        assert_eq!(res.headers()["retry-after"], "3");
        assert_eq!(res.headers()["content-type"], "application/json");
        let (status, v) = json(res).await;
        assert_eq!(status, 429);
        assert_eq!(v["error"], "too_many_requests");
        assert_eq!(v["reason"], "rate_limited");
    }
}
