//! Customers resolved by [`CustomerToken`] from a thread's cache.

use super::*;
use crate::config::MeterConfig;

fn engine() -> Engine {
    Engine::new(Config::builder().meter(MeterConfig::count("calls")).build()).expect("valid config")
}

fn calls(e: &Engine, id: &str) -> u64 {
    e.usage(id)
        .and_then(|u| {
            u.meters
                .iter()
                .find(|m| m.meter.as_str() == "calls")
                .map(|m| m.used)
        })
        .unwrap_or(0)
}

#[test]
fn a_token_resolves_after_its_second_sighting_and_records_for_its_customer() {
    let e = engine();
    let t = CustomerToken::new(0x1234_5678_9abc_def0_0fed_cba9_8765_4321);
    assert!(e.resolve_token(t).is_none());
    let h = e.resolve("acme").unwrap();
    // First sighting: not remembered (the doorkeeper).
    e.remember_token(t, &h);
    assert!(e.resolve_token(t).is_none());
    e.remember_token(t, &h);
    let got = e
        .resolve_token(t)
        .expect("remembered on the second sighting");
    assert_eq!(got.id().as_str(), "acme");
    let calls_meter = e.meter_index("calls").unwrap();
    e.record(&got, calls_meter, 5);
    assert_eq!(calls(&e, "acme"), 5);
    // Another token, and the same bits in another engine, resolve nothing.
    assert!(e.resolve_token(CustomerToken::new(t.bits() ^ 1)).is_none());
    assert!(engine().resolve_token(t).is_none());
    // Other threads have their own cache.
    std::thread::scope(|s| {
        s.spawn(|| assert!(e.resolve_token(t).is_none()));
    });
}

#[test]
fn an_evicted_customer_is_not_resolved_by_token_until_remembered_again() {
    let e = engine();
    let t = CustomerToken::new(42 << 64 | 7);
    let h = e.resolve("acme").unwrap();
    e.remember_token(t, &h);
    e.remember_token(t, &h);
    assert!(e.resolve_token(t).is_some());
    drop(h);
    assert_eq!(e.evict_idle(0), 1);
    // The cached state is sealed: the token misses, and the customer comes back by id
    // (restored, its usage kept).
    assert!(e.resolve_token(t).is_none());
    let again = e.resolve("acme").unwrap();
    e.record(&again, e.meter_index("calls").unwrap(), 1);
    e.remember_token(t, &again);
    let h = e.resolve_token(t).expect("remembered again");
    assert!(std::ptr::eq::<CustomerState>(&*h.0, &*again.0));
    assert_eq!(calls(&e, "acme"), 1);
}

#[test]
fn a_thread_remembers_a_thousand_customers_by_token() {
    let e = engine();
    // Pseudo-random tokens (splitmix64), as MAC-derived tokens are.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let tokens: Vec<CustomerToken> = (0..1_000)
        .map(|_| CustomerToken::new(u128::from(next()) << 64 | u128::from(next())))
        .collect();
    // Each seen twice (the doorkeeper).
    for _ in 0..2 {
        for (i, t) in tokens.iter().enumerate() {
            let h = e.resolve(&format!("c{i}")).unwrap();
            e.remember_token(*t, &h);
        }
    }
    // Two candidate sets per token: with one, about 90 of these would keep evicting
    // each other.
    let hits = tokens
        .iter()
        .enumerate()
        .filter(|(i, t)| {
            e.resolve_token(**t)
                .is_some_and(|h| h.id().as_str() == format!("c{i}"))
        })
        .count();
    assert!(hits >= 995, "{hits} of 1,000 remembered");
}

#[test]
fn handles_and_thread_caches_do_not_keep_a_dropped_engines_event_queue() {
    let e = engine();
    let t = CustomerToken::new(7 << 64 | 7);
    let h = e.resolve("acme").unwrap();
    e.remember_token(t, &h);
    e.remember_token(t, &h);
    assert!(e.resolve_token(t).is_some());
    let queue = Arc::downgrade(&e.inner.events);
    let config = Arc::downgrade(&h.0.metering);
    drop(e);
    // The handle and this thread's token slot still hold the customer's state, and
    // through it the configuration; the event queue went with the engine.
    assert!(queue.upgrade().is_none());
    assert!(config.upgrade().is_some());
    // Recording through the handle still works; its events have nowhere to go.
    h.0.metering
        .emit(Event::new(None, EventKind::CustomerOverflow));
    drop(h);
}

#[test]
fn another_engines_handle_is_not_remembered() {
    let (a, b) = (engine(), engine());
    let t = CustomerToken::new(99);
    let foreign = b.resolve("acme").unwrap();
    a.remember_token(t, &foreign);
    a.remember_token(t, &foreign);
    assert!(a.resolve_token(t).is_none(), "a handle of engine b");
    // Once `a` has its own `acme`, a handle of b's `acme` still is not a's.
    let own = a.resolve("acme").unwrap();
    a.remember_token(t, &foreign);
    assert!(a.resolve_token(t).is_none());
    a.remember_token(t, &own);
    a.remember_token(t, &own);
    let h = a.resolve_token(t).unwrap();
    assert!(std::ptr::eq::<CustomerState>(&*h.0, &*own.0));
    assert!(format!("{t:?}").contains(".."));
    assert!(!format!("{t:?}").contains("99"));
}
