//! The example configurations parse, validate and build one route each; credentials come
//! from the variables the files name.
#![cfg(all(feature = "stripe", feature = "recurly", feature = "chargebee"))]

use std::collections::HashMap;
use std::time::Duration;

use monetize_core::config::Config;
use monetize_providers::{ProvidersConfig, ProvidersError, routes_with_env, split_toml};

fn example(name: &str) -> String {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn every_example_builds_its_route_from_the_environment() {
    for (file, name, key_var) in [
        ("stripe.toml", "stripe", "STRIPE_API_KEY"),
        ("recurly.toml", "recurly", "RECURLY_API_KEY"),
        ("chargebee.toml", "chargebee", "CHARGEBEE_API_KEY"),
    ] {
        let text = example(file);
        let (core_text, providers) = split_toml(&text).unwrap();
        let engine = Config::from_toml_str(&core_text).unwrap();
        let vars: HashMap<&str, &str> = HashMap::from([(key_var, "secret_value_123")]);
        let env = |k: &str| vars.get(k).map(|v| v.to_string());
        let routes = routes_with_env(&providers, &engine, &env).unwrap();
        assert_eq!(routes.len(), 1, "{file}");
        let route = &routes[0];
        assert_eq!(route.provider.name(), name);
        assert_eq!(route.report_interval, Duration::from_millis(2000));
        let meters: Vec<&str> = route
            .meters
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.as_str())
            .collect();
        assert_eq!(meters, vec!["api_calls", "tokens"], "{file}");
        assert!(!format!("{route:?}").contains("secret_value_123"));
        // without the key the error names the variable
        match routes_with_env(&providers, &engine, &|_| None) {
            Err(ProvidersError::MissingEnv { var, .. }) => assert_eq!(var, key_var),
            other => panic!("{file}: {other:?}"),
        }
    }
}

#[test]
fn the_quickstart_config_alone_has_no_provider() {
    let text = example("quickstart.toml");
    let engine = Config::from_toml_str(&text).unwrap();
    let providers = ProvidersConfig::from_toml_str(&text).unwrap();
    assert!(providers.providers.is_empty());
    assert!(
        routes_with_env(&providers, &engine, &|_| None)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_max_meter_is_refused_at_start_up_with_the_reason() {
    let text = example("stripe.toml").replace(
        "aggregation = \"sum\"\nvalue = { reported = \"tokens\" }",
        "aggregation = \"max\"\nvalue = { reported = \"tokens\" }",
    );
    let (core_text, providers) = split_toml(&text).unwrap();
    let engine = Config::from_toml_str(&core_text).unwrap();
    match routes_with_env(&providers, &engine, &|_| Some("k".into())) {
        Err(e @ ProvidersError::Meter { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("tokens") && msg.contains("max"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}
