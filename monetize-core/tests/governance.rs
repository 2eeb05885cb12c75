//! Rules, credits, quotas, rate limits and events, through the engine's public API.

use http::{HeaderMap, Method, StatusCode};
use monetize_core::config::{
    BlockConfig, ConditionConfig, Config, FilterConfig, MeterConfig, Period, PlanConfig,
    QuotaConfig, RateLimitConfig, RuleConfig, ValueConfig,
};
use monetize_core::{
    CustomerHandle, Decision, Engine, EventKind, Exchange, PlanId, Predicate, ReportedUsage,
    StateChange,
};

fn config() -> Config {
    Config::builder()
        .meter(MeterConfig::count("calls").route("/v1/*").status("2xx"))
        .meter(MeterConfig::sum(
            "tokens",
            ValueConfig::Reported("tokens".into()),
        ))
        .plan(PlanConfig::new("free").quota(QuotaConfig::new("calls", 5, Period::Month)))
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(3_000)
                .credits_low_at(1_000)
                .price("calls", 1_000),
        )
        .plan(PlanConfig::new("limited").rate_limit(RateLimitConfig::new(2, 60)))
        .default_plan("free")
        .build()
}

fn call(engine: &Engine, h: &CustomerHandle, tokens: u64) -> Decision {
    let (m, hs) = (Method::GET, HeaderMap::new());
    let ex = Exchange::new(&m, "/v1/items/1", &hs).route(Some("/v1/items/{id}"));
    let d = engine.decide(h, &ex);
    if d.is_allow() {
        let mut r = ReportedUsage::new();
        r.add("tokens", tokens);
        let done = ex.response(StatusCode::OK, &hs, 10).reported(Some(&r));
        engine.meter(h, &done);
    }
    d
}

fn block(d: Decision) -> Box<monetize_core::Block> {
    match d {
        Decision::Block(b) => b,
        other => panic!("expected a block, got {other:?}"),
    }
}

#[test]
fn prepaid_credits_run_out_with_402_and_events() {
    let engine = Engine::new(config()).unwrap();
    let h = engine.resolve("acme").unwrap();
    engine
        .apply("acme", StateChange::Plan(PlanId::new("prepaid").unwrap()))
        .unwrap();
    engine
        .apply("acme", StateChange::SetBalance(3_000))
        .unwrap();
    for expected_left in [2_000, 1_000, 0] {
        match call(&engine, &h, 1) {
            Decision::Allow(a) => assert_eq!(a.credits_remaining, Some(expected_left + 1_000)),
            other => panic!("blocked early: {other:?}"),
        }
        assert_eq!(h.balance(), expected_left);
    }
    let b = block(call(&engine, &h, 1));
    assert_eq!(b.status, StatusCode::PAYMENT_REQUIRED);
    let body = b.body();
    assert_eq!(body["reason"], "credits_exhausted");
    assert_eq!(body["customer"], "acme");
    assert_eq!(body["balance"], 0);
    let kinds: Vec<EventKind> = engine
        .drain_events(100)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&EventKind::CreditsLow { balance: 1_000 }));
    assert!(kinds.contains(&EventKind::CreditsExhausted { balance: 0 }));
    // a top-up lets requests through again
    engine
        .apply("acme", StateChange::GrantCredits(5_000))
        .unwrap();
    assert!(call(&engine, &h, 1).is_allow());
}

#[test]
fn quota_gives_429_with_retry_after_and_warning_events() {
    let engine = Engine::new(config()).unwrap();
    let h = engine.resolve("free-co").unwrap();
    for _ in 0..5 {
        assert!(call(&engine, &h, 0).is_allow());
    }
    let b = block(call(&engine, &h, 0));
    assert_eq!(b.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(&*b.reason, "quota_exceeded");
    let q = b.quota.clone().unwrap();
    assert_eq!((q.used, q.limit, q.meter.as_str()), (5, 5, "calls"));
    let retry = b.retry_after_secs.unwrap();
    assert!((1..=31 * 86_400).contains(&retry), "{retry}");
    assert!(
        b.response_headers()
            .iter()
            .any(|(k, v)| k == "retry-after" && v.to_str().unwrap() == retry.to_string())
    );
    let kinds: Vec<EventKind> = engine
        .drain_events(100)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.iter().any(|k| matches!(
        k,
        EventKind::QuotaWarning {
            used: 4,
            limit: 5,
            ..
        }
    )));
    assert!(kinds.iter().any(|k| matches!(
        k,
        EventKind::QuotaReached {
            used: 5,
            limit: 5,
            ..
        }
    )));
    let usage = engine.usage("free-co").unwrap();
    assert_eq!(usage.meters[0].used, 5);
    assert_eq!(usage.meters[0].remaining, Some(0));
}

#[test]
fn rate_limit_refuses_with_headers() {
    let engine = Engine::new(config()).unwrap();
    let h = engine.resolve("fast").unwrap();
    engine
        .apply("fast", StateChange::Plan(PlanId::new("limited").unwrap()))
        .unwrap();
    match call(&engine, &h, 0) {
        Decision::Allow(a) => assert_eq!(a.rate_limit.unwrap().remaining, 1),
        _ => panic!("first call allowed"),
    }
    assert!(call(&engine, &h, 0).is_allow());
    let b = block(call(&engine, &h, 0));
    assert_eq!(b.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(&*b.reason, "rate_limited");
    let names: Vec<String> = b
        .response_headers()
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    for h in [
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ] {
        assert!(names.contains(&h.to_string()), "{h} in {names:?}");
    }
}

#[test]
fn delinquent_cancelled_blocked_and_restored() {
    let engine = Engine::new(config()).unwrap();
    let h = engine.resolve("late").unwrap();
    engine.apply("late", StateChange::Delinquent(true)).unwrap();
    let b = block(call(&engine, &h, 0));
    assert_eq!((b.status.as_u16(), &*b.reason), (402, "payment_overdue"));
    engine
        .apply("late", StateChange::Delinquent(false))
        .unwrap();
    assert!(call(&engine, &h, 0).is_allow());
    engine.apply("late", StateChange::Cancelled(true)).unwrap();
    assert_eq!(
        &*block(call(&engine, &h, 0)).reason,
        "subscription_cancelled"
    );
    engine.apply("late", StateChange::Blocked(true)).unwrap();
    assert_eq!(
        block(call(&engine, &h, 0)).status.as_u16(),
        403,
        "blocked is checked first"
    );
    assert!(
        engine
            .apply("late", StateChange::Plan(PlanId::new("nope").unwrap()))
            .is_err()
    );
}

#[test]
fn shadow_rules_let_through_and_count() {
    let mut cfg = config();
    cfg.rules = Some(vec![
        RuleConfig::block(
            "no_free_writes",
            ConditionConfig::PlanIn(vec!["free".into()]),
            BlockConfig::new(402, "upgrade_required", "Writes need a paid plan."),
        )
        .request(FilterConfig::new().method("GET"))
        .shadow(),
    ]);
    let engine = Engine::new(cfg).unwrap();
    let h = engine.resolve("shadowed").unwrap();
    for _ in 0..3 {
        assert!(call(&engine, &h, 0).is_allow());
    }
    let stats = engine.stats();
    assert_eq!(
        stats.rule_hits,
        vec![("no_free_writes".to_string(), true, 3)]
    );
    let shadow_events = engine
        .drain_events(100)
        .into_iter()
        .filter(
            |e| matches!(&e.kind, EventKind::ShadowBlock { rule } if &**rule == "no_free_writes"),
        )
        .count();
    assert_eq!(
        shadow_events, 1,
        "one shadow event a minute per customer, however many requests"
    );
}

struct IdPrefix(&'static str);
impl Predicate for IdPrefix {
    fn holds(&self, customer: &CustomerHandle, _: &Exchange<'_>) -> bool {
        customer.id().as_str().starts_with(self.0)
    }
}

#[test]
fn custom_predicates_and_allow_rules() {
    let mut cfg = config();
    let mut allow_headers = std::collections::BTreeMap::new();
    allow_headers.insert("x-internal".to_string(), "1".to_string());
    cfg.rules = Some(vec![
        RuleConfig::allow(
            "internal",
            ConditionConfig::Custom("internal".into()),
            allow_headers,
        ),
        RuleConfig::block(
            "trials",
            ConditionConfig::Custom("trial".into()),
            BlockConfig::new(403, "trial_ended", "The trial has ended."),
        ),
    ]);
    let engine = Engine::builder(cfg)
        .predicate("trial", IdPrefix("trial_"))
        .predicate("internal", IdPrefix("int_"))
        .build()
        .unwrap();
    let t = engine.resolve("trial_1").unwrap();
    assert_eq!(&*block(call(&engine, &t, 0)).reason, "trial_ended");
    let i = engine.resolve("int_1").unwrap();
    match call(&engine, &i, 0) {
        Decision::Allow(a) => {
            let mut hm = HeaderMap::new();
            a.apply_headers(&mut hm);
            assert_eq!(hm["x-internal"], "1");
        }
        _ => panic!("internal allowed"),
    }
    // an unregistered predicate is a config error naming the field
    let mut cfg = config();
    cfg.rules = Some(vec![RuleConfig::block(
        "r",
        ConditionConfig::Custom("missing".into()),
        BlockConfig::new(403, "x", "x"),
    )]);
    let e = Engine::new(cfg).unwrap_err();
    assert_eq!(e.field, "rules[0].when.custom");
}

#[test]
fn meters_filter_by_route_status_and_reported() {
    let engine = Engine::new(config()).unwrap();
    let h = engine.resolve("m").unwrap();
    let (get, hs) = (Method::GET, HeaderMap::new());
    let mut r = ReportedUsage::new();
    r.add("tokens", 40);
    for (path, status) in [
        ("/v1/a", 200),
        ("/v1/b", 404),
        ("/health", 200),
        ("/v1/c", 201),
    ] {
        let ex = Exchange::new(&get, path, &hs)
            .response(StatusCode::from_u16(status).unwrap(), &hs, 0)
            .reported(Some(&r));
        engine.meter(&h, &ex);
    }
    let mut got: Vec<(String, u64)> = engine
        .checkpoint()
        .into_iter()
        .map(|d| (d.meter.to_string(), d.measure.quantity()))
        .collect();
    got.sort();
    assert_eq!(got, vec![("calls".into(), 2), ("tokens".into(), 160)]);
}

#[test]
fn customer_cap_rejects_or_overflows() {
    use monetize_core::config::OverflowPolicy;
    let mut cfg = config();
    cfg.customers.max = 2;
    let engine = Engine::new(cfg.clone()).unwrap();
    engine.resolve("a").unwrap();
    engine.resolve("b").unwrap();
    let err = engine.resolve("c").unwrap_err();
    assert!(
        err.to_string().contains("customer cap of 2 reached"),
        "{err}"
    );
    assert_eq!(engine.stats().rejected, 1);

    cfg.customers.overflow = OverflowPolicy::Overflow;
    let engine = Engine::new(cfg).unwrap();
    engine.resolve("a").unwrap();
    engine.resolve("b").unwrap();
    let h = engine.resolve("c").unwrap();
    assert!(h.is_overflow());
    assert_eq!(h.id().as_str(), "_overflow");
    assert_eq!(engine.stats().overflowed, 1);
    assert!(
        engine
            .drain_events(10)
            .iter()
            .any(|e| e.kind == EventKind::CustomerOverflow)
    );
}

#[test]
fn eviction_keeps_state_and_usage() {
    let engine = Engine::new(config()).unwrap();
    let h = engine.resolve("sleepy").unwrap();
    engine
        .apply("sleepy", StateChange::Delinquent(true))
        .unwrap();
    engine.record(&h, engine.meter_index("calls").unwrap(), 3);
    assert_eq!(engine.evict_idle(0), 0, "a held handle is never evicted");
    drop(h);
    assert_eq!(engine.evict_idle(0), 1);
    assert_eq!(engine.stats().dormant, 1);
    let d = engine.checkpoint();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].measure.quantity(), 3);
    let h = engine.resolve("sleepy").unwrap();
    assert!(
        h.status().delinquent,
        "status restored from the dormant record"
    );
    assert_eq!(
        engine.usage("sleepy").unwrap().meters[0].used,
        3,
        "period usage restored"
    );
}

#[test]
fn invalid_customer_ids_are_errors() {
    let engine = Engine::new(config()).unwrap();
    let e = engine.resolve("has space").unwrap_err();
    assert!(e.to_string().contains("invalid customer"), "{e}");
    assert!(
        engine
            .record_by_id("ok", "nope", 1)
            .unwrap_err()
            .to_string()
            .contains("unknown meter `nope`")
    );
}

#[test]
fn account_state_round_trips_for_stores() {
    let engine = Engine::new(config()).unwrap();
    engine.resolve("acct").unwrap();
    engine.apply("acct", StateChange::Delinquent(true)).unwrap();
    engine
        .apply("acct", StateChange::Plan(PlanId::new("prepaid").unwrap()))
        .unwrap();
    engine.apply("acct", StateChange::SetBalance(77)).unwrap();
    let a = engine.account("acct").unwrap();
    assert!(a.delinquent && !a.cancelled);
    assert_eq!(a.plan.as_ref().map(|p| p.as_str()), Some("prepaid"));
    assert_eq!(a.balance, 77);
    let other = Engine::new(config()).unwrap();
    other.restore_account("acct", &a).unwrap();
    assert_eq!(other.account("acct"), Some(a.clone()));
    let mut bad = a;
    bad.plan = Some(PlanId::new("gold").unwrap());
    assert!(
        other
            .restore_account("acct", &bad)
            .unwrap_err()
            .to_string()
            .contains("unknown plan `gold`")
    );
    assert_eq!(
        other.account("acct").unwrap().plan.unwrap().as_str(),
        "prepaid",
        "unchanged on error"
    );
}

#[test]
fn register_starts_with_the_plans_credits() {
    let engine = Engine::new(config()).unwrap();
    let h = engine.register("new-prepaid", "prepaid").unwrap();
    assert_eq!(h.balance(), 3_000);
    engine
        .apply("new-prepaid", StateChange::SetBalance(5))
        .unwrap();
    let h = engine.register("new-prepaid", "free").unwrap();
    assert_eq!(h.balance(), 5, "an existing customer keeps its balance");
    assert_eq!(
        engine.usage("new-prepaid").unwrap().plan.unwrap().as_str(),
        "free"
    );
    assert!(
        engine
            .register("x", "gold")
            .unwrap_err()
            .to_string()
            .contains("unknown plan `gold`")
    );
}

#[test]
fn exchange_needs_follow_the_meters() {
    use monetize_core::config::{JsonFieldConfig, MeterConfig};
    let engine = Engine::new(config()).unwrap();
    let n = engine.exchange_needs();
    assert!(n.reported && !n.response_bytes && !n.response_headers && !n.request_headers);
    assert!(
        n.needs_body(),
        "reported usage may arrive while the body streams"
    );
    let cfg = Config::builder()
        .meter(MeterConfig::count("calls").filter(FilterConfig::new().header("x-beta", None)))
        .meter(MeterConfig::sum("egress", ValueConfig::ResponseBytes))
        .meter(MeterConfig::sum(
            "units",
            ValueConfig::ResponseHeader("x-units".into()),
        ))
        .meter(MeterConfig::sum(
            "tokens",
            ValueConfig::Json(JsonFieldConfig::response("/t")),
        ))
        .build();
    let n = Engine::new(cfg).unwrap().exchange_needs();
    assert!(n.request_headers && n.response_bytes && n.response_headers && !n.query);
    assert_eq!(n.json_capture, (None, Some(64 * 1024)));
    let plain = Config::builder()
        .meter(MeterConfig::count("calls").route("/v1/*"))
        .build();
    assert!(!Engine::new(plain).unwrap().exchange_needs().needs_body());
}

#[test]
fn each_json_meter_keeps_its_own_cap() {
    use monetize_core::config::{JsonFieldConfig, MeterConfig};
    let mut small = JsonFieldConfig::response("/n");
    small.max_bytes = 16;
    let cfg = Config::builder()
        .meter(MeterConfig::sum("small", ValueConfig::Json(small)))
        .meter(MeterConfig::sum(
            "large",
            ValueConfig::Json(JsonFieldConfig::response("/n")),
        ))
        .build();
    let engine = Engine::new(cfg).unwrap();
    let h = engine.resolve("j").unwrap();
    let body = br#"{"n": 7, "padding": "xxxxxxxxxxxxxxxx"}"#;
    let (m, hs) = (Method::POST, HeaderMap::new());
    let ex = Exchange::new(&m, "/", &hs)
        .response(StatusCode::OK, &hs, body.len() as u64)
        .bodies(None, Some(body));
    engine.meter(&h, &ex);
    let got: Vec<(String, u64)> = engine
        .checkpoint()
        .into_iter()
        .map(|d| (d.meter.to_string(), d.measure.quantity()))
        .collect();
    assert_eq!(
        got,
        vec![("large".to_string(), 7)],
        "the 16-byte meter skips a 40-byte body"
    );
}

#[test]
fn a_blocked_customer_that_keeps_calling_raises_one_event() {
    let engine = Engine::new(config()).unwrap();
    let h = engine.resolve("hammer").unwrap();
    engine
        .apply("hammer", StateChange::Delinquent(true))
        .unwrap();
    let other = engine.resolve("quiet").unwrap();
    engine.apply("quiet", StateChange::Cancelled(true)).unwrap();
    for _ in 0..1_000 {
        assert!(!call(&engine, &h, 0).is_allow());
    }
    assert!(!call(&engine, &other, 0).is_allow());
    let blocked: Vec<String> = engine
        .drain_events(10_000)
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Blocked { .. }))
        .map(|e| e.customer.unwrap().to_string())
        .collect();
    assert_eq!(blocked, vec!["hammer".to_string(), "quiet".to_string()]);
}
