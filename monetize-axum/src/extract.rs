//! Extractors: the identified [`Customer`] and a [`Usage`] handle for handler-reported
//! quantities.

use std::borrow::Cow;
use std::convert::Infallible;

use axum::Json;
use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use monetize_core::{CustomerHandle, CustomerId};
use monetize_tower::UsageRecorder;
use serde_json::json;

/// The customer the monetize layer identified.
///
/// Read from the layer's per-request scope ([`monetize_tower::current_customer`]: no
/// allocation, nothing inserted into the request), or from a [`CustomerHandle`] in the
/// request extensions when something put one there (for example
/// [`MonetizeLayer::customer_extension`](monetize_tower::MonetizeLayer::customer_extension)).
///
/// Rejects with `401` (JSON body) when the request was not identified (no layer, or a
/// [`MissingPolicy::Anonymous`](monetize_tower::MissingPolicy::Anonymous) request); use
/// `Option<Customer>` to accept anonymous requests.
///
/// ```
/// use monetize_axum::Customer;
///
/// async fn whoami(customer: Customer) -> String {
///     format!("you are {}", customer.id())
/// }
/// # let _ = axum::Router::<()>::new().route("/", axum::routing::get(whoami));
/// ```
#[derive(Clone, Debug)]
pub struct Customer(pub CustomerHandle);

impl Customer {
    /// The customer's id.
    pub fn id(&self) -> &CustomerId {
        self.0.id()
    }

    /// The customer's live handle (balance, status, period usage).
    pub fn handle(&self) -> &CustomerHandle {
        &self.0
    }
}

/// The rejection of [`Customer`]: the request was not identified.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct CustomerRejection;

impl IntoResponse for CustomerRejection {
    fn into_response(self) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({
                "error": "unauthorized",
                "reason": "unidentified",
                "message": "This endpoint needs an identified customer: send your credentials.",
            })),
        )
            .into_response()
    }
}

impl Customer {
    /// The customer the layer is serving on this thread, else a handle in the request
    /// extensions.
    fn find(parts: &Parts) -> Option<Customer> {
        monetize_tower::current_customer()
            .or_else(|| parts.extensions.get::<CustomerHandle>().cloned())
            .map(Customer)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Customer {
    type Rejection = CustomerRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Customer::find(parts).ok_or(CustomerRejection)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Customer {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(Customer::find(parts))
    }
}

/// Adds handler-reported quantities (tokens, rows, seconds) to the current request's
/// metering: meters with `value = { reported = "tokens" }` pick them up.
///
/// Free when not extracted; extracting it takes one small shared slot (pooled per
/// thread). Add before returning: when the handler returns, the `Usage` is dropped and the
/// layer meters right away (unless a meter reads the body). A clone kept alive past the
/// response head (moved into a streaming body) makes the layer meter at the end of the
/// body instead; adds after that are not metered. On a
/// request the layer does not meter (anonymous, exempt route), adds are ignored.
/// Extraction fails with `500` when no monetize layer serves the route.
///
/// ```
/// use monetize_axum::Usage;
///
/// async fn complete(usage: Usage) -> &'static str {
///     // ... call the model ...
///     usage.add("tokens", 512);
///     "done"
/// }
/// # let _ = axum::Router::<()>::new().route("/", axum::routing::post(complete));
/// ```
#[derive(Clone, Debug)]
pub struct Usage(UsageRecorder);

impl Usage {
    /// Adds `quantity` under `name` (summed with earlier adds of the same name).
    pub fn add(&self, name: impl Into<Cow<'static, str>>, quantity: u64) {
        self.0.add(name, quantity);
    }

    /// Whether the request is metered (adds count).
    pub fn is_metered(&self) -> bool {
        self.0.is_attached()
    }

    /// The underlying recorder (to move into other code that reports usage).
    pub fn recorder(&self) -> &UsageRecorder {
        &self.0
    }
}

/// The rejection of [`Usage`]: no monetize layer is serving this route.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct UsageRejection;

impl IntoResponse for UsageRejection {
    fn into_response(self) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({
                "error": "internal_error",
                "reason": "monetize_layer_missing",
                "message": "Usage reporting is not available on this route.",
            })),
        )
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Usage {
    type Rejection = UsageRejection;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        UsageRecorder::current().map(Usage).ok_or(UsageRejection)
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::get;
    use monetize_tower::MissingPolicy;
    use tower::ServiceExt;

    use super::*;
    use crate::RouterExt;
    use crate::test_support::*;

    #[tokio::test]
    async fn customer_extractor_sees_the_identified_customer() {
        let engine = engine();
        let app = Router::new()
            .route(
                "/v1/me",
                get(|c: Customer| async move { c.id().to_string() }),
            )
            .route(
                "/v1/maybe",
                get(|c: Option<Customer>| async move {
                    c.map_or("anonymous".to_owned(), |c| c.id().to_string())
                }),
            )
            .monetize(layer(&engine).on_missing(MissingPolicy::Anonymous));
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/me", Some("globex")))
            .await
            .unwrap();
        assert_eq!(body(res).await, (http::StatusCode::OK, "globex".into()));
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/maybe", None))
            .await
            .unwrap();
        assert_eq!(body(res).await, (http::StatusCode::OK, "anonymous".into()));
        // Anonymous and asking for a customer: 401 with a JSON body.
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/me", None))
            .await
            .unwrap();
        let (status, v) = json(res).await;
        assert_eq!(status, 401);
        assert_eq!(v["reason"], "unidentified");
    }

    #[tokio::test]
    async fn usage_extractor_reports_tokens() {
        let engine = engine();
        let app = Router::new()
            .route(
                "/v1/complete",
                get(|usage: Usage| async move {
                    assert!(usage.is_metered());
                    tokio::task::yield_now().await;
                    usage.add("tokens", 512);
                    usage.add("tokens", 8);
                    "done"
                }),
            )
            .monetize(layer(&engine));
        for _ in 0..2 {
            let res = app
                .clone()
                .oneshot(req("GET", "/v1/complete", Some("acme")))
                .await
                .unwrap();
            assert_eq!(body(res).await.0, 200);
        }
        assert_eq!(used(&engine, "acme", "tokens"), 1040);
        assert_eq!(used(&engine, "globex", "tokens"), 0);
    }

    #[tokio::test]
    async fn without_body_meters_the_exchange_is_metered_when_the_handler_returns() {
        let engine = engine();
        let app = Router::new()
            .route(
                "/v1/complete",
                get(|c: Customer, usage: Usage| async move {
                    usage.add("tokens", 5);
                    format!("done for {}", c.id())
                }),
            )
            .monetize(layer(&engine));
        let res = app
            .oneshot(req("GET", "/v1/complete", Some("acme")))
            .await
            .unwrap();
        // Before the body is read: the handler dropped its `Usage`, nothing reads the body.
        assert_eq!(used(&engine, "acme", "tokens"), 5);
        assert_eq!(used(&engine, "acme", "calls"), 1);
        assert_eq!(
            body(res).await,
            (http::StatusCode::OK, "done for acme".into())
        );
        assert_eq!(used(&engine, "acme", "calls"), 1);
    }

    #[tokio::test]
    async fn customer_extractor_reads_the_extension_too() {
        let engine = engine();
        // A layer outside the router: extractors run in its scope as well.
        let app = Router::new()
            .route(
                "/v1/me",
                get(|c: Customer| async move { c.id().to_string() }),
            )
            .layer(
                layer(&engine)
                    .customer_extension(true)
                    .route_source(crate::FromMatchedPath),
            );
        let res = app
            .oneshot(req("GET", "/v1/me", Some("globex")))
            .await
            .unwrap();
        assert_eq!(body(res).await, (http::StatusCode::OK, "globex".into()));
        // And with only an extension (no layer scope).
        let handle = engine.resolve("acme").unwrap();
        let app: Router = Router::new().route(
            "/v1/me",
            get(|c: Customer| async move { c.id().to_string() }),
        );
        let mut r = req("GET", "/v1/me", None);
        r.extensions_mut().insert(handle);
        let res = app.oneshot(r).await.unwrap();
        assert_eq!(body(res).await, (http::StatusCode::OK, "acme".into()));
    }

    #[tokio::test]
    async fn usage_extractor_without_the_layer_is_a_500() {
        let app: Router = Router::new().route("/", get(|_u: Usage| async { "x" }));
        let res = app.oneshot(req("GET", "/", None)).await.unwrap();
        let (status, v) = json(res).await;
        assert_eq!(status, 500);
        assert_eq!(v["reason"], "monetize_layer_missing");
    }
}
