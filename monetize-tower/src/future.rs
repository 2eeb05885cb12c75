//! [`ResponseFuture`]: the inner service's call, or the layer's own early response.

use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use monetize_core::{Allow, CustomerHandle, ReportedUsage};
use pin_project_lite::pin_project;

use crate::body::{
    Capture, KeepBody, MapBody, MeterState, RequestSide, ResponseBody, ResponseSide,
};
use crate::response::{BlockParts, apply_allow};
use crate::scope::{self, Frame};
use crate::settings::AtResponse;
use crate::settlement::DeferredSettlement;
use crate::slots::{Slots, with_reported};
use monetize_core::credits::SettledMeters;

/// What a metered request carries from `call` to its response.
///
/// A field that owns memory must be tested in [`Pending::owns_nothing`]: a finished
/// request's pending state is forgotten, not dropped, when that says it owns nothing.
pub(crate) struct Pending {
    pub(crate) side: RequestSide,
    pub(crate) allow: Allow,
    pub(crate) keep: AtResponse,
}

pin_project! {
    /// The response future of [`Monetize`](crate::Monetize): the inner service's call, or
    /// the layer's own response for a refused request.
    ///
    /// A struct rather than an enum of the two cases: the inner future is written straight
    /// into it, where an enum variant made the compiler copy the inner future through two
    /// temporaries on every request.
    pub struct ResponseFuture<F, M = KeepBody> {
        // The inner service's call; `None` for the layer's own (early) response.
        #[pin]
        future: Option<F>,
        pending: Option<Pending>,
        // In the thread's scope while the inner future is polled.
        customer: Option<CustomerHandle>,
        // Where the request's usage recorders attach, lent to the thread's scope while the
        // inner future is polled (in place: no move in and out per poll).
        slots: RefCell<Slots>,
        early: Option<Box<BlockParts>>,
        body: PhantomData<fn() -> M>,
    }
}

impl Pending {
    /// Whether dropping this state would release nothing.
    #[inline]
    fn owns_nothing(&self) -> bool {
        self.side.tap.is_none() && self.side.kept.is_none() && self.allow.headers.is_none()
    }
}

impl<F, M> ResponseFuture<F, M> {
    #[inline(always)]
    pub(crate) fn metered(future: F, customer: CustomerHandle, pending: Pending) -> Self {
        Self {
            future: Some(future),
            pending: Some(pending),
            customer: Some(customer),
            slots: RefCell::new(Slots::default()),
            early: None,
            body: PhantomData,
        }
    }

    /// An anonymous (no customer) or exempt request.
    #[inline]
    pub(crate) fn unmetered(future: F, customer: Option<CustomerHandle>) -> Self {
        Self {
            future: Some(future),
            pending: None,
            customer,
            slots: RefCell::new(Slots::default()),
            early: None,
            body: PhantomData,
        }
    }

    pub(crate) fn early(parts: BlockParts) -> Self {
        Self {
            future: None,
            pending: None,
            customer: None,
            slots: RefCell::new(Slots::default()),
            early: Some(Box::new(parts)),
            body: PhantomData,
        }
    }
}

impl<F, B, E, M> Future for ResponseFuture<F, M>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    M: MapBody<B>,
{
    type Output = Result<Response<M::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (pending, customer, slots) = (this.pending, this.customer, this.slots);
        match this.future.as_pin_mut() {
            None => {
                let p = this
                    .early
                    .take()
                    .expect("ResponseFuture polled after completion");
                let mut res = Response::new(M::map_body(ResponseBody::full(p.body)));
                *res.status_mut() = p.status;
                *res.headers_mut() = p.headers;
                Poll::Ready(Ok(res))
            }
            Some(future) => {
                // Mark this request as the one being served on this thread, so that
                // `current_customer` and `UsageRecorder::current` find it.
                let frame = Frame {
                    metered: pending.is_some(),
                    customer: customer.as_ref(),
                    slots: &*slots,
                };
                let mut polled = scope::set(&frame, || future.poll(cx));
                // Meters a reservation settled (recorded and charged) are not metered again;
                // reservations still to settle are settled at the end of the body.
                let mut deferred = None;
                if let (Poll::Ready(Ok(res)), Some(p)) = (&mut polled, pending.as_mut())
                    && let Some(settled) = res.extensions().get::<SettledMeters>()
                {
                    p.side.matched = settled.remove_from(p.side.matched);
                    deferred = res
                        .extensions_mut()
                        .remove::<DeferredSettlement>()
                        .and_then(|d| d.take());
                }
                let slots = slots.get_mut();
                // The response is read and changed where the inner future left it, and
                // moved once, into this future's output: taken out first, it was copied
                // (128 bytes) at each step.
                let (Poll::Ready(Ok(res)), Some(p), Some(handle)) =
                    (&mut polled, pending.as_ref(), customer.as_ref())
                else {
                    // Not ready, the inner service's error, or not metered.
                    return polled.map(|r| r.map(|res| res.map(M::map_plain)));
                };
                if p.allow.credits_remaining.is_some()
                    || p.allow.rate_limit.is_some()
                    || p.allow.headers.is_some()
                {
                    apply_allow(&p.allow, res.headers_mut());
                }
                let keep = p.keep;
                // A deferred settlement reads reported quantities at the end of the body.
                let read_reported = keep.reported || deferred.is_some();
                let reported = if read_reported {
                    res.extensions_mut().remove::<ReportedUsage>()
                } else {
                    None
                };
                // No meter reads the body, and no recorder can add any more (none was
                // taken, or the handler dropped them all): meter now and pass the body
                // through.
                if keep.at_head && (!keep.reported || slots.all_dropped()) && deferred.is_none() {
                    if keep.reported {
                        with_reported(reported, std::mem::take(slots), |reported| {
                            p.side.meter(handle, &ResponseSide::head(res, reported));
                        });
                    } else {
                        // No meter reads reported quantities (a recorder the handler took
                        // anyway is dropped with its slot, unread).
                        p.side.meter_head(handle, res);
                    }
                    // Done: metered once (read in place rather than moved out first).
                    // In the common case the pending state owns nothing (no request tap, no
                    // kept request side, no rule headers): it is let go without a call to
                    // its drop.
                    if pending.as_ref().is_some_and(Pending::owns_nothing) {
                        std::mem::forget(pending.take());
                    } else {
                        *pending = None;
                    }
                    *customer = None;
                    return polled.map(|r| r.map(|res| res.map(M::map_plain)));
                }
                let Poll::Ready(Ok(res)) = polled else {
                    // Matched above.
                    return polled.map(|r| r.map(|res| res.map(M::map_plain)));
                };
                let (parts, body) = res.into_parts();
                let (side, handle) = match (pending.take(), customer.take()) {
                    (Some(p), Some(h)) => (p.side, h),
                    // Both were there above.
                    _ => {
                        return Poll::Ready(Ok(Response::from_parts(
                            parts,
                            M::map_body(ResponseBody::plain(body)),
                        )));
                    }
                };
                let capture = keep
                    .capture
                    .map(|cap| Capture::new(cap as usize, body.size_hint().exact()));
                let meter = MeterState {
                    req: side,
                    handle,
                    status: parts.status,
                    headers: keep
                        .response_headers
                        .then(|| Box::new(parts.headers.clone())),
                    reported,
                    slots: if read_reported {
                        std::mem::take(slots)
                    } else {
                        Slots::default()
                    },
                    settle: deferred,
                    bytes: 0,
                    capture,
                };
                Poll::Ready(Ok(Response::from_parts(
                    parts,
                    M::map_body(ResponseBody::metered(body, meter)),
                )))
            }
        }
    }
}

impl<F, M> std::fmt::Debug for ResponseFuture<F, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.future.is_none() {
            "early"
        } else if self.pending.is_some() {
            "metered"
        } else {
            "unmetered"
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
