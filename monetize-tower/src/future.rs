//! [`ResponseFuture`]: the inner service's call, or the layer's own early response.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use monetize_core::{Allow, ReportedUsage};
use pin_project_lite::pin_project;

use crate::body::{Capture, MeterState, RequestSide, ResponseBody};
use crate::response::BlockParts;
use crate::route::RouteTemplate;
use crate::usage::{self, Slot};

/// What a metered request carries from `call` to its response.
pub(crate) struct Pending<Rt> {
    pub(crate) side: RequestSide<Rt>,
    pub(crate) allow: Allow,
    pub(crate) capture: Option<usize>,
    pub(crate) keep_headers: bool,
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, Rt> {
        Inner {
            #[pin]
            future: F,
            pending: Option<Pending<Rt>>,
            slots: Vec<Slot>,
        },
        Early {
            parts: Option<BlockParts>,
        },
    }
}

pin_project! {
    /// The response future of [`Monetize`](crate::Monetize): the inner service's call, or
    /// the layer's own response for a refused request.
    pub struct ResponseFuture<F, Rt = RouteTemplate> {
        #[pin]
        kind: Kind<F, Rt>,
    }
}

impl<F, Rt> ResponseFuture<F, Rt> {
    pub(crate) fn metered(future: F, pending: Pending<Rt>) -> Self {
        Self {
            kind: Kind::Inner {
                future,
                pending: Some(pending),
                slots: Vec::new(),
            },
        }
    }

    pub(crate) fn unmetered(future: F) -> Self {
        Self {
            kind: Kind::Inner {
                future,
                pending: None,
                slots: Vec::new(),
            },
        }
    }

    pub(crate) fn early(parts: BlockParts) -> Self {
        Self {
            kind: Kind::Early { parts: Some(parts) },
        }
    }
}

impl<F, B, E, Rt> Future for ResponseFuture<F, Rt>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    Rt: AsRef<str>,
{
    type Output = Result<Response<ResponseBody<B, Rt>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Early { parts } => {
                let p = parts
                    .take()
                    .expect("ResponseFuture polled after completion");
                let mut res = Response::new(ResponseBody::full(p.body));
                *res.status_mut() = p.status;
                *res.headers_mut() = p.headers;
                Poll::Ready(Ok(res))
            }
            KindProj::Inner {
                future,
                pending,
                slots,
            } => {
                // Mark this request as the one being served on this thread, so that
                // `UsageRecorder::current` in the handler attaches to it.
                let scope = usage::enter(pending.is_some());
                let polled = future.poll(cx);
                scope.exit(slots);
                let res = ready!(polled)?;
                let Some(p) = pending.take() else {
                    return Poll::Ready(Ok(res.map(ResponseBody::plain)));
                };
                let (mut parts, body) = res.into_parts();
                p.allow.apply_headers(&mut parts.headers);
                let reported = parts.extensions.remove::<ReportedUsage>();
                let capture = p
                    .capture
                    .map(|cap| Capture::new(cap, body.size_hint().exact()));
                let meter = MeterState {
                    req: p.side,
                    status: parts.status,
                    headers: p.keep_headers.then(|| parts.headers.clone()),
                    reported,
                    slots: std::mem::take(slots),
                    bytes: 0,
                    capture,
                };
                Poll::Ready(Ok(Response::from_parts(
                    parts,
                    ResponseBody::metered(body, meter),
                )))
            }
        }
    }
}

impl<F, Rt> std::fmt::Debug for ResponseFuture<F, Rt> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { pending, .. } if pending.is_some() => "metered",
            Kind::Inner { .. } => "unmetered",
            Kind::Early { .. } => "early",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
