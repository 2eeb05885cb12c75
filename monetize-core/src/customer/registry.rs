//! The customer registry: one concurrent map from customer id to live state, with a cap,
//! an overflow policy and idle eviction that loses nothing.
//!
//! The map is lock-free ([`papaya`]): resolving a customer in memory takes no lock and
//! never waits, whatever a background pass (checkpoint, eviction, period reset) is doing.
//! What eviction needs to know (that no request holds a customer) is decided on the
//! customer's own state by [`Resident::seal`]; admission and eviction of the same customer
//! are serialized by a small striped lock that the in-memory path never takes. Background
//! passes that must not interleave with an eviction (checkpoints, period resets, account
//! snapshots) take turns with it on a maintenance lock that no request takes; eviction
//! holds it for [`EVICTION_CHUNK`] customers at a time.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::fast::RandomState;

use super::handle::CustomerHandle;
use super::handle_cache::{self, Lookup};
use super::hashed_id::{HashedId, IdQuery, PassHash};
use super::resident::Resident;
use super::state::CustomerState;
use crate::config::OverflowPolicy;
use crate::customer::metering::Metering;
use crate::error::CoreError;
use crate::id::CustomerId;
use crate::meter::Delta;
use crate::meter::{Aggregation, Meter};

/// The compact state kept for an evicted customer, restored when it comes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dormant {
    pub(crate) flags: u32,
    pub(crate) plan: u32,
    pub(crate) balance: i64,
    pub(crate) rate_tat: u64,
    pub(crate) period: Box<[u64]>,
}

/// How a new customer is admitted.
pub(crate) struct Admission<'a> {
    pub(crate) aggs: &'a [Aggregation],
    pub(crate) plan: u32,
    pub(crate) balance: i64,
    pub(crate) max: usize,
    pub(crate) policy: OverflowPolicy,
    pub(crate) overflow_id: &'a CustomerId,
    /// The engine's metering, for new states.
    pub(crate) metering: &'a Arc<Metering>,
}

pub(crate) struct Registry {
    /// This registry's number, unique in the process (threads' caches are tagged with it).
    id: u64,
    /// Customers in memory.
    map: papaya::HashMap<HashedId, Resident, PassHash>,
    /// Evicted customers, restored on their next request.
    dormant: papaya::HashMap<CustomerId, Dormant, RandomState>,
    /// Admission and eviction of a customer hold the stripe of its id, so that an admission
    /// never misses the dormant record of an eviction in progress. Never taken by a
    /// customer already in memory.
    stripes: Box<[Mutex<()>]>,
    /// Hashes ids for the stripes and the threads' caches.
    id_hash: RandomState,
    /// Held by background passes that must not interleave with eviction (checkpoints,
    /// period resets, account snapshots, eviction itself); never by requests.
    maintenance: Mutex<()>,
    /// Usage drained from evicted customers, taken by the next checkpoint.
    evicted: Mutex<Vec<Delta>>,
    pub(crate) overflowed: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

/// The next registry's [`Registry::id`] (0 marks an empty cache slot; registries past
/// `u32::MAX` are not cached).
static NEXT_REGISTRY: AtomicU64 = AtomicU64::new(1);

/// Customers an eviction pass removes per hold of the maintenance lock.
const EVICTION_CHUNK: usize = 256;

/// Stripes of the admission lock: two admissions (or an admission and an eviction) of
/// different customers rarely share one.
const STRIPES: usize = 256;

/// Takes a lock whose data cannot be left inconsistent (a panic elsewhere only poisons it).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    pub(crate) fn new() -> Self {
        Self {
            id: NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed),
            map: papaya::HashMap::builder()
                .hasher(PassHash::default())
                .build(),
            dormant: papaya::HashMap::builder()
                .hasher(RandomState::default())
                .build(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            id_hash: RandomState::default(),
            maintenance: Mutex::new(()),
            evicted: Mutex::new(Vec::new()),
            overflowed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// The fast path: an existing customer's handle. Lock-free: this thread's cache, else
    /// one map read; then one atomic increment on the customer's state. `None` when the
    /// customer is not in memory (or is being evicted right now): go to
    /// [`Registry::admit`].
    #[inline]
    pub(crate) fn get(&self, id: &str) -> Option<CustomerHandle> {
        let q = self.query(id);
        match handle_cache::get(self.id, q.hash, id) {
            Lookup::Hit(p) => Some(CustomerHandle(p)),
            Lookup::Miss { remember } => self.get_uncached(q, remember),
        }
    }

    /// The customer a thread remembered for `token` ([`Registry::remember_token`]), pinned;
    /// `None` when this thread has none or it was evicted since (resolve it by id).
    #[inline]
    pub(crate) fn get_token(&self, token: u128) -> Option<CustomerHandle> {
        handle_cache::get_token(self.id, token).map(CustomerHandle)
    }

    /// Remembers on this thread that `token` names the customer of `handle`, if the
    /// thread saw the token lately and the handle's state is this registry's (a handle of
    /// another engine, or of a customer evicted since, is not remembered).
    pub(crate) fn remember_token(&self, token: u128, handle: &CustomerHandle) {
        if handle_cache::token_seen_before(token)
            && let Some(own) = self.get(handle.id().as_str())
            && std::ptr::eq::<CustomerState>(&*own.0, &*handle.0)
        {
            handle_cache::put_token(self.id, token, &own.0);
        }
    }

    #[inline(never)]
    fn get_uncached(&self, q: IdQuery<'_>, remember: bool) -> Option<CustomerHandle> {
        let guard = self.map.guard();
        let p = self.map.get(&q, &guard)?.pin()?;
        if remember {
            handle_cache::put(self.id, q.hash, &p);
        }
        Some(CustomerHandle(p))
    }

    /// Runs `f` on an existing customer's state, holding it for the call.
    #[inline]
    pub(crate) fn with<R>(&self, id: &str, f: impl FnOnce(&CustomerState) -> R) -> Option<R> {
        self.get(id).map(|h| f(&h.0))
    }

    #[inline]
    fn query<'a>(&self, id: &'a str) -> IdQuery<'a> {
        IdQuery {
            hash: self.id_hash.hash_one(id),
            id,
        }
    }

    fn stripe(&self, q: IdQuery<'_>) -> MutexGuard<'_, ()> {
        lock(&self.stripes[q.hash as usize % STRIPES])
    }

    /// Background passes that must not interleave with eviction hold this.
    pub(crate) fn maintenance(&self) -> MutexGuard<'_, ()> {
        lock(&self.maintenance)
    }

    /// The slow path: admits a customer not in the map (restoring it if dormant).
    /// Returns the handle and whether the customer was sent to the overflow customer.
    pub(crate) fn admit(
        &self,
        id: CustomerId,
        a: &Admission<'_>,
    ) -> Result<(CustomerHandle, bool), CoreError> {
        {
            let q = self.query(id.as_str());
            let _stripe = self.stripe(q);
            let guard = self.map.guard();
            if let Some(h) = self.map.get(&q, &guard).and_then(Resident::pin) {
                return Ok((CustomerHandle(h), false));
            }
            if self.map.len() < a.max {
                let s = CustomerState::new(
                    id.clone(),
                    a.aggs,
                    a.plan,
                    a.balance,
                    Arc::clone(a.metering),
                );
                // Under the stripe, an eviction of this customer is wholly before (its
                // dormant record is here) or wholly after (it sees this state).
                let dguard = self.dormant.guard();
                if let Some(d) = self.dormant.remove(id.as_str(), &dguard) {
                    s.flags.store(d.flags, Ordering::Relaxed);
                    s.plan.store(d.plan, Ordering::Relaxed);
                    s.balance.store(d.balance, Ordering::Relaxed);
                    s.rate_tat.store(d.rate_tat, Ordering::Relaxed);
                    for (i, v) in d.period.iter().enumerate() {
                        s.cells.set_period(i, *v);
                    }
                }
                let hash = q.hash;
                return self
                    .insert_pinned(HashedId { hash, id }, s, &guard)
                    .map(|h| (h, false));
            }
        }
        if a.policy == OverflowPolicy::Reject {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(CoreError::CustomerCapReached {
                max: a.max,
                customer: id.to_string(),
            });
        }
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        let q = self.query(a.overflow_id.as_str());
        let _stripe = self.stripe(q);
        let guard = self.map.guard();
        if let Some(h) = self.map.get(&q, &guard).and_then(Resident::pin) {
            return Ok((CustomerHandle(h), true));
        }
        let mut s = CustomerState::new(
            a.overflow_id.clone(),
            a.aggs,
            a.plan,
            a.balance,
            Arc::clone(a.metering),
        );
        s.is_overflow = true;
        let key = HashedId {
            hash: q.hash,
            id: a.overflow_id.clone(),
        };
        self.insert_pinned(key, s, &guard).map(|h| (h, true))
    }

    /// Inserts a new customer and pins it. The caller holds the customer's stripe, so no
    /// other state for this id can be in the map.
    fn insert_pinned(
        &self,
        key: HashedId,
        s: CustomerState,
        guard: &impl papaya::Guard,
    ) -> Result<CustomerHandle, CoreError> {
        let r = match self.map.try_insert(key, Resident::new(s), guard) {
            Ok(r) => r,
            Err(e) => e.current,
        };
        r.pin()
            .map(CustomerHandle)
            .ok_or_else(|| CoreError::CustomerBusy {
                customer: r.state().id.to_string(),
            })
    }

    /// Evicts customers idle since before `cutoff` (engine-clock seconds) that no request
    /// holds. Their usage is drained for the next checkpoint and their state kept dormant.
    ///
    /// Candidates are found by a lock-free pass; each is then sealed (which succeeds only
    /// if no handle to it exists, and stops new ones), drained, recorded as dormant and
    /// removed, under its stripe only.
    pub(crate) fn evict_idle(&self, cutoff: u32, meters: &[Meter]) -> usize {
        let idle =
            |s: &CustomerState| s.last_seen.load(Ordering::Relaxed) < cutoff && !s.is_overflow;
        // A hint: each candidate is checked again under its stripe.
        let candidates: Vec<HashedId> = {
            let guard = self.map.guard();
            self.map
                .iter(&guard)
                .filter(|(_, r)| idle(r.state()) && !r.is_pinned())
                .map(|(key, _)| key.clone())
                .collect()
        };
        let aggs: Vec<Aggregation> = meters.iter().map(|m| m.aggregation).collect();
        let mut n = 0;
        // In chunks, so that a checkpoint waits for one chunk, not for a whole pass over
        // many idle customers.
        for chunk in candidates.chunks(EVICTION_CHUNK) {
            let _maintenance = self.maintenance();
            let mut drained = Vec::new();
            for key in chunk {
                let q = IdQuery {
                    hash: key.hash,
                    id: key.id.as_str(),
                };
                let _stripe = self.stripe(q);
                let guard = self.map.guard();
                let Some(r) = self.map.get(&q, &guard) else {
                    continue;
                };
                // Still idle (a request may have come since the scan), and no handle: after
                // the seal nothing can record into it, so the drain and the copy below are
                // final.
                if !idle(r.state()) || !r.seal() {
                    continue;
                }
                let s = r.state();
                drain(s, meters, &mut drained);
                // Dormant before the removal, so that an admission (which waits for this
                // stripe) finds it.
                self.dormant.pin().insert(
                    key.id.clone(),
                    Dormant {
                        flags: s.flags.load(Ordering::Relaxed),
                        plan: s.plan.load(Ordering::Relaxed),
                        balance: s.balance.load(Ordering::Relaxed),
                        rate_tat: s.rate_tat.load(Ordering::Relaxed),
                        period: s.cells.period_all(&aggs).into_boxed_slice(),
                    },
                );
                self.map.remove(&q, &guard);
                n += 1;
            }
            if !drained.is_empty() {
                lock(&self.evicted).extend(drained);
            }
        }
        n
    }

    /// Swaps every non-zero cell to zero, appending the deltas (and those of evicted
    /// customers) to `out`.
    ///
    /// Holds the maintenance lock (background passes only): a checkpoint moves each cell
    /// into the customer's period base in two steps, and an eviction copying that base into
    /// a dormant record between the two would keep the period short by what was taken.
    pub(crate) fn checkpoint(&self, meters: &[Meter], out: &mut Vec<Delta>) {
        let _maintenance = self.maintenance();
        out.append(&mut lock(&self.evicted));
        let guard = self.map.guard();
        for (_, r) in self.map.iter(&guard) {
            drain(r.state(), meters, out);
        }
    }

    /// Calls `f` on every customer in memory.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&CustomerState)) {
        let guard = self.map.guard();
        for (_, r) in self.map.iter(&guard) {
            f(r.state());
        }
    }

    /// Zeroes the period counters of dormant customers where `rolled(id, plan, meter)`.
    pub(crate) fn reset_dormant_periods(&self, rolled: impl Fn(&CustomerId, u32, usize) -> bool) {
        let dormant = self.dormant.pin();
        let due: Vec<CustomerId> = dormant
            .iter()
            .filter(|(id, d)| {
                (0..d.period.len()).any(|i| d.period[i] != 0 && rolled(id, d.plan, i))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            dormant.update(id.clone(), |d| {
                let mut d = d.clone();
                for (i, v) in d.period.iter_mut().enumerate() {
                    if rolled(&id, d.plan, i) {
                        *v = 0;
                    }
                }
                d
            });
        }
    }

    /// Calls `f` on every dormant (evicted) customer's record.
    pub(crate) fn for_each_dormant(&self, mut f: impl FnMut(&CustomerId, &Dormant)) {
        let dormant = self.dormant.pin();
        for (id, d) in dormant.iter() {
            f(id, d);
        }
    }

    /// Runs `f` on an evicted customer's dormant record, if it has one.
    pub(crate) fn with_dormant<R>(
        &self,
        id: &CustomerId,
        f: impl FnOnce(&Dormant) -> R,
    ) -> Option<R> {
        self.dormant.pin().get(id).map(f)
    }

    /// Customers in memory.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Customers evicted and dormant.
    pub(crate) fn dormant_len(&self) -> usize {
        self.dormant.len()
    }
}

fn drain(s: &CustomerState, meters: &[Meter], out: &mut Vec<Delta>) {
    for m in meters {
        if let Some(measure) = s.cells.take(m.index.get(), m.aggregation) {
            out.push(
                Delta::new(s.id.clone(), m.id.clone(), measure).with_aggregation(m.aggregation),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn admission(overflow: &CustomerId) -> Admission<'_> {
        Admission {
            aggs: &[],
            plan: 0,
            balance: 0,
            max: usize::MAX,
            policy: OverflowPolicy::Reject,
            overflow_id: overflow,
            metering: crate::customer::metering::for_tests(),
        }
    }

    fn id(s: &str) -> CustomerId {
        CustomerId::new(s).unwrap()
    }

    /// A background pass paused in the middle of the map (as a checkpoint over many
    /// customers would be) delays no request: a customer in memory resolves, and a new
    /// one is admitted, while the pass is stopped. With a map under shard locks, the
    /// admission waited for the pass to let go of its shard.
    #[test]
    fn requests_never_wait_for_a_background_pass() {
        let registry = Registry::new();
        let overflow = id("overflow");
        for i in 0..64 {
            registry
                .admit(id(&format!("c{i}")), &admission(&overflow))
                .unwrap();
        }
        let (inside_tx, inside_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::scope(|scope| {
            let (registry, inside_tx) = (&registry, inside_tx);
            scope.spawn(move || {
                let mut first = true;
                registry.for_each(|_| {
                    if std::mem::take(&mut first) {
                        inside_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                    }
                });
            });
            inside_rx.recv().unwrap();
            let overflow = &overflow;
            scope.spawn(move || {
                let known = registry.get("c7").is_some();
                let mut admitted = 0;
                for i in 0..256 {
                    let (h, overflowed) = registry
                        .admit(id(&format!("new{i}")), &admission(overflow))
                        .unwrap();
                    admitted += usize::from(!overflowed && h.id().as_str() == format!("new{i}"));
                }
                done_tx.send((known, admitted)).unwrap();
            });
            // Generous: the requests take microseconds; only a lock held by the paused
            // pass could keep them from finishing at all.
            let done = done_rx.recv_timeout(Duration::from_secs(30));
            release_tx.send(()).unwrap();
            assert_eq!(
                done,
                Ok((true, 256)),
                "the requests finished while the pass was paused"
            );
        });
        assert_eq!(registry.len(), 64 + 256);
    }

    /// Eviction moves an idle customer to a dormant record and admission brings it back
    /// with its state; a held handle keeps its customer in memory.
    #[test]
    fn eviction_skips_held_customers_and_admission_restores_the_rest() {
        let registry = Registry::new();
        let overflow = id("overflow");
        let (held, _) = registry.admit(id("held"), &admission(&overflow)).unwrap();
        let (idle, _) = registry.admit(id("idle"), &admission(&overflow)).unwrap();
        idle.0.balance.store(42, Ordering::Relaxed);
        drop(idle);
        assert_eq!(registry.evict_idle(u32::MAX, &[]), 1);
        assert!(registry.get("idle").is_none());
        assert!(registry.get("held").is_some());
        assert_eq!(registry.dormant_len(), 1);
        let (back, _) = registry.admit(id("idle"), &admission(&overflow)).unwrap();
        assert_eq!(back.balance(), 42);
        assert_eq!(registry.dormant_len(), 0);
        drop(held);
        drop(back);
        assert_eq!(registry.evict_idle(u32::MAX, &[]), 2);
        assert_eq!(registry.len(), 0);
    }
}
