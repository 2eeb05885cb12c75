//! Reserve, then settle: credits held for a request before its handler runs, settled at
//! the real amount once the handler has reported it.
//!
//! For a quantity known only after the handler (LLM tokens), a route reserves an estimate
//! ([`Engine::reserve`]): the estimate's cost is taken off the balance at once, with a
//! compare-and-swap that refuses (`402`) when the balance cannot cover it. When the
//! response comes, [`Reservation::settle`] records the real quantity on the meter (usage
//! cell and quota, as metering would) and settles its cost against what was held, giving
//! back the rest in the same atomic step. A reservation dropped unsettled (the handler
//! failed, panicked, or the client went away and the request future was dropped) gives
//! back everything it held: it is a drop guard.
//!
//! # The overspend bound
//!
//! A reservation never takes the balance below zero: reserving needs the balance to
//! cover the whole estimate, and a settlement whose real cost exceeds what was held takes
//! the excess only down to zero; what it cannot take is reported as
//! [`Settlement::uncollected`] (the usage itself is recorded in full and reported to the
//! billing provider). So **requests whose priced meters all go through reservations can
//! never drive the balance below zero, however many run at once: the bound is 0.** A
//! plain priced spend (no reservation) is admitted while the balance is above zero and
//! takes its whole cost, so it may end below zero by less than its own cost: with plain
//! and reserved requests mixed, the balance stays above `-(sum of the costs of the plain
//! priced requests in flight)`. The property test below checks both over interleavings,
//! and `tests/tests/http_reserve.rs` over real HTTP.
//!
//! The request path of customers and routes without reservations is unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use http::{HeaderMap, Method, StatusCode};

use crate::customer::{CustomerHandle, CustomerState};
use crate::engine::Engine;
use crate::id::MeterIndex;
use crate::meter::{Aggregation, Exchange, MeterMatch, ReportedUsage, Sample};
use crate::metering::COST_CAP;

use super::ledger::crossing_events;

/// Why [`Engine::reserve`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReserveRefused {
    /// The balance cannot cover the estimate: answer `402` (the customer must top up).
    #[error("balance {balance} cannot cover the reservation of {needed} micro-credits")]
    InsufficientCredits {
        /// Micro-credits the estimate costs.
        needed: i64,
        /// The balance at the time.
        balance: i64,
    },
    /// No meter has this index, or it cannot be reserved on (only count and sum meters
    /// with a filter decided at the request, among the first 64): fix the configuration.
    #[error(
        "meter {0} cannot be reserved on (count or sum meters among the first 64, with a filter that splits)"
    )]
    NotReservable(usize),
}

/// What a settlement did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settlement {
    /// Base units recorded on the meter.
    pub quantity: u64,
    /// Micro-credits held by the reservation.
    pub held: i64,
    /// Micro-credits taken for the real quantity.
    pub charged: i64,
    /// Micro-credits the real quantity cost beyond what was held and what the balance had
    /// left: not taken, so the balance stays at or above zero.
    pub uncollected: i64,
}

/// Credits held for one request: settle it with the real quantity, or drop it to give
/// everything back. See the [module docs](self) for the bound it keeps.
#[must_use = "a reservation dropped unsettled gives its credits back"]
pub struct Reservation {
    engine: Engine,
    handle: CustomerHandle,
    meter: MeterIndex,
    price: u64,
    held: i64,
    /// The customer's counter of credits held (for attributing spends to grants).
    counter: Arc<AtomicI64>,
    open: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("customer", self.handle.id())
            .field("meter", &self.meter)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

/// The meters a response's reservations settled, put into the response extensions by a
/// reserving layer: the metering layer then leaves them out (they were recorded and
/// charged by the settlement).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SettledMeters(u64);

impl SettledMeters {
    /// Adds the meter a reservation settled.
    pub fn add(&mut self, meter: MeterIndex) {
        if meter.get() < MeterMatch::CAPACITY {
            self.0 |= 1 << meter.get();
        }
    }

    /// `m` without the settled meters.
    pub fn remove_from(self, m: MeterMatch) -> MeterMatch {
        m.without(self.0)
    }

    /// Whether no meter was settled.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The cost of `q` base units at `price`, capped as metering caps it.
fn cost(q: u64, price: u64) -> i64 {
    i64::try_from(q.saturating_mul(price))
        .unwrap_or(i64::MAX)
        .min(COST_CAP)
}

impl Engine {
    /// The meters with a reservation estimate whose request-side filter passed in `m`,
    /// with their estimates in base units (for a reserving layer).
    pub fn reservations_for(&self, m: MeterMatch) -> Vec<(MeterIndex, u64)> {
        let cfg = self.metering().config.load();
        cfg.reserve
            .iter()
            .filter(|(i, _)| m.contains(*i))
            .copied()
            .collect()
    }

    /// Whether any meter has a reservation estimate (`reserve` in its config).
    pub fn has_reservations(&self) -> bool {
        !self.metering().config.load().reserve.is_empty()
    }

    /// Holds the cost of `estimate` base units of `meter` at the customer's price; refused
    /// when the balance cannot cover it. A meter the plan does not price holds nothing
    /// and is never refused. Lock-free (one compare-and-swap loop on the balance).
    pub fn reserve(
        &self,
        handle: &CustomerHandle,
        meter: MeterIndex,
        estimate: u64,
    ) -> Result<Reservation, ReserveRefused> {
        let cfg = self.metering().config.load();
        let i = meter.get();
        let reservable = cfg.meters.get(i).is_some_and(|m| {
            matches!(m.aggregation, Aggregation::Count | Aggregation::Sum) && !m.mixed
        }) && i < MeterMatch::CAPACITY;
        if !reservable {
            return Err(ReserveRefused::NotReservable(i));
        }
        let s: &CustomerState = &handle.0;
        let plan = cfg.plan(s.plan.load(Ordering::Relaxed));
        let price = plan.and_then(|p| p.terms.get(i)).map_or(0, |t| t.price);
        let held = cost(estimate, price);
        let counter = self.ledger().held_counter(&s.id);
        if held > 0 {
            // Counted as held first: a grant attribution in between sees it as held, not
            // spent.
            counter.fetch_add(held, Ordering::Relaxed);
            let taken = s
                .balance
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    (b >= held).then(|| b - held)
                });
            if let Err(balance) = taken {
                counter.fetch_sub(held, Ordering::Relaxed);
                return Err(ReserveRefused::InsufficientCredits {
                    needed: held,
                    balance,
                });
            }
        }
        Ok(Reservation {
            engine: self.clone(),
            handle: handle.clone(),
            meter,
            price,
            held,
            counter,
            open: true,
        })
    }
}

impl Reservation {
    /// Micro-credits held.
    pub fn held(&self) -> i64 {
        self.held
    }

    /// The meter reserved on.
    pub fn meter(&self) -> MeterIndex {
        self.meter
    }

    /// Records `quantity` base units on the meter (usage cell and quota, as metering
    /// would) and settles their cost: what was held beyond it goes back to the balance;
    /// a cost beyond what was held is taken only down to a zero balance (the rest is
    /// [`Settlement::uncollected`]). One atomic step on the balance.
    pub fn settle(mut self, quantity: u64) -> Settlement {
        self.open = false;
        let cfg = self.engine.metering().config.load();
        let s: &CustomerState = &self.handle.0;
        let i = self.meter.get();
        if let Some(m) = cfg.meters.get(i) {
            let plan = cfg.plan(s.plan.load(Ordering::Relaxed));
            self.engine.metering().add_settled(plan, s, m, quantity);
        }
        let cost = cost(quantity, self.price);
        let held = self.held;
        let mut out = Settlement {
            quantity,
            held,
            ..Settlement::default()
        };
        let (before, after) = if cost <= held {
            let back = held - cost;
            let b = s.balance.fetch_add(back, Ordering::Relaxed);
            out.charged = cost;
            (b.saturating_add(held), b.saturating_add(back))
        } else {
            let over = cost - held;
            let mut taken = 0;
            let b = s
                .balance
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    taken = over.min(b.max(0));
                    Some(b - taken)
                })
                .unwrap_or_else(|b| b);
            out.charged = held + taken;
            out.uncollected = over - taken;
            (b.saturating_add(held), b - taken)
        };
        self.counter.fetch_sub(held, Ordering::Relaxed);
        crossing_events(&self.engine, s, before, after);
        out
    }

    /// Settles with the meter's value for a response: the meter's response-side filter
    /// (status, response headers) is tested, and its value read from `reported` (scaled
    /// as configured); a response the meter does not count settles at zero.
    pub fn settle_response(
        self,
        status: StatusCode,
        headers: &HeaderMap,
        reported: Option<&ReportedUsage>,
    ) -> Settlement {
        let quantity = {
            let cfg = self.engine.metering().config.load();
            let method = Method::GET;
            let empty = HeaderMap::new();
            let ex = Exchange::new(&method, "", &empty)
                .response(status, headers, 0)
                .reported(reported);
            cfg.meters
                .get(self.meter.get())
                .filter(|m| m.response_filter.matches(&ex))
                .and_then(|m| m.value_of(&ex))
                .map_or(0, |s| match s {
                    Sample::Quantity(q) => q,
                    Sample::Distinct(_) => 0,
                })
        };
        self.settle(quantity)
    }

    /// Gives everything held back (what dropping it does).
    pub fn release(mut self) {
        self.give_back();
    }

    fn give_back(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        if self.held > 0 {
            let s: &CustomerState = &self.handle.0;
            s.balance.fetch_add(self.held, Ordering::Relaxed);
            self.counter.fetch_sub(self.held, Ordering::Relaxed);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.give_back();
    }
}
