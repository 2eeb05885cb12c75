//! The credits ledger: per customer, grants and the operations journal (off the request
//! path, behind a mutex only credits calls, ticks and snapshots take), and the credits held
//! by reservations in flight (a lock-free map the reserve path reads).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::customer::CustomerState;
use crate::engine::Engine;
use crate::event::{Event, EventKind};
use crate::id::CustomerId;
use crate::store::{AccountState, StateStore};

use super::{
    CreditsError, CreditsState, Grant, GrantOutcome, GrantState, ID_RETENTION_SECS, MAX_ID_LEN,
    Operation, OperationKind,
};

/// Grants and journals by customer, and credits held by reservations.
#[derive(Default)]
pub(crate) struct Ledger {
    accounts: Mutex<HashMap<CustomerId, Account>>,
    /// Micro-credits held by reservations in flight, by customer (entries are never
    /// removed: one small counter per customer that ever reserved).
    pub(super) reserved: papaya::HashMap<CustomerId, Arc<AtomicI64>>,
    /// Held across "apply, then save to the store" by the durable calls and by
    /// [`StateSync`](crate::StateSync)'s saves, so an older snapshot never overwrites a
    /// newer one in the store.
    durable: tokio::sync::Mutex<()>,
}

/// One customer's credits.
struct Account {
    state: CreditsState,
    /// The effective balance (balance plus credits held by reservations) at the last look:
    /// what it went down by since is spent from the grants.
    last_effective: i64,
    /// The customer's own low-balance threshold may fire (it fires once per crossing).
    low_armed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ledger {
    /// Micro-credits held by `customer`'s reservations in flight.
    pub(super) fn held(&self, customer: &CustomerId) -> i64 {
        self.reserved
            .pin()
            .get(customer)
            .map_or(0, |h| h.load(Ordering::Relaxed))
    }

    /// The counter of credits `customer`'s reservations hold.
    pub(super) fn held_counter(&self, customer: &CustomerId) -> Arc<AtomicI64> {
        let map = self.reserved.pin();
        if let Some(c) = map.get(customer) {
            return c.clone();
        }
        map.get_or_insert_with(customer.clone(), || Arc::new(AtomicI64::new(0)))
            .clone()
    }

    /// The lock durable writes of customer state take (see [`Ledger::durable`]).
    pub(crate) async fn write_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.durable.lock().await
    }
}

/// Spends `spent` micro-credits from the live grants, in spending order: earliest expiry
/// (never last), then lowest priority number, then oldest.
fn consume(grants: &mut [GrantState], mut spent: i64) {
    let mut order: Vec<usize> = (0..grants.len())
        .filter(|&i| grants.get(i).is_some_and(|g| !g.expired && g.remaining > 0))
        .collect();
    order.sort_by_key(|&i| {
        grants.get(i).map(|g| {
            (
                g.expires_at.unwrap_or(u64::MAX),
                g.priority,
                g.granted_at,
                g.id.clone(),
            )
        })
    });
    for i in order {
        if spent <= 0 {
            break;
        }
        if let Some(g) = grants.get_mut(i) {
            let take = g.remaining.min(spent);
            g.remaining -= take;
            spent -= take;
        }
    }
}

impl Account {
    fn new(effective: i64) -> Self {
        Self {
            state: CreditsState::default(),
            last_effective: effective,
            low_armed: true,
        }
    }

    /// Attributes what the effective balance went down by since the last look.
    fn reconcile(&mut self, effective: i64) {
        let spent = self.last_effective.saturating_sub(effective);
        if spent > 0 {
            consume(&mut self.state.grants, spent);
        }
        self.last_effective = effective;
    }

    /// Appends an operation to the journal.
    fn journal(&mut self, id: String, kind: OperationKind, delta: i64, at: u64) {
        self.state.seq += 1;
        self.state.operations.push(Operation {
            id,
            kind,
            delta,
            seq: self.state.seq,
            at,
        });
    }

    /// Forgets operations (and expired or spent grants) older than the retention, except
    /// those of grants still listed.
    fn prune(&mut self, now: u64) {
        let old = |at: u64| at.saturating_add(ID_RETENTION_SECS) < now;
        self.state.grants.retain(|g| {
            let done_at = g.expires_at.unwrap_or(g.granted_at).max(g.granted_at);
            !((g.expired || g.remaining == 0) && old(done_at))
        });
        let grants = &self.state.grants;
        self.state.operations.retain(|o| {
            !old(o.at) || (o.kind == OperationKind::Grant && grants.iter().any(|g| g.id == o.id))
        });
    }

    /// Raises `CreditsLow` for the customer's own threshold once per crossing.
    fn check_low(&mut self, engine: &Engine, id: &CustomerId, balance: i64) {
        let Some(low) = self.state.low_at else {
            return;
        };
        if balance <= low {
            if self.low_armed {
                self.low_armed = false;
                engine.emit(Event::new(
                    Some(id.clone()),
                    EventKind::CreditsLow { balance },
                ));
            }
        } else {
            self.low_armed = true;
        }
    }
}

/// Adds `delta` to a balance (saturating, never below the floor); returns (before, after).
fn add_to(s: &CustomerState, delta: i64) -> (i64, i64) {
    let before = s
        .balance
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some(
                b.saturating_add(delta)
                    .max(crate::customer::metering::BALANCE_FLOOR),
            )
        })
        .unwrap_or_else(|b| b);
    (
        before,
        before
            .saturating_add(delta)
            .max(crate::customer::metering::BALANCE_FLOOR),
    )
}

/// Raises `CreditsExhausted` when `before..after` crosses zero going down, else
/// `CreditsLow` when it crosses the plan's low mark.
pub(super) fn crossing_events(engine: &Engine, s: &CustomerState, before: i64, after: i64) {
    if after >= before {
        return;
    }
    let cfg = engine.metering().config.load();
    let low = cfg
        .plan(s.plan.load(Ordering::Relaxed))
        .map_or(0, |p| p.credits_low_at);
    if before > 0 && after <= 0 {
        engine.emit(Event::new(
            Some(s.id.clone()),
            EventKind::CreditsExhausted { balance: after },
        ));
    } else if before > low && after <= low {
        engine.emit(Event::new(
            Some(s.id.clone()),
            EventKind::CreditsLow { balance: after },
        ));
    }
}

/// What one credits call asks for.
struct Op<'a> {
    id: &'a str,
    kind: OperationKind,
    delta: i64,
    grant: Option<&'a Grant>,
}

impl Engine {
    /// Grants credits to `customer` (admitting it if new): the amount is added to the
    /// balance at once and spent before credits that never expire (see
    /// [`crate::credits`] for the order); what is left at `expires_at` is taken off at the
    /// first tick after it. Idempotent on `grant.id`. Saved at the next state save and
    /// checkpoint; use [`Engine::grant_durable`] to have it saved before it returns.
    ///
    /// This is the one entry point for granting credits (admin routes, webhooks, code).
    pub fn grant(&self, customer: &str, grant: Grant) -> Result<GrantOutcome, CreditsError> {
        if grant.amount <= 0 {
            return Err(CreditsError::InvalidAmount {
                amount: grant.amount,
                reason: "a grant must be above zero",
            });
        }
        self.credits_op(
            customer,
            Op {
                id: &grant.id,
                kind: OperationKind::Grant,
                delta: grant.amount,
                grant: Some(&grant),
            },
        )
    }

    /// Adds `amount` micro-credits that never expire (a paid top-up), idempotent on `id`.
    pub fn top_up(
        &self,
        customer: &str,
        id: &str,
        amount: i64,
    ) -> Result<GrantOutcome, CreditsError> {
        if amount <= 0 {
            return Err(CreditsError::InvalidAmount {
                amount,
                reason: "a top-up must be above zero",
            });
        }
        self.credits_op(
            customer,
            Op {
                id,
                kind: OperationKind::TopUp,
                delta: amount,
                grant: None,
            },
        )
    }

    /// Adds `delta` micro-credits (negative: takes them off) outside any grant, for
    /// corrections; idempotent on `id`. A negative adjustment may take the balance below
    /// zero.
    pub fn adjust(
        &self,
        customer: &str,
        id: &str,
        delta: i64,
    ) -> Result<GrantOutcome, CreditsError> {
        if delta == 0 {
            return Err(CreditsError::InvalidAmount {
                amount: 0,
                reason: "an adjustment must not be zero",
            });
        }
        self.credits_op(
            customer,
            Op {
                id,
                kind: OperationKind::Adjustment,
                delta,
                grant: None,
            },
        )
    }

    /// [`Engine::grant`], then the customer's state written to `store` before returning.
    /// A store failure is [`CreditsError::NotSaved`]: do not acknowledge; retry (the
    /// retry applies nothing twice and saves again).
    pub async fn grant_durable(
        &self,
        store: &dyn StateStore,
        customer: &str,
        grant: Grant,
    ) -> Result<GrantOutcome, CreditsError> {
        let _write = self.ledger().write_lock().await;
        let outcome = self.grant(customer, grant)?;
        self.save_account(store, customer).await?;
        Ok(outcome)
    }

    /// [`Engine::top_up`], saved to `store` before returning (see
    /// [`Engine::grant_durable`]).
    pub async fn top_up_durable(
        &self,
        store: &dyn StateStore,
        customer: &str,
        id: &str,
        amount: i64,
    ) -> Result<GrantOutcome, CreditsError> {
        let _write = self.ledger().write_lock().await;
        let outcome = self.top_up(customer, id, amount)?;
        self.save_account(store, customer).await?;
        Ok(outcome)
    }

    /// [`Engine::adjust`], saved to `store` before returning (see
    /// [`Engine::grant_durable`]).
    pub async fn adjust_durable(
        &self,
        store: &dyn StateStore,
        customer: &str,
        id: &str,
        delta: i64,
    ) -> Result<GrantOutcome, CreditsError> {
        let _write = self.ledger().write_lock().await;
        let outcome = self.adjust(customer, id, delta)?;
        self.save_account(store, customer).await?;
        Ok(outcome)
    }

    /// Sets (or with `None` removes) `customer`'s own low-balance threshold in
    /// micro-credits: `CreditsLow` is raised once each time the balance falls to or below
    /// it (checked at every tick and credits call), besides the plan's `credits_low_at`.
    pub fn set_credits_low_at(
        &self,
        customer: &str,
        low_at: Option<i64>,
    ) -> Result<(), CreditsError> {
        let h = self.resolve(customer)?;
        let s: &CustomerState = &h.0;
        let effective = self.effective(s);
        let mut accounts = lock(&self.ledger().accounts);
        let acct = accounts
            .entry(s.id.clone())
            .or_insert_with(|| Account::new(effective));
        acct.state.low_at = low_at;
        acct.low_armed = true;
        acct.check_low(self, &s.id, s.balance.load(Ordering::Relaxed));
        drop(accounts);
        self.account_changed(&s.id);
        Ok(())
    }

    /// `customer`'s grants, live and expired, with what is left of each (empty for a
    /// customer without grants or not known to this process).
    pub fn grants(&self, customer: &str) -> Vec<GrantState> {
        self.credits(customer).map(|c| c.grants).unwrap_or_default()
    }

    /// `customer`'s grants, operations journal and threshold, if it has any.
    pub fn credits(&self, customer: &str) -> Option<CreditsState> {
        let h = self.resident(customer);
        let effective = h.as_ref().map(|h| self.effective(&h.0));
        let id = CustomerId::new(customer).ok()?;
        let mut accounts = lock(&self.ledger().accounts);
        let acct = accounts.get_mut(&id)?;
        if let Some(e) = effective {
            acct.reconcile(e);
        }
        Some(acct.state.clone())
    }

    /// Balance plus the credits `s`'s reservations hold.
    fn effective(&self, s: &CustomerState) -> i64 {
        s.balance
            .load(Ordering::Relaxed)
            .saturating_add(self.ledger().held(&s.id))
    }

    fn credits_op(&self, customer: &str, op: Op<'_>) -> Result<GrantOutcome, CreditsError> {
        if op.id.is_empty() || op.id.len() > MAX_ID_LEN {
            return Err(CreditsError::InvalidId);
        }
        let h = self.resolve(customer)?;
        let s: &CustomerState = &h.0;
        let now = self.now();
        let effective = self.effective(s);
        let mut accounts = lock(&self.ledger().accounts);
        let acct = accounts
            .entry(s.id.clone())
            .or_insert_with(|| Account::new(effective));
        acct.reconcile(effective);
        if let Some(prev) = acct.state.operations.iter().find(|o| o.id == op.id) {
            let same_grant = match op.grant {
                Some(g) => acct.state.grants.iter().any(|x| {
                    x.id == g.id && x.expires_at == g.expires_at && x.priority == g.priority
                }),
                None => true,
            };
            return if prev.kind == op.kind && prev.delta == op.delta && same_grant {
                Ok(GrantOutcome::Duplicate {
                    balance: s.balance.load(Ordering::Relaxed),
                })
            } else {
                Err(CreditsError::IdReused {
                    id: op.id.to_owned(),
                })
            };
        }
        let (before, after) = add_to(s, op.delta);
        acct.last_effective = acct.last_effective.saturating_add(after - before);
        acct.journal(op.id.to_owned(), op.kind, op.delta, now);
        if let Some(g) = op.grant {
            acct.state.grants.push(GrantState {
                id: g.id.clone(),
                amount: g.amount,
                remaining: g.amount,
                expires_at: g.expires_at,
                priority: g.priority,
                granted_at: now,
                expired: false,
            });
        }
        acct.check_low(self, &s.id, after);
        drop(accounts);
        crossing_events(self, s, before, after);
        self.account_changed(&s.id);
        Ok(GrantOutcome::Applied { balance: after })
    }

    /// Writes `customer`'s state to `store` (the caller holds the write lock).
    async fn save_account(
        &self,
        store: &dyn StateStore,
        customer: &str,
    ) -> Result<(), CreditsError> {
        let h = self.resolve(customer)?;
        let Some(state) = self.account(customer) else {
            return Ok(());
        };
        store.save(h.id(), &state).await?;
        Ok(())
    }

    /// Background part of [`Engine::tick`]: attributes spending to grants, expires grants
    /// whose time came (taking what is left of them off the balance), checks customers'
    /// own thresholds and forgets old operation ids.
    pub(crate) fn credits_tick(&self) {
        let now = self.now();
        let mut accounts = lock(&self.ledger().accounts);
        if accounts.is_empty() {
            return;
        }
        let mut changed = Vec::new();
        for (id, acct) in accounts.iter_mut() {
            let due = acct
                .state
                .grants
                .iter()
                .any(|g| !g.expired && g.expires_at.is_some_and(|t| t <= now));
            // A customer evicted from memory is brought back only when a grant expires.
            let handle = match self.resident(id.as_str()) {
                Some(h) => Some(h),
                None if due => self.resolve(id.as_str()).ok(),
                None => None,
            };
            let Some(h) = handle else {
                acct.prune(now);
                continue;
            };
            let s: &CustomerState = &h.0;
            acct.reconcile(self.effective(s));
            if due {
                let mut expired = Vec::new();
                for g in &mut acct.state.grants {
                    if !g.expired && g.expires_at.is_some_and(|t| t <= now) {
                        g.expired = true;
                        expired.push((g.id.clone(), std::mem::take(&mut g.remaining)));
                    }
                }
                for (gid, left) in expired {
                    let (before, after) = add_to(s, -left);
                    acct.last_effective = acct.last_effective.saturating_add(after - before);
                    acct.journal(format!("expiry:{gid}"), OperationKind::Expiry, -left, now);
                    crossing_events(self, s, before, after);
                }
                changed.push(s.id.clone());
            }
            acct.check_low(self, &s.id, s.balance.load(Ordering::Relaxed));
            acct.prune(now);
        }
        drop(accounts);
        for id in &changed {
            self.account_changed(id);
        }
    }

    /// After [`Engine::restore_account`] set `s`'s balance from `state`: with the credits
    /// of a state store, takes them as they are; with only a journal number (a spool
    /// checkpoint's), adds to the balance the operations of the journal restored before
    /// that the checkpoint had not seen.
    pub(crate) fn restore_credits(&self, s: &CustomerState, state: &AccountState) {
        let mut accounts = lock(&self.ledger().accounts);
        match (&state.credits, state.ledger_seq) {
            (Some(c), _) => {
                let balance = s.balance.load(Ordering::Relaxed);
                let acct = Account {
                    state: c.clone(),
                    last_effective: self.effective(s),
                    low_armed: c.low_at.is_none_or(|low| balance > low),
                };
                accounts.insert(s.id.clone(), acct);
            }
            (None, Some(seen)) => {
                if let Some(acct) = accounts.get_mut(&s.id) {
                    let unseen: i64 = acct
                        .state
                        .operations
                        .iter()
                        .filter(|o| o.seq > seen)
                        .map(|o| o.delta)
                        .fold(0i64, i64::saturating_add);
                    if unseen != 0 {
                        add_to(s, unseen);
                    }
                    acct.last_effective = self.effective(s);
                }
            }
            (None, None) => {}
        }
    }

    /// Adds each customer's credits (`with_credits`) and journal number to their durable
    /// state, with the balance read again under the ledger's lock so that the two agree.
    pub(crate) fn fill_credits(&self, out: &mut [(CustomerId, AccountState)], with_credits: bool) {
        let mut accounts = lock(&self.ledger().accounts);
        if accounts.is_empty() {
            return;
        }
        for (id, state) in out.iter_mut() {
            let Some(acct) = accounts.get_mut(id) else {
                continue;
            };
            if let Some(h) = self.resident(id.as_str()) {
                acct.reconcile(self.effective(&h.0));
                state.balance = h.0.balance.load(Ordering::Relaxed);
            }
            state.ledger_seq = Some(acct.state.seq);
            if with_credits {
                state.credits = Some(acct.state.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::super::{CreditsError, Grant, GrantOutcome, OperationKind};
    use crate::config::{Config, MeterConfig, PlanConfig};
    use crate::event::EventKind;
    use crate::store::AccountState;
    use crate::{Engine, RedbStore, StateSync};

    const T0: u64 = 1_800_000_000;

    /// An engine on a clock the test moves, a prepaid plan (100 initial) pricing `calls`
    /// at 10 a call, and customer `c` on it.
    fn engine() -> (Engine, Arc<AtomicU64>) {
        let clock = Arc::new(AtomicU64::new(T0));
        let c = clock.clone();
        let cfg = Config::builder()
            .meter(MeterConfig::count("calls"))
            .plan(
                PlanConfig::new("pre")
                    .prepaid(100)
                    .price("calls", 10)
                    .credits_low_at(50),
            )
            .build();
        let e = Engine::builder(cfg)
            .wall_clock(move || c.load(Ordering::Relaxed))
            .build()
            .unwrap();
        e.register("c", "pre").unwrap();
        (e, clock)
    }

    fn spend(e: &Engine, calls: u64) {
        e.record_by_id("c", "calls", calls).unwrap();
    }

    fn remaining(e: &Engine) -> Vec<(String, i64)> {
        e.grants("c")
            .into_iter()
            .map(|g| (g.id, g.remaining))
            .collect()
    }

    #[test]
    fn grants_are_idempotent_on_their_id() {
        let (e, _) = engine();
        let g = Grant::new("g1", 1_000).expires_at(T0 + 60);
        assert_eq!(
            e.grant("c", g.clone()).unwrap(),
            GrantOutcome::Applied { balance: 1_100 }
        );
        assert_eq!(
            e.grant("c", g.clone()).unwrap(),
            GrantOutcome::Duplicate { balance: 1_100 }
        );
        // The same id for something else is refused and changes nothing.
        assert!(matches!(
            e.grant("c", Grant::new("g1", 5)),
            Err(CreditsError::IdReused { .. })
        ));
        assert!(matches!(
            e.top_up("c", "g1", 1_000),
            Err(CreditsError::IdReused { .. })
        ));
        assert!(matches!(
            e.grant("c", Grant::new("g2", 0)),
            Err(CreditsError::InvalidAmount { .. })
        ));
        assert!(matches!(
            e.grant("c", Grant::new("", 1)),
            Err(CreditsError::InvalidId)
        ));
        assert_eq!(e.top_up("c", "t1", 7).unwrap().balance(), 1_107);
        assert_eq!(
            e.top_up("c", "t1", 7).unwrap(),
            GrantOutcome::Duplicate { balance: 1_107 }
        );
        assert_eq!(e.adjust("c", "a1", -7).unwrap().balance(), 1_100);
        assert_eq!(e.usage("c").unwrap().balance, 1_100);
        let kinds: Vec<OperationKind> = e
            .credits("c")
            .unwrap()
            .operations
            .iter()
            .map(|o| o.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                OperationKind::Grant,
                OperationKind::TopUp,
                OperationKind::Adjustment
            ]
        );
    }

    #[test]
    fn spending_takes_from_the_grant_that_expires_first_then_priority() {
        let (e, _) = engine();
        e.grant("c", Grant::new("never", 100)).unwrap();
        e.grant("c", Grant::new("late", 100).expires_at(T0 + 200))
            .unwrap();
        e.grant(
            "c",
            Grant::new("soon-b", 100).expires_at(T0 + 100).priority(2),
        )
        .unwrap();
        e.grant(
            "c",
            Grant::new("soon-a", 100).expires_at(T0 + 100).priority(1),
        )
        .unwrap();
        // 500 in all (100 of them the plan's initial credits, in no grant).
        spend(&e, 15); // 150
        assert_eq!(
            remaining(&e),
            [
                ("never".to_owned(), 100),
                ("late".to_owned(), 100),
                ("soon-b".to_owned(), 50),
                ("soon-a".to_owned(), 0),
            ]
        );
        spend(&e, 20); // 200 more: soon-b, then late, then never
        assert_eq!(
            remaining(&e),
            [
                ("never".to_owned(), 50),
                ("late".to_owned(), 0),
                ("soon-b".to_owned(), 0),
                ("soon-a".to_owned(), 0),
            ]
        );
        assert_eq!(e.usage("c").unwrap().balance, 150);
    }

    #[test]
    fn an_expired_grant_stops_counting_at_the_first_tick_after_its_expiry() {
        let (e, clock) = engine();
        e.grant("c", Grant::new("g", 1_000).expires_at(T0 + 60))
            .unwrap();
        spend(&e, 30); // 300 off the grant (the initial 100 is spent last)
        e.tick();
        assert_eq!(e.usage("c").unwrap().balance, 800);
        clock.store(T0 + 59, Ordering::Relaxed);
        e.tick();
        assert_eq!(e.usage("c").unwrap().balance, 800, "not yet expired");
        e.drain_events(100);
        clock.store(T0 + 60, Ordering::Relaxed);
        e.tick();
        assert_eq!(e.usage("c").unwrap().balance, 100, "700 left of it expired");
        let g = &e.grants("c")[0];
        assert!(g.expired);
        assert_eq!(g.remaining, 0);
        let ops = e.credits("c").unwrap().operations;
        assert_eq!(ops.last().unwrap().kind, OperationKind::Expiry);
        assert_eq!(ops.last().unwrap().delta, -700);
        // The plan's low mark (50) was not crossed: 800 -> 100.
        assert!(e.drain_events(100).is_empty());
        // A second tick expires nothing more.
        e.tick();
        assert_eq!(e.usage("c").unwrap().balance, 100);
        // Spending the rest crosses zero once.
        spend(&e, 10);
        let kinds: Vec<_> = e.drain_events(100).into_iter().map(|ev| ev.kind).collect();
        assert!(
            kinds
                .iter()
                .any(|k| matches!(k, EventKind::CreditsExhausted { balance: 0 })),
            "{kinds:?}"
        );
    }

    #[test]
    fn expiry_taking_the_balance_to_zero_raises_credits_exhausted() {
        let (e, clock) = engine();
        e.adjust("c", "zero-initial", -100).unwrap();
        e.grant("c", Grant::new("g", 40).expires_at(T0 + 1))
            .unwrap();
        e.drain_events(100);
        clock.store(T0 + 5, Ordering::Relaxed);
        e.tick();
        assert_eq!(e.usage("c").unwrap().balance, 0);
        let kinds: Vec<_> = e.drain_events(100).into_iter().map(|ev| ev.kind).collect();
        assert_eq!(kinds, [EventKind::CreditsExhausted { balance: 0 }]);
    }

    #[test]
    fn a_customer_threshold_fires_once_per_crossing() {
        let (e, _) = engine();
        e.grant("c", Grant::new("g", 900)).unwrap(); // 1000
        e.set_credits_low_at("c", Some(500)).unwrap();
        let lows = |e: &Engine| {
            e.drain_events(100)
                .into_iter()
                .filter(|ev| matches!(ev.kind, EventKind::CreditsLow { .. }))
                .count()
        };
        spend(&e, 40); // 600
        e.tick();
        assert_eq!(lows(&e), 0);
        spend(&e, 20); // 400: crossed
        e.tick();
        e.tick();
        assert_eq!(lows(&e), 1, "once, not once per tick");
        spend(&e, 1);
        e.tick();
        assert_eq!(lows(&e), 0);
        e.top_up("c", "t", 1_000).unwrap(); // 1390: re-armed
        spend(&e, 100); // 390: crossed again
        e.tick();
        assert_eq!(lows(&e), 1);
    }

    #[test]
    fn grants_and_ids_survive_a_restore_from_a_state_store() {
        let (e, _) = engine();
        e.grant("c", Grant::new("g", 1_000).expires_at(T0 + 60))
            .unwrap();
        spend(&e, 10);
        let state = e.account("c").unwrap();
        let credits = state.credits.clone().unwrap();
        assert_eq!(credits.grants[0].remaining, 900);
        let (f, _) = engine();
        f.restore_account("c", &state).unwrap();
        assert_eq!(f.usage("c").unwrap().balance, 1_000);
        assert_eq!(f.grants("c"), e.grants("c"));
        assert_eq!(
            f.grant("c", Grant::new("g", 1_000).expires_at(T0 + 60))
                .unwrap(),
            GrantOutcome::Duplicate { balance: 1_000 }
        );
    }

    /// A spool checkpoint older than a grant: the restored balance is the spool's plus the
    /// operations the checkpoint had not seen (from the store's journal).
    #[test]
    fn a_spool_balance_gets_the_operations_its_checkpoint_had_not_seen() {
        let (e, _) = engine();
        e.top_up("c", "t1", 1_000).unwrap();
        spend(&e, 10); // 1000
        // What a checkpoint would write to the spool now (no credits, the journal number).
        let mut spool = e.account("c").unwrap();
        spool.credits = None;
        assert_eq!(spool.ledger_seq, Some(1));
        spend(&e, 5); // 950, lost with a kill -9
        e.grant("c", Grant::new("g2", 500)).unwrap(); // 1450, saved to the store
        let store = e.account("c").unwrap();
        let (f, _) = engine();
        f.restore_account("c", &store).unwrap();
        f.restore_account("c", &spool).unwrap();
        assert_eq!(f.usage("c").unwrap().balance, 1_000 + 500);
        // A spool state without a journal number (an older release) is taken as it is.
        let (g, _) = engine();
        g.restore_account("c", &store).unwrap();
        g.restore_account(
            "c",
            &AccountState {
                balance: 7,
                plan: spool.plan.clone(),
                ..AccountState::default()
            },
        )
        .unwrap();
        assert_eq!(g.usage("c").unwrap().balance, 7);
    }

    #[tokio::test]
    async fn a_durable_grant_is_on_disk_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let (e, _) = engine();
            let store = RedbStore::open(&path).unwrap();
            let out = e
                .grant_durable(&store, "c", Grant::new("inv-1", 5_000))
                .await
                .unwrap();
            assert_eq!(out, GrantOutcome::Applied { balance: 5_100 });
            e.top_up_durable(&store, "c", "top-1", 10).await.unwrap();
            e.adjust_durable(&store, "c", "adj-1", -10).await.unwrap();
            // No StateSync ran, nothing else saved: the store has it because the calls
            // wrote it.
        }
        let (f, _) = engine();
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let sync = StateSync::start(f.clone(), store.clone(), std::time::Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(f.usage("c").unwrap().balance, 5_100);
        assert_eq!(
            f.grant_durable(store.as_ref(), "c", Grant::new("inv-1", 5_000))
                .await
                .unwrap(),
            GrantOutcome::Duplicate { balance: 5_100 }
        );
        sync.shutdown().await.unwrap();
    }
}
