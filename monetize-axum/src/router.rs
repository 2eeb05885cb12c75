//! Wiring: route templates from `MatchedPath`, the combined layer, and [`RouterExt`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::Body;
use axum::extract::MatchedPath;
use axum::response::Response;
use bytes::Bytes;
use http::Request;
use monetize_tower::{Monetize, MonetizeLayer, RequestTap, ResponseBody, RouteSource, TapBody};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// axum's matched route template (`/users/{id}`), kept until the response is metered.
#[derive(Clone, Debug)]
pub struct MatchedRoute(MatchedPath);

impl AsRef<str> for MatchedRoute {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

/// Reads route templates from axum's [`MatchedPath`], which the router sets after
/// routing: the monetize layer must therefore run inside the router, as
/// [`Router::route_layer`] places it ([`RouterExt::monetize`] does this).
#[derive(Clone, Copy, Debug, Default)]
pub struct FromMatchedPath;

impl RouteSource for FromMatchedPath {
    type Route = MatchedRoute;

    #[inline]
    fn route(&self, extensions: &http::Extensions) -> Option<MatchedRoute> {
        extensions.get::<MatchedPath>().cloned().map(MatchedRoute)
    }
}

/// The monetize layer set up for axum: route templates from [`MatchedPath`], and the
/// request body tapped when a meter reads a JSON field of the request.
///
/// Apply it with [`Router::route_layer`] (or [`RouterExt::monetize`]).
#[derive(Clone, Debug)]
pub struct AxumMonetizeLayer {
    inner: MonetizeLayer<FromMatchedPath>,
    tap: bool,
}

impl AxumMonetizeLayer {
    /// Adapts a [`MonetizeLayer`] to axum.
    pub fn new<R: RouteSource>(layer: MonetizeLayer<R>) -> Self {
        let inner = layer.route_source(FromMatchedPath);
        let tap = inner.taps_request_body();
        Self { inner, tap }
    }
}

impl<S> Layer<S> for AxumMonetizeLayer {
    type Service = AxumMonetize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AxumMonetize {
            inner: self.inner.layer(TapRequest {
                inner,
                enabled: self.tap,
            }),
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
pub struct AxumMonetize<S> {
    inner: Monetize<TapRequest<S>, FromMatchedPath>,
}

impl<S> AxumMonetize<S> {
    /// The monetize service inside.
    pub fn get_ref(&self) -> &Monetize<TapRequest<S>, FromMatchedPath> {
        &self.inner
    }
}

impl<S, B> Service<Request<Body>> for AxumMonetize<S>
where
    S: Service<Request<Body>, Response = http::Response<B>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
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
        AxumResponseFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The response future of [`AxumMonetize`].
    pub struct AxumResponseFuture<F> {
        #[pin]
        inner: monetize_tower::ResponseFuture<F, MatchedRoute>,
    }
}

impl<F, B, E> Future for AxumResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(self.project().inner.poll(cx))?;
        Poll::Ready(Ok(res.map(into_axum_body)))
    }
}

impl<F> std::fmt::Debug for AxumResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AxumResponseFuture")
            .field("inner", &self.inner)
            .finish()
    }
}

/// The handler's own body when the layer only passes it through (no box when it is
/// already a [`Body`]), else the layer's body, boxed.
#[inline]
fn into_axum_body<B>(b: ResponseBody<B, MatchedRoute>) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    match b.into_inner() {
        Ok(inner) => Body::new(inner),
        Err(b) => Body::new(b),
    }
}

/// Wraps the request body with [`TapBody`] when the monetize layer asked for it (only
/// when a meter reads a JSON field of the request); otherwise passes requests through.
#[derive(Clone, Debug)]
pub struct TapRequest<S> {
    inner: S,
    enabled: bool,
}

impl<S> Service<Request<Body>> for TapRequest<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if self.enabled
            && let Some(tap) = req.extensions().get::<RequestTap>().cloned()
        {
            return self
                .inner
                .call(req.map(|b| Body::new(TapBody::new(b, Some(tap)))));
        }
        self.inner.call(req)
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
}

impl<St> RouterExt for Router<St>
where
    St: Clone + Send + Sync + 'static,
{
    fn monetize<R: RouteSource>(self, layer: MonetizeLayer<R>) -> Self {
        self.route_layer(AxumMonetizeLayer::new(layer))
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
        let app = Router::new()
            .route(
                "/v1/chat",
                post(|Json(v): Json<serde_json::Value>| async move { v["max_tokens"].to_string() }),
            )
            .monetize(layer(&engine));
        let r = http::Request::post("/v1/chat")
            .header("x-api-key", "key-acme")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(r#"{"max_tokens":77}"#))
            .unwrap();
        let res = app.oneshot(r).await.unwrap();
        assert_eq!(body(res).await, (http::StatusCode::OK, "77".into()));
        assert_eq!(used(&engine, "acme", "requested"), 77);
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
