//! A resolved customer: the handle every request of that customer goes through.

use std::fmt;
use std::sync::atomic::Ordering;

use crate::id::CustomerId;
use crate::meter::{Exchange, MeterMatch};

use super::resident::Pinned;
use super::state::{BLOCKED, CANCELLED, DELINQUENT};

/// A resolved customer: a pinned reference to its live state. Resolve once per request,
/// then every check and record goes through the handle without another lookup.
///
/// Like an `Arc`, a handle keeps the state alive (even past the engine) and clones
/// cheaply; while any handle exists, idle eviction leaves the customer in memory, so what
/// is recorded through a handle is never lost.
#[derive(Clone)]
pub struct CustomerHandle(pub(crate) Pinned);

impl CustomerHandle {
    /// The customer's id.
    pub fn id(&self) -> &CustomerId {
        &self.0.id
    }

    /// The prepaid balance in micro-credits.
    pub fn balance(&self) -> i64 {
        self.0.balance.load(Ordering::Relaxed)
    }

    /// The status flags.
    pub fn status(&self) -> CustomerStatus {
        let f = self.0.flags.load(Ordering::Relaxed);
        CustomerStatus {
            delinquent: f & DELINQUENT != 0,
            cancelled: f & CANCELLED != 0,
            blocked: f & BLOCKED != 0,
        }
    }

    /// Whether this is the shared overflow customer (admitted past the customer cap).
    pub fn is_overflow(&self) -> bool {
        self.0.is_overflow
    }

    /// The response half of two-phase metering, through the engine that resolved this
    /// handle: what [`Engine::meter_response`](crate::Engine::meter_response) on that engine
    /// does, without a reference to the engine (an HTTP layer keeps only the handle and the
    /// match until the response).
    #[inline]
    pub fn meter_response(&self, m: MeterMatch, ex: &Exchange<'_>) {
        self.0.metering.meter_response(&self.0, m, ex);
    }

    /// [`CustomerHandle::meter_response`] for a response of which the meters in play read
    /// only the status (counts whose response-side filter is at most a status range), with
    /// no exchange to build: returns `true` once recorded. Returns `false`, recording
    /// nothing, when a meter in `m` reads more of the response (or is decided whole at the
    /// response): call [`CustomerHandle::meter_response`] then.
    ///
    /// ```
    /// use monetize_core::config::{Config, MeterConfig};
    /// use monetize_core::{Engine, Exchange, ResponseView};
    ///
    /// let engine = Engine::new(
    ///     Config::builder()
    ///         .meter(MeterConfig::count("calls").route("/v1/*").status("2xx"))
    ///         .meter(MeterConfig::sum("egress", monetize_core::config::ValueConfig::ResponseBytes))
    ///         .build(),
    /// )?;
    /// let h = engine.resolve("acme")?;
    /// let (get, headers) = (http::Method::GET, http::HeaderMap::new());
    /// let request = Exchange::new(&get, "/v1/things", &headers).route(Some("/v1/things"));
    /// let m = engine.meter_request(&request);
    /// // `egress` reads the response's bytes: the status is not enough.
    /// assert!(!h.meter_status(m, http::StatusCode::OK));
    /// let response = ResponseView::new(http::StatusCode::OK, &headers, 512);
    /// h.meter_response(m, &Exchange::at_response(response, 0));
    /// assert_eq!(engine.usage("acme").map(|u| u.meters[0].used), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn meter_status(&self, m: MeterMatch, status: http::StatusCode) -> bool {
        self.0.metering.meter_status(&self.0, m, status.as_u16())
    }
}

impl fmt::Debug for CustomerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomerHandle")
            .field("id", &self.0.id)
            .field("status", &self.status())
            .field("balance", &self.balance())
            .finish()
    }
}

/// A customer's status flags, set by webhooks or operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CustomerStatus {
    /// An invoice is overdue or a payment failed.
    pub delinquent: bool,
    /// The subscription is cancelled.
    pub cancelled: bool,
    /// An operator blocked the customer.
    pub blocked: bool,
}
