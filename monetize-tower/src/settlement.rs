//! [`DeferredSettlement`]: reservations whose settlement waits for the end of the
//! response body, because a usage recorder is still alive when the response head comes
//! (moved into a streaming body).
//!
//! The reserving layer hands the reservations over in the response extensions; the
//! metering layer takes them out and settles them where it meters at the end of the body
//! ([`MeterState`](crate::body)), with everything reported by then. The body ending,
//! failing, or being dropped early (the client disconnected) settles: a client that goes
//! away mid-stream consumed what was streamed to it, so what was reported until then is
//! charged and the rest of the estimate given back.

use std::sync::{Arc, Mutex, PoisonError};

use http::{HeaderMap, StatusCode};
use monetize_core::ReportedUsage;
use monetize_core::credits::Reservation;

/// Reservations to settle at the end of the response body (a response extension from
/// the reserving layer to the metering layer). Dropped unsettled (no metering layer took
/// it out), its reservations give everything back.
#[derive(Clone)]
pub(crate) struct DeferredSettlement(Arc<Mutex<Option<Deferred>>>);

/// What a deferred settlement settles: the reservations, and the response head their
/// meters' response-side filters read.
pub(crate) struct Deferred {
    held: Vec<Reservation>,
    status: StatusCode,
    headers: HeaderMap,
}

impl DeferredSettlement {
    pub(crate) fn new(held: Vec<Reservation>, status: StatusCode, headers: HeaderMap) -> Self {
        Self(Arc::new(Mutex::new(Some(Deferred {
            held,
            status,
            headers,
        }))))
    }

    /// The reservations, once (`None` when already taken).
    pub(crate) fn take(&self) -> Option<Deferred> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl Deferred {
    /// Settles every reservation at its meter's value for the response head and
    /// `reported` (everything the handler reported until now).
    pub(crate) fn settle(self, reported: Option<&ReportedUsage>) {
        for r in self.held {
            // A cost beyond the balance is recorded as usage and floors the balance at
            // zero (`Settlement::uncollected`).
            let _ = r.settle_response(self.status, &self.headers, reported);
        }
    }
}
