//! Every validation error path, with the field it names and the message it gives.

use monetize_core::config::Config;
use monetize_core::{ConfigError, CoreError, Engine};

const BASE: &str = r#"
instance = "api-1"
[[meters]]
id = "calls"
[[meters]]
id = "tokens"
aggregation = "sum"
value = { reported = "tokens" }
[[meters]]
id = "users"
aggregation = "unique_count"
value = { header = "x-user" }
[[meters]]
id = "seats"
aggregation = "max"
value = { header = "x-seats" }
[[plans]]
id = "free"
"#;

fn error_of(extra: &str) -> ConfigError {
    let text = format!("{BASE}\n{extra}");
    let cfg = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("parse: {e}\n{text}"));
    match Engine::new(cfg) {
        Ok(_) => panic!("expected an error for:\n{extra}"),
        Err(e) => e,
    }
}

fn error_with(edit: impl FnOnce(&mut Config)) -> ConfigError {
    let mut cfg = Config::from_toml_str(BASE).unwrap();
    edit(&mut cfg);
    Engine::new(cfg).expect_err("expected an error")
}

#[track_caller]
fn check(e: ConfigError, field: &str, value: &str, problem: &str) {
    assert_eq!(e.field, field, "field of {e}");
    assert_eq!(e.value, value, "value of {e}");
    assert!(
        e.problem.contains(problem),
        "problem of {e}: wanted {problem:?}"
    );
}

#[test]
fn the_base_config_is_valid() {
    let cfg = Config::from_toml_str(BASE).unwrap();
    cfg.validate().unwrap();
    Engine::new(cfg).unwrap();
}

#[test]
fn display_names_field_value_and_problem() {
    let e = error_of("[[meters]]\nid = \"x\"\nfilter = { status = [\"7xx\"] }");
    assert_eq!(
        e.to_string(),
        "config field `meters[4].filter.status[0]` = `7xx`: not a status code, class or range (expected 100-599, `2xx`, or `400-499`)"
    );
}

#[test]
fn instance_and_ids() {
    check(
        error_with(|c| c.instance = "".into()),
        "instance",
        "",
        "empty",
    );
    check(
        error_with(|c| c.instance = "a b".into()),
        "instance",
        "a b",
        "white-space",
    );
    check(
        error_of("[[meters]]\nid = \"calls\""),
        "meters[4].id",
        "calls",
        "another meter already has this id",
    );
    check(
        error_of("[[meters]]\nid = \"\""),
        "meters[4].id",
        "",
        "empty",
    );
    check(
        error_of("[[plans]]\nid = \"free\""),
        "plans[1].id",
        "free",
        "another plan already has this id",
    );
    check(
        error_of("[[plans]]\nid = \"has space\""),
        "plans[1].id",
        "has space",
        "white-space",
    );
}

#[test]
fn meter_filters() {
    let m = |f: &str| error_of(&format!("[[meters]]\nid = \"x\"\nfilter = {f}"));
    check(
        m("{ method = [\"G E T\"] }"),
        "meters[4].filter.method[0]",
        "G E T",
        "not an HTTP method",
    );
    check(
        m("{ route = [\"v1/x\"] }"),
        "meters[4].filter.route[0]",
        "v1/x",
        "starts with `/`",
    );
    check(
        m("{ route = [\"/v1/*/x\"] }"),
        "meters[4].filter.route[0]",
        "/v1/*/x",
        "only allowed at the end",
    );
    check(
        m("{ status = [99] }"),
        "meters[4].filter.status[0]",
        "99",
        "not a status code",
    );
    check(
        m("{ status = [\"500-400\"] }"),
        "meters[4].filter.status[0]",
        "500-400",
        "not a status code",
    );
    check(
        m("{ header = { name = \"bad header\" } }"),
        "meters[4].filter.header.name",
        "bad header",
        "not a valid HTTP header name",
    );
    check(
        m("{ header = { name = \"x-a\", value = \"\\u0001\" } }"),
        "meters[4].filter.header.value",
        "\u{1}",
        "not a valid HTTP header value",
    );
    check(
        m("{ response_header = { name = \"b c\" } }"),
        "meters[4].filter.response_header.name",
        "b c",
        "not a valid HTTP header name",
    );
    check(
        m("{ query = { name = \"\" } }"),
        "meters[4].filter.query.name",
        "",
        "needs a parameter name",
    );
    check(
        m("{ reported = \"\" }"),
        "meters[4].filter.reported",
        "",
        "name the handler-reported quantity",
    );
    check(
        m("{ all = [{ status = [\"9xx\"] }] }"),
        "meters[4].filter.all[0].status[0]",
        "9xx",
        "not a status code",
    );
    check(
        m("{ any = [{ method = [\"\"] }] }"),
        "meters[4].filter.any[0].method[0]",
        "",
        "not an HTTP method",
    );
    check(
        m("{ not = { route = [\"x\"] } }"),
        "meters[4].filter.not.route[0]",
        "x",
        "starts with `/`",
    );
}

#[test]
fn meter_values_and_scales() {
    let m = |v: &str| {
        error_of(&format!(
            "[[meters]]\nid = \"x\"\naggregation = \"sum\"\n{v}"
        ))
    };
    check(
        m("value = { header = \"a b\" }"),
        "meters[4].value.header",
        "a b",
        "not a valid HTTP header name",
    );
    check(
        m("value = { response_header = \"a b\" }"),
        "meters[4].value.response_header",
        "a b",
        "not a valid HTTP header name",
    );
    check(
        m("value = { reported = \"\" }"),
        "meters[4].value.reported",
        "",
        "name the handler-reported quantity",
    );
    check(
        m("value = { json = { pointer = \"usage\" } }"),
        "meters[4].value.json.pointer",
        "usage",
        "starts with `/`",
    );
    check(
        m("value = { json = { pointer = \"/u\", max_bytes = 0 } }"),
        "meters[4].value.json.max_bytes",
        "0",
        "between 1 and 16777216",
    );
    check(
        m("scale = { multiply = 0 }"),
        "meters[4].scale.multiply",
        "0",
        "at least 1",
    );
    check(
        m("scale = { divide = 0 }"),
        "meters[4].scale.divide",
        "0",
        "division by zero",
    );
    let e = error_of("[[meters]]\nid = \"x\"\nvalue = \"response_bytes\"");
    check(
        e,
        "meters[4].value",
        "ResponseBytes",
        "counts requests and takes no value",
    );
}

#[test]
fn plans() {
    let p = |body: &str| error_of(&format!("[[plans]]\nid = \"p\"\n{body}"));
    check(
        p("prices = { nope = 1 }"),
        "plans[1].prices.nope",
        "nope",
        "no meter has this id",
    );
    check(
        p("prices = { calls = 5 }"),
        "plans[1].prepaid",
        "false",
        "set `prepaid = true`",
    );
    check(
        p("prepaid = true\nprices = { seats = 5 }"),
        "plans[1].prices.seats",
        "5",
        "only `count` and `sum` meters can be priced",
    );
    check(
        p("prepaid = true\ninitial_credits = -1"),
        "plans[1].initial_credits",
        "-1",
        "must not be negative",
    );
    check(
        p("quotas = [{ meter = \"nope\", limit = 1, period = \"day\" }]"),
        "plans[1].quotas[0].meter",
        "nope",
        "no meter has this id",
    );
    check(
        p("quotas = [{ meter = \"calls\", limit = 0, period = \"day\" }]"),
        "plans[1].quotas[0].limit",
        "0",
        "at least 1",
    );
    check(
        p("quotas = [{ meter = \"calls\", limit = 9, period = \"day\", warn_at_percent = 0 }]"),
        "plans[1].quotas[0].warn_at_percent",
        "0",
        "between 1 and 100",
    );
    check(
        p("quotas = [{ meter = \"calls\", limit = 9, period = \"day\", warn_at_percent = 101 }]"),
        "plans[1].quotas[0].warn_at_percent",
        "101",
        "between 1 and 100",
    );
    check(
        p(
            "quotas = [{ meter = \"calls\", limit = 9, period = \"day\" }, { meter = \"calls\", limit = 9, period = \"month\" }]",
        ),
        "plans[1].quotas[1].meter",
        "calls",
        "already has a quota on this meter",
    );
    check(
        p("quotas = [{ meter = \"users\", limit = 9, period = \"day\" }]"),
        "plans[1].quotas[0].meter",
        "users",
        "cannot limit a `unique_count` meter",
    );
    check(
        p("rate_limit = { requests = 0 }"),
        "plans[1].rate_limit.requests",
        "0",
        "at least 1",
    );
    check(
        p("rate_limit = { requests = 5, per_secs = 0 }"),
        "plans[1].rate_limit.per_secs",
        "0",
        "between 1 and 86400",
    );
    check(
        p("rate_limit = { requests = 5, burst = 0 }"),
        "plans[1].rate_limit.burst",
        "0",
        "at least 1",
    );
}

#[test]
fn customers() {
    check(
        error_with(|c| c.customers.default_plan = Some("gold".into())),
        "customers.default_plan",
        "gold",
        "no plan has this id",
    );
    check(
        error_with(|c| c.customers.max = 0),
        "customers.max",
        "0",
        "at least 1",
    );
    check(
        error_with(|c| c.customers.overflow_customer = "".into()),
        "customers.overflow_customer",
        "",
        "empty",
    );
    check(
        error_with(|c| c.customers.evict_idle_secs = Some(0)),
        "customers.evict_idle_secs",
        "0",
        "at least 1",
    );
}

#[test]
fn rules() {
    let r = |body: &str| error_of(&format!("[[rules]]\n{body}"));
    let block = "action = { block = { status = 402, reason = \"x\" } }";
    check(
        r(&format!("name = \"\"\nwhen = \"always\"\n{block}")),
        "rules[0].name",
        "",
        "give the rule a name",
    );
    check(
        error_of(&format!(
            "[[rules]]\nname = \"a\"\nwhen = \"always\"\n{block}\n[[rules]]\nname = \"a\"\nwhen = \"always\"\n{block}"
        )),
        "rules[1].name",
        "a",
        "another rule already has this name",
    );
    check(
        r(&format!(
            "name = \"a\"\nwhen = {{ quota_exceeded = \"nope\" }}\n{block}"
        )),
        "rules[0].when.quota_exceeded",
        "nope",
        "no meter has this id",
    );
    check(
        r(&format!("name = \"a\"\nwhen = {{ plan_in = [] }}\n{block}")),
        "rules[0].when.plan_in",
        "[]",
        "at least one plan",
    );
    check(
        r(&format!(
            "name = \"a\"\nwhen = {{ plan_in = [\"gold\"] }}\n{block}"
        )),
        "rules[0].when.plan_in[0]",
        "gold",
        "no plan has this id",
    );
    check(
        r(&format!(
            "name = \"a\"\nwhen = {{ custom = \"vip\" }}\n{block}"
        )),
        "rules[0].when.custom",
        "vip",
        "no predicate is registered",
    );
    check(
        r(&format!("name = \"a\"\nwhen = {{ all = [] }}\n{block}")),
        "rules[0].when.all",
        "[]",
        "at least one condition",
    );
    check(
        r(&format!(
            "name = \"a\"\nwhen = {{ any = [\"delinquent\", {{ plan_in = [\"x\"] }}] }}\n{block}"
        )),
        "rules[0].when.any[1].plan_in[0]",
        "x",
        "no plan has this id",
    );
    check(
        r(&format!(
            "name = \"a\"\nwhen = {{ not = {{ custom = \"q\" }} }}\n{block}"
        )),
        "rules[0].when.not.custom",
        "q",
        "no predicate",
    );
    check(
        r(&format!(
            "name = \"a\"\nwhen = \"always\"\nrequest = {{ status = [\"2xx\"] }}\n{block}"
        )),
        "rules[0].request",
        "status/response_header/reported",
        "before the response exists",
    );
    check(
        r(&format!(
            "name = \"a\"\nwhen = \"always\"\nrequest = {{ route = [\"x\"] }}\n{block}"
        )),
        "rules[0].request.route[0]",
        "x",
        "starts with `/`",
    );
    check(
        r("name = \"a\"\nwhen = \"always\"\naction = { block = { status = 200, reason = \"x\" } }"),
        "rules[0].action.block.status",
        "200",
        "from 400 to 599",
    );
    check(
        r("name = \"a\"\nwhen = \"always\"\naction = { block = { status = 402, reason = \"\" } }"),
        "rules[0].action.block.reason",
        "",
        "machine-readable reason",
    );
    check(
        r(
            "name = \"a\"\nwhen = \"always\"\naction = { block = { status = 402, reason = \"x\", headers = { \"a b\" = \"1\" } } }",
        ),
        "rules[0].action.block.headers.a b",
        "a b",
        "not a valid HTTP header name",
    );
    check(
        r(
            "name = \"a\"\nwhen = \"always\"\naction = { allow = { headers = { \"x-a\" = \"\\u0001\" } } }",
        ),
        "rules[0].action.allow.headers.x-a",
        "\u{1}",
        "not a valid HTTP header value",
    );
}

#[test]
fn reporting() {
    check(
        error_with(|c| c.reporting.checkpoint_interval_ms = 5),
        "reporting.checkpoint_interval_ms",
        "5",
        "between 10 and 60000",
    );
    check(
        error_with(|c| c.reporting.window_secs = 0),
        "reporting.window_secs",
        "0",
        "between 1 and 86400",
    );
    let p = |body: &str| error_of(&format!("[[reporting.providers]]\n{body}"));
    check(
        p("name = \"\""),
        "reporting.providers[0].name",
        "",
        "name the provider",
    );
    check(
        error_of("[[reporting.providers]]\nname = \"s\"\n[[reporting.providers]]\nname = \"s\""),
        "reporting.providers[1].name",
        "s",
        "already routed",
    );
    check(
        p("name = \"s\"\nreport_interval_ms = 1"),
        "reporting.providers[0].report_interval_ms",
        "1",
        "between 10 and 86400000",
    );
    check(
        p("name = \"s\"\nmeters = [\"calls\", \"nope\"]"),
        "reporting.providers[0].meters[1]",
        "nope",
        "no meter has this id",
    );
}

#[test]
fn parse_errors_name_the_place() {
    let e =
        Config::from_toml_str("instance = \"a\"\n[[meters]]\nid = \"x\"\nfiltr = {}").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("cannot parse config toml"), "{msg}");
    assert!(msg.contains("filtr"), "unknown field named: {msg}");
    assert!(msg.contains("line 4"), "line named: {msg}");
    let e = Config::from_json_str("{\"meters\": [{\"id\": \"x\", \"aggregation\": \"median\"}]}")
        .unwrap_err();
    assert!(e.to_string().contains("median"), "{e}");
    let e = Config::from_file("/nonexistent/monetize.toml").unwrap_err();
    assert!(matches!(e, CoreError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/monetize.toml"));
}

#[test]
fn json_and_toml_and_builder_agree() {
    let toml = Config::from_toml_str(BASE).unwrap();
    let json = Config::from_json_str(&serde_json::to_string(&toml).unwrap()).unwrap();
    assert_eq!(toml, json);
}

#[test]
fn time_zones() {
    check(
        error_with(|c| c.time_zone = "Mars/Olympus_Mons".into()),
        "time_zone",
        "Mars/Olympus_Mons",
        "not a known time zone",
    );
    // A known zone is valid, and cannot change while the engine runs.
    let mut cfg = Config::from_toml_str(&format!("time_zone = \"Europe/Paris\"\n{BASE}")).unwrap();
    let engine = Engine::new(cfg.clone()).unwrap();
    cfg.time_zone = "Asia/Tokyo".into();
    check(
        engine.reload(cfg).expect_err("a new time zone is refused"),
        "time_zone",
        "Asia/Tokyo",
        "cannot change while the engine runs",
    );
}

#[test]
fn a_reload_may_reorder_plans_but_not_drop_one() {
    let two = format!("{BASE}\n[[plans]]\nid = \"pro\"\n");
    let engine = Engine::new(Config::from_toml_str(&two).unwrap()).unwrap();
    let reordered = two
        .replace("id = \"free\"", "id = \"tmp\"")
        .replace("id = \"pro\"", "id = \"free\"")
        .replace("id = \"tmp\"", "id = \"pro\"");
    engine
        .reload(Config::from_toml_str(&reordered).unwrap())
        .expect("plans matched by id");
    check(
        engine
            .reload(Config::from_toml_str(BASE).unwrap())
            .expect_err("pro was dropped"),
        "plans",
        "pro",
        "cannot be removed while the engine runs",
    );
}
