//! Background upkeep: checkpoints that take the usage cells, the tick that rolls quota
//! periods over and evicts idle customers, and the engine's clocks.

use super::*;

impl Engine {
    /// Swaps every non-zero usage cell to zero and returns the deltas. An add racing with
    /// a checkpoint lands in this checkpoint or the next, never both and never neither.
    pub fn checkpoint(&self) -> Vec<Delta> {
        let cfg = &*self.inner.metering.config.load();
        // Sized like the last checkpoint: under steady load, no regrowth of a large vector.
        let mut out = Vec::with_capacity(self.inner.last_checkpoint_len.load(Ordering::Relaxed));
        self.inner.registry.checkpoint(&cfg.meters, &mut out);
        self.inner
            .last_checkpoint_len
            .store(out.len(), Ordering::Relaxed);
        out
    }

    /// Background housekeeping (the reporter calls it every checkpoint): advances the
    /// coarse clock, resets quota counters when a period rolls over, and evicts idle
    /// customers when configured.
    pub fn tick(&self) {
        let secs = self.inner.epoch.elapsed().as_secs().min(u32::MAX as u64) as u32;
        self.inner.coarse_secs.store(secs, Ordering::Relaxed);
        let cfg = &*self.inner.metering.config.load();
        let now = self.now();
        let kinds = [Period::Minute, Period::Hour, Period::Day, Period::Month];
        let current = kinds.map(|p| cfg.calendar.bounds(p, now).number);
        // Only a period number above the highest seen rolls over: a clock stepping back
        // (NTP, a VM restored) and forward again resets nothing twice.
        let rolled: Vec<Period> = {
            let mut last = self.inner.periods.lock().unwrap_or_else(|e| e.into_inner());
            let rolled = match *last {
                Some(prev) => kinds
                    .iter()
                    .zip(prev.iter().zip(current.iter()))
                    .filter(|(_, (a, b))| b > a)
                    .map(|(k, _)| *k)
                    .collect(),
                None => Vec::new(),
            };
            let prev = last.unwrap_or(current);
            *last = Some(std::array::from_fn(|i| prev[i].max(current[i])));
            rolled
        };
        // Anchored billing cycles, per customer, under the same guard.
        let cycled: std::collections::HashSet<CustomerId> = {
            let anchors = self.inner.anchors.pin();
            let due: Vec<(CustomerId, u64, i64)> = anchors
                .iter()
                .filter_map(|(id, &(anchor, seen))| {
                    let n = cfg.calendar.cycle(anchor, now).number;
                    (n > seen).then(|| (id.clone(), anchor, n))
                })
                .collect();
            for (id, anchor, n) in &due {
                anchors.insert(id.clone(), (*anchor, *n));
            }
            due.into_iter().map(|(id, ..)| id).collect()
        };
        if !rolled.is_empty() || !cycled.is_empty() {
            let anchors = self.inner.anchors.pin();
            let resets = |id: &CustomerId, period: Period| match period {
                Period::BillingCycle if anchors.contains_key(id) => cycled.contains(id),
                Period::BillingCycle => rolled.contains(&Period::Month),
                p => rolled.contains(&p),
            };
            // The usage of periods that ended, for upsell streaks: read before the reset.
            let upsell = cfg.plans.iter().any(|p| p.upsell_after.is_some());
            let ended = self.with_streaking(|streaking| {
                let mut ended = Vec::new();
                let mut note = |id: &CustomerId, plan: u32, meter: usize, used: u64| {
                    if upsell && Self::upsell_candidate(cfg, plan, meter, used, streaking(id)) {
                        ended.push(upsell::Ended {
                            customer: id.clone(),
                            plan,
                            meter,
                            used,
                        });
                    }
                };
                // No eviction meanwhile: every customer is reset once, in memory or dormant.
                let _maintenance = self.inner.registry.maintenance();
                self.inner.registry.for_each(|s| {
                    let pos = s.plan.load(Ordering::Relaxed);
                    let Some(plan) = cfg.plan(pos) else {
                        return;
                    };
                    for (i, agg) in cfg.aggs.iter().enumerate() {
                        if resets(&s.id, plan.period_of(i)) {
                            note(&s.id, pos, i, s.cells.period_used(i, *agg));
                            s.cells.set_period(i, 0);
                        }
                    }
                });
                if upsell {
                    self.inner.registry.for_each_dormant(|id, d| {
                        let Some(plan) = cfg.plan(d.plan) else {
                            return;
                        };
                        for (i, used) in d.period.iter().enumerate() {
                            if resets(id, plan.period_of(i)) {
                                note(id, d.plan, i, *used);
                            }
                        }
                    });
                }
                self.inner.registry.reset_dormant_periods(|id, plan, i| {
                    cfg.plan(plan).is_some_and(|p| resets(id, p.period_of(i)))
                });
                ended
            });
            drop(anchors);
            self.upsell_count(cfg, ended, |id, period| {
                self.previous_periods(cfg, id, period, now)
            });
        }
        self.credits_tick();
        if let Some(idle) = cfg.customers.evict_idle_secs {
            let idle = idle.min(u32::MAX as u64) as u32;
            if secs > idle {
                self.inner.registry.evict_idle(secs - idle, &cfg.meters);
            }
        }
    }

    /// Evicts every customer idle for at least `idle_secs` (by the coarse clock) that no
    /// request holds; their usage goes to the next checkpoint and their state is kept.
    /// Returns how many were evicted.
    pub fn evict_idle(&self, idle_secs: u32) -> usize {
        let cfg = &*self.inner.metering.config.load();
        let secs = self.inner.epoch.elapsed().as_secs().min(u32::MAX as u64) as u32;
        self.inner.coarse_secs.store(secs, Ordering::Relaxed);
        let cutoff = secs
            .saturating_sub(idle_secs)
            .saturating_add(u32::from(idle_secs == 0));
        self.inner.registry.evict_idle(cutoff, &cfg.meters)
    }

    /// Unix seconds on the engine's wall clock ([`EngineBuilder::wall_clock`]).
    pub(crate) fn now(&self) -> u64 {
        self.inner.clock.as_ref().map_or_else(unix_now, |c| c())
    }

    /// The quota period of kind `period` containing `now` for `customer`: its billing
    /// cycle when it has an anchor, else the calendar's.
    pub(super) fn bounds(
        &self,
        cfg: &Compiled,
        customer: &CustomerId,
        period: Period,
        now: u64,
    ) -> Bounds {
        match period {
            Period::BillingCycle => match self.inner.anchors.pin().get(customer) {
                Some(&(anchor, _)) => cfg.calendar.cycle(anchor, now),
                None => cfg.calendar.bounds(Period::Month, now),
            },
            p => cfg.calendar.bounds(p, now),
        }
    }

    /// Seconds since the engine started (for throttling, not for the request path's clock).
    pub(super) fn coarse_now(&self) -> u32 {
        self.inner.epoch.elapsed().as_secs().min(u32::MAX as u64) as u32
    }
}
