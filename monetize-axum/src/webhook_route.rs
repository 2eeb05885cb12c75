//! The webhook route: one per [`WebhookSource`], applying deliveries through a
//! [`WebhookProcessor`].

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use monetize_core::webhook::{WebhookError, WebhookProcessor, WebhookSource};
use serde_json::json;

#[derive(Clone)]
struct Hook {
    source: Arc<dyn WebhookSource>,
    processor: WebhookProcessor,
}

/// A `POST` route receiving `source`'s webhooks: the raw body (at most
/// [`WebhookSource::max_body`] bytes, else `413`) and the headers are verified by the
/// source (`401` for a bad signature or credentials, `400` for a malformed body), then
/// applied by `processor` before the answer: `200 {"status":"applied"}` (or `stale`,
/// `duplicate`, `ignored`); `503` when the state could not be persisted (nothing
/// applied; the provider retries). A refused delivery changes nothing.
///
/// Mount it outside the monetize layer (after `.monetize(...)`, or on a router the layer
/// does not wrap): providers carry no customer API key.
///
/// ```
/// use std::sync::Arc;
/// use axum::Router;
/// use monetize_axum::webhook_route;
/// use monetize_core::Engine;
/// use monetize_core::webhook::{MemoryWebhookLog, WebhookProcessor};
/// # use monetize_core::webhook::{Delivery, WebhookError, WebhookSource};
/// # struct MySource;
/// # #[async_trait::async_trait]
/// # impl WebhookSource for MySource {
/// #     fn provider(&self) -> &str { "mine" }
/// #     async fn verify(&self, _: &http::HeaderMap, _: &[u8]) -> Result<Delivery, WebhookError> {
/// #         Err(WebhookError::Unauthorized("no".into()))
/// #     }
/// # }
///
/// let engine = Engine::for_tests(&["calls"]);
/// let hooks = WebhookProcessor::new(engine, Arc::new(MemoryWebhookLog::new()));
/// let app: Router = Router::new().route("/webhooks/mine", webhook_route(Arc::new(MySource), hooks));
/// ```
pub fn webhook_route<S>(
    source: Arc<dyn WebhookSource>,
    processor: WebhookProcessor,
) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    post(receive).with_state(Hook { source, processor })
}

fn refuse(provider: &str, e: &WebhookError) -> Response {
    tracing::warn!(provider, status = e.status().as_u16(), error = %e, "webhook refused");
    (e.status(), Json(json!({ "error": e.to_string() }))).into_response()
}

async fn receive(State(hook): State<Hook>, headers: HeaderMap, body: Body) -> Response {
    let provider = hook.source.provider();
    let limit = hook.source.max_body();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return refuse(provider, &WebhookError::TooLarge { limit });
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refuse(provider, &WebhookError::TooLarge { limit });
        }
        Err(e) => {
            return refuse(
                provider,
                &WebhookError::Malformed(format!("body not read: {e}")),
            );
        }
    };
    let delivery = match hook.source.verify(&headers, &bytes).await {
        Ok(d) => d,
        Err(e) => return refuse(provider, &e),
    };
    match hook.processor.process(delivery).await {
        Ok(outcome) => {
            (StatusCode::OK, Json(json!({ "status": outcome.as_str() }))).into_response()
        }
        Err(e) => refuse(provider, &e),
    }
}
