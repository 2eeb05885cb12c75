//! Customer accounts off the request path: operator changes ([`Engine::apply`]), the
//! durable state of each customer (status, plan, balance, quota usage, billing anchor) for
//! checkpoints and stores, and its restoration at start.

use super::*;

impl Engine {
    /// Notes an operator change of a customer's state, for the next checkpoint.
    pub(crate) fn account_changed(&self, id: &CustomerId) {
        let mut changed = self
            .inner
            .changed_accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        changed.insert(id.clone());
    }

    /// The customers whose state an operator changed since the last call (the reporter's
    /// checkpoint snapshots them with the customers whose usage it took).
    pub(crate) fn take_changed_accounts(&self) -> Vec<CustomerId> {
        let mut changed = self
            .inner
            .changed_accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        changed.drain().collect()
    }

    /// The durable state of each of `ids` known to this process, in memory or evicted, as
    /// of the last checkpoint's swap (for the reporter's checkpoint): quota usage of count
    /// and sum meters is what the checkpoints took this period, so it matches the usage in
    /// the spool exactly; the balance is read now (a call racing with the swap may have its
    /// usage on one side and its spend on the other).
    pub(crate) fn accounts_of(
        &self,
        ids: impl IntoIterator<Item = CustomerId>,
    ) -> Vec<(CustomerId, AccountState)> {
        let cfg = &*self.inner.metering.config.load();
        let now = self.now();
        let anchors = self.inner.anchors.pin();
        let registry = &self.inner.registry;
        let out = ids
            .into_iter()
            .filter_map(|id| {
                let state = registry
                    .with(id.as_str(), |s| {
                        (!s.is_overflow).then(|| {
                            // Quota usage as checkpointed (the cells' content after the
                            // swap belongs to the next checkpoint).
                            let period: Vec<u64> = cfg
                                .aggs
                                .iter()
                                .enumerate()
                                .map(|(i, a)| match a {
                                    Aggregation::Count | Aggregation::Sum => s.cells.base(i),
                                    _ => s.cells.period_used(i, *a),
                                })
                                .collect();
                            account_of(
                                cfg,
                                (
                                    s.flags.load(Ordering::Relaxed),
                                    s.plan.load(Ordering::Relaxed),
                                    s.balance.load(Ordering::Relaxed),
                                ),
                                &period,
                                now,
                                anchors.get(&s.id),
                            )
                        })
                    })
                    .flatten()
                    .or_else(|| {
                        registry.with_dormant(&id, |d| {
                            account_of(
                                cfg,
                                (d.flags, d.plan, d.balance),
                                &d.period,
                                now,
                                anchors.get(&id),
                            )
                        })
                    })?;
                Some((id, state))
            })
            .collect::<Vec<_>>();
        drop(anchors);
        let mut out = out;
        self.fill_credits(&mut out, false);
        self.versions().fill(&mut out);
        self.fill_upsell(&mut out);
        out
    }

    /// Applies a state change to a customer (admitting it if new).
    ///
    /// A change of `delinquent`, `cancelled`, `blocked` or `plan` is stamped with the
    /// wall-clock time ([`AccountState::field_versions`]): a webhook event older than it
    /// does not undo it, neither when it arrives nor when the webhook log is re-applied at
    /// start.
    pub fn apply(&self, customer: &str, change: StateChange) -> Result<(), CoreError> {
        let stamp = CustomerId::new(customer).ok();
        self.apply_change(customer, change.clone())?;
        if let Some(id) = stamp {
            self.stamp_direct(&id, &change);
        }
        Ok(())
    }

    /// [`Engine::apply`], without stamping the field's version.
    pub(super) fn apply_change(
        &self,
        customer: &str,
        change: StateChange,
    ) -> Result<(), CoreError> {
        let h = self.resolve(customer)?;
        let s = &h.0;
        match change {
            StateChange::Delinquent(on) => s.set_flag(DELINQUENT, on),
            StateChange::Cancelled(on) => s.set_flag(CANCELLED, on),
            StateChange::Blocked(on) => s.set_flag(BLOCKED, on),
            StateChange::Plan(p) => {
                let cfg = &*self.inner.metering.config.load();
                let idx = *cfg
                    .plan_index
                    .get(p.as_str())
                    .ok_or_else(|| CoreError::UnknownPlan(p.to_string()))?;
                s.plan.store(idx, Ordering::Relaxed);
            }
            StateChange::GrantCredits(n) => crate::customer::metering::grant(&s.balance, n),
            StateChange::BillingAnchor(anchor) => {
                let cfg = &*self.inner.metering.config.load();
                let n = cfg.calendar.cycle(anchor, self.now()).number;
                self.inner.anchors.pin().insert(s.id.clone(), (anchor, n));
            }
            StateChange::SetBalance(n) => s.balance.store(
                n.max(crate::customer::metering::BALANCE_FLOOR),
                Ordering::Relaxed,
            ),
        }
        self.account_changed(&s.id);
        Ok(())
    }

    /// A customer's durable state (status, plan, balance, quota usage this period), for a
    /// [`crate::StateStore`].
    pub fn account(&self, customer: &str) -> Option<AccountState> {
        let cfg = &*self.inner.metering.config.load();
        let now = self.now();
        let anchors = self.inner.anchors.pin();
        let state = self
            .inner
            .registry
            .with(customer, |s| live_account(cfg, s, now, anchors.get(&s.id)))?;
        drop(anchors);
        let mut one = [(CustomerId::new(customer).ok()?, state)];
        self.fill_credits(&mut one, true);
        self.versions().fill(&mut one);
        self.fill_upsell(&mut one);
        let [(_, state)] = one;
        Some(state)
    }

    /// Every customer's durable state: those in memory and those evicted to dormant
    /// records.
    pub fn accounts(&self) -> Vec<(CustomerId, AccountState)> {
        let cfg = &*self.inner.metering.config.load();
        let now = self.now();
        let anchors = self.inner.anchors.pin();
        let mut out = Vec::with_capacity(self.inner.registry.len());
        // No eviction meanwhile: every customer is listed once, in memory or dormant.
        let _maintenance = self.inner.registry.maintenance();
        self.inner.registry.for_each(|s| {
            if s.is_overflow {
                return;
            }
            out.push((s.id.clone(), live_account(cfg, s, now, anchors.get(&s.id))));
        });
        self.inner.registry.for_each_dormant(|id, d| {
            out.push((
                id.clone(),
                account_of(
                    cfg,
                    (d.flags, d.plan, d.balance),
                    &d.period,
                    now,
                    anchors.get(id),
                ),
            ));
        });
        drop(_maintenance);
        drop(anchors);
        self.fill_credits(&mut out, true);
        self.versions().fill(&mut out);
        self.fill_upsell(&mut out);
        out
    }

    /// Sets a customer's state from a [`crate::StateStore`] (admitting it if new). Quota
    /// usage is restored only for periods that are still current; meters the state does
    /// not list have none. A plan the config does
    /// not know is an error and changes nothing; usage of unknown meters is skipped.
    pub fn restore_account(&self, customer: &str, state: &AccountState) -> Result<(), CoreError> {
        let cfg = &*self.inner.metering.config.load();
        let plan = match &state.plan {
            Some(p) => *cfg
                .plan_index
                .get(p.as_str())
                .ok_or_else(|| CoreError::UnknownPlan(p.to_string()))?,
            None => NO_PLAN,
        };
        let h = self.resolve(customer)?;
        let s = &h.0;
        s.set_flag(DELINQUENT, state.delinquent);
        s.set_flag(CANCELLED, state.cancelled);
        s.set_flag(BLOCKED, state.blocked);
        s.plan.store(plan, Ordering::Relaxed);
        s.balance.store(state.balance, Ordering::Relaxed);
        let now = self.now();
        // The anchor first: the period bounds below follow it.
        let anchors = self.inner.anchors.pin();
        match state.billing_anchor {
            Some(anchor) => {
                let n = cfg.calendar.cycle(anchor, now).number;
                anchors.insert(s.id.clone(), (anchor, n));
            }
            None => {
                anchors.remove(&s.id);
            }
        }
        drop(anchors);
        // Every meter's period usage is replaced: one the state does not list (or lists for
        // a past period) has none this period.
        let mut used = vec![0u64; cfg.meters.len()];
        for pu in &state.period_usage {
            let Some(i) = cfg.meter_index.get(pu.meter.as_str()).map(|m| m.get()) else {
                continue;
            };
            let period = cfg.plan(plan).map_or(Period::Month, |p| p.period_of(i));
            if self.bounds(cfg, &s.id, period, now).start == pu.period_start
                && let Some(u) = used.get_mut(i)
            {
                *u = pu.used;
            }
        }
        for (i, u) in used.into_iter().enumerate() {
            s.cells.set_period(i, u);
        }
        self.restore_credits(s, state);
        self.versions().restore(&s.id, &state.field_versions);
        self.restore_upsell(cfg, s, state);
        Ok(())
    }

    /// Whether a customer has no plan (for tests of defaults).
    #[doc(hidden)]
    pub fn has_plan(&self, customer: &str) -> bool {
        self.inner
            .registry
            .with(customer, |s| s.plan.load(Ordering::Relaxed) != NO_PLAN)
            .unwrap_or(false)
    }
}

/// The durable state of a customer in memory.
pub(super) fn live_account(
    cfg: &Compiled,
    s: &CustomerState,
    now: u64,
    anchor: Option<&(u64, i64)>,
) -> AccountState {
    account_of(
        cfg,
        (
            s.flags.load(Ordering::Relaxed),
            s.plan.load(Ordering::Relaxed),
            s.balance.load(Ordering::Relaxed),
        ),
        &s.cells.period_all(&cfg.aggs),
        now,
        anchor,
    )
}

/// The durable state of one customer, from its parts.
pub(super) fn account_of(
    cfg: &Compiled,
    (flags, plan, balance): (u32, u32, i64),
    period: &[u64],
    now: u64,
    anchor: Option<&(u64, i64)>,
) -> AccountState {
    let p = cfg.plan(plan);
    AccountState {
        delinquent: flags & DELINQUENT != 0,
        cancelled: flags & CANCELLED != 0,
        blocked: flags & BLOCKED != 0,
        plan: p.map(|p| p.id.clone()),
        balance,
        billing_anchor: anchor.map(|&(a, _)| a),
        period_usage: cfg
            .meters
            .iter()
            .zip(period)
            .filter(|(_, used)| **used > 0)
            .map(|(m, used)| {
                let kind = p.map_or(Period::Month, |p| p.period_of(m.index.get()));
                let start = match (kind, anchor) {
                    (Period::BillingCycle, Some(&(a, _))) => cfg.calendar.cycle(a, now).start,
                    (Period::BillingCycle, None) => cfg.calendar.bounds(Period::Month, now).start,
                    (k, _) => cfg.calendar.bounds(k, now).start,
                };
                PeriodUsage::new(m.id.clone(), start, *used)
            })
            .collect(),
        credits: None,
        ledger_seq: None,
        field_versions: Default::default(),
        upsell: Vec::new(),
    }
}
