//! A customer's live state, shared by every request of that customer.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use crate::id::CustomerId;
use crate::meter::{Aggregation, Exchange, MeterMatch, UsageCells};
use crate::metering::Metering;

use super::resident::Pinned;

pub(crate) const DELINQUENT: u32 = 1;
pub(crate) const CANCELLED: u32 = 2;
pub(crate) const BLOCKED: u32 = 4;

/// No plan assigned.
pub(crate) const NO_PLAN: u32 = u32::MAX;

/// Everything a request needs about one customer; reached through a [`CustomerHandle`].
///
/// Laid out for the request path: what every request reads or writes comes first (status,
/// plan, last seen, balance, then the usage cells), so deciding and recording touch as few
/// cache lines as possible. (Aligning it to 64 bytes measured a little faster but pushed
/// resident memory past 200 bytes per cell.)
#[repr(C)]
pub(crate) struct CustomerState {
    pub(crate) flags: AtomicU32,
    pub(crate) plan: AtomicU32,
    /// Engine-clock seconds of the last request (coarse), for idle eviction.
    pub(crate) last_seen: AtomicU32,
    /// Pinned references, watches and the eviction seal (see [`super::resident`]).
    pub(crate) refs: super::resident::RefCount,
    /// Prepaid balance in micro-credits.
    pub(crate) balance: AtomicI64,
    /// The configuration of the engine that made this state (and a weak way to its event
    /// queue): a handle meters through it, with no reference to the engine of its own.
    pub(crate) metering: Arc<Metering>,
    /// Usage since the last checkpoint.
    pub(crate) cells: UsageCells,
    pub(crate) id: CustomerId,
    /// GCRA theoretical arrival time, nanoseconds on the engine's clock.
    pub(crate) rate_tat: AtomicU64,
    /// Engine-clock seconds (+1, 0 = never) of the last `Blocked` / `ShadowBlock` event, so
    /// a customer that keeps calling while blocked raises one event a minute, not one per
    /// request (which would crowd other customers' events out of the bounded queue).
    pub(crate) last_block_event: [AtomicU32; 2],
    /// Accounts for customers admitted past the cap.
    pub(crate) is_overflow: bool,
}

impl CustomerState {
    pub(crate) fn new(
        id: CustomerId,
        aggs: &[Aggregation],
        plan: u32,
        balance: i64,
        metering: Arc<Metering>,
    ) -> Self {
        Self {
            id,
            metering,
            flags: AtomicU32::new(0),
            plan: AtomicU32::new(plan),
            balance: AtomicI64::new(balance),
            rate_tat: AtomicU64::new(0),
            last_seen: AtomicU32::new(0),
            refs: super::resident::refs_new(),
            last_block_event: [AtomicU32::new(0), AtomicU32::new(0)],
            cells: UsageCells::new(aggs),
            is_overflow: false,
        }
    }

    #[inline]
    pub(crate) fn has(&self, flag: u32) -> bool {
        self.flags.load(Ordering::Relaxed) & flag != 0
    }

    pub(crate) fn set_flag(&self, flag: u32, on: bool) {
        if on {
            self.flags.fetch_or(flag, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!flag, Ordering::Relaxed);
        }
    }

    /// Whether a block event of `kind` (0 blocked, 1 shadow) may be raised now, at most one
    /// per `every` seconds; records it when so.
    pub(crate) fn block_event_due(&self, kind: usize, now: u32, every: u32) -> bool {
        let Some(cell) = self.last_block_event.get(kind) else {
            return false;
        };
        let last = cell.load(Ordering::Relaxed);
        let stamp = now.saturating_add(1);
        if last != 0 && stamp.saturating_sub(last) < every {
            return false;
        }
        cell.compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    pub(crate) fn touch(&self, now: u32) {
        if self.last_seen.load(Ordering::Relaxed) != now {
            self.last_seen.store(now, Ordering::Relaxed);
        }
    }
}

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
