//! Webhook sources from the `[[providers]]` sections and the environment.

use std::sync::Arc;
use std::time::Duration;

use monetize_core::webhook::{EventMap, WebhookSource};
use secrecy::SecretString;

use crate::config::{ProviderKind, ProviderSection, ProvidersConfig};
use crate::error::ProvidersError;
use crate::webhook::CustomerMap;

/// A webhook route to mount: `/webhooks/{kind}` and its source.
#[non_exhaustive]
pub struct WebhookMount {
    /// The provider.
    pub kind: ProviderKind,
    /// `/webhooks/stripe`, `/webhooks/recurly` or `/webhooks/chargebee`.
    pub path: String,
    /// The verified source.
    pub source: Arc<dyn WebhookSource>,
}

impl std::fmt::Debug for WebhookMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookMount")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The webhook sources whose secrets are in the environment: Stripe when
/// `STRIPE_WEBHOOK_SECRET` is set, Recurly when `RECURLY_WEBHOOK_SECRET` is, Chargebee when
/// `CHARGEBEE_WEBHOOK_USER` and `CHARGEBEE_WEBHOOK_PASSWORD` are (a provider's section may
/// name other variables: `webhook_secret_env`, `webhook_user_env`,
/// `webhook_password_env`). A provider's section, when there is one, also gives its
/// customer mapping (without a `customers` table the provider's id is ours), its
/// `webhook_events` and `webhook_tolerance_secs`, Recurly's account lookup (its API key)
/// and Chargebee's `webhook_confirm` and `webhook_dunning_statuses`; `webhook_plans` (the
/// provider's plans to ours, for subscription events) and Stripe's and Chargebee's
/// `webhook_credits_per_minor_unit` (credit grants).
pub fn webhooks_with_env(
    config: &ProvidersConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<WebhookMount>, ProvidersError> {
    let mut out = Vec::new();
    for kind in [
        ProviderKind::Stripe,
        ProviderKind::Recurly,
        ProviderKind::Chargebee,
    ] {
        let section = config.providers.iter().find(|s| s.kind == kind);
        if let Some(source) = source(kind, section, env)? {
            out.push(WebhookMount {
                kind,
                path: format!("/webhooks/{}", kind.as_str()),
                source,
            });
        }
    }
    Ok(out)
}

fn var(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<SecretString> {
    env(name).filter(|v| !v.is_empty()).map(SecretString::from)
}

fn customers(section: Option<&ProviderSection>) -> Result<CustomerMap, ProvidersError> {
    match section {
        Some(s) if !s.customers.is_empty() => Ok(CustomerMap::Mapping(s.mapping()?)),
        _ => Ok(CustomerMap::Same),
    }
}

fn plans(
    section: Option<&ProviderSection>,
) -> Result<Vec<(String, monetize_core::PlanId)>, ProvidersError> {
    section.map_or_else(|| Ok(Vec::new()), ProviderSection::webhook_plans)
}

fn events(defaults: EventMap, section: Option<&ProviderSection>) -> EventMap {
    section
        .map(|s| &s.webhook_events)
        .into_iter()
        .flatten()
        .fold(defaults, |m, (k, v)| m.set(k.clone(), *v))
}

#[allow(unused_variables, unreachable_code)]
fn source(
    kind: ProviderKind,
    section: Option<&ProviderSection>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Arc<dyn WebhookSource>>, ProvidersError> {
    let secret_env = section.and_then(|s| s.webhook_secret_env.clone());
    let tolerance = section
        .and_then(|s| s.webhook_tolerance_secs)
        .map(Duration::from_secs);
    match kind {
        #[cfg(feature = "stripe")]
        ProviderKind::Stripe => {
            use crate::stripe::StripeWebhook;
            let name = secret_env.unwrap_or_else(|| "STRIPE_WEBHOOK_SECRET".into());
            let Some(secret) = var(env, &name) else {
                return Ok(None);
            };
            let mut w = StripeWebhook::new(secret)
                .customers(customers(section)?)
                .events(events(StripeWebhook::default_events(), section));
            for (theirs, ours) in plans(section)? {
                w = w.plan(theirs, ours);
            }
            if let Some(rate) = section.and_then(|s| s.webhook_credits_per_minor_unit) {
                w = w.credits_per_minor_unit(rate);
            }
            if let Some(t) = tolerance {
                w = w.tolerance(t);
            }
            Ok(Some(Arc::new(w)))
        }
        #[cfg(feature = "recurly")]
        ProviderKind::Recurly => {
            use crate::recurly::{DEFAULT_BASE_URL, RecurlyWebhook};
            let name = secret_env.unwrap_or_else(|| "RECURLY_WEBHOOK_SECRET".into());
            let Some(secret) = var(env, &name) else {
                return Ok(None);
            };
            let mut w = RecurlyWebhook::new(secret)
                .customers(customers(section)?)
                .events(events(RecurlyWebhook::default_events(), section));
            for (theirs, ours) in plans(section)? {
                w = w.plan(theirs, ours);
            }
            if let Some(t) = tolerance {
                w = w.tolerance(t);
            }
            if let Some(s) = section {
                let url = s.base_url(env).unwrap_or_else(|| DEFAULT_BASE_URL.into());
                w = w.lookup(url, s.api_key(env)?);
            }
            Ok(Some(Arc::new(w)))
        }
        #[cfg(feature = "chargebee")]
        ProviderKind::Chargebee => {
            use crate::chargebee::ChargebeeWebhook;
            let user_env = section
                .and_then(|s| s.webhook_user_env.clone())
                .unwrap_or_else(|| "CHARGEBEE_WEBHOOK_USER".into());
            let pass_env = section
                .and_then(|s| s.webhook_password_env.clone())
                .unwrap_or_else(|| "CHARGEBEE_WEBHOOK_PASSWORD".into());
            let (user, pass) = match (var(env, &user_env), var(env, &pass_env)) {
                (None, None) => return Ok(None),
                (Some(u), Some(p)) => (u, p),
                (Some(_), None) => {
                    return Err(ProvidersError::MissingEnv {
                        var: pass_env,
                        field: "webhook_password_env".into(),
                    });
                }
                (None, Some(_)) => {
                    return Err(ProvidersError::MissingEnv {
                        var: user_env,
                        field: "webhook_user_env".into(),
                    });
                }
            };
            let mut w = ChargebeeWebhook::new(user, pass)
                .customers(customers(section)?)
                .events(events(ChargebeeWebhook::default_events(), section));
            for (theirs, ours) in plans(section)? {
                w = w.plan(theirs, ours);
            }
            if let Some(statuses) = section.and_then(|s| s.webhook_dunning_statuses.clone()) {
                w = w.dunning_statuses(statuses);
            }
            if let Some(rate) = section.and_then(|s| s.webhook_credits_per_minor_unit) {
                w = w.credits_per_minor_unit(rate);
            }
            if let Some(s) = section.filter(|s| s.webhook_confirm) {
                let url = s.base_url(env).unwrap_or_else(|| {
                    format!(
                        "https://{}.chargebee.com/api/v2",
                        s.site.as_deref().unwrap_or_default()
                    )
                });
                w = w.confirm(url, s.api_key(env)?);
            }
            Ok(Some(Arc::new(w)))
        }
        #[allow(unreachable_patterns)]
        _ => Ok(None),
    }
}

#[cfg(all(test, feature = "stripe", feature = "recurly", feature = "chargebee"))]
mod tests {
    use super::*;

    #[test]
    fn sources_follow_the_environment_and_the_sections() {
        let none = |_: &str| None;
        let cfg = ProvidersConfig::default();
        assert!(webhooks_with_env(&cfg, &none).unwrap().is_empty());
        let env = |k: &str| {
            matches!(
                k,
                "STRIPE_WEBHOOK_SECRET"
                    | "CHARGEBEE_WEBHOOK_USER"
                    | "CHARGEBEE_WEBHOOK_PASSWORD"
                    | "MY_RECURLY"
            )
            .then(|| "x".to_owned())
        };
        let paths: Vec<String> = webhooks_with_env(&cfg, &env)
            .unwrap()
            .into_iter()
            .map(|m| m.path)
            .collect();
        assert_eq!(paths, ["/webhooks/stripe", "/webhooks/chargebee"]);
        let cfg = ProvidersConfig::from_toml_str(
            r#"
[[providers]]
kind = "recurly"
api_key_env = "MY_RECURLY"
webhook_secret_env = "MY_RECURLY"
webhook_events = { "charge_invoice.past_due" = "ignored" }
"#,
        )
        .unwrap();
        let paths: Vec<String> = webhooks_with_env(&cfg, &env)
            .unwrap()
            .into_iter()
            .map(|m| m.path)
            .collect();
        assert_eq!(
            paths,
            [
                "/webhooks/stripe",
                "/webhooks/recurly",
                "/webhooks/chargebee"
            ]
        );
        let half = |k: &str| (k == "CHARGEBEE_WEBHOOK_USER").then(|| "u".to_owned());
        let e = webhooks_with_env(&ProvidersConfig::default(), &half).unwrap_err();
        assert!(e.to_string().contains("CHARGEBEE_WEBHOOK_PASSWORD"), "{e}");
    }

    /// Basic auth `x:x` (what `env` above gives both Chargebee variables).
    fn chargebee_auth() -> http::HeaderMap {
        use base64::Engine as _;
        let mut h = http::HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode("x:x");
        h.insert("authorization", format!("Basic {v}").parse().unwrap());
        h
    }

    #[tokio::test]
    async fn chargebee_dunning_statuses_come_from_the_section() {
        use monetize_core::webhook::Meaning;
        const FAILED: &[u8] =
            include_bytes!("../../tests/fixtures/webhooks/chargebee_payment_failed.json");
        let env = |k: &str| k.starts_with("CHARGEBEE_WEBHOOK_").then(|| "x".to_owned());
        let meaning = |toml: &'static str| async move {
            let cfg = ProvidersConfig::from_toml_str(toml).unwrap();
            let mounts = webhooks_with_env(&cfg, &env).unwrap();
            let d = mounts[0].source.verify(&chargebee_auth(), FAILED).await;
            d.unwrap().meaning
        };
        // The fixture's invoice is `in_progress`: delinquent by default.
        assert_eq!(
            meaning(
                "[[providers]]\nkind = \"chargebee\"\nsite = \"acme\"\napi_key_env = \"CB_KEY\"\n"
            )
            .await,
            Meaning::PaymentFailed
        );
        assert_eq!(
            meaning(
                "[[providers]]\nkind = \"chargebee\"\nsite = \"acme\"\napi_key_env = \"CB_KEY\"\nwebhook_dunning_statuses = [\"exhausted\"]\n"
            )
            .await,
            Meaning::Ignored
        );
    }

    #[tokio::test]
    async fn chargebee_credit_grants_take_the_sections_rate() {
        use monetize_core::StateChange;
        let env = |k: &str| k.starts_with("CHARGEBEE_WEBHOOK_").then(|| "x".to_owned());
        let body = serde_json::json!({
            "id": "ev_1",
            "occurred_at": 1_368_301_434,
            "event_type": "promotional_credits_added",
            "content": {
                "customer": {"id": "acme"},
                "promotional_credit": {"customer_id": "acme", "amount": 250}
            }
        });
        let cfg = ProvidersConfig::from_toml_str(
            "[[providers]]\nkind = \"chargebee\"\nsite = \"acme\"\napi_key_env = \"CB_KEY\"\nwebhook_credits_per_minor_unit = 100\n",
        )
        .unwrap();
        let mounts = webhooks_with_env(&cfg, &env).unwrap();
        let d = mounts[0]
            .source
            .verify(&chargebee_auth(), &serde_json::to_vec(&body).unwrap())
            .await
            .unwrap();
        assert_eq!(d.carried, vec![StateChange::GrantCredits(25_000)]);
    }

    #[tokio::test]
    async fn webhook_plans_map_subscription_plans_and_are_checked() {
        use monetize_core::{PlanId, StateChange};
        const UPDATED: &[u8] = include_bytes!(
            "../../tests/fixtures/webhooks/stripe_customer.subscription.updated.past_due.json"
        );
        let env = |k: &str| k.ends_with("WEBHOOK_SECRET").then(|| "whsec_x".to_owned());
        let cfg = ProvidersConfig::from_toml_str(
            r#"
[[providers]]
kind = "stripe"
api_key_env = "SK"
webhook_plans = { "api_calls_monthly" = "pro" }
webhook_credits_per_minor_unit = 10000
"#,
        )
        .unwrap();
        let mounts = webhooks_with_env(&cfg, &env).unwrap();
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let mut h = http::HeaderMap::new();
        let sig = crate::webhook::tests::sign("whsec_x", &t, UPDATED);
        h.insert(
            "stripe-signature",
            format!("t={t},v1={sig}").parse().unwrap(),
        );
        let d = mounts[0].source.verify(&h, UPDATED).await.unwrap();
        assert!(
            d.carried
                .contains(&StateChange::Plan(PlanId::new("pro").unwrap())),
            "{:?}",
            d.carried
        );
        let bad = ProvidersConfig::from_toml_str(
            "[[providers]]\nkind = \"stripe\"\napi_key_env = \"SK\"\nwebhook_plans = { \"p\" = \"not a plan!\" }\n",
        )
        .unwrap();
        let e = webhooks_with_env(&bad, &env).unwrap_err();
        assert!(e.to_string().contains("webhook_plans.p"), "{e}");
    }
}
