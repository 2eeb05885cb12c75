//! Resolving a customer id to its handle: the thread's token cache, the registry, admission
//! of new customers, and registration with a plan.

use super::*;

impl Engine {
    /// Resolves a customer: for one in memory, a lock-free map read and one atomic
    /// increment on its state (no lock, so no background pass can delay it); a new one is
    /// admitted (restored if it was evicted) under the cap and overflow policy.
    #[inline]
    pub fn resolve(&self, id: &str) -> Result<CustomerHandle, CoreError> {
        if let Some(h) = self.inner.registry.get(id) {
            h.0.touch(self.inner.coarse_secs.load(Ordering::Relaxed));
            return Ok(h);
        }
        self.admit(id)
    }

    /// The customer this thread last resolved for `token` (see [`CustomerToken`]): one
    /// probe of the thread's cache and one atomic increment, with no id to hash or compare.
    /// `None` when the thread has not remembered the token (call
    /// [`Engine::remember_token`] after resolving the customer by id) or the customer was
    /// evicted since.
    #[inline]
    pub fn resolve_token(&self, token: CustomerToken) -> Option<CustomerHandle> {
        let h = self.inner.registry.get_token(token.bits())?;
        h.0.touch(self.inner.coarse_secs.load(Ordering::Relaxed));
        Some(h)
    }

    /// Remembers on this thread that `token` names the customer of `handle`, a handle
    /// this engine resolved, so that [`Engine::resolve_token`] finds it next time. Tokens
    /// are remembered on their second sighting on a thread (so credentials used once cost
    /// no cache slot), in 4,096 slots per thread (two-way sets; 128 KiB, allocated on first use).
    pub fn remember_token(&self, token: CustomerToken, handle: &CustomerHandle) {
        self.inner.registry.remember_token(token.bits(), handle);
    }

    #[cold]
    pub(super) fn admit(&self, id: &str) -> Result<CustomerHandle, CoreError> {
        let cid = CustomerId::new(id).map_err(|source| CoreError::Id {
            what: "customer",
            value: id.chars().take(64).collect(),
            source,
        })?;
        let cfg = &*self.inner.metering.config.load();
        let balance = cfg.plan(cfg.default_plan).map_or(0, |p| p.initial_credits);
        let (h, overflowed) = self.inner.registry.admit(
            cid.clone(),
            &Admission {
                aggs: &cfg.aggs,
                plan: cfg.default_plan,
                balance,
                max: cfg.customers.max,
                policy: cfg.customers.overflow,
                overflow_id: &cfg.overflow_id,
                metering: &self.inner.metering,
            },
        )?;
        if overflowed {
            self.emit(Event::new(Some(cid), EventKind::CustomerOverflow));
        }
        h.0.touch(self.inner.coarse_secs.load(Ordering::Relaxed));
        Ok(h)
    }

    /// Registers a customer on a plan. A new customer starts with the plan's
    /// `initial_credits`; an existing one only changes plan (its balance is kept).
    pub fn register(&self, customer: &str, plan: &str) -> Result<CustomerHandle, CoreError> {
        let cfg = &*self.inner.metering.config.load();
        let idx = *cfg
            .plan_index
            .get(plan)
            .ok_or_else(|| CoreError::UnknownPlan(plan.to_owned()))?;
        if let Some(h) = self.inner.registry.get(customer) {
            h.0.plan.store(idx, Ordering::Relaxed);
            self.account_changed(&h.0.id);
            return Ok(h);
        }
        // Not in memory: new, dormant (evicted) or being admitted by another thread.
        let cid = CustomerId::new(customer).map_err(|source| CoreError::Id {
            what: "customer",
            value: customer.chars().take(64).collect(),
            source,
        })?;
        let balance = cfg.plan(idx).map_or(0, |p| p.initial_credits);
        let (h, _) = self.inner.registry.admit(
            cid,
            &Admission {
                aggs: &cfg.aggs,
                plan: idx,
                balance,
                max: cfg.customers.max,
                policy: crate::config::OverflowPolicy::Reject,
                overflow_id: &cfg.overflow_id,
                metering: &self.inner.metering,
            },
        )?;
        // Admission restores a dormant customer's stored plan (or finds one another
        // thread admitted): the plan asked for applies after it.
        h.0.plan.store(idx, Ordering::Relaxed);
        h.0.touch(self.inner.coarse_secs.load(Ordering::Relaxed));
        self.account_changed(&h.0.id);
        Ok(h)
    }
}
