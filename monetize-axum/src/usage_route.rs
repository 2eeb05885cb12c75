//! The customer-facing usage route.

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use monetize_core::Engine;
use serde_json::json;

use crate::Customer;

/// A router answering `GET /v1/usage` with the **calling** customer's current figures:
/// plan, prepaid balance, status, and per meter the usage of the current period, the
/// quota limit, what remains and when it resets. See [`UsageRoutes`] to change the path.
///
/// The route is scoped to the caller: `?customer=<other>` and `GET /v1/usage/<other>`
/// are refused with `403`. Mount it before applying the layer, and exempt it so that a
/// customer who is out of credits can still read its balance:
///
/// ```
/// use axum::{Router, routing::get};
/// use monetize_axum::{RouterExt, usage_routes};
/// use monetize_core::Engine;
/// use monetize_tower::{MonetizeLayer, identify::{ApiKey, KeyDirectory}};
///
/// let engine = Engine::for_tests(&["calls"]);
/// let layer = MonetizeLayer::new(engine.clone(), ApiKey::new(KeyDirectory::new()))
///     .exempt("/v1/usage*").unwrap();
/// let app: Router = Router::new()
///     .route("/v1/hello", get(|| async { "hello" }))
///     .merge(usage_routes(engine))
///     .monetize(layer);
/// ```
pub fn usage_routes<S>(engine: Engine) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    UsageRoutes::new(engine).into_router()
}

/// Builds the usage route with another path.
#[derive(Clone, Debug)]
pub struct UsageRoutes {
    engine: Engine,
    path: String,
}

impl UsageRoutes {
    /// The usage route at `/v1/usage`.
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            path: "/v1/usage".into(),
        }
    }

    /// Serves it at `path` instead (it must start with `/`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        let p: String = path.into();
        self.path = p.trim_end_matches('/').to_owned();
        self
    }

    /// The pattern to pass to [`MonetizeLayer::exempt`](monetize_tower::MonetizeLayer::exempt)
    /// (`/v1/usage*`).
    pub fn exempt_pattern(&self) -> String {
        format!("{}*", self.path)
    }

    /// The router: `GET {path}` and `GET {path}/{customer}`.
    pub fn into_router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let e1 = self.engine.clone();
        let e2 = self.engine;
        Router::new()
            .route(
                &self.path,
                get(move |c: Customer, RawQuery(q): RawQuery| {
                    let engine = e1.clone();
                    async move {
                        if let Some(other) = q.as_deref().and_then(asked_customer)
                            && other != c.id().as_str()
                        {
                            return forbidden();
                        }
                        usage_of(&engine, &c)
                    }
                }),
            )
            .route(
                &format!("{}/{{customer}}", self.path),
                get(move |c: Customer, Path(other): Path<String>| {
                    let engine = e2.clone();
                    async move {
                        if other != c.id().as_str() {
                            return forbidden();
                        }
                        usage_of(&engine, &c)
                    }
                }),
            )
    }
}

/// The value of a `customer` query parameter, if any (undecoded).
fn asked_customer(q: &str) -> Option<&str> {
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == "customer" || k == "customer_id").then_some(v)
    })
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({
            "error": "forbidden",
            "reason": "other_customer",
            "message": "The usage route shows only your own usage.",
        })),
    )
        .into_response()
}

fn usage_of(engine: &Engine, c: &Customer) -> Response {
    let mut res = match engine.usage(c.id().as_str()) {
        Some(u) => Json(u).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({
                "error": "not_found",
                "reason": "no_usage",
                "message": "No usage is recorded for this customer yet.",
            })),
        )
            .into_response(),
    };
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use monetize_core::StateChange;
    use tower::ServiceExt;

    use super::*;
    use crate::RouterExt;
    use crate::test_support::*;

    fn app(engine: &Engine) -> Router {
        Router::new()
            .route("/v1/hello", get(|| async { "hello" }))
            .merge(usage_routes(engine.clone()))
            .monetize(layer(engine).exempt("/v1/usage*").unwrap())
    }

    #[tokio::test]
    async fn shows_the_callers_own_usage() {
        let engine = engine();
        let app = app(&engine);
        for (c, n) in [("acme", 3), ("globex", 1)] {
            for _ in 0..n {
                let res = app
                    .clone()
                    .oneshot(req("GET", "/v1/hello", Some(c)))
                    .await
                    .unwrap();
                body(res).await;
            }
        }
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/usage", Some("acme")))
            .await
            .unwrap();
        assert_eq!(res.headers()["cache-control"], "no-store");
        let (status, v) = json(res).await;
        assert_eq!(status, 200);
        assert_eq!(v["customer"], "acme");
        assert_eq!(v["plan"], "free");
        let calls = v["meters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["meter"] == "calls")
            .unwrap();
        assert_eq!(
            calls["used"], 3,
            "the usage route itself is exempt from metering"
        );
        assert_eq!(calls["limit"], 100);
        assert_eq!(calls["remaining"], 97);
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/usage/acme", Some("acme")))
            .await
            .unwrap();
        assert_eq!(json(res).await.1["customer"], "acme");
    }

    #[tokio::test]
    async fn refuses_another_customers_usage() {
        let engine = engine();
        let app = app(&engine);
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/hello", Some("globex")))
            .await
            .unwrap();
        body(res).await;
        for path in [
            "/v1/usage?customer=globex",
            "/v1/usage?x=1&customer_id=globex",
            "/v1/usage/globex",
        ] {
            let res = app
                .clone()
                .oneshot(req("GET", path, Some("acme")))
                .await
                .unwrap();
            let (status, v) = json(res).await;
            assert_eq!(status, 403, "{path}");
            assert_eq!(v["reason"], "other_customer");
            assert!(!v.to_string().contains("meters"));
        }
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/usage?customer=acme", Some("acme")))
            .await
            .unwrap();
        assert_eq!(json(res).await.1["customer"], "acme");
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/usage", None))
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }

    #[tokio::test]
    async fn a_blocked_customer_can_still_read_its_usage() {
        let engine = engine();
        engine.apply("acme", StateChange::Delinquent(true)).unwrap();
        let app = app(&engine);
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/hello", Some("acme")))
            .await
            .unwrap();
        assert_eq!(res.status(), 402);
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/usage", Some("acme")))
            .await
            .unwrap();
        let (status, v) = json(res).await;
        assert_eq!(status, 200);
        assert_eq!(v["status"]["delinquent"], true);
    }

    #[tokio::test]
    async fn path_is_configurable() {
        let engine = engine();
        let routes = UsageRoutes::new(engine.clone()).path("/account/usage/");
        assert_eq!(routes.exempt_pattern(), "/account/usage*");
        let app: Router = Router::new()
            .merge(routes.into_router())
            .monetize(layer(&engine));
        let res = app
            .oneshot(req("GET", "/account/usage", Some("acme")))
            .await
            .unwrap();
        assert_eq!(json(res).await.1["customer"], "acme");
    }
}
