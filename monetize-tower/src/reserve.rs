//! [`ReserveLayer`]: reserve, then settle, around the handler.
//!
//! For meters with a reservation estimate (`reserve = N` in a meter's config, or
//! [`MeterConfig::reserve`](monetize_core::config::MeterConfig::reserve)), on every
//! request whose request-side filter (method, route, headers, query) the meter passes, the
//! layer holds the estimate's cost before the handler runs
//! ([`Engine::reserve`](monetize_core::Engine::reserve)) and answers `402` when the
//! balance cannot cover it. Each reservation is then settled at the meter's real value
//! (its response-side filter, handler-reported quantities from a [`UsageRecorder`] or a
//! [`ReportedUsage`] response extension, scaled as configured) and the rest is given back
//! in the same atomic step; the meter is left out of the metering layer's own recording
//! (a [`SettledMeters`] response extension), so its usage is counted and charged once.
//!
//! When it settles:
//!
//! - **at the response head** when no usage recorder of the request is alive any more
//!   (the handler returned and dropped its `Usage`);
//! - **at the end of the response body** when a recorder is still alive (moved into a
//!   streaming body, as an LLM route streams its completion): the metering layer settles
//!   where it meters at the end of the body, with everything reported by then. A body
//!   that fails, or that the server drops early because the client disconnected, settles
//!   for what was reported until then: the client consumed what was streamed to it. What
//!   a recorder adds after that is not charged.
//!
//! A handler that errors (the service's `Err`), panics, or whose client goes away before
//! the response head (the future is dropped) gives everything back: nothing of the
//! estimate is charged. See [`monetize_core::credits`] for the overspend bound (zero when
//! every priced meter of a route is reserved on; an estimate held while a body streams
//! counts as held until it settles).
//!
//! Place it **inside** [`MonetizeLayer`](crate::MonetizeLayer) (it reads the customer the
//! metering layer put in scope, and the metering layer settles at the end of the body),
//! on the routes to reserve on or around all of them (a request that matches no reserved
//! meter passes through with one configuration load).
//!
//! ```
//! use monetize_core::config::{Config, MeterConfig, PlanConfig, ValueConfig};
//! use monetize_core::Engine;
//! use monetize_tower::identify::FromExtension;
//! use monetize_tower::{MonetizeLayer, ReserveLayer};
//! use tower::ServiceBuilder;
//!
//! let config = Config::builder()
//!     .meter(MeterConfig::sum("tokens", ValueConfig::Reported("tokens".into()))
//!         .route("/v1/chat")
//!         .reserve(4_000))
//!     .plan(PlanConfig::new("prepaid").prepaid(1_000_000).price("tokens", 2))
//!     .build();
//! let engine = Engine::new(config).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(MonetizeLayer::new(engine.clone(), FromExtension::new()))
//!     .layer(ReserveLayer::new(&engine))
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     });
//! # let _ = svc;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response, StatusCode, header};
use monetize_core::credits::{Reservation, ReserveRefused, SettledMeters};
use monetize_core::{Engine, Exchange, MeterIndex, ReportedUsage};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::route::{FromRouteTemplate, RouteSource};
use crate::scope::recorders_alive;
use crate::settlement::DeferredSettlement;
use crate::{RequestHead, UsageRecorder, current_customer};

/// Reserves credits before the handler and settles them after: a reserved meter's
/// estimate is held before the inner service runs (`402` when the balance cannot cover
/// it), settled from the handler-reported usage at the response head (or at the end of
/// the body when a usage recorder lives on in it), and released when the handler errors,
/// panics or the client goes away before the response head.
#[derive(Clone)]
pub struct ReserveLayer<R = FromRouteTemplate> {
    engine: Engine,
    route: R,
}

impl ReserveLayer {
    /// A layer reserving for `engine`'s meters that have an estimate; route templates
    /// from a [`RouteTemplate`](crate::RouteTemplate) extension (else the path).
    pub fn new(engine: &Engine) -> Self {
        Self {
            engine: engine.clone(),
            route: FromRouteTemplate,
        }
    }
}

impl<R> ReserveLayer<R> {
    /// Reads route templates from `route` (as [`MonetizeLayer::route_source`]
    /// does).
    ///
    /// [`MonetizeLayer::route_source`]: crate::MonetizeLayer::route_source
    pub fn route_source<R2: RouteSource>(self, route: R2) -> ReserveLayer<R2> {
        ReserveLayer {
            engine: self.engine,
            route,
        }
    }
}

impl<R> std::fmt::Debug for ReserveLayer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReserveLayer").finish_non_exhaustive()
    }
}

impl<S, R: Clone> Layer<S> for ReserveLayer<R> {
    type Service = Reserve<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Reserve {
            inner,
            engine: self.engine.clone(),
            route: self.route.clone(),
        }
    }
}

/// The service of [`ReserveLayer`].
#[derive(Clone)]
pub struct Reserve<S, R = FromRouteTemplate> {
    inner: S,
    engine: Engine,
    route: R,
}

impl<S, R> std::fmt::Debug for Reserve<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reserve").finish_non_exhaustive()
    }
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for Reserve<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
    R: RouteSource,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ReserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let todo = if self.engine.has_reservations() {
            let head = RequestHead::of(&req);
            let ex = Exchange::new(head.method, head.path, head.headers)
                .route(self.route.route(&head))
                .query(head.uri.query());
            self.engine.reservations_for(self.engine.meter_request(&ex))
        } else {
            Vec::new()
        };
        ReserveFuture {
            inner: self.inner.call(req),
            engine: (!todo.is_empty()).then(|| self.engine.clone()),
            todo,
            held: Vec::new(),
        }
    }
}

pin_project! {
    /// The response future of [`Reserve`]: holds the reservations (drop guards) while the
    /// inner service runs.
    pub struct ReserveFuture<F> {
        #[pin]
        inner: F,
        engine: Option<Engine>,
        todo: Vec<(MeterIndex, u64)>,
        held: Vec<Reservation>,
    }
}

impl<F> std::fmt::Debug for ReserveFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReserveFuture")
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

/// The `402` for an estimate the balance cannot cover.
fn payment_required<B: From<String>>(needed: i64, balance: i64) -> Response<B> {
    let body = serde_json::json!({
        "error": "payment_required",
        "reason": "credits_insufficient",
        "message": "Your credit balance cannot cover this request's reservation. Top up your credits to continue.",
        "needed": needed,
        "balance": balance,
    })
    .to_string();
    let mut res = Response::new(B::from(body));
    *res.status_mut() = StatusCode::PAYMENT_REQUIRED;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&balance.to_string()) {
        res.headers_mut().insert("x-credits-remaining", v);
    }
    res
}

/// What the handler reported: a [`ReportedUsage`] response extension plus what its
/// recorders added.
fn reported<B>(res: &Response<B>) -> Option<ReportedUsage> {
    let mut all = res.extensions().get::<ReportedUsage>().cloned();
    if let Some(rec) = UsageRecorder::current() {
        let snap = rec.snapshot();
        if !snap.is_empty() {
            let all = all.get_or_insert_with(ReportedUsage::new);
            for (name, q) in snap.iter() {
                all.add(name.to_owned(), q);
            }
        }
    }
    all
}

impl<F, B, E> Future for ReserveFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<String>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(engine) = this.engine.take() {
            // First poll: the metering layer has the customer in scope now.
            if let Some(customer) = current_customer() {
                for (meter, estimate) in this.todo.drain(..) {
                    match engine.reserve(&customer, meter, estimate) {
                        Ok(r) => this.held.push(r),
                        Err(ReserveRefused::InsufficientCredits { needed, balance }) => {
                            // Whatever this request already held goes back.
                            this.held.clear();
                            let mut res = payment_required(needed, balance);
                            // Refused before the handler, like a block: not metered.
                            res.extensions_mut().insert(SettledMeters::all());
                            return Poll::Ready(Ok(res));
                        }
                        // Not reservable: the configuration is validated so that every
                        // estimate is on a reservable meter; nothing to hold.
                        Err(_) => {}
                    }
                }
            }
        }
        match ready!(this.inner.poll(cx)) {
            Ok(mut res) => {
                if !this.held.is_empty() {
                    let mut settled = SettledMeters::default();
                    for r in this.held.iter() {
                        settled.add(r.meter());
                    }
                    let held = std::mem::take(this.held);
                    if recorders_alive() {
                        // The handler may report more from its body: the metering layer
                        // settles at the end of the body.
                        let deferred =
                            DeferredSettlement::new(held, res.status(), res.headers().clone());
                        res.extensions_mut().insert(deferred);
                    } else {
                        let reported = reported(&res);
                        for r in held {
                            // A cost beyond the balance is recorded as usage and floors
                            // the balance at zero (`Settlement::uncollected`).
                            let _ =
                                r.settle_response(res.status(), res.headers(), reported.as_ref());
                        }
                    }
                    res.extensions_mut().insert(settled);
                }
                Poll::Ready(Ok(res))
            }
            Err(e) => {
                // The handler failed: everything held goes back.
                this.held.clear();
                Poll::Ready(Err(e))
            }
        }
    }
}
