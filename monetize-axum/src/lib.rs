//! # monetize-axum
//!
//! axum glue for [`monetize_tower`]: one line to monetize a [`Router`](axum::Router),
//! route templates from axum's `MatchedPath` (so `/users/{id}` is one meter filter, not
//! one per id), extractors for the identified [`Customer`] and handler-reported
//! [`Usage`], [`BlockResponse`] for block decisions, and the customer-facing
//! [`usage_routes`].
//!
//! ```
//! use axum::{Router, body::Body, routing::{get, post}};
//! use http::{Request, StatusCode};
//! use monetize_axum::{Customer, RouterExt, Usage, usage_routes};
//! use monetize_core::config::{Config, MeterConfig, PlanConfig, ValueConfig};
//! use monetize_core::{CustomerId, Engine};
//! use monetize_tower::MonetizeLayer;
//! use monetize_tower::identify::{ApiKey, KeyDirectory};
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let engine = Engine::new(
//!     Config::builder()
//!         .meter(MeterConfig::count("calls").route("/v1/*").status("2xx"))
//!         .meter(MeterConfig::sum("tokens", ValueConfig::Reported("tokens".into())))
//!         .plan(PlanConfig::new("prepaid").prepaid(10_000).price("tokens", 2))
//!         .default_plan("prepaid")
//!         .build(),
//! )
//! .unwrap();
//! let keys = KeyDirectory::new();
//! keys.insert("sk_acme", CustomerId::new("acme").unwrap());
//!
//! async fn complete(customer: Customer, usage: Usage) -> String {
//!     usage.add("tokens", 512);
//!     format!("hello {}", customer.id())
//! }
//!
//! let app = Router::new()
//!     .route("/v1/complete", post(complete))
//!     .route("/v1/users/{id}", get(|| async { "a user" }))
//!     .merge(usage_routes(engine.clone()))
//!     .monetize(MonetizeLayer::new(engine.clone(), ApiKey::new(keys)).exempt("/v1/usage*").unwrap());
//!
//! let req = Request::post("/v1/complete").header("x-api-key", "sk_acme").body(Body::empty()).unwrap();
//! let res = app.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! // Metered when the handler returned (no meter here reads the body).
//! axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
//!
//! let usage = engine.usage("acme").unwrap();
//! let tokens = usage.meters.iter().find(|m| m.meter.as_str() == "tokens").unwrap();
//! assert_eq!(tokens.used, 512);
//! assert_eq!(usage.balance, 10_000 - 512 * 2);
//! # });
//! ```
//!
//! ## Modules, in the order a request meets them
//!
//! | module | what it holds |
//! | --- | --- |
//! | `router` | [`RouterExt::monetize`] (on every route, with `MatchedPath`) and `monetize_router` (around the router) |
//! | `extract` | the [`Customer`] and [`Usage`] extractors handlers take |
//! | `response` | [`BlockResponse`]: a block decision as an axum response |
//! | `usage_route` | [`usage_routes`]: the caller's own figures |
//! | `webhook_route` | [`webhook_route`]: a provider's webhooks, verified and applied exactly once |
//! | `admin` | [`AdminRoutes`]: the operator's controls behind an admin token |
//!
//! ## Where the layer sits
//!
//! axum sets `MatchedPath` only after routing, so [`RouterExt::monetize`] applies the
//! layer with `Router::route_layer`: it wraps every route added before the call, and sees
//! the template. Requests to paths that match no route get the router's `404` without
//! being identified, governed or metered.
//!
//! [`RouterExt::monetize_router`] wraps the whole router instead: one service around the
//! app, which saves what axum charges for any route layer (a boxed route and a boxed
//! future per request). The layer then runs before routing, so it matches route templates
//! itself, from a [`RouteTable`](monetize_tower::RouteTable) of the app's routes (the
//! same matcher and syntax as axum's router); serve it with
//! `axum::serve(listener, app.into_make_service())`.
//!
//! ```
//! use axum::{Router, routing::get};
//! use monetize_axum::RouterExt;
//! use monetize_core::{Engine, config::{Config, MeterConfig}};
//! use monetize_tower::{MonetizeLayer, RouteTable};
//! use monetize_tower::identify::{ApiKey, KeyDirectory};
//!
//! let engine = Engine::new(
//!     Config::builder().meter(MeterConfig::count("user_reads").route("/v1/users/{id}")).build(),
//! )
//! .unwrap();
//! let routes = RouteTable::new(["/v1/users/{id}", "/v1/users/me"]).unwrap();
//! let layer = MonetizeLayer::new(engine, ApiKey::new(KeyDirectory::new())).route_table(routes);
//! let app = Router::new()
//!     .route("/v1/users/{id}", get(|| async { "a user" }))
//!     .route("/v1/users/me", get(|| async { "me" }))
//!     .monetize_router(layer);
//! # async fn serve(app: monetize_axum::AxumMonetize<Router, RouteTable>) {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! axum::serve(listener, app.into_make_service()).await.unwrap();
//! # }
//! # drop(serve(app));
//! ```
//!
//! ## Cost
//!
//! What the layer does per request is described in `monetize_tower`'s
//! [crate docs](monetize_tower#cost). On top of it, with [`RouterExt::monetize`] axum
//! boxes every layered route's future (any `route_layer` does, about 880 instructions a
//! request; [`RouterExt::monetize_router`] avoids it); when no meter reads
//! the body, [`AxumMonetize`] hands the handler's body on unboxed, and the [`Customer`] and
//! [`Usage`] extractors read the layer's per-request scope (nothing is inserted into the
//! request). Finalize the router with `Router::with_state` (as `axum::serve` does) when
//! you call it as a service yourself: without it axum rebuilds each route, and this
//! layer's service, on every request.

#![warn(missing_docs)]

mod admin;
mod extract;
mod response;
mod router;
mod usage_route;
mod webhook_route;

pub use admin::{ACTOR_HEADER, AdminRoutes};
pub use extract::{Customer, CustomerRejection, Usage, UsageRejection};
pub use response::BlockResponse;
pub use router::{
    AxumMonetize, AxumMonetizeLayer, AxumResponseFuture, FromMatchedPath, IntoAxumBody, RouterExt,
};
pub use usage_route::{UsageRoutes, usage_routes};
pub use webhook_route::webhook_route;

/// The [`ReserveLayer`](monetize_tower::ReserveLayer) (reserve credits before the handler,
/// settle after: see `monetize_core::credits`) with route templates from axum's
/// `MatchedPath`. Add it with `Router::route_layer` **before** [`RouterExt::monetize`], so
/// that it runs inside the metering layer:
///
/// ```
/// use axum::Router;
/// use axum::routing::post;
/// use monetize_axum::{RouterExt, Usage, reserve_layer};
/// use monetize_core::config::{Config, MeterConfig, PlanConfig, ValueConfig};
/// use monetize_core::Engine;
/// use monetize_tower::MonetizeLayer;
/// use monetize_tower::identify::FromExtension;
///
/// let config = Config::builder()
///     .meter(MeterConfig::sum("tokens", ValueConfig::Reported("tokens".into()))
///         .route("/v1/chat")
///         .reserve(4_000))
///     .plan(PlanConfig::new("prepaid").prepaid(1_000_000).price("tokens", 2))
///     .build();
/// let engine = Engine::new(config).unwrap();
/// let app: Router = Router::new()
///     .route("/v1/chat", post(|usage: Usage| async move { usage.add("tokens", 812); "..." }))
///     .route_layer(reserve_layer(&engine))
///     .monetize(MonetizeLayer::new(engine.clone(), FromExtension::new()));
/// # let _ = app;
/// ```
pub fn reserve_layer(
    engine: &monetize_core::Engine,
) -> monetize_tower::ReserveLayer<FromMatchedPath> {
    monetize_tower::ReserveLayer::new(engine).route_source(FromMatchedPath)
}

#[cfg(test)]
pub(crate) mod test_support {
    use axum::body::Body;
    use axum::response::Response;
    use http::Request;
    use monetize_core::config::{Config, ConfigBuilder, MeterConfig, PlanConfig, QuotaConfig};
    use monetize_core::config::{Period, ValueConfig};
    use monetize_core::{CustomerId, Engine};
    use monetize_tower::MonetizeLayer;
    use monetize_tower::identify::{ApiKey, KeyDirectory};

    pub fn config() -> ConfigBuilder {
        Config::builder()
            .meter(MeterConfig::count("calls").route("/v1/*").status("2xx"))
            .meter(MeterConfig::count("user_reads").route("/v1/users/{id}"))
            .meter(MeterConfig::sum(
                "tokens",
                ValueConfig::Reported("tokens".into()),
            ))
            .plan(PlanConfig::new("free").quota(QuotaConfig::new("calls", 100, Period::Month)))
            .default_plan("free")
    }

    pub fn engine() -> Engine {
        Engine::new(config().build()).unwrap()
    }

    pub fn layer(engine: &Engine) -> MonetizeLayer {
        let keys = KeyDirectory::new();
        for c in ["acme", "globex"] {
            keys.insert(format!("key-{c}"), CustomerId::new(c).unwrap());
        }
        MonetizeLayer::new(engine.clone(), ApiKey::new(keys))
    }

    pub fn req(method: &str, path: &str, customer: Option<&str>) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(c) = customer {
            b = b.header("x-api-key", format!("key-{c}"));
        }
        b.body(Body::empty()).unwrap()
    }

    pub fn used(engine: &Engine, customer: &str, meter: &str) -> u64 {
        engine.usage(customer).map_or(0, |u| {
            u.meters
                .iter()
                .find(|m| m.meter.as_str() == meter)
                .map_or(0, |m| m.used)
        })
    }

    pub async fn body(res: Response) -> (http::StatusCode, String) {
        let status = res.status();
        let b = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(b.to_vec()).unwrap())
    }

    pub async fn json(res: Response) -> (http::StatusCode, serde_json::Value) {
        let (s, b) = body(res).await;
        (
            s,
            serde_json::from_str(&b).unwrap_or(serde_json::Value::Null),
        )
    }
}
