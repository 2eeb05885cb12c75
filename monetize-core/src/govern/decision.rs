//! Decisions: what the HTTP layer does with a request.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::json;

use crate::id::{CustomerId, MeterId, PlanId};
use crate::rate_limit::RateLimitInfo;

const X_CREDITS_REMAINING: HeaderName = HeaderName::from_static("x-credits-remaining");
const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The outcome of governance for one request.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Decision {
    /// Call the API; add the headers the decision carries to the response.
    Allow(Allow),
    /// Answer with this response instead of calling the API.
    Block(Box<Block>),
}

impl Decision {
    /// Whether the request may go on.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// An allowed request, with the headers to add. Building it never allocates.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Allow {
    /// The prepaid balance, micro-credits, for `X-Credits-Remaining` (prepaid plans only).
    pub credits_remaining: Option<i64>,
    /// The rate limit state, for `RateLimit-*` headers (when a rate limit was checked).
    pub rate_limit: Option<RateLimitInfo>,
    /// Headers added by an `allow` rule.
    pub headers: Option<Arc<[(HeaderName, HeaderValue)]>>,
}

impl Allow {
    /// Adds `X-Credits-Remaining`, `RateLimit-*` and the rule's headers to a response.
    /// Adds nothing (and allocates nothing) when there is nothing to say.
    pub fn apply_headers(&self, headers: &mut http::HeaderMap) {
        if let Some(b) = self.credits_remaining {
            headers.insert(X_CREDITS_REMAINING, HeaderValue::from(b));
        }
        if let Some(rl) = &self.rate_limit {
            headers.insert(RATELIMIT_LIMIT, HeaderValue::from(rl.limit));
            headers.insert(RATELIMIT_REMAINING, HeaderValue::from(rl.remaining));
            headers.insert(RATELIMIT_RESET, HeaderValue::from(rl.reset_secs));
        }
        if let Some(hs) = &self.headers {
            for (k, v) in hs.iter() {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The quota that was exceeded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaInfo {
    /// The meter.
    pub meter: MeterId,
    /// Used in this period.
    pub used: u64,
    /// The period's limit.
    pub limit: u64,
    /// Unix seconds when the period ends and the quota resets.
    pub resets_at: u64,
}

/// A blocked request: status, JSON body and headers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Block {
    /// The status (402, 403, 429, 401, ...).
    pub status: StatusCode,
    /// Machine-readable reason (`credits_exhausted`, `payment_overdue`, `quota_exceeded`).
    pub reason: Arc<str>,
    /// The rule that blocked, or the layer's own check (`identify`).
    pub rule: Arc<str>,
    /// What the customer should do.
    pub message: Arc<str>,
    /// The customer, when identified.
    pub customer: Option<CustomerId>,
    /// The plan, when known.
    pub plan: Option<PlanId>,
    /// The prepaid balance (micro-credits), on prepaid plans.
    pub balance: Option<i64>,
    /// The quota exceeded, if that was the reason.
    pub quota: Option<QuotaInfo>,
    /// Rate limit state, if a rate limit was checked.
    pub rate_limit: Option<RateLimitInfo>,
    /// Seconds until retrying makes sense (`Retry-After`).
    pub retry_after_secs: Option<u64>,
    /// Extra headers from the rule.
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl Block {
    /// A block not tied to a rule (for example an unknown API key).
    pub fn new(status: StatusCode, reason: &str, message: &str) -> Self {
        Self {
            status,
            reason: Arc::from(reason),
            rule: Arc::from("identify"),
            message: Arc::from(message),
            customer: None,
            plan: None,
            balance: None,
            quota: None,
            rate_limit: None,
            retry_after_secs: None,
            headers: Arc::new([]),
        }
    }

    /// The JSON body: `error` (the status's name), `reason`, `customer`, `message`, and
    /// what applies of `balance`, `quota`, `retry_after`.
    pub fn body(&self) -> serde_json::Value {
        let error = match self.status.as_u16() {
            401 => "unauthorized",
            402 => "payment_required",
            403 => "forbidden",
            429 => "too_many_requests",
            503 => "service_unavailable",
            _ => "request_refused",
        };
        let mut body = json!({
            "error": error,
            "reason": &*self.reason,
            "message": &*self.message,
        });
        let obj = body.as_object_mut();
        if let Some(obj) = obj {
            if let Some(c) = &self.customer {
                obj.insert("customer".into(), json!(c.as_str()));
            }
            if let Some(p) = &self.plan {
                obj.insert("plan".into(), json!(p.as_str()));
            }
            if let Some(b) = self.balance {
                obj.insert("balance".into(), json!(b));
            }
            if let Some(q) = &self.quota {
                obj.insert(
                    "quota".into(),
                    json!({"meter": q.meter.as_str(), "used": q.used, "limit": q.limit, "resets_at": q.resets_at}),
                );
            }
            if let Some(r) = self.retry_after_secs {
                obj.insert("retry_after".into(), json!(r));
            }
        }
        body
    }

    /// The headers to send: `Retry-After`, `RateLimit-*`, `X-Credits-Remaining` where they
    /// apply, then the rule's own.
    pub fn response_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = Vec::with_capacity(4 + self.headers.len());
        if let Some(r) = self.retry_after_secs {
            h.push((http::header::RETRY_AFTER, HeaderValue::from(r)));
        }
        if let Some(rl) = &self.rate_limit {
            push_rate_limit(&mut h, rl);
        }
        if let Some(b) = self.balance {
            h.push((X_CREDITS_REMAINING, HeaderValue::from(b)));
        }
        h.extend(self.headers.iter().cloned());
        h
    }
}

/// Appends `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
pub(crate) fn push_rate_limit(h: &mut Vec<(HeaderName, HeaderValue)>, rl: &RateLimitInfo) {
    h.push((RATELIMIT_LIMIT, HeaderValue::from(rl.limit)));
    h.push((RATELIMIT_REMAINING, HeaderValue::from(rl.remaining)));
    h.push((RATELIMIT_RESET, HeaderValue::from(rl.reset_secs)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_names_reason_customer_and_balance() {
        let mut b = Block::new(StatusCode::PAYMENT_REQUIRED, "credits_exhausted", "Top up.");
        b.customer = Some(CustomerId::new("acme").unwrap());
        b.balance = Some(0);
        let body = b.body();
        assert_eq!(body["error"], "payment_required");
        assert_eq!(body["reason"], "credits_exhausted");
        assert_eq!(body["customer"], "acme");
        assert_eq!(body["balance"], 0);
        let hs = b.response_headers();
        assert_eq!(hs[0].0, "x-credits-remaining");
    }
}
