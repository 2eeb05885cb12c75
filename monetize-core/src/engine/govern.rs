//! Deciding a request: the quiet fast path when no rule can fire, else the compiled rules,
//! with shadow-mode and block events.

use super::record::request_match;
use super::*;

impl Engine {
    /// Evaluates the rules for a request. Allocation-free when it allows.
    ///
    /// When the rules only look at the customer's state (the default rules do) and none
    /// of it is set, this is a few loads; otherwise the rules are walked out of line.
    #[inline]
    pub fn decide(&self, handle: &CustomerHandle, ex: &Exchange<'_>) -> Decision {
        let cfg = &*self.inner.metering.config.load();
        match quiet_allow(cfg, &handle.0) {
            Some(allow) => Decision::Allow(allow),
            None => self.decide_rules(cfg, handle, ex),
        }
    }

    /// [`Engine::decide`] and [`Engine::meter_request`] on one configuration load: the
    /// decision for the request and which meters' request-side filters it passed. The
    /// match is computed whatever the decision; a layer that answers a blocked request
    /// itself just drops it.
    ///
    /// Both halves see the same configuration, even across a concurrent
    /// [`Engine::reload`].
    #[inline]
    pub fn decide_and_match(
        &self,
        handle: &CustomerHandle,
        ex: &Exchange<'_>,
    ) -> (Decision, MeterMatch) {
        let cfg = &*self.inner.metering.config.load();
        // The match first (it reads only the request and the config), so that the
        // decision is built in place in the returned pair rather than moved into it.
        let matched = request_match(cfg, ex);
        let decision = match quiet_allow(cfg, &handle.0) {
            Some(allow) => Decision::Allow(allow),
            None => self.decide_rules(cfg, handle, ex),
        };
        (decision, matched)
    }

    /// [`Engine::decide_and_match`] for an HTTP layer that keeps what it needs until the
    /// response in a state of its own: an allow is written into `allow` (replacing what it
    /// held) and the match returned; a block is returned as the error, `allow` untouched.
    /// The same decision and match, on one configuration, without building a
    /// [`Decision`]: the allow (80 bytes) is written once, into the caller's state,
    /// instead of being moved through the decision, the returned pair and the caller's
    /// locals.
    #[inline]
    pub fn decide_and_match_into(
        &self,
        handle: &CustomerHandle,
        ex: &Exchange<'_>,
        allow: &mut Allow,
    ) -> Result<MeterMatch, Box<Block>> {
        let cfg = &*self.inner.metering.config.load();
        let matched = request_match(cfg, ex);
        if let Some(balance) = quiet_balance(cfg, &handle.0) {
            allow.credits_remaining = balance;
            allow.rate_limit = None;
            allow.headers = None;
            return Ok(matched);
        }
        match self.decide_rules(cfg, handle, ex) {
            Decision::Allow(a) => {
                *allow = a;
                Ok(matched)
            }
            Decision::Block(block) => Err(block),
        }
    }

    /// [`Engine::decide`] past the quiet check: walks the rules.
    #[inline(never)]
    pub(super) fn decide_rules(
        &self,
        cfg: &Compiled,
        handle: &CustomerHandle,
        ex: &Exchange<'_>,
    ) -> Decision {
        let s: &CustomerState = &handle.0;
        let plan = cfg.plan(s.plan.load(Ordering::Relaxed));
        let epoch = self.inner.epoch;
        let clock = move || epoch.elapsed().as_nanos() as u64;
        let ctx = Ctx {
            handle,
            plan,
            ex,
            aggs: &cfg.aggs,
            clock: &clock,
        };
        let mut facts = Facts::default();
        for rule in &cfg.rules {
            if let Some(f) = &rule.request
                && !f.matches(ex)
            {
                continue;
            }
            if !rule.when.eval(&ctx, &mut facts) {
                continue;
            }
            rule.hit();
            match (&rule.action, rule.mode) {
                (RuleAction::Block { .. }, Mode::Shadow) => {
                    if s.block_event_due(1, self.coarse_now(), BLOCK_EVENT_EVERY_SECS) {
                        self.emit(Event::new(
                            Some(s.id.clone()),
                            EventKind::ShadowBlock {
                                rule: rule.name.clone(),
                            },
                        ));
                    }
                }
                (_, Mode::Shadow) => {}
                (RuleAction::Allow { headers }, _) => {
                    return Decision::Allow(Allow {
                        credits_remaining: plan.filter(|p| p.prepaid).map(|_| handle.balance()),
                        rate_limit: facts.rate,
                        headers: (!headers.is_empty()).then(|| headers.clone()),
                    });
                }
                (
                    RuleAction::Block {
                        status,
                        reason,
                        message,
                        headers,
                    },
                    _,
                ) => {
                    if s.block_event_due(0, self.coarse_now(), BLOCK_EVENT_EVERY_SECS) {
                        self.emit(Event::new(
                            Some(s.id.clone()),
                            EventKind::Blocked {
                                rule: rule.name.clone(),
                            },
                        ));
                    }
                    let now = self.now();
                    let quota = facts.quota.map(|(i, used, limit, period)| QuotaInfo {
                        meter: cfg.meters[i.get()].id.clone(),
                        used,
                        limit,
                        resets_at: self.bounds(cfg, &s.id, period, now).end,
                    });
                    let retry_after_secs =
                        facts.rate.and_then(|r| r.retry_after_secs).or_else(|| {
                            quota
                                .as_ref()
                                .map(|q| q.resets_at.saturating_sub(now).max(1))
                        });
                    return Decision::Block(Box::new(Block {
                        status: *status,
                        reason: reason.clone(),
                        rule: rule.name.clone(),
                        message: message.clone(),
                        customer: Some(s.id.clone()),
                        plan: plan.map(|p| p.id.clone()),
                        balance: plan.filter(|p| p.prepaid).map(|_| handle.balance()),
                        quota,
                        rate_limit: facts.rate,
                        retry_after_secs,
                        headers: headers.clone(),
                    }));
                }
            }
        }
        Decision::Allow(Allow {
            credits_remaining: plan.filter(|p| p.prepaid).map(|_| handle.balance()),
            rate_limit: facts.rate,
            headers: None,
        })
    }
}

/// The decision when the rule set has a quiet check and nothing it looks at is set for
/// this customer: allow, with the balance on prepaid plans. `None`: walk the rules.
#[inline]
pub(super) fn quiet_allow(cfg: &Compiled, s: &CustomerState) -> Option<Allow> {
    quiet_balance(cfg, s).map(|balance| Allow {
        credits_remaining: balance,
        rate_limit: None,
        headers: None,
    })
}

/// The quiet check of [`quiet_allow`]: `Some` (with the balance of a prepaid customer)
/// when no rule can fire.
#[inline]
pub(super) fn quiet_balance(cfg: &Compiled, s: &CustomerState) -> Option<Option<i64>> {
    let q = cfg.quiet.as_ref()?;
    let plan = cfg.plan(s.plan.load(Ordering::Relaxed));
    if s.flags.load(Ordering::Relaxed) & q.flag_mask != 0 {
        return None;
    }
    let prepaid = plan.is_some_and(|p| p.prepaid);
    let balance = prepaid.then(|| s.balance.load(Ordering::Relaxed));
    let out_of_credits = q.credits && balance.is_some_and(|b| b <= 0);
    if out_of_credits {
        return None;
    }
    let over_quota = q.quota && plan.is_some_and(|p| p.any_quota_reached(&s.cells, &cfg.aggs));
    let rate_limited = q.rate && plan.is_some_and(|p| p.rate_limit.is_some());
    if over_quota || rate_limited {
        return None;
    }
    Some(balance)
}
