//! Why a webhook delivery was refused.

use http::StatusCode;

use crate::store::StoreError;

/// A refused webhook delivery. A refused delivery changes nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The body is not the provider's JSON, or lacks a field the event needs (400): the
    /// provider should not retry it unchanged.
    #[error("malformed webhook body: {0}")]
    Malformed(String),
    /// The signature, its timestamp or the credentials did not verify (401): check the
    /// endpoint secret configured for this route.
    #[error("webhook not authenticated: {0}")]
    Unauthorized(String),
    /// The body is larger than the route accepts (413).
    #[error("webhook body larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The event could not be confirmed with the provider, or its state not persisted
    /// (503): nothing was applied; the provider retries later.
    #[error("webhook not processed now: {0}")]
    Unavailable(String),
}

impl WebhookError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookError::Malformed(_) => StatusCode::BAD_REQUEST,
            WebhookError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            WebhookError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<StoreError> for WebhookError {
    fn from(e: StoreError) -> Self {
        WebhookError::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(WebhookError::Malformed("x".into()).status(), 400);
        assert_eq!(WebhookError::Unauthorized("x".into()).status(), 401);
        assert_eq!(WebhookError::TooLarge { limit: 1 }.status(), 413);
        assert_eq!(WebhookError::Unavailable("x".into()).status(), 503);
    }
}
