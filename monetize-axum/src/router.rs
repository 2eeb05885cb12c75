//! Wiring: route templates from `MatchedPath`, the combined layer, and [`RouterExt`].

use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::MatchedPath;
use axum::response::Response;
use bytes::Bytes;
use http::Request;
use monetize_tower::{
    MapBody, Monetize, MonetizeLayer, RequestHead, RequestTap, ResponseBody, RouteSource, TapBody,
    TapRequestBody,
};
use tower_layer::Layer;
use tower_service::Service;

/// Reads route templates from axum's [`MatchedPath`], which the router sets after
/// routing: the monetize layer must therefore run inside the router, as
/// [`Router::route_layer`] places it ([`RouterExt::monetize`] does this).
#[derive(Clone, Copy, Debug, Default)]
pub struct FromMatchedPath;

impl RouteSource for FromMatchedPath {
    #[inline]
    fn route<'a>(&'a self, request: &RequestHead<'a>) -> Option<&'a str> {
        request
            .extensions
            .get::<MatchedPath>()
            .map(MatchedPath::as_str)
    }
}

/// The monetize layer set up for axum: the request body tapped when a meter reads a JSON
/// field of the request, and axum's own [`Response`] type.
///
/// Two places for it:
///
/// - on each route, with [`Router::route_layer`] ([`AxumMonetizeLayer::new`], what
///   [`RouterExt::monetize`] does): route templates come from axum's [`MatchedPath`];
/// - around the whole router ([`AxumMonetizeLayer::around_router`], what
///   [`RouterExt::monetize_router`] does): one service for the app, cheaper per request,
///   with route templates from the layer's own [`RouteSource`], typically a
///   [`RouteTable`](monetize_tower::RouteTable) of the app's routes.
#[derive(Clone, Debug)]
pub struct AxumMonetizeLayer<R = FromMatchedPath> {
    inner: MonetizeLayer<R>,
}

impl AxumMonetizeLayer<FromMatchedPath> {
    /// Adapts a [`MonetizeLayer`] to axum routes, reading templates from
    /// [`MatchedPath`]: apply it with [`Router::route_layer`].
    pub fn new<R: RouteSource>(layer: MonetizeLayer<R>) -> Self {
        Self::around_router(layer.route_source(FromMatchedPath))
    }
}

impl<R: RouteSource> AxumMonetizeLayer<R> {
    /// Adapts a [`MonetizeLayer`] to wrap a whole [`Router`] (or any axum service),
    /// keeping its route source: `MatchedPath` is not known yet outside the router, so
    /// give the layer a [`RouteTable`](monetize_tower::RouteTable) of the app's routes
    /// ([`MonetizeLayer::route_table`]) when meters or rules filter on templates.
    pub fn around_router(layer: MonetizeLayer<R>) -> Self {
        Self { inner: layer }
    }
}

impl<S, R: RouteSource> Layer<S> for AxumMonetizeLayer<R> {
    type Service = AxumMonetize<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        AxumMonetize {
            inner: self.inner.layer(inner).map_body(),
        }
    }
}

/// The service [`AxumMonetizeLayer`] makes: [`Monetize`] answering axum's own
/// [`Response`] type.
///
/// When the exchange was metered as the response head arrived (no meter reads the body;
/// see [`monetize_tower`'s crate docs](monetize_tower#when-an-exchange-is-metered)), the
/// handler's body is handed on as it is, so axum does not box a wrapper around it;
/// otherwise the metering body is boxed into [`Body`], as axum would box it.
#[derive(Clone, Debug)]
pub struct AxumMonetize<S, R = FromMatchedPath> {
    inner: Monetize<S, R, IntoAxumBody>,
}

impl<S, R> AxumMonetize<S, R> {
    /// The monetize service inside.
    pub fn get_ref(&self) -> &Monetize<S, R, IntoAxumBody> {
        &self.inner
    }

    /// A make-service for [`axum::serve()`]: `axum::serve(listener, app.into_make_service())`
    /// (the same as [`axum::ServiceExt::into_make_service`]).
    pub fn into_make_service(self) -> axum::routing::IntoMakeService<Self>
    where
        Self: Service<Request<Body>>,
    {
        axum::ServiceExt::into_make_service(self)
    }
}

impl<S, B, R> Service<Request<Body>> for AxumMonetize<S, R>
where
    S: Service<Request<Body>, Response = http::Response<B>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
    R: RouteSource,
{
    type Response = Response;
    type Error = S::Error;
    type Future = AxumResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.inner.call(req)
    }
}

/// The response future of [`AxumMonetize`]: the layer's own future, answering axum's
/// [`Response`] (no future is wrapped around it).
pub type AxumResponseFuture<F> = monetize_tower::ResponseFuture<F, IntoAxumBody>;

/// Adapts the layer to axum's body types: hands the layer's response body to axum as
/// [`Body`] (the handler's own body when the layer only passes it through, not boxed again
/// when it already is a [`Body`]; else the layer's body, boxed, as axum would box it), and
/// taps request bodies for request JSON-field meters by wrapping them in a [`TapBody`].
#[derive(Clone, Copy, Debug, Default)]
pub struct IntoAxumBody;

impl<B> MapBody<B> for IntoAxumBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Body = Body;

    #[inline]
    fn map_body(b: ResponseBody<B>) -> Body {
        match b.into_inner() {
            Ok(inner) => Body::new(inner),
            Err(b) => Body::new(b),
        }
    }

    #[inline]
    fn map_plain(b: B) -> Body {
        Body::new(b)
    }
}

impl TapRequestBody<Body> for IntoAxumBody {
    #[inline]
    fn tap_request(request: Request<Body>, tap: RequestTap) -> Request<Body> {
        request.map(|b| Body::new(TapBody::new(b, Some(tap))))
    }
}

/// Adds monetization to a [`Router`] in one line.
pub trait RouterExt: Sized {
    /// Applies the monetize layer to every route added so far (with
    /// [`Router::route_layer`], so that route templates are known): requests are
    /// identified, governed and metered; requests to paths no route matches get the
    /// router's `404` without identification.
    ///
    /// Add all routes first (including [`usage_routes`](crate::usage_routes)); routes
    /// added after this call are not monetized.
    ///
    /// # Panics
    /// When the router has no routes yet (as [`Router::route_layer`] does).
    fn monetize<R: RouteSource>(self, layer: MonetizeLayer<R>) -> Self;

    /// Wraps the whole router in the monetize layer: one service around the app instead
    /// of one on each route, which saves what axum charges for a route layer (a boxed
    /// route and a boxed future per request, about 880 instructions). Serve it with
    /// `axum::serve(listener, app.into_make_service())`.
    ///
    /// The layer runs before routing, so axum's `MatchedPath` is not known yet: give the
    /// layer the app's route templates with
    /// [`MonetizeLayer::route_table`](monetize_tower::MonetizeLayer::route_table) when
    /// meters, rules or exemptions filter on templates (without one, they match the raw
    /// path). Every request is identified, including those no route matches (an unknown
    /// key gets `401` rather than the router's `404`); a `404` is metered only by meters
    /// whose filters let it through (a `2xx` status filter does not).
    fn monetize_router<R: RouteSource>(self, layer: MonetizeLayer<R>) -> AxumMonetize<Self, R>;
}

impl<St> RouterExt for Router<St>
where
    St: Clone + Send + Sync + 'static,
{
    fn monetize<R: RouteSource>(self, layer: MonetizeLayer<R>) -> Self {
        self.route_layer(AxumMonetizeLayer::new(layer))
    }

    fn monetize_router<R: RouteSource>(self, layer: MonetizeLayer<R>) -> AxumMonetize<Self, R> {
        AxumMonetizeLayer::around_router(layer).layer(self)
    }
}

#[cfg(test)]
mod tests {
    use axum::Json;
    use axum::routing::{get, post};
    use monetize_core::Engine;
    use monetize_core::config::{BodySide, JsonFieldConfig, MeterConfig, ValueConfig};
    use tower::ServiceExt;

    use super::*;
    use crate::test_support::*;

    #[tokio::test]
    async fn route_templates_come_from_matched_path() {
        let engine = engine();
        let app = Router::new()
            .route("/v1/users/{id}", get(|| async { "user" }))
            .route("/v1/other", get(|| async { "other" }))
            .monetize(layer(&engine));
        for id in ["1", "2", "42"] {
            let res = app
                .clone()
                .oneshot(req("GET", &format!("/v1/users/{id}"), Some("acme")))
                .await
                .unwrap();
            assert_eq!(body(res).await, (http::StatusCode::OK, "user".into()));
        }
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/other", Some("acme")))
            .await
            .unwrap();
        body(res).await;
        assert_eq!(
            used(&engine, "acme", "user_reads"),
            3,
            "one route, three ids"
        );
        assert_eq!(used(&engine, "acme", "calls"), 4);
    }

    #[tokio::test]
    async fn around_the_router_templates_come_from_the_route_table() {
        let engine = engine();
        let routes = monetize_tower::RouteTable::new(["/v1/users/{id}", "/v1/users/me"]).unwrap();
        let app = Router::new()
            .route("/v1/users/{id}", get(|| async { "user" }))
            .route("/v1/users/me", get(|| async { "me" }))
            .monetize_router(layer(&engine).route_table(routes));
        for (path, want) in [
            ("/v1/users/1", "user"),
            ("/v1/users/42", "user"),
            ("/v1/users/me", "me"),
        ] {
            let res = app
                .clone()
                .oneshot(req("GET", path, Some("acme")))
                .await
                .unwrap();
            assert_eq!(body(res).await, (http::StatusCode::OK, want.into()));
        }
        // `/v1/users/me` is its own route, as axum routes it: not a `user_read`.
        assert_eq!(used(&engine, "acme", "user_reads"), 2);
        assert_eq!(used(&engine, "acme", "calls"), 3);
        // Before routing: a path no route matches is identified too.
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/nothing", None))
            .await
            .unwrap();
        assert_eq!(json(res).await.1["reason"], "missing_api_key");
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/nothing", Some("acme")))
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
        body(res).await;
        assert_eq!(used(&engine, "acme", "calls"), 3, "a 404 is not a 2xx call");
    }

    #[tokio::test]
    async fn around_the_router_over_tcp_with_into_make_service() {
        let engine = engine();
        let routes = monetize_tower::RouteTable::new(["/v1/users/{id}"]).unwrap();
        let app = Router::new()
            .route(
                "/v1/users/{id}",
                get(|usage: crate::Usage| async move {
                    usage.add("tokens", 5);
                    "user"
                }),
            )
            .monetize_router(layer(&engine).route_table(routes));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            tokio::spawn(async move { axum::serve(listener, app.into_make_service()).await });
        let client = reqwest::Client::new();
        for i in 0..3 {
            let res = client
                .get(format!("http://{addr}/v1/users/{i}"))
                .header("x-api-key", "key-acme")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(res.text().await.unwrap(), "user");
        }
        let res = client
            .get(format!("http://{addr}/v1/users/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(used(&engine, "acme", "user_reads"), 3);
        assert_eq!(used(&engine, "acme", "tokens"), 15);
        server.abort();
    }

    #[tokio::test]
    async fn unmatched_paths_and_wrong_methods() {
        let engine = engine();
        let app = Router::new()
            .route("/v1/users/{id}", get(|| async { "user" }))
            .monetize(layer(&engine));
        // No route: the router's 404, without identification.
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/nothing", None))
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
        // A route, unknown key: refused by the layer.
        let res = app
            .clone()
            .oneshot(req("GET", "/v1/users/1", None))
            .await
            .unwrap();
        let (status, v) = json(res).await;
        assert_eq!(status, 401);
        assert_eq!(v["reason"], "missing_api_key");
        // Wrong method on a known route: identified, 405, not counted by a 2xx meter.
        let res = app
            .clone()
            .oneshot(req("POST", "/v1/users/1", Some("acme")))
            .await
            .unwrap();
        assert_eq!(res.status(), 405);
        body(res).await;
        assert_eq!(used(&engine, "acme", "calls"), 0);
    }

    #[tokio::test]
    async fn request_json_fields_are_tapped_for_axum_bodies() {
        let mut field = JsonFieldConfig::response("/max_tokens");
        field.from = BodySide::Request;
        let cfg = config()
            .meter(MeterConfig::sum("requested", ValueConfig::Json(field)))
            .build();
        let engine = Engine::new(cfg).unwrap();
        let routes = || {
            Router::new().route(
                "/v1/chat",
                post(|Json(v): Json<serde_json::Value>| async move { v["max_tokens"].to_string() }),
            )
        };
        let r = || {
            http::Request::post("/v1/chat")
                .header("x-api-key", "key-acme")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(r#"{"max_tokens":77}"#))
                .unwrap()
        };
        // On the routes, and around the router: the handler reads the body unchanged.
        let res = routes()
            .monetize(layer(&engine))
            .oneshot(r())
            .await
            .unwrap();
        assert_eq!(body(res).await, (http::StatusCode::OK, "77".into()));
        assert_eq!(used(&engine, "acme", "requested"), 77);
        let around = routes().monetize_router(layer(&engine));
        let res = around.oneshot(r()).await.unwrap();
        assert_eq!(body(res).await, (http::StatusCode::OK, "77".into()));
        assert_eq!(used(&engine, "acme", "requested"), 154);
    }

    /// An endless body of 16 KiB chunks.
    struct Endless;

    impl http_body::Body for Endless {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            static CHUNK: [u8; 16384] = [b'x'; 16384];
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
                &CHUNK,
            )))))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_disconnecting_over_tcp_is_metered_for_what_was_sent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let cfg = config()
            .meter(MeterConfig::sum("egress", ValueConfig::ResponseBytes))
            .build();
        let engine = Engine::new(cfg).unwrap();
        let app = Router::new()
            .route(
                "/v1/download",
                get(|| async { axum::body::Body::new(Endless) }),
            )
            .monetize(layer(&engine));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /v1/download HTTP/1.1\r\nhost: x\r\nx-api-key: key-acme\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 100_000];
        let mut got = 0;
        while got < 100_000 {
            got += conn.read(&mut buf[got..]).await.unwrap();
        }
        drop(conn);

        let mut egress = 0;
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            egress = used(&engine, "acme", "egress");
            if egress > 0 {
                break;
            }
        }
        eprintln!("client read {got} bytes then closed; metered {egress} bytes");
        assert!(egress >= 80_000, "metered {egress} bytes");
        assert!(egress < 100_000_000, "metered {egress} bytes");
        assert_eq!(used(&engine, "acme", "calls"), 1);
        server.abort();
    }
}
