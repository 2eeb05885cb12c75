//! From provider sections to reporter routes: the one entry point the quickstart calls.

use std::sync::Arc;
use std::time::Duration;

use monetize_core::BillingProvider;
use monetize_core::config::Config;
use monetize_core::report::ProviderRoute;

use crate::config::{ProviderKind, ProviderSection, ProvidersConfig};
use crate::error::ProvidersError;

/// Builds a reporter route for every `[[providers]]` table of a TOML configuration,
/// reading credentials and base URLs from the environment variables the file names.
/// An empty list means no provider is configured: keep the local ledger.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let text = std::fs::read_to_string("examples/stripe.toml")?;
/// let (core_text, _) = monetize_providers::split_toml(&text)?;
/// let config = monetize_core::config::Config::from_toml_str(&core_text)?;
/// let routes = monetize_providers::routes_from_toml(&text, &config)?;
/// # let _ = routes; Ok(()) }
/// ```
pub fn routes_from_toml(text: &str, engine: &Config) -> Result<Vec<ProviderRoute>, ProvidersError> {
    routes_from_config(&ProvidersConfig::from_toml_str(text)?, engine)
}

/// Builds a route for every section, reading the environment.
pub fn routes_from_config(
    config: &ProvidersConfig,
    engine: &Config,
) -> Result<Vec<ProviderRoute>, ProvidersError> {
    routes_with_env(config, engine, &|k| std::env::var(k).ok())
}

/// Builds a route for every section, reading variables through `env` (tests pass a map).
pub fn routes_with_env(
    config: &ProvidersConfig,
    engine: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ProviderRoute>, ProvidersError> {
    config.validate(engine)?;
    let mut routes = Vec::with_capacity(config.providers.len());
    for section in &config.providers {
        let provider = build(section, env)?;
        for meter in section.meter_ids() {
            let Some(m) = engine.meters.iter().find(|m| m.id == meter.as_str()) else {
                continue;
            };
            provider
                .check_meter(&meter, m.aggregation)
                .map_err(|problem| ProvidersError::Meter {
                    provider: section.name(),
                    meter: meter.to_string(),
                    problem,
                })?;
        }
        routes.push(
            ProviderRoute::new(provider)
                .with_report_interval(Duration::from_millis(section.report_interval_ms))
                .with_meters(section.meter_ids()),
        );
    }
    Ok(routes)
}

fn build(
    s: &ProviderSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn BillingProvider>, ProvidersError> {
    match s.kind {
        #[cfg(feature = "stripe")]
        ProviderKind::Stripe => {
            use crate::stripe::{StripeApi, StripeProvider};
            let api = s
                .api
                .as_deref()
                .and_then(StripeApi::from_name)
                .unwrap_or_default();
            let mut b = StripeProvider::builder(s.api_key(env)?)
                .name(s.name())
                .api(api)
                .http(s.http_settings())
                .mapper(Arc::new(s.mapping()?))
                .payload_keys(
                    s.customer_key.as_deref().unwrap_or("stripe_customer_id"),
                    s.value_key.as_deref().unwrap_or("value"),
                );
            if let Some(url) = s.base_url(env) {
                b = b.base_url(url);
            }
            if let Some(url) = s.events_base_url(env) {
                b = b.stream_url(url);
            }
            if let Some(v) = &s.stripe_version {
                b = b.stripe_version(v);
            }
            for (pair, item) in &s.subscription_items {
                let (c, m) = pair.split_once('/').unwrap_or((pair, ""));
                let field = format!("subscription_items.{pair}");
                let c = monetize_core::CustomerId::new(c).map_err(|e| {
                    crate::error::FieldError::new(&field, pair, format!("`customer/meter`: {e}"))
                })?;
                let m = monetize_core::MeterId::new(m).map_err(|e| {
                    crate::error::FieldError::new(&field, pair, format!("`customer/meter`: {e}"))
                })?;
                b = b.subscription_item(c, m, item);
            }
            Ok(Arc::new(b.build()?))
        }
        #[cfg(feature = "recurly")]
        ProviderKind::Recurly => {
            use crate::recurly::RecurlyProvider;
            let mut b = RecurlyProvider::builder(s.api_key(env)?)
                .name(s.name())
                .http(s.http_settings())
                .mapper(Arc::new(s.mapping()?));
            if let Some(url) = s.base_url(env) {
                b = b.base_url(url);
            }
            Ok(Arc::new(b.build()?))
        }
        #[cfg(feature = "chargebee")]
        ProviderKind::Chargebee => {
            use crate::chargebee::ChargebeeProvider;
            let site = s.site.clone().unwrap_or_default();
            let mut b = ChargebeeProvider::builder(s.api_key(env)?, &site)
                .name(s.name())
                .http(s.http_settings())
                .mapper(Arc::new(s.mapping()?))
                .value_key(s.value_key.as_deref().unwrap_or("quantity"));
            if let Some(url) = s.base_url(env) {
                b = b.base_url(url);
            }
            if let Some(url) = s.events_base_url(env) {
                b = b.ingest_url(url);
            }
            for (meter, target) in &s.meters {
                if target.api.as_deref() == Some("usages")
                    && let Ok(m) = monetize_core::MeterId::new(meter)
                {
                    b = b.classic_meter(m);
                }
            }
            Ok(Arc::new(b.build()?))
        }
        #[allow(unreachable_patterns)]
        kind => {
            let _ = env;
            Err(ProvidersError::FeatureDisabled {
                kind: kind.as_str().into(),
            })
        }
    }
}
