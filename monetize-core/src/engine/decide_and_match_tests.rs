//! `decide_and_match` decides as `decide` does and matches as `meter_request` does.

use super::*;
use crate::config::{
    BlockConfig, ConditionConfig, FilterConfig, MeterConfig, PlanConfig, QuotaConfig,
    RateLimitConfig, RuleConfig, ValueConfig,
};
use crate::{PlanId, ReportedUsage};
use http::{HeaderMap, Method, StatusCode};
use proptest::prelude::*;
use proptest::sample::select;

/// Meters of each phase (request-tested, always, mixed), plans with a quota, prices
/// and a rate limit, and one of three rule sets: the defaults (quiet check), the
/// defaults after an allow rule limited to a route, or the defaults with a shadow
/// block on POST (both walk the rules).
fn config(rules: u8) -> Config {
    let mut rule_set = RuleConfig::defaults();
    match rules {
        1 => rule_set.insert(
            0,
            RuleConfig::allow(
                "internal",
                ConditionConfig::PlanIn(vec!["plain".into()]),
                [("x-internal".to_owned(), "1".to_owned())].into(),
            )
            .request(FilterConfig::new().route("/internal/*")),
        ),
        2 => rule_set.push(
            RuleConfig::block(
                "no_posts",
                ConditionConfig::Always,
                BlockConfig::new(403, "no_posts", "no posts"),
            )
            .request(FilterConfig::new().method("POST"))
            .shadow(),
        ),
        _ => {}
    }
    let mut cfg = Config::builder()
        .meter(MeterConfig::count("calls").route("/v1/*").status("2xx"))
        .meter(MeterConfig::sum(
            "tokens",
            ValueConfig::Reported("tokens".into()),
        ))
        .meter(MeterConfig::count("posts").method("POST"))
        .meter(
            MeterConfig::count("mixed").filter(FilterConfig::new().any(vec![
                FilterConfig::new().route("/internal/*"),
                FilterConfig::new().status("5xx"),
            ])),
        )
        .plan(PlanConfig::new("free").quota(QuotaConfig::new(
            "calls",
            3,
            crate::config::Period::Month,
        )))
        .plan(PlanConfig::new("prepaid").prepaid(0).price("calls", 2))
        .plan(PlanConfig::new("limited").rate_limit(RateLimitConfig::new(2, 3600)))
        .plan(PlanConfig::new("plain"))
        .build();
    cfg.rules = Some(rule_set);
    cfg
}

/// Status, reason and balance of a decision, and whether it carries a rate limit and
/// rule headers.
fn outcome(d: &Decision) -> (u16, String, Option<i64>, bool, bool) {
    match d {
        Decision::Allow(a) => (
            200,
            String::new(),
            a.credits_remaining,
            a.rate_limit.is_some(),
            a.headers.is_some(),
        ),
        Decision::Block(b) => (
            b.status.as_u16(),
            b.reason.to_string(),
            b.balance,
            b.rate_limit.is_some(),
            !b.headers.is_empty(),
        ),
    }
}

fn events(engine: &Engine) -> Vec<EventKind> {
    engine
        .drain_events(64)
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn decide_and_match_is_decide_then_meter_request(
        rules in 0u8..3,
        plan in select(vec!["free", "prepaid", "limited", "plain"]),
        flags in (any::<bool>(), any::<bool>(), any::<bool>()),
        balance in -3i64..6,
        requests in proptest::collection::vec(
            (
                select(vec![Method::GET, Method::POST]),
                select(vec!["/v1/x", "/v2/y", "/internal/z"]),
                select(vec![200u16, 404, 503]),
            ),
            1..6,
        ),
    ) {
        let cfg = config(rules);
        let mut engines = Vec::new();
        for _ in 0..3 {
            let engine = Engine::new(cfg.clone()).unwrap_or_else(|e| panic!("config: {e}"));
            let h = engine.resolve("c").unwrap_or_else(|e| panic!("resolve: {e}"));
            let apply = |c| engine.apply("c", c).unwrap_or_else(|e| panic!("apply: {e}"));
            apply(StateChange::Plan(PlanId::new(plan).unwrap_or_else(|e| panic!("{e}"))));
            apply(StateChange::Delinquent(flags.0));
            apply(StateChange::Cancelled(flags.1));
            apply(StateChange::Blocked(flags.2));
            apply(StateChange::SetBalance(balance));
            engines.push((engine, h));
        }
        let hs = HeaderMap::new();
        let mut reported = ReportedUsage::new();
        reported.add("tokens", 2);
        for (method, path, status) in &requests {
            let ex = Exchange::new(method, path, &hs);
            let (one, h1) = &engines[0];
            let (two, h2) = &engines[1];
            let (d1, m1) = (one.decide(h1, &ex), one.meter_request(&ex));
            let (d2, m2) = two.decide_and_match(h2, &ex);
            prop_assert_eq!(outcome(&d1), outcome(&d2), "{} {}", method, path);
            prop_assert_eq!(m1, m2, "{} {}", method, path);
            let e1 = events(one);
            prop_assert_eq!(&e1, &events(two));
            // The same through `decide_and_match_into`, over a slot holding a stale
            // allow with every field set: an allow replaces all of it.
            let (three, h3) = &engines[2];
            let mut slot = Allow {
                credits_remaining: Some(-77),
                rate_limit: Some(crate::RateLimitInfo {
                    limit: 9,
                    remaining: 9,
                    reset_secs: 9,
                    retry_after_secs: Some(9),
                }),
                headers: Some(Arc::from(vec![(
                    http::HeaderName::from_static("x-stale"),
                    http::HeaderValue::from_static("1"),
                )])),
            };
            let (d3, m3) = match three.decide_and_match_into(h3, &ex, &mut slot) {
                Ok(m) => (Decision::Allow(slot), m),
                Err(block) => (Decision::Block(block), MeterMatch::new(0, false, 0)),
            };
            prop_assert_eq!(outcome(&d1), outcome(&d3), "into: {} {}", method, path);
            if d3.is_allow() {
                prop_assert_eq!(m1, m3, "into: {} {}", method, path);
            }
            let m3 = m1;
            prop_assert_eq!(&e1, &events(three));
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let at_response = ex.response(status, &hs, 0).reported(Some(&reported));
            one.meter_response(h1, m1, &at_response);
            two.meter_response(h2, m2, &at_response);
            three.meter_response(h3, m3, &at_response);
            let e1 = events(one);
            prop_assert_eq!(&e1, &events(two));
            prop_assert_eq!(&e1, &events(three));
        }
        let used = |e: &Engine| e.usage("c").map(|u| {
            (u.balance, u.meters.iter().map(|m| m.used).collect::<Vec<_>>())
        });
        prop_assert_eq!(used(&engines[0].0), used(&engines[1].0));
        prop_assert_eq!(used(&engines[0].0), used(&engines[2].0));
        let hits = |e: &Engine| e.stats().rule_hits;
        prop_assert_eq!(hits(&engines[0].0), hits(&engines[1].0));
        prop_assert_eq!(hits(&engines[0].0), hits(&engines[2].0));
    }
}
