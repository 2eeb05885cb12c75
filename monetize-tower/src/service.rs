//! [`Monetize`]: the service.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, header};
use http_body::Body;
use monetize_core::{Allow, Exchange};
use tower_service::Service;

use crate::RequestHead;
use crate::body::{KeepBody, KeptRequest, MapBody, RequestSide, RequestTap, TapRequestBody};
use crate::future::{Pending, ResponseFuture};
use crate::response::BlockParts;
use crate::route::{FromRouteTemplate, RouteSource};
use crate::settings::{Settings, Who};

/// Identifies the customer of each request, governs it, and meters the response.
///
/// Made by [`MonetizeLayer`](crate::MonetizeLayer). For each request, in `call` (never in
/// `poll_ready`):
///
/// 1. identify the customer and resolve its handle once;
/// 2. decide: a block is answered at once with its status, JSON body and headers, and the
///    inner service is not called;
/// 3. otherwise run the request-side half of the meters' filters, call the inner service,
///    with the customer in scope while its response future is polled
///    ([`current_customer`](crate::current_customer)), and add the decision's headers
///    (`RateLimit-*`; `X-Credits-Remaining` with
///    [`credits_header`](crate::MonetizeLayer::credits_header)) to its response;
/// 4. meter when the response head arrives, or when its body ends (or is dropped) if a
///    meter reads the body (see the [crate docs](crate#when-an-exchange-is-metered)).
///
/// `M` ([`MapBody`], [`TapRequestBody`]) adapts the bodies to a framework (default
/// [`KeepBody`]). On the allow path nothing is awaited, locked or allocated by the layer
/// itself (see the [crate docs](crate#cost)).
pub struct Monetize<S, R = FromRouteTemplate, M = KeepBody> {
    inner: S,
    settings: Arc<Settings<R>>,
    _body: PhantomData<fn() -> M>,
}

impl<S, R, M> Monetize<S, R, M> {
    pub(crate) fn from_parts(inner: S, settings: Arc<Settings<R>>) -> Self {
        Self {
            inner,
            settings,
            _body: PhantomData,
        }
    }

    /// The same service, answering with the body type `M2` makes of the layer's
    /// [`ResponseBody`](crate::ResponseBody) (for example a framework's own body type; see
    /// [`MapBody`]). The conversion happens inside the layer's response future, with no
    /// future wrapped around it.
    pub fn map_body<M2>(self) -> Monetize<S, R, M2> {
        Monetize::from_parts(self.inner, self.settings)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, R, M> Clone for Monetize<S, R, M> {
    fn clone(&self) -> Self {
        Self::from_parts(self.inner.clone(), self.settings.clone())
    }
}

impl<S: fmt::Debug, R, M> fmt::Debug for Monetize<S, R, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monetize")
            .field("inner", &self.inner)
            .field("engine", &self.settings.engine)
            .finish_non_exhaustive()
    }
}

/// The request body size from `Content-Length`, 0 when absent.
#[inline]
fn content_length(h: &HeaderMap) -> u64 {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

impl<S, R, M, ReqBody, ResBody> Service<Request<ReqBody>> for Monetize<S, R, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: RouteSource,
    M: MapBody<ResBody> + TapRequestBody<ReqBody>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<M::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let settings = &*self.settings;
        // The request is read through a borrowed view and handed on as it came.
        let head = RequestHead::of(&req);
        let handle = match settings.who(&head) {
            Who::Customer(h) => h,
            Who::Anonymous => return ResponseFuture::unmetered(self.inner.call(req), None),
            Who::Refused(block) => return ResponseFuture::early(BlockParts::new(&block)),
        };
        let route = settings.route.route(&head);
        let path = head.path;
        if settings.is_exempt(route, path) {
            if settings.customer_extension {
                req.extensions_mut().insert(handle.clone());
            }
            return ResponseFuture::unmetered(self.inner.call(req), Some(handle));
        }
        let keep = &settings.keep;
        // Only meters read request bytes (rules do not).
        let request_bytes = if keep.request_bytes || keep.request_capture.is_some() {
            content_length(head.headers)
        } else {
            0
        };
        let ex = Exchange::new(head.method, path, head.headers)
            .route(route)
            .query(head.uri.query())
            .request_bytes(request_bytes);
        // The decision, and the request-side half of every meter's filter (the rest is
        // tested at the response), on one configuration; an allow is written straight
        // into the state kept until the response.
        let mut allow = Allow::default();
        let matched = match settings
            .engine
            .decide_and_match_into(&handle, &ex, &mut allow)
        {
            Ok(matched) => matched,
            Err(block) => return ResponseFuture::early(BlockParts::new(&block)),
        };
        if !settings.credits_header {
            allow.credits_remaining = None;
        }
        let kept = keep.request_at_response.then(|| {
            Box::new(KeptRequest {
                method: head.method.clone(),
                path_and_query: head.uri.path_and_query().cloned(),
                route: route.map(Box::from),
                headers: keep.request_headers.then(|| head.headers.clone()),
            })
        });
        // A tap counts the body frames the inner service reads (for request-bytes meters)
        // and captures a prefix (for request JSON-field meters, up to their cap).
        let tap = (keep.request_bytes || keep.request_capture.is_some()).then(|| {
            RequestTap::new(
                keep.request_capture.unwrap_or(0),
                (request_bytes > 0).then_some(request_bytes),
            )
        });
        if settings.customer_extension {
            req.extensions_mut().insert(handle.clone());
        }
        // `req` is handed on without being reassigned: a reassignment made the compiler
        // copy the request (224 bytes) on every request, tapped or not.
        let future = match &tap {
            None => self.inner.call(req),
            Some(t) => self.inner.call(M::tap_request(req, t.clone())),
        };
        let side = RequestSide {
            matched,
            bytes: request_bytes,
            tap,
            kept,
        };
        ResponseFuture::metered(
            future,
            handle,
            Pending {
                side,
                allow,
                keep: keep.response,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn per_request_state_stays_small() {
        // Moved a few times per request by tower and axum (memcpy), so kept small.
        let pending = std::mem::size_of::<crate::future::Pending>();
        let future = std::mem::size_of::<crate::ResponseFuture<std::future::Ready<()>>>();
        eprintln!("Pending {pending} bytes, ResponseFuture<Ready<()>> {future} bytes");
        assert!(pending <= 128, "{pending}");
        // 168: the inner future's `Option` tag, the pending state, the customer, the
        // recorder slots' `RefCell` (a borrow flag: lending them in place costs fewer
        // instructions than moving them in and out per poll) and the early response.
        assert!(future <= 168, "{future}");
    }
}
