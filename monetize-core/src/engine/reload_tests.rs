//! Reloads while requests are in flight, and what a reload may change.

use super::*;
use crate::config::{FilterConfig, MeterConfig, PlanConfig, ValueConfig};
use http::{HeaderMap, Method, StatusCode};

fn config(route: &str, status: &str, price: u64) -> Config {
    Config::builder()
        .meter(MeterConfig::count("calls").filter(FilterConfig::new().route(route).status(status)))
        .meter(MeterConfig::sum(
            "tokens",
            ValueConfig::Reported("tokens".into()),
        ))
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(1_000)
                .price("calls", price),
        )
        .default_plan("prepaid")
        .build()
}

fn used(e: &Engine, meter: &str) -> u64 {
    e.usage("acme").map_or(0, |u| {
        u.meters
            .iter()
            .find(|m| m.meter.as_str() == meter)
            .map_or(0, |m| m.used)
    })
}

#[test]
fn a_request_in_flight_during_a_reload_is_metered_under_the_config_it_started_with() {
    let e = Engine::new(config("/a", "2xx", 10)).unwrap();
    let h = e.resolve("acme").unwrap();
    let headers = HeaderMap::new();
    let at = |path: &'static str| Exchange::new(&Method::GET, path, &headers);
    // Two requests start under A (route /a, 2xx, price 10).
    let first = e.meter_request(&at("/a"));
    let second = e.meter_request(&at("/a"));
    // B meters /b with 5xx, at price 100.
    e.reload(config("/b", "5xx", 100)).unwrap();
    let on = |status: u16| {
        Exchange::new(&Method::GET, "", &headers).response(
            StatusCode::from_u16(status).unwrap(),
            &headers,
            0,
        )
    };
    // A 500 for an /a request: neither A (2xx) nor B (/b) meters it; mixing A's request
    // half with B's response half would have.
    e.meter_response(&h, first, &on(500));
    assert_eq!(used(&e, "calls"), 0);
    // A 200 for an /a request: A meters it, at A's price.
    e.meter_response(&h, second, &on(200));
    assert_eq!(used(&e, "calls"), 1);
    assert_eq!(e.usage("acme").unwrap().balance, 1_000 - 10);
    // A request that starts under B is metered under B.
    let third = e.meter_request(&at("/b"));
    e.meter_response(&h, third, &on(503));
    assert_eq!(used(&e, "calls"), 2);
    assert_eq!(e.usage("acme").unwrap().balance, 1_000 - 10 - 100);
}

#[test]
fn a_reload_may_change_filters_and_prices_but_not_what_meters_read() {
    let e = Engine::new(config("/a", "2xx", 10)).unwrap();
    let needs = e.exchange_needs();
    e.reload(config("/v2/*", "200-299", 5)).unwrap();
    assert_eq!(e.exchange_needs(), needs);
    // The tokens meter now counts response bytes: the layer would not count them.
    let bytes = Config::builder()
        .meter(MeterConfig::count("calls").route("/a"))
        .meter(MeterConfig::sum("tokens", ValueConfig::ResponseBytes))
        .plan(PlanConfig::new("prepaid").prepaid(1_000).price("calls", 1))
        .default_plan("prepaid")
        .build();
    let err = e.reload(bytes).unwrap_err();
    assert_eq!(err.field, "meters");
    assert!(
        err.problem.contains("cannot change while the engine runs"),
        "{err}"
    );
    // A renamed meter is refused too, and nothing of a refused config is applied.
    let renamed = Config::builder()
        .meter(MeterConfig::count("requests").route("/a"))
        .meter(MeterConfig::sum(
            "tokens",
            ValueConfig::Reported("tokens".into()),
        ))
        .build();
    assert_eq!(e.reload(renamed).unwrap_err().field, "meters");
    assert_eq!(e.exchange_needs(), needs);
    let h = e.resolve("acme").unwrap();
    let headers = HeaderMap::new();
    let m = e.meter_request(&Exchange::new(&Method::GET, "/v2/x", &headers));
    e.meter_response(
        &h,
        m,
        &Exchange::new(&Method::GET, "", &headers).response(StatusCode::OK, &headers, 0),
    );
    assert_eq!(used(&e, "calls"), 1, "the accepted reload's filter");
}
