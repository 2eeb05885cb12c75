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

use crate::customer::metering::COST_CAP;
use crate::customer::{CustomerHandle, CustomerState};
use crate::engine::Engine;
use crate::event::{Event, EventKind};
use crate::id::MeterIndex;
use crate::meter::{Aggregation, Exchange, MeterMatch, ReportedUsage, Sample};

use super::ledger::crossing_events;

/// The rule name of the [`EventKind::Blocked`] event raised when a reservation is
/// refused for want of credits (at most once a minute per customer, as for rules).
pub const RESERVATION_RULE: &str = "credits_insufficient";

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
/// everything back. See the [`reservation`](crate::credits::reservation) module docs for the bound it keeps.
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

    /// Every meter: for a response refused before the handler ran, which nothing meters.
    pub fn all() -> Self {
        Self(u64::MAX)
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
                // Refused like a blocking rule's `402`: the same event, as rarely.
                if s.block_event_due(0, self.coarse_now(), crate::engine::BLOCK_EVENT_EVERY_SECS) {
                    self.emit(Event::new(
                        Some(s.id.clone()),
                        EventKind::Blocked {
                            rule: Arc::from(RESERVATION_RULE),
                        },
                    ));
                }
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::{Config, MeterConfig, PlanConfig, ValueConfig};
    use crate::engine::credits::Grant;

    /// `tokens` (reported, reserved on) at 3 micro-credits a token and `calls` (plain) at
    /// 5, prepaid with `initial`.
    fn engine(initial: i64) -> (Engine, CustomerHandle, MeterIndex) {
        let cfg = Config::builder()
            .meter(MeterConfig::sum("tokens", ValueConfig::Reported("tokens".into())).reserve(100))
            .meter(MeterConfig::count("calls"))
            .plan(
                PlanConfig::new("pre")
                    .prepaid(initial)
                    .price("tokens", 3)
                    .price("calls", 5),
            )
            .build();
        let e = Engine::new(cfg).unwrap();
        let h = e.register("c", "pre").unwrap();
        let m = e.meter_index("tokens").unwrap();
        (e, h, m)
    }

    fn tokens_used(e: &Engine) -> u64 {
        e.usage("c").unwrap().meters[0].used
    }

    #[test]
    fn reserve_holds_settle_gives_back_the_rest_drop_gives_back_all() {
        let (e, h, m) = engine(1_000);
        let r = e.reserve(&h, m, 100).unwrap();
        assert_eq!(r.held(), 300);
        assert_eq!(h.balance(), 700);
        let s = r.settle(40);
        assert_eq!((s.charged, s.uncollected), (120, 0));
        assert_eq!(h.balance(), 880);
        assert_eq!(tokens_used(&e), 40);
        // Dropped unsettled (handler error, panic, disconnect): all of it back.
        let r = e.reserve(&h, m, 100).unwrap();
        assert_eq!(h.balance(), 580);
        drop(r);
        assert_eq!(h.balance(), 880);
        assert_eq!(tokens_used(&e), 40, "nothing recorded");
        e.reserve(&h, m, 10).unwrap().release();
        assert_eq!(h.balance(), 880);
    }

    #[test]
    fn an_estimate_the_balance_cannot_cover_is_refused_and_changes_nothing() {
        let (e, h, m) = engine(299);
        assert_eq!(
            e.reserve(&h, m, 100).unwrap_err(),
            ReserveRefused::InsufficientCredits {
                needed: 300,
                balance: 299
            }
        );
        assert_eq!(h.balance(), 299);
        let blocked: Vec<_> = e
            .drain_events(10)
            .into_iter()
            .filter(|ev| matches!(&ev.kind, crate::EventKind::Blocked { rule } if &**rule == RESERVATION_RULE))
            .map(|ev| ev.customer.map(|c| c.as_str().to_owned()))
            .collect();
        assert_eq!(blocked, vec![Some("c".to_owned())], "one Blocked event");
        // Refused again within the minute: no second event.
        assert!(e.reserve(&h, m, 100).is_err());
        assert!(
            !e.drain_events(10)
                .iter()
                .any(|ev| matches!(ev.kind, crate::EventKind::Blocked { .. }))
        );
        let calls = e.meter_index("calls").unwrap();
        // `calls` has no estimate but may still be reserved on in code; unknown meters not.
        assert!(e.reserve(&h, calls, 1).is_ok());
        assert!(matches!(
            e.reserve(&h, MeterIndex(9), 1),
            Err(ReserveRefused::NotReservable(9))
        ));
    }

    #[test]
    fn an_overrun_is_taken_only_down_to_zero() {
        let (e, h, m) = engine(400);
        let r = e.reserve(&h, m, 100).unwrap(); // 300 held, 100 left
        let s = r.settle(200); // costs 600: 300 held + 100 left, 200 uncollected
        assert_eq!((s.charged, s.uncollected), (400, 200));
        assert_eq!(h.balance(), 0);
        assert_eq!(tokens_used(&e), 200, "the usage is recorded in full");
        let kinds: Vec<_> = e.drain_events(10).into_iter().map(|ev| ev.kind).collect();
        assert!(kinds.contains(&crate::EventKind::CreditsExhausted { balance: 0 }));
    }

    #[test]
    fn credits_held_are_not_taken_for_spent_grants() {
        let (e, h, m) = engine(0);
        e.grant("c", Grant::new("g", 300).expires_at(u64::MAX - 1))
            .unwrap();
        let r = e.reserve(&h, m, 100).unwrap();
        assert_eq!(h.balance(), 0);
        // Held, not spent: the grant is whole while the request runs...
        assert_eq!(e.grants("c")[0].remaining, 300);
        drop(r);
        // ...and after a release.
        assert_eq!(e.grants("c")[0].remaining, 300);
        e.reserve(&h, m, 100).unwrap().settle(10);
        assert_eq!(e.grants("c")[0].remaining, 270);
    }

    #[test]
    fn reservations_are_configured_per_meter_in_toml_and_json() {
        let toml = r#"
            [[meters]]
            id = "tokens"
            aggregation = "sum"
            value = { reported = "tokens" }
            filter = { route = ["/v1/chat"] }
            reserve = 4000

            [[plans]]
            id = "pre"
            prepaid = true
            prices = { tokens = 2 }
        "#;
        let cfg = Config::from_toml_str(toml).unwrap();
        assert_eq!(cfg.meters[0].reserve, Some(4_000));
        let e = Engine::new(cfg.clone()).unwrap();
        assert!(e.has_reservations());
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(Config::from_json_str(&json).unwrap(), cfg);
        let (get, hs) = (http::Method::GET, HeaderMap::new());
        let chat = e.meter_request(&Exchange::new(&get, "/v1/chat", &hs));
        let m = e.meter_index("tokens").unwrap();
        assert_eq!(e.reservations_for(chat), [(m, 4_000)]);
        let other = e.meter_request(&Exchange::new(&get, "/v1/other", &hs));
        assert!(e.reservations_for(other).is_empty());
        // Only count and sum meters.
        let bad = Config::builder()
            .meter(
                MeterConfig::sum("t", ValueConfig::Reported("t".into()))
                    .aggregation(Aggregation::Max)
                    .reserve(1),
            )
            .build();
        let err = Engine::new(bad).unwrap_err().to_string();
        assert!(err.contains("meters[0].reserve"), "{err}");
    }

    /// One step of a request in an interleaving.
    #[derive(Clone, Debug)]
    enum Req {
        /// Reserve `estimate`, then settle `actual` (or drop when `None`).
        Reserved { estimate: u64, actual: Option<u64> },
        /// A plain priced spend of `calls` calls, admitted while the balance is above zero.
        Plain { calls: u64 },
    }

    fn req() -> impl Strategy<Value = Req> {
        prop_oneof![
            4 => (0u64..60, proptest::option::weighted(0.8, 0u64..120))
                .prop_map(|(estimate, actual)| Req::Reserved { estimate, actual }),
            1 => (1u64..4).prop_map(|calls| Req::Plain { calls }),
        ]
    }

    proptest! {
        /// Any interleaving of reservations, settlements, drops and plain spends of several
        /// requests: the balance never goes below `-(costs of the plain spends in flight)`
        /// (here spends are atomic, so below minus one plain spend's cost), never below
        /// zero at all without plain spends, and ends at the start minus everything charged.
        #[test]
        fn reservations_never_overspend(
            initial in 0i64..2_000,
            reqs in proptest::collection::vec(req(), 1..12),
            order in proptest::collection::vec(0usize..12, 0..48),
        ) {
            let (e, h, m) = engine(initial);
            let calls = e.meter_index("calls").unwrap();
            let plain_cost_max = 3 * 5;
            let any_plain = reqs.iter().any(|r| matches!(r, Req::Plain { .. }));
            // Each request takes two steps (start, finish); `order` picks which request
            // steps next, then the rest finish in order.
            let mut held: Vec<Option<Reservation>> = (0..reqs.len()).map(|_| None).collect();
            let mut step = vec![0u8; reqs.len()];
            let mut charged = 0i64;
            let picks = order.into_iter().map(|i| i % reqs.len())
                .chain((0..reqs.len()).flat_map(|i| [i, i]));
            for i in picks {
                match (&reqs[i], step[i]) {
                    (Req::Reserved { estimate, .. }, 0) => {
                        let before = h.balance();
                        match e.reserve(&h, m, *estimate) {
                            Ok(r) => held[i] = Some(r),
                            Err(ReserveRefused::InsufficientCredits { needed, balance }) => {
                                prop_assert!(balance < needed);
                                prop_assert_eq!(h.balance(), before);
                            }
                            Err(other) => prop_assert!(false, "{other}"),
                        }
                    }
                    (Req::Reserved { actual, .. }, 1) => {
                        if let Some(r) = held[i].take() {
                            match actual {
                                Some(a) => {
                                    let s = r.settle(*a);
                                    prop_assert_eq!(s.charged + s.uncollected, (*a as i64) * 3);
                                    charged += s.charged;
                                }
                                None => drop(r),
                            }
                        }
                    }
                    // The default rules admit a prepaid request while the balance is above
                    // zero.
                    (Req::Plain { calls: n }, 0) if h.balance() > 0 => {
                        e.record(&h, calls, *n);
                        charged += (*n as i64) * 5;
                    }
                    _ => {}
                }
                step[i] = step[i].saturating_add(1);
                let floor = if any_plain { -plain_cost_max } else { 0 };
                prop_assert!(h.balance() >= floor, "balance {} below {}", h.balance(), floor);
            }
            prop_assert_eq!(h.balance(), initial - charged);
        }
    }

    /// Threads reserving and settling at once (real concurrency, not interleavings): the
    /// balance never ends below zero and every micro-credit is accounted for.
    #[test]
    fn concurrent_reservations_from_threads_never_overspend() {
        let (threads, rounds) = if cfg!(miri) { (2, 10) } else { (8, 2_000) };
        let (e, h, m) = engine(50_000);
        let charged = std::sync::atomic::AtomicI64::new(0);
        let low = std::sync::atomic::AtomicI64::new(i64::MAX);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (e, h, charged, low) = (&e, &h, &charged, &low);
                s.spawn(move || {
                    for i in 0..rounds {
                        if let Ok(r) = e.reserve(h, m, 40) {
                            low.fetch_min(h.balance(), Ordering::Relaxed);
                            if (i + t) % 5 == 0 {
                                drop(r);
                            } else {
                                let st = r.settle(((i * 7 + t) % 70) as u64);
                                charged.fetch_add(st.charged, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        assert!(low.load(Ordering::Relaxed) >= 0);
        assert!(h.balance() >= 0);
        assert_eq!(h.balance(), 50_000 - charged.load(Ordering::Relaxed));
        assert_eq!(e.ledger().held(h.id()), 0);
    }
}
