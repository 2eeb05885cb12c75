//! Body wrappers: the response body that meters when it ends, and the request body tap
//! that captures a JSON prefix for request-side JSON meters.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use monetize_core::{CustomerHandle, Exchange, MeterMatch, ReportedUsage, ResponseView};
use pin_project_lite::pin_project;

use crate::settlement::Deferred;
use crate::slots::{Slots, with_reported};

/// A body prefix kept for JSON-field meters, up to a cap. Past the cap it is dropped:
/// a truncated JSON document could not be read anyway.
#[derive(Debug)]
pub(crate) struct Capture {
    buf: Vec<u8>,
    cap: usize,
    over: bool,
}

impl Capture {
    pub(crate) fn new(cap: usize, hint: Option<u64>) -> Self {
        let first = hint.map_or(1024, |h| h.min(cap as u64) as usize).min(cap);
        Self {
            buf: Vec::with_capacity(first),
            cap,
            over: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        if self.over {
            return;
        }
        if self.buf.len() + data.len() > self.cap {
            self.over = true;
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    fn get(&self) -> Option<&[u8]> {
        (!self.over && !self.buf.is_empty()).then_some(self.buf.as_slice())
    }
}

#[derive(Debug)]
struct TapState {
    capture: Capture,
    /// Data bytes of the frames the inner service read.
    bytes: u64,
    /// A [`TapBody`] was wrapped around the request body: `bytes` is what was read.
    /// Without one (a plain tower stack that did not call [`TapBody::from_request`]),
    /// request bytes fall back to `Content-Length`.
    wrapped: bool,
}

/// A shared slot where [`TapBody`] counts the bytes of the request body the inner
/// service reads and captures its start, for request-bytes meters and meters that read a
/// JSON field of the request.
///
/// The layer makes one only when such a meter is configured; wrap the request body with
/// [`TapBody::from_request`] inside the layer so the counting happens (`monetize-axum`
/// does this for you). Without the wrapper, request bytes come from `Content-Length`
/// (0 for a chunked upload).
#[derive(Clone, Debug)]
pub struct RequestTap(Arc<Mutex<TapState>>);

impl RequestTap {
    pub(crate) fn new(cap: usize, hint: Option<u64>) -> Self {
        Self(Arc::new(Mutex::new(TapState {
            capture: Capture::new(cap, hint),
            bytes: 0,
            wrapped: false,
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut TapState) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

pin_project! {
    /// A request body that counts its bytes and captures its start into a [`RequestTap`],
    /// without changing what the inner service reads.
    #[derive(Debug)]
    pub struct TapBody<B> {
        #[pin]
        body: B,
        tap: Option<RequestTap>,
    }
}

impl<B> TapBody<B> {
    /// Wraps `body`, counting and capturing into `tap` (nothing when `tap` is `None`).
    pub fn new(body: B, tap: Option<RequestTap>) -> Self {
        if let Some(t) = &tap {
            t.with(|t| t.wrapped = true);
        }
        Self { body, tap }
    }

    /// Wraps a request's body with the tap the layer put into its extensions, if any.
    pub fn from_request(req: http::Request<B>) -> http::Request<TapBody<B>> {
        let tap = req.extensions().get::<RequestTap>().cloned();
        req.map(|b| TapBody::new(b, tap))
    }
}

impl<B: Body<Data = Bytes>> Body for TapBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let r = ready!(this.body.poll_frame(cx));
        if let (Some(tap), Some(Ok(frame))) = (this.tap.as_ref(), r.as_ref())
            && let Some(d) = frame.data_ref()
        {
            tap.with(|t| {
                t.bytes += d.len() as u64;
                t.capture.push(d);
            });
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What the layer hands on as the response body: its own [`ResponseBody`] ([`KeepBody`],
/// the default), or a framework's body type made from it, so that the service answers
/// with the type the framework expects without a future wrapped around the layer's
/// (`monetize-axum` converts to `axum::body::Body`, unboxing the handler's own body when
/// the layer only passes it through). Set with [`Monetize::map_body`](crate::Monetize::map_body).
pub trait MapBody<B>: 'static {
    /// The body type the service answers with.
    type Body;

    /// Converts the layer's body (called once per response).
    fn map_body(body: ResponseBody<B>) -> Self::Body;

    /// Converts a body the layer passes through untouched (the exchange was metered when
    /// the response head arrived, or is not metered). The default wraps it in a
    /// [`ResponseBody`] for [`MapBody::map_body`]; an adapter whose body type can hold `B`
    /// itself converts it directly.
    #[inline]
    fn map_plain(body: B) -> Self::Body {
        Self::map_body(ResponseBody::plain(body))
    }
}

/// Answer with the layer's own [`ResponseBody`] (the default [`MapBody`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct KeepBody;

impl<B> MapBody<B> for KeepBody {
    type Body = ResponseBody<B>;

    #[inline]
    fn map_body(body: ResponseBody<B>) -> ResponseBody<B> {
        body
    }
}

/// How the layer taps a request body when a meter reads a JSON field of the request
/// ([`Engine::json_capture`](monetize_core::Engine::json_capture)): the body must be wrapped in a [`TapBody`] that captures
/// into the request's [`RequestTap`] as the inner service reads it.
///
/// With [`KeepBody`] the layer cannot change the request body's type, so it puts the tap
/// into the request extensions for a [`TapBody::from_request`] inside the layer (a
/// `map_request` of your own); a framework adapter wraps the body itself
/// (`monetize-axum`'s, into `axum::body::Body`).
pub trait TapRequestBody<Q> {
    /// `request`, with its body set to capture into `tap`.
    fn tap_request(request: http::Request<Q>, tap: RequestTap) -> http::Request<Q>;
}

impl<Q> TapRequestBody<Q> for KeepBody {
    fn tap_request(mut request: http::Request<Q>, tap: RequestTap) -> http::Request<Q> {
        request.extensions_mut().insert(tap);
        request
    }
}

/// The header map of exchanges whose headers no meter reads.
fn empty_headers() -> &'static HeaderMap {
    static EMPTY: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    EMPTY.get_or_init(HeaderMap::new)
}

/// What the layer keeps from the request until the response is metered: which meters'
/// request-side filters matched, and the request side itself only when a meter needs it
/// again ([`Keep::request_at_response`](crate::settings::Keep)).
pub(crate) struct RequestSide {
    pub(crate) matched: MeterMatch,
    pub(crate) bytes: u64,
    pub(crate) tap: Option<RequestTap>,
    pub(crate) kept: Option<Box<KeptRequest>>,
}

/// The request side, kept for meters whose filters mix request and response tests or
/// whose values read request headers (one allocation per request, only for those).
pub(crate) struct KeptRequest {
    pub(crate) method: Method,
    /// The URI's path and query (`None` for an authority-form or empty URI).
    pub(crate) path_and_query: Option<PathAndQuery>,
    pub(crate) route: Option<Box<str>>,
    /// A copy of the request headers, only when a meter reads them.
    pub(crate) headers: Option<HeaderMap>,
}

/// The response side of an exchange, as metered.
pub(crate) struct ResponseSide<'a> {
    pub(crate) status: StatusCode,
    /// The response headers (an empty map when no meter reads them).
    pub(crate) headers: &'a HeaderMap,
    pub(crate) bytes: u64,
    pub(crate) reported: Option<&'a ReportedUsage>,
    pub(crate) body: Option<&'a [u8]>,
}

impl<'a> ResponseSide<'a> {
    /// The response side of a response metered at its head (no body read).
    #[inline]
    pub(crate) fn head<B>(res: &'a http::Response<B>, reported: Option<&'a ReportedUsage>) -> Self {
        Self {
            status: res.status(),
            headers: res.headers(),
            bytes: 0,
            reported,
            body: None,
        }
    }
}

impl RequestSide {
    /// Runs the response-side half of the meters on a response metered at its head with
    /// no handler-reported usage: when the request side was not kept (no meter reads it at
    /// the response) and its body not tapped, the exchange is only the status, the
    /// response headers and the request body size, built in one step.
    #[inline]
    pub(crate) fn meter_head<B>(&self, handle: &CustomerHandle, res: &http::Response<B>) {
        if self.kept.is_none() && self.tap.is_none() {
            // Most meters read only the status here: then no exchange is built at all.
            if !handle.meter_status(self.matched, res.status()) {
                let response = ResponseView::new(res.status(), res.headers(), 0);
                handle.meter_response(self.matched, &Exchange::at_response(response, self.bytes));
            }
        } else {
            self.meter(handle, &ResponseSide::head(res, None));
        }
    }

    /// Runs the response-side half of the meters on the exchange.
    #[inline(never)]
    pub(crate) fn meter(&self, handle: &CustomerHandle, res: &ResponseSide<'_>) {
        let tapped = self
            .tap
            .as_ref()
            .map(|t| t.0.lock().unwrap_or_else(|e| e.into_inner()));
        // Request bytes: what the inner service read of the body, when the tap was wrapped
        // around it; else the `Content-Length` read at the request.
        let (request_bytes, req_body) = match tapped.as_deref() {
            Some(t) if t.wrapped => (t.bytes, t.capture.get()),
            Some(t) => (self.bytes, t.capture.get()),
            None => (self.bytes, None),
        };
        let ex = match self.kept.as_deref() {
            Some(k) => {
                let pq = k.path_and_query.as_ref();
                Exchange::new(
                    &k.method,
                    pq.map_or("", PathAndQuery::path),
                    k.headers.as_ref().unwrap_or_else(|| empty_headers()),
                )
                .route(k.route.as_deref())
                .query(pq.and_then(PathAndQuery::query))
            }
            // No meter reads the request side any more: placeholders (the response's
            // headers stand in for the request's, which nothing reads).
            None => Exchange::new(&Method::GET, "", res.headers),
        };
        let ex = ex
            .request_bytes(request_bytes)
            .response(res.status, res.headers, res.bytes)
            .reported(res.reported)
            .bodies(req_body, res.body);
        // Through the handle: the layer keeps no reference to the engine per request.
        handle.meter_response(self.matched, &ex);
    }
}

/// Everything needed to meter one exchange at the end of its response body; meters when
/// dropped (end of body, error, or the body dropped early by a disconnecting client).
pub(crate) struct MeterState {
    pub(crate) req: RequestSide,
    pub(crate) handle: CustomerHandle,
    pub(crate) status: StatusCode,
    /// A copy of the response headers, only when a meter reads them.
    pub(crate) headers: Option<Box<HeaderMap>>,
    pub(crate) reported: Option<ReportedUsage>,
    pub(crate) slots: Slots,
    pub(crate) bytes: u64,
    pub(crate) capture: Option<Capture>,
    /// Reservations settled here, with what was reported by the end of the body.
    pub(crate) settle: Option<Deferred>,
}

impl MeterState {
    #[inline]
    fn sent(&mut self, data: &Bytes) {
        self.bytes += data.len() as u64;
        if let Some(c) = &mut self.capture {
            c.push(data);
        }
    }
}

impl Drop for MeterState {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut self.slots);
        let settle = self.settle.take();
        with_reported(self.reported.take(), slots, |reported| {
            if let Some(d) = settle {
                d.settle(reported);
            }
            self.req.meter(
                &self.handle,
                &ResponseSide {
                    status: self.status,
                    headers: self.headers.as_deref().unwrap_or_else(|| empty_headers()),
                    bytes: self.bytes,
                    reported,
                    body: self.capture.as_ref().and_then(Capture::get),
                },
            );
        });
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

pin_project! {
    /// The response body of [`Monetize`](crate::Monetize): the inner service's body,
    /// passed through, or counted (and, when a meter asks, its start captured) as it
    /// streams; or the layer's own JSON body for a refused request.
    ///
    /// When a meter reads the body (bytes, a JSON field) or handler-reported usage may
    /// still be added (see the [crate docs](crate#when-an-exchange-is-metered)), the
    /// exchange is metered when the body ends, fails, or is dropped. A client that
    /// disconnects mid-body is therefore metered for the bytes handed to the server so far
    /// (including what the socket buffered but the client never read). Otherwise it was
    /// metered when the response head arrived, and the body is passed through untouched.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
        meter: Option<MeterState>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn metered(body: B, meter: MeterState) -> Self {
        Self {
            kind: Kind::Inner { body },
            meter: Some(meter),
        }
    }

    pub(crate) fn plain(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
            meter: None,
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
            meter: None,
        }
    }

    /// Whether this body is the layer's own response (a refusal), not the inner service's.
    pub fn is_refusal(&self) -> bool {
        matches!(self.kind, Kind::Full { .. })
    }

    /// Whether the exchange is metered when this body ends (rather than already metered,
    /// or not metered).
    pub fn meters_at_end(&self) -> bool {
        self.meter.is_some()
    }

    /// The inner service's body, unwrapped, when this body only passes it through: the
    /// exchange was metered when the response head arrived (or is not metered) and the
    /// body is not a refusal. Otherwise the body itself, unchanged.
    ///
    /// Lets a framework hand on its own body type instead of boxing this one
    /// (`monetize-axum` does).
    // The `Err` is the body itself, handed back by value (boxing it would cost the
    // allocation this is here to avoid).
    #[allow(clippy::result_large_err)]
    pub fn into_inner(self) -> Result<B, Self> {
        match self {
            ResponseBody {
                kind: Kind::Inner { body },
                meter: None,
            } => Ok(body),
            other => Err(other),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Inner { body } => {
                let r = ready!(body.poll_frame(cx));
                match &r {
                    Some(Ok(frame)) => {
                        if let (Some(m), Some(d)) = (this.meter.as_mut(), frame.data_ref()) {
                            m.sent(d);
                        }
                    }
                    // The end or an error: meter now (dropping the state in place meters)
                    // rather than when the server drops the body.
                    Some(Err(_)) | None => *this.meter = None,
                }
                Poll::Ready(r)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("refusal", &self.is_refusal())
            .field("meters_at_end", &self.meter.is_some())
            .finish()
    }
}
