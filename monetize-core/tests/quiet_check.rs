//! Property: the fast "no rule can fire" check gives the same decision as walking the
//! rules, for any customer state.

use http::{HeaderMap, Method};
use monetize_core::config::{
    ConditionConfig, Config, MeterConfig, Period, PlanConfig, QuotaConfig, RateLimitConfig,
    RuleConfig,
};
use monetize_core::{Decision, Engine, Exchange, PlanId, StateChange};
use proptest::prelude::*;

fn config(with_fast_path: bool) -> Config {
    let mut rules = RuleConfig::defaults();
    if !with_fast_path {
        // A rule the fast check cannot summarise forces the full walk; it never fires.
        rules.push(RuleConfig::block(
            "never",
            ConditionConfig::Not(Box::new(ConditionConfig::Always)),
            monetize_core::config::BlockConfig::new(400, "never", "never"),
        ));
    }
    let mut cfg = Config::builder()
        .meter(MeterConfig::count("calls"))
        .meter(MeterConfig::count("other"))
        .plan(PlanConfig::new("free").quota(QuotaConfig::new("calls", 5, Period::Month)))
        .plan(PlanConfig::new("prepaid").prepaid(0).price("calls", 10))
        .plan(PlanConfig::new("limited").rate_limit(RateLimitConfig::new(1_000_000, 1)))
        .plan(PlanConfig::new("plain"))
        .build();
    cfg.rules = Some(rules);
    cfg
}

fn outcome(d: Decision) -> (u16, String, Option<i64>) {
    match d {
        Decision::Allow(a) => (200, String::new(), a.credits_remaining),
        Decision::Block(b) => (b.status.as_u16(), b.reason.to_string(), b.balance),
        other => panic!("unexpected {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn fast_and_full_walk_agree(
        plan in 0usize..4,
        delinquent: bool,
        cancelled: bool,
        blocked: bool,
        balance in -20i64..20,
        calls in 0u64..8,
    ) {
        let plans = ["free", "prepaid", "limited", "plain"];
        let (m, hs) = (Method::GET, HeaderMap::new());
        let mut results = Vec::new();
        for fast in [true, false] {
            let engine = Engine::new(config(fast)).unwrap();
            let h = engine.resolve("c").unwrap();
            engine.apply("c", StateChange::Plan(PlanId::new(plans[plan]).unwrap())).unwrap();
            engine.apply("c", StateChange::Delinquent(delinquent)).unwrap();
            engine.apply("c", StateChange::Cancelled(cancelled)).unwrap();
            engine.apply("c", StateChange::Blocked(blocked)).unwrap();
            engine.apply("c", StateChange::SetBalance(balance)).unwrap();
            engine.record(&h, engine.meter_index("calls").unwrap(), calls);
            engine.apply("c", StateChange::SetBalance(balance)).unwrap();
            results.push(outcome(engine.decide(&h, &Exchange::new(&m, "/", &hs))));
        }
        prop_assert_eq!(&results[0], &results[1]);
    }
}
