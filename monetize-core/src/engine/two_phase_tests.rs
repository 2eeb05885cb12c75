//! `meter_request` + `meter_response` record exactly what `meter` records.

use super::*;
use crate::config::{
    BodySide, FilterConfig, JsonFieldConfig, MeterConfig, PlanConfig, QuotaConfig, ValueConfig,
};
use crate::meter::Measure;
use crate::{ExchangeNeeds, ReportedUsage, ResponseView};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use proptest::prelude::*;
use proptest::{collection::vec, option, sample::select};

/// A generated request and its response, owned.
#[derive(Clone, Debug)]
struct Case {
    method: Method,
    path: &'static str,
    route: Option<&'static str>,
    query: Option<&'static str>,
    request_headers: HeaderMap,
    request_bytes: u64,
    status: StatusCode,
    response_headers: HeaderMap,
    response_bytes: u64,
    reported: Option<ReportedUsage>,
    request_body: Option<Vec<u8>>,
    response_body: Option<Vec<u8>>,
}

impl Case {
    /// The whole exchange, as `Engine::meter` sees it.
    fn full(&self) -> Exchange<'_> {
        self.request()
            .request_bytes(self.request_bytes)
            .response(self.status, &self.response_headers, self.response_bytes)
            .reported(self.reported.as_ref())
            .bodies(self.request_body.as_deref(), self.response_body.as_deref())
    }

    /// The request side only, as the layer's `call` has it.
    fn request(&self) -> Exchange<'_> {
        Exchange::new(&self.method, self.path, &self.request_headers)
            .route(self.route)
            .query(self.query)
            .request_bytes(self.request_bytes)
    }

    /// The response-time exchange, over the request side `req`.
    fn at_response<'a>(&'a self, req: Exchange<'a>) -> Exchange<'a> {
        req.request_bytes(self.request_bytes)
            .response(self.status, &self.response_headers, self.response_bytes)
            .reported(self.reported.as_ref())
            .bodies(self.request_body.as_deref(), self.response_body.as_deref())
    }
}

fn headers(pairs: &[(&'static str, Option<&'static str>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        if let Some(v) = value {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static(v));
        }
    }
    h
}

fn header_strategy() -> impl Strategy<Value = HeaderMap> {
    (
        option::of(select(vec!["1", "2"])),
        option::of(select(vec!["1", "2"])),
        option::of(select(vec!["5", "2.5", "abc", "0"])),
    )
        .prop_map(|(a, b, n)| headers(&[("x-a", a), ("x-b", b), ("x-n", n)]))
}

fn body_strategy() -> impl Strategy<Value = Option<Vec<u8>>> {
    option::of(
        select(vec![
            r#"{"n":3}"#,
            r#"{"n":"u1"}"#,
            r#"{"n":1.5}"#,
            r#"{"m":1}"#,
            "not json",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    )
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let request = (
        select(vec![
            Method::GET,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
        ]),
        select(vec!["/v1/users/7", "/v2/x", "/", "/v1"]),
        option::of(select(vec!["/v1/users/{id}", "/v2/x"])),
        option::of(select(vec!["q=1", "dry_run=1&q=0", "a=2", ""])),
        header_strategy(),
        0u64..1000,
    );
    let response = (
        select(vec![200u16, 201, 404, 429, 500]),
        header_strategy(),
        0u64..1000,
        option::of((option::of(0u64..50), option::of(0u64..50))),
        body_strategy(),
        body_strategy(),
    );
    (request, response).prop_map(
        |(
            (method, path, route, query, request_headers, request_bytes),
            (status, response_headers, response_bytes, reported, request_body, response_body),
        )| Case {
            method,
            path,
            route,
            query,
            request_headers,
            request_bytes,
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            response_headers,
            response_bytes,
            reported: reported.map(|(tokens, rows)| {
                let mut r = ReportedUsage::new();
                if let Some(t) = tokens {
                    r.add("tokens", t);
                }
                if let Some(n) = rows {
                    r.add("rows", n);
                }
                r
            }),
            request_body,
            response_body,
        },
    )
}

/// A filter with each top-level test present or not (mostly one or two tests).
fn flat_filter() -> impl Strategy<Value = FilterConfig> {
    let opt = || proptest::bool::weighted(0.15);
    (
        (opt(), select(vec!["GET", "POST", "DELETE"])),
        (
            opt(),
            select(vec!["/v1/users/{id}", "/v1/*", "/v2/*", "/v1/users/7", "/"]),
        ),
        (opt(), select(vec!["2xx", "404", "400-499", "5xx", "200"])),
        (
            opt(),
            select(vec!["x-a", "x-b"]),
            option::of(select(vec!["1", "2"])),
        ),
        (
            opt(),
            select(vec!["x-a", "x-b"]),
            option::of(select(vec!["1", "2"])),
        ),
        (
            opt(),
            select(vec!["q", "dry_run"]),
            option::of(select(vec!["1", "0"])),
        ),
        (opt(), select(vec!["tokens", "rows"])),
    )
        .prop_map(|(m, r, s, h, rh, q, rep)| {
            let mut f = FilterConfig::new();
            if m.0 {
                f = f.method(m.1);
            }
            if r.0 {
                f = f.route(r.1);
            }
            if s.0 {
                f = f.status(s.1);
            }
            if h.0 {
                f = f.header(h.1, h.2);
            }
            if rh.0 {
                f = f.response_header(rh.1, rh.2);
            }
            if q.0 {
                f = f.query(q.1, q.2);
            }
            if rep.0 {
                f = f.reported(rep.1);
            }
            f
        })
}

/// Flat filters nested under `all`, `any` and `not` (which may mix both sides).
fn filter_strategy() -> BoxedStrategy<FilterConfig> {
    let nested = flat_filter().prop_recursive(2, 12, 2, |inner| {
        (
            flat_filter(),
            vec(inner.clone(), 0..3),
            vec(inner.clone(), 0..3),
            option::of(inner),
        )
            .prop_map(|(mut f, all, any, not)| {
                f.all = all;
                f.any = any;
                f.not = not.map(Box::new);
                f
            })
    });
    prop_oneof![2 => flat_filter(), 3 => nested].boxed()
}

/// Flat filters nested under `all` only: they always split, so the response half
/// runs on placeholders unless a meter sits at index 64 or more.
fn split_filter_strategy() -> BoxedStrategy<FilterConfig> {
    flat_filter()
        .prop_recursive(2, 12, 3, |inner| {
            (flat_filter(), vec(inner, 0..3)).prop_map(|(mut f, all)| {
                f.all = all;
                f
            })
        })
        .boxed()
}

/// A meter of kind `kind` over `filter`.
fn meter_config(i: usize, kind: u8, filter: FilterConfig) -> MeterConfig {
    let id = format!("m{i}");
    let mut request_json = JsonFieldConfig::response("/n");
    request_json.from = BodySide::Request;
    let m = match kind {
        0 => MeterConfig::count(id),
        1 => MeterConfig::sum(id, ValueConfig::RequestBytes),
        2 => MeterConfig::sum(id, ValueConfig::ResponseBytes),
        3 => MeterConfig::sum(id, ValueConfig::Header("x-n".into())),
        4 => MeterConfig::sum(id, ValueConfig::ResponseHeader("x-n".into())),
        5 => MeterConfig::sum(id, ValueConfig::Reported("tokens".into())),
        6 => MeterConfig::sum(id, ValueConfig::Json(request_json)),
        7 => MeterConfig::sum(id, ValueConfig::Json(JsonFieldConfig::response("/n"))),
        8 => MeterConfig::sum(id, ValueConfig::Header("x-n".into())).aggregation(Aggregation::Max),
        9 => MeterConfig::sum(id, ValueConfig::Reported("rows".into()))
            .aggregation(Aggregation::Latest),
        _ => MeterConfig::sum(id, ValueConfig::Json(JsonFieldConfig::response("/n")))
            .aggregation(Aggregation::UniqueCount),
    };
    m.filter(filter)
}

/// `pad` filler meters first (to push the generated ones past index 64), then the
/// generated ones; a prepaid plan prices and limits them so credit and quota events
/// fire.
fn config(pad: usize, meters: &[(u8, FilterConfig)]) -> Config {
    let mut b = Config::builder();
    let mut plan = PlanConfig::new("p").prepaid(12).credits_low_at(6);
    for i in 0..pad {
        // Every third filler matches PATCH requests; the rest never match.
        let method = if i % 3 == 0 { "PATCH" } else { "PUT" };
        b = b.meter(MeterConfig::count(format!("pad{i}")).method(method));
    }
    for (i, (kind, filter)) in meters.iter().enumerate() {
        let m = meter_config(i, *kind, filter.clone());
        let agg = m.aggregation;
        if matches!(agg, Aggregation::Count | Aggregation::Sum) {
            plan = plan.price(m.id.clone(), 1 + i as u64 % 3);
        }
        if agg != Aggregation::UniqueCount {
            plan = plan.quota(QuotaConfig::new(
                m.id.clone(),
                1 + i as u64 % 3,
                crate::config::Period::Month,
            ));
        }
        b = b.meter(m);
    }
    let mut cfg = b.plan(plan).build();
    cfg.rules = Some(Vec::new());
    cfg
}

fn engine(cfg: &Config) -> (Engine, CustomerHandle) {
    let engine = Engine::new(cfg.clone()).unwrap_or_else(|e| panic!("config: {e}"));
    let h = engine
        .register("c", "p")
        .unwrap_or_else(|e| panic!("register: {e}"));
    (engine, h)
}

fn deltas(engine: &Engine) -> Vec<(String, Measure)> {
    let mut d: Vec<_> = engine
        .checkpoint()
        .into_iter()
        .map(|d| (d.meter.to_string(), d.measure))
        .collect();
    d.sort_by(|a, b| a.0.cmp(&b.0));
    d
}

fn events(engine: &Engine) -> Vec<EventKind> {
    engine
        .drain_events(1024)
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

fn used(engine: &Engine) -> (Vec<u64>, i64) {
    let u = engine
        .usage("c")
        .unwrap_or_else(|| panic!("customer c is known"));
    (u.meters.iter().map(|m| m.used).collect(), u.balance)
}

/// How the response half gets the request side when it may use placeholders.
#[derive(Clone, Copy, Debug)]
enum Placeholder {
    /// Method GET, path "", no route, no query, empty headers.
    Empty,
    /// A different request altogether: nothing may read it.
    Decoy,
    /// [`Exchange::at_response`]: the response's headers stand in for the request's.
    OneStep,
}

/// Meters every case through `meter` on one engine and through the two halves on
/// another, comparing deltas and events after each case and usage at the end.
fn check(cfg: &Config, cases: &[Case], placeholder: Placeholder) -> Result<(), TestCaseError> {
    let (one, h1) = engine(cfg);
    let (two, h2) = engine(cfg);
    let needs: ExchangeNeeds = two.exchange_needs();
    let (get, no_headers) = (Method::GET, HeaderMap::new());
    let decoy_headers = headers(&[("x-a", Some("1")), ("x-b", Some("2")), ("x-n", Some("7"))]);
    for case in cases {
        one.meter(&h1, &case.full());
        let m = two.meter_request(&case.request());
        let req = if needs.request_at_response {
            case.request()
        } else {
            match placeholder {
                Placeholder::Empty | Placeholder::OneStep => Exchange::new(&get, "", &no_headers),
                Placeholder::Decoy => Exchange::new(&Method::PATCH, "/v2/x", &decoy_headers)
                    .route(Some("/v1/users/{id}"))
                    .query(Some("q=1&dry_run=0")),
            }
        };
        // Status-only meters first, with no exchange, as the HTTP layer does.
        let by_status = matches!(placeholder, Placeholder::OneStep)
            && !needs.request_at_response
            && h2.meter_status(m, case.status);
        let at_response = match placeholder {
            _ if by_status => Exchange::new(&get, "", &no_headers),
            Placeholder::OneStep if !needs.request_at_response => {
                let response =
                    ResponseView::new(case.status, &case.response_headers, case.response_bytes);
                Exchange::at_response(response, case.request_bytes)
                    .reported(case.reported.as_ref())
                    .bodies(case.request_body.as_deref(), case.response_body.as_deref())
            }
            _ => case.at_response(req),
        };
        if !by_status {
            two.meter_response(&h2, m, &at_response);
        }
        let (d1, d2) = (deltas(&one), deltas(&two));
        if m.is_empty() {
            prop_assert!(d1.is_empty(), "empty match but `meter` recorded {:?}", d1);
        }
        prop_assert_eq!(d1, d2, "deltas for {:?}", case);
        prop_assert_eq!(events(&one), events(&two), "events for {:?}", case);
    }
    prop_assert_eq!(used(&one), used(&two));
    Ok(())
}

/// Kinds of meter whose value does not read the request side at the response.
const RESPONSE_SAFE_KINDS: [u8; 9] = [0, 1, 2, 4, 5, 6, 7, 9, 10];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn two_phase_records_what_meter_records(
        meters in vec((0u8..11, filter_strategy()), 1..6),
        pad in select(vec![0usize, 0, 0, 61, 64]),
        cases in vec(case_strategy(), 1..8),
        decoy: bool,
    ) {
        let cfg = config(pad, &meters);
        let placeholder = if decoy { Placeholder::Decoy } else { Placeholder::Empty };
        check(&cfg, &cases, placeholder)?;
    }

    #[test]
    fn two_phase_on_placeholders_records_what_meter_records(
        meters in vec((select(RESPONSE_SAFE_KINDS.to_vec()), split_filter_strategy()), 1..6),
        pad in select(vec![0usize, 0, 0, 61]),
        cases in vec(case_strategy(), 1..8),
        decoy: Option<bool>,
    ) {
        let cfg = config(pad, &meters);
        if pad == 0 {
            let (e, _) = engine(&cfg);
            prop_assert!(!e.exchange_needs().request_at_response);
        }
        let placeholder = match decoy {
            Some(true) => Placeholder::Decoy,
            Some(false) => Placeholder::Empty,
            None => Placeholder::OneStep,
        };
        check(&cfg, &cases, placeholder)?;
    }
}

fn needs_of(meters: Vec<MeterConfig>) -> (Engine, ExchangeNeeds) {
    let mut b = Config::builder();
    for m in meters {
        b = b.meter(m);
    }
    let engine = Engine::new(b.build()).unwrap_or_else(|e| panic!("config: {e}"));
    let needs = engine.exchange_needs();
    (engine, needs)
}

#[test]
fn split_all_meters_at_request_and_response() {
    let (engine, needs) = needs_of(vec![
        MeterConfig::count("posts_ok").method("POST").status("2xx"),
    ]);
    assert!(!needs.request_at_response);
    let h = engine.resolve("c").unwrap_or_else(|e| panic!("{e}"));
    let (get, post, hs) = (Method::GET, Method::POST, HeaderMap::new());
    let m = engine.meter_request(&Exchange::new(&get, "/", &hs));
    assert!(m.is_empty(), "GET fails the request side");
    let m = engine.meter_request(&Exchange::new(&post, "/", &hs));
    let idx = engine
        .meter_index("posts_ok")
        .unwrap_or_else(|| panic!("meter"));
    assert!(m.contains(idx));
    // Placeholders for the request side: only the status is read.
    let placeholder = Exchange::new(&get, "", &hs);
    engine.meter_response(&h, m, &placeholder.response(StatusCode::NOT_FOUND, &hs, 0));
    engine.meter_response(&h, m, &placeholder.response(StatusCode::OK, &hs, 0));
    let used = engine.usage("c").map(|u| u.meters[0].used);
    assert_eq!(used, Some(1));
}

#[test]
fn status_only_meters_are_metered_without_an_exchange() {
    let (engine, _) = needs_of(vec![
        MeterConfig::count("ok").status("2xx"),
        MeterConfig::count("all"),
        MeterConfig::count("posts_failed")
            .method("POST")
            .status("5xx"),
    ]);
    let h = engine.resolve("c").unwrap_or_else(|e| panic!("{e}"));
    let (get, post, hs) = (Method::GET, Method::POST, HeaderMap::new());
    for (method, status) in [(&get, 200), (&post, 503), (&get, 404), (&post, 201)] {
        let m = engine.meter_request(&Exchange::new(method, "/", &hs));
        let status = StatusCode::from_u16(status).unwrap_or_else(|e| panic!("{e}"));
        assert!(h.meter_status(m, status), "only statuses are read");
    }
    let used = engine
        .usage("c")
        .map(|u| u.meters.iter().map(|m| m.used).collect());
    assert_eq!(used, Some(vec![2, 4, 1]));
    // A meter that reads more than the status: nothing recorded, `false`.
    let (engine, _) = needs_of(vec![
        MeterConfig::count("ok").status("2xx"),
        MeterConfig::sum("egress", ValueConfig::ResponseBytes),
    ]);
    let h = engine.resolve("c").unwrap_or_else(|e| panic!("{e}"));
    let m = engine.meter_request(&Exchange::new(&get, "/", &hs));
    assert!(!h.meter_status(m, StatusCode::OK));
    assert_eq!(engine.usage("c").map(|u| u.meters[0].used), Some(0));
}

#[test]
fn mixed_any_is_decided_at_the_response() {
    let any = FilterConfig::new().any(vec![
        FilterConfig::new().route("/a"),
        FilterConfig::new().status("5xx"),
    ]);
    let (engine, needs) = needs_of(vec![
        MeterConfig::count("mixed").filter(any),
        MeterConfig::count("plain").route("/b"),
    ]);
    assert!(needs.request_at_response);
    let h = engine.resolve("c").unwrap_or_else(|e| panic!("{e}"));
    let (get, hs) = (Method::GET, HeaderMap::new());
    for (path, status) in [("/a", 200), ("/b", 500), ("/b", 200), ("/c", 200)] {
        let req = Exchange::new(&get, path, &hs);
        let m = engine.meter_request(&req);
        assert!(
            !m.is_empty(),
            "a mixed meter is always left to the response"
        );
        assert!(!m.contains(MeterIndex(0)));
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        engine.meter_response(&h, m, &req.response(status, &hs, 0));
    }
    let used: Vec<u64> = engine
        .usage("c")
        .map(|u| u.meters.iter().map(|m| m.used).collect())
        .unwrap_or_default();
    assert_eq!(used, vec![2, 2], "mixed: /a and 5xx; plain: /b twice");
}

#[test]
fn request_at_response_covers_request_header_values_only() {
    let mut request_json = JsonFieldConfig::response("/n");
    request_json.from = BodySide::Request;
    let (_, needs) = needs_of(vec![
        MeterConfig::sum("bytes", ValueConfig::RequestBytes).method("POST"),
        MeterConfig::sum("json", ValueConfig::Json(request_json)).route("/v1/*"),
        MeterConfig::sum("resp", ValueConfig::ResponseHeader("x-n".into())),
        MeterConfig::count("calls").method("GET").status("2xx"),
    ]);
    assert!(!needs.request_at_response);
    let (_, needs) = needs_of(vec![MeterConfig::sum(
        "seats",
        ValueConfig::Header("x-seats".into()),
    )]);
    assert!(needs.request_at_response);
}

#[test]
fn meters_past_64_are_metered_at_the_response() {
    // 70 meters: meter i counts route `/r{i}` with a 2xx status.
    let meters: Vec<MeterConfig> = (0..70)
        .map(|i| {
            MeterConfig::count(format!("m{i}"))
                .route(format!("/r{i}"))
                .status("2xx")
        })
        .collect();
    let (engine, needs) = needs_of(meters);
    assert!(
        needs.request_at_response,
        "meters 64..70 read the route at the response"
    );
    let h = engine.resolve("c").unwrap_or_else(|e| panic!("{e}"));
    let (get, hs) = (Method::GET, HeaderMap::new());
    for i in [3usize, 63, 64, 69, 69] {
        let path = format!("/r{i}");
        let req = Exchange::new(&get, &path, &hs);
        let m = engine.meter_request(&req);
        assert_eq!(m.contains(MeterIndex(i as u16)), i < 64);
        assert!(!m.is_empty(), "meters past 64 are left to the response");
        engine.meter_response(&h, m, &req.response(StatusCode::OK, &hs, 0));
        engine.meter_response(&h, m, &req.response(StatusCode::NOT_FOUND, &hs, 0));
    }
    let used: Vec<u64> = engine
        .usage("c")
        .map(|u| u.meters.iter().map(|m| m.used).collect())
        .unwrap_or_default();
    for (i, u) in used.iter().enumerate() {
        let want = match i {
            3 | 63 | 64 => 1,
            69 => 2,
            _ => 0,
        };
        assert_eq!(*u, want, "meter {i}");
    }

    // Past 64 with response-only filters: the request side is never read.
    let mut meters: Vec<MeterConfig> = (0..64)
        .map(|i| MeterConfig::count(format!("p{i}")).method("PUT"))
        .collect();
    meters.push(MeterConfig::count("errors").status("5xx"));
    let (engine, needs) = needs_of(meters);
    assert!(!needs.request_at_response);
    let h = engine.resolve("c").unwrap_or_else(|e| panic!("{e}"));
    let m = engine.meter_request(&Exchange::new(&get, "/x", &hs));
    let placeholder = Exchange::new(&get, "", &hs);
    engine.meter_response(
        &h,
        m,
        &placeholder.response(StatusCode::BAD_GATEWAY, &hs, 0),
    );
    let used = engine.usage("c").map(|u| u.meters[64].used);
    assert_eq!(used, Some(1));
}
