//! The customer registry: one concurrent map from customer id to live state, with a cap,
//! an overflow policy and idle eviction that loses nothing.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use foldhash::fast::RandomState;

use super::handle::{CustomerHandle, CustomerState};
use crate::config::OverflowPolicy;
use crate::error::CoreError;
use crate::id::CustomerId;
use crate::meter::{Aggregation, Meter};
use crate::report::Delta;

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
}

pub(crate) struct Registry {
    map: DashMap<CustomerId, CustomerHandle, RandomState>,
    dormant: DashMap<CustomerId, Dormant, RandomState>,
    /// Usage drained from evicted customers, taken by the next checkpoint.
    evicted: Mutex<Vec<Delta>>,
    pub(crate) overflowed: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

/// Enough shards that a background pass over one shard holds its lock only briefly.
const SHARDS: usize = 256;

impl Registry {
    pub(crate) fn new() -> Self {
        Self {
            map: DashMap::with_capacity_and_hasher_and_shard_amount(
                0,
                RandomState::default(),
                SHARDS,
            ),
            dormant: DashMap::with_hasher_and_shard_amount(RandomState::default(), SHARDS),
            evicted: Mutex::new(Vec::new()),
            overflowed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// The fast path: an existing customer's handle (one shared-lock map read).
    #[inline]
    pub(crate) fn get(&self, id: &str) -> Option<CustomerHandle> {
        self.map.get(id).map(|h| h.clone())
    }

    /// Runs `f` on an existing customer's state without cloning the handle.
    #[inline]
    pub(crate) fn with<R>(&self, id: &str, f: impl FnOnce(&CustomerState) -> R) -> Option<R> {
        self.map.get(id).map(|h| f(&h.0))
    }

    /// The slow path: admits a customer not in the map (restoring it if dormant).
    /// Returns the handle and whether the customer was sent to the overflow customer.
    pub(crate) fn admit(
        &self,
        id: CustomerId,
        a: &Admission<'_>,
    ) -> Result<(CustomerHandle, bool), CoreError> {
        if let Some(h) = self.map.get(id.as_str()) {
            return Ok((h.clone(), false));
        }
        if self.map.len() >= a.max {
            return match a.policy {
                OverflowPolicy::Reject => {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    Err(CoreError::CustomerCapReached {
                        max: a.max,
                        customer: id.to_string(),
                    })
                }
                _ => {
                    self.overflowed.fetch_add(1, Ordering::Relaxed);
                    let h = self
                        .map
                        .entry(a.overflow_id.clone())
                        .or_insert_with(|| {
                            let mut s = CustomerState::new(
                                a.overflow_id.clone(),
                                a.aggs,
                                a.plan,
                                a.balance,
                            );
                            s.is_overflow = true;
                            CustomerHandle(Arc::new(s))
                        })
                        .clone();
                    Ok((h, true))
                }
            };
        }
        // The entry holds the shard's write lock: eviction of the same id (which also
        // takes it) happens wholly before or wholly after, so a dormant record is never
        // missed.
        let h = self
            .map
            .entry(id.clone())
            .or_insert_with(|| {
                let s = CustomerState::new(id.clone(), a.aggs, a.plan, a.balance);
                if let Some((_, d)) = self.dormant.remove(id.as_str()) {
                    s.flags.store(d.flags, Ordering::Relaxed);
                    s.plan.store(d.plan, Ordering::Relaxed);
                    s.balance.store(d.balance, Ordering::Relaxed);
                    s.rate_tat.store(d.rate_tat, Ordering::Relaxed);
                    for (i, v) in d.period.iter().enumerate() {
                        s.cells.set_period(i, *v);
                    }
                }
                CustomerHandle(Arc::new(s))
            })
            .clone();
        Ok((h, false))
    }

    /// Evicts customers idle since before `cutoff` (engine-clock seconds) that no request
    /// holds. Their usage is drained for the next checkpoint and their state kept dormant.
    ///
    /// Two passes, so that requests never wait on a shard scan: the candidates are found
    /// under each shard's read lock (which requests share), then each is removed under the
    /// write lock of its shard, held for that one customer only.
    pub(crate) fn evict_idle(&self, cutoff: u32, meters: &[Meter]) -> usize {
        let idle =
            |h: &CustomerHandle| h.0.last_seen.load(Ordering::Relaxed) < cutoff && !h.0.is_overflow;
        let candidates: Vec<CustomerId> = self
            .map
            .iter()
            .filter(|e| idle(e.value()))
            .map(|e| e.key().clone())
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        let aggs: Vec<Aggregation> = meters.iter().map(|m| m.aggregation).collect();
        let mut drained = Vec::new();
        let mut n = 0;
        for id in &candidates {
            let removed = self.map.remove_if(id.as_str(), |id, h| {
                // Under the shard's write lock nobody can clone the handle out of the map,
                // so a strong count of 1 means no request holds it: nothing can record
                // after the drain. Still idle: a request may have come since the first pass.
                if !idle(h) || Arc::strong_count(&h.0) != 1 {
                    return false;
                }
                drain(&h.0, meters, &mut drained);
                // Dormant before the lock is released, so that an admission of the same
                // id (which takes this lock) finds it.
                self.dormant.insert(
                    id.clone(),
                    Dormant {
                        flags: h.0.flags.load(Ordering::Relaxed),
                        plan: h.0.plan.load(Ordering::Relaxed),
                        balance: h.0.balance.load(Ordering::Relaxed),
                        rate_tat: h.0.rate_tat.load(Ordering::Relaxed),
                        period: h.0.cells.period_all(&aggs).into_boxed_slice(),
                    },
                );
                true
            });
            n += usize::from(removed.is_some());
        }
        if !drained.is_empty() {
            self.evicted_lock().extend(drained);
        }
        n
    }

    /// Swaps every non-zero cell to zero, appending the deltas (and those of evicted
    /// customers) to `out`.
    pub(crate) fn checkpoint(&self, meters: &[Meter], out: &mut Vec<Delta>) {
        out.append(&mut self.evicted_lock());
        for entry in self.map.iter() {
            drain(&entry.value().0, meters, out);
        }
    }

    fn evicted_lock(&self) -> std::sync::MutexGuard<'_, Vec<Delta>> {
        // A poisoned lock only means a panic elsewhere; the vector is still valid.
        self.evicted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` on every customer in memory.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&CustomerHandle)) {
        for entry in self.map.iter() {
            f(entry.value());
        }
    }

    /// Zeroes the period counters of dormant customers where `rolled(plan, meter)`.
    pub(crate) fn reset_dormant_periods(&self, rolled: impl Fn(u32, usize) -> bool) {
        for mut d in self.dormant.iter_mut() {
            let plan = d.plan;
            for (i, v) in d.period.iter_mut().enumerate() {
                if rolled(plan, i) {
                    *v = 0;
                }
            }
        }
    }

    /// Calls `f` on every dormant (evicted) customer's record.
    pub(crate) fn for_each_dormant(&self, mut f: impl FnMut(&CustomerId, &Dormant)) {
        for entry in self.dormant.iter() {
            f(entry.key(), entry.value());
        }
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
            out.push(Delta::new(s.id.clone(), m.id.clone(), measure));
        }
    }
}
