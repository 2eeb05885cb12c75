//! Provider sections of the configuration file: `[[providers]]` tables next to the
//! sections `monetize_core::config::Config` reads.
//!
//! ```toml
//! [[providers]]
//! kind = "stripe"                     # stripe | recurly | chargebee
//! api = "meter_events_v2"             # Stripe: meter_events_v1 | meter_events_v2 | meter_event_stream | usage_records
//! api_key_env = "STRIPE_API_KEY"      # the key is read from this variable, never from the file
//! base_url_env = "STRIPE_BASE_URL"    # optional: overrides base_url when set
//! report_interval_ms = 10000
//! timeout_ms = 10000
//! rate_per_minute = 60000             # optional; default: the provider's documented limit
//! customer_ids = "mapped"             # or "same": our customer id is the provider's
//! [providers.customers]
//! acme = "cus_NffrFeUfNV2Hib"
//! [providers.meters.api_calls]        # the meters this provider takes, and their targets
//! id = "api_calls"                    # Stripe event_name / Recurly add-on / Chargebee item price
//! formula = "sum"                     # sum (default) | last | max | count
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use monetize_core::config::Config;
use monetize_core::{CustomerId, MeterId, PlanId};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::error::{FieldError, ProvidersError};
use crate::http::HttpSettings;
use crate::mapping::{Formula, Mapping, MeterTarget};

/// The provider sections of a configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProvidersConfig {
    /// One entry per provider, in file order.
    pub providers: Vec<ProviderSection>,
}

/// Which provider a section configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProviderKind {
    /// Stripe Billing.
    Stripe,
    /// Recurly (API v3).
    Recurly,
    /// Chargebee (API v2, Product Catalog 2.0).
    Chargebee,
}

impl ProviderKind {
    /// The kind's name, also the default provider name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Stripe => "stripe",
            ProviderKind::Recurly => "recurly",
            ProviderKind::Chargebee => "chargebee",
        }
    }

    fn formulas(self) -> &'static [Formula] {
        match self {
            ProviderKind::Stripe => &[Formula::Sum, Formula::Count, Formula::Last],
            ProviderKind::Recurly => &[Formula::Sum],
            ProviderKind::Chargebee => &[Formula::Sum, Formula::Last, Formula::Max],
        }
    }
}

/// Whether customers need an explicit mapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CustomerIds {
    /// Every customer billed must be in `customers` (default).
    #[default]
    Mapped,
    /// Customers not in `customers` use our customer id unchanged.
    Same,
}

/// One `[[providers]]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProviderSection {
    /// `stripe`, `recurly` or `chargebee`.
    pub kind: ProviderKind,
    /// The provider's name in the spool and in idempotency keys (default: the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// Stripe only: `meter_events_v1`, `meter_events_v2` (default), `meter_event_stream`
    /// or `usage_records` (legacy, opt-in for accounts on API versions before
    /// 2025-03-31.basil).
    #[serde(default)]
    pub api: Option<String>,
    /// The environment variable holding the API key.
    pub api_key_env: String,
    /// The API base URL (defaults: `https://api.stripe.com`, `https://v3.recurly.com`,
    /// `https://{site}.chargebee.com/api/v2`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// An environment variable that, when set, overrides `base_url` (to run one file
    /// against the live API, a sandbox or a local server).
    #[serde(default)]
    pub base_url_env: Option<String>,
    /// The second host: Stripe's meter event stream (default
    /// `https://meter-events.stripe.com`), Chargebee's ingest API (default
    /// `https://{site}.ingest.chargebee.com/api/v2`).
    #[serde(default)]
    pub events_base_url: Option<String>,
    /// An environment variable that, when set, overrides `events_base_url`.
    #[serde(default)]
    pub events_base_url_env: Option<String>,
    /// Chargebee: the site (`acme-test`).
    #[serde(default)]
    pub site: Option<String>,
    /// How often closed windows are sent, in milliseconds (default 10,000).
    #[serde(default = "default_report_ms")]
    pub report_interval_ms: u64,
    /// The longest one HTTP call may take, in milliseconds (default 10,000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The longest a connection may take to open, in milliseconds (default 5,000).
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// Client-side limit in calls per minute (Chargebee usage events: events per minute);
    /// default: the provider's documented limit.
    #[serde(default)]
    pub rate_per_minute: Option<u32>,
    /// How many calls may go at once after an idle spell.
    #[serde(default)]
    pub burst: Option<u32>,
    /// `mapped` (default) or `same`.
    #[serde(default)]
    pub customer_ids: CustomerIds,
    /// Our customer id to the provider's (Stripe customer, Recurly or Chargebee
    /// subscription).
    #[serde(default)]
    pub customers: BTreeMap<String, String>,
    /// The meters this provider takes, each with its provider-side target.
    #[serde(default)]
    pub meters: BTreeMap<String, MeterSection>,
    /// Stripe: the payload key of the customer (default `stripe_customer_id`).
    #[serde(default)]
    pub customer_key: Option<String>,
    /// Stripe: the payload key of the value (default `value`); Chargebee usage events:
    /// the property holding the quantity (default `quantity`).
    #[serde(default)]
    pub value_key: Option<String>,
    /// Stripe: a `Stripe-Version` header to send.
    #[serde(default)]
    pub stripe_version: Option<String>,
    /// Stripe legacy usage records: `"customer/meter"` to the subscription item (`si_...`).
    #[serde(default)]
    pub subscription_items: BTreeMap<String, String>,
    /// Stripe, Recurly: the environment variable holding the webhook signing secret
    /// (default `STRIPE_WEBHOOK_SECRET`, `RECURLY_WEBHOOK_SECRET`).
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    /// Chargebee: the environment variable holding the webhook's Basic-auth user
    /// (default `CHARGEBEE_WEBHOOK_USER`).
    #[serde(default)]
    pub webhook_user_env: Option<String>,
    /// Chargebee: the environment variable holding the webhook's Basic-auth password
    /// (default `CHARGEBEE_WEBHOOK_PASSWORD`).
    #[serde(default)]
    pub webhook_password_env: Option<String>,
    /// Chargebee: confirm every webhook with `GET /events/{id}` (with the API key).
    #[serde(default)]
    pub webhook_confirm: bool,
    /// Stripe, Recurly: how far a signature's timestamp may be from now, in seconds
    /// (default 300).
    #[serde(default)]
    pub webhook_tolerance_secs: Option<u64>,
    /// What webhook event types mean, over the provider's defaults
    /// (`"invoice.marked_uncollectible" = "ignored"`; meanings: `payment_failed`,
    /// `invoice_overdue`, `delinquent`, `paid`, `active`, `cancelled`, `paused`,
    /// `resumed`, `subscription_status`, `ignored`).
    #[serde(default)]
    pub webhook_events: BTreeMap<String, monetize_core::webhook::Meaning>,
    /// Chargebee: the invoice dunning statuses with which `payment_failed` makes the
    /// customer delinquent (default `["in_progress", "exhausted"]`; `[]` for every
    /// failure).
    #[serde(default)]
    pub webhook_dunning_statuses: Option<Vec<String>>,
    /// The provider's plan (Stripe: a price's lookup key or id; Recurly: a plan code;
    /// Chargebee: a plan id or plan item price id) to one of our plans: subscription
    /// events naming a mapped plan move the customer to ours
    /// (`webhook_plans = { "price_gold_monthly" = "pro" }`).
    #[serde(default)]
    pub webhook_plans: BTreeMap<String, String>,
    /// Stripe and Chargebee: micro-credits granted per minor currency unit of a Stripe
    /// `billing.credit_grant.created` or a Chargebee `promotional_credits_added` (without
    /// it, credit grants are ignored).
    #[serde(default)]
    pub webhook_credits_per_minor_unit: Option<i64>,
}

fn default_report_ms() -> u64 {
    10_000
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_connect_ms() -> u64 {
    5_000
}

/// A meter's provider-side target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MeterSection {
    /// Stripe event name, Recurly add-on id (`code-...`), Chargebee item price id.
    pub id: String,
    /// How the provider aggregates (default `sum`).
    #[serde(default)]
    pub formula: Formula,
    /// Chargebee only: `usage_events` (default, the batch ingest API) or `usages` (the
    /// classic subscription usages API).
    #[serde(default)]
    pub api: Option<String>,
}

/// Stripe's API choices.
pub(crate) const STRIPE_APIS: [&str; 4] = [
    "meter_events_v1",
    "meter_events_v2",
    "meter_event_stream",
    "usage_records",
];

/// Chargebee's per-meter API choices.
pub(crate) const CHARGEBEE_APIS: [&str; 2] = ["usage_events", "usages"];

impl ProvidersConfig {
    /// Reads the `[[providers]]` tables of a TOML configuration (other tables are left
    /// to `monetize_core::config::Config`).
    pub fn from_toml_str(text: &str) -> Result<Self, ProvidersError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ProvidersError::Parse {
                    format: "toml",
                    message: e.to_string(),
                })?;
        Self::from_toml_table(&table)
    }

    /// Reads the `providers` array of a parsed TOML document.
    pub fn from_toml_table(table: &toml::Table) -> Result<Self, ProvidersError> {
        let Some(list) = table.get("providers") else {
            return Ok(Self::default());
        };
        let Some(list) = list.as_array() else {
            return Err(FieldError::new(
                "providers",
                "",
                "must be an array of tables: write `[[providers]]`",
            )
            .into());
        };
        let mut providers = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let section = ProviderSection::deserialize(entry.clone()).map_err(|e| {
                FieldError::new(format!("providers[{i}]"), "", e.message().to_owned())
            })?;
            providers.push(section);
        }
        Ok(Self { providers })
    }

    /// Reads the `providers` array of a JSON configuration.
    pub fn from_json_str(text: &str) -> Result<Self, ProvidersError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ProvidersError::Parse {
                format: "json",
                message: e.to_string(),
            })?;
        let Some(list) = v.get("providers") else {
            return Ok(Self::default());
        };
        let Some(list) = list.as_array() else {
            return Err(FieldError::new("providers", "", "must be an array").into());
        };
        let mut providers = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let section = ProviderSection::deserialize(entry)
                .map_err(|e| FieldError::new(format!("providers[{i}]"), "", e.to_string()))?;
            providers.push(section);
        }
        Ok(Self { providers })
    }

    /// Checks every section against the engine's configuration: kinds and APIs known,
    /// meters configured and billable by the provider's formula, ids well formed, names
    /// distinct.
    pub fn validate(&self, engine: &Config) -> Result<(), ProvidersError> {
        let mut names: Vec<String> = Vec::new();
        for (i, s) in self.providers.iter().enumerate() {
            let name = s.name();
            if names.contains(&name) {
                return Err(FieldError::new(
                    format!("providers[{i}].name"),
                    &name,
                    "two providers share this name; give each its own `name`",
                )
                .into());
            }
            names.push(name);
            s.validate(i, engine)?;
        }
        Ok(())
    }
}

/// Splits a TOML configuration into the text `monetize_core::config::Config` reads (every
/// table but `providers`, which core refuses as unknown) and the provider sections.
pub fn split_toml(text: &str) -> Result<(String, ProvidersConfig), ProvidersError> {
    let mut table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ProvidersError::Parse {
                format: "toml",
                message: e.to_string(),
            })?;
    let providers = ProvidersConfig::from_toml_table(&table)?;
    table.remove("providers");
    let rest = toml::to_string(&table).map_err(|e| ProvidersError::Parse {
        format: "toml",
        message: e.to_string(),
    })?;
    Ok((rest, providers))
}

impl ProviderSection {
    /// The provider's name (`name`, or the kind).
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.kind.as_str().to_owned())
    }

    fn validate(&self, i: usize, engine: &Config) -> Result<(), ProvidersError> {
        let f = |field: &str| format!("providers[{i}].{field}");
        let positive = |field: &str, v: u64| -> Result<(), FieldError> {
            if v == 0 {
                Err(FieldError::new(f(field), v, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("report_interval_ms", self.report_interval_ms)?;
        positive("timeout_ms", self.timeout_ms)?;
        positive("connect_timeout_ms", self.connect_timeout_ms)?;
        if let Some(r) = self.rate_per_minute {
            positive("rate_per_minute", u64::from(r))?;
        }
        if self.api_key_env.trim().is_empty() {
            return Err(FieldError::new(
                f("api_key_env"),
                "",
                "name the environment variable holding the API key",
            )
            .into());
        }
        if let Some(api) = &self.api {
            let known: &[&str] = match self.kind {
                ProviderKind::Stripe => &STRIPE_APIS,
                _ => &[],
            };
            if !known.contains(&api.as_str()) {
                return Err(FieldError::new(
                    f("api"),
                    api,
                    if known.is_empty() {
                        format!("{} has no `api` choice here", self.kind.as_str())
                    } else {
                        format!("expected one of {}", known.join(", "))
                    },
                )
                .into());
            }
        }
        for (field, url) in [
            ("base_url", &self.base_url),
            ("events_base_url", &self.events_base_url),
        ] {
            if let Some(url) = url {
                check_url(&f(field), url)?;
            }
        }
        if self.kind == ProviderKind::Chargebee
            && self.site.is_none()
            && (self.base_url.is_none() && self.base_url_env.is_none())
        {
            return Err(FieldError::new(
                f("site"),
                "",
                "Chargebee needs `site` (or `base_url` and `events_base_url`)",
            )
            .into());
        }
        if self.meters.is_empty() {
            return Err(FieldError::new(
                f("meters"),
                "",
                "list the meters this provider takes, each with its provider-side `id`",
            )
            .into());
        }
        for (meter, target) in &self.meters {
            let field = f(&format!("meters.{meter}"));
            MeterId::new(meter).map_err(|e| FieldError::new(&field, meter, e.to_string()))?;
            let Some(configured) = engine.meters.iter().find(|m| m.id == *meter) else {
                return Err(FieldError::new(
                    &field,
                    meter,
                    "no meter with this id is configured in `meters`",
                )
                .into());
            };
            if target.id.is_empty() || target.id.len() > 100 {
                return Err(FieldError::new(
                    format!("{field}.id"),
                    &target.id,
                    "must be 1 to 100 characters",
                )
                .into());
            }
            if !self.kind.formulas().contains(&target.formula) {
                return Err(FieldError::new(
                    format!("{field}.formula"),
                    target.formula,
                    format!("{} has no such formula", self.kind.as_str()),
                )
                .into());
            }
            if let Some(api) = &target.api
                && (self.kind != ProviderKind::Chargebee || !CHARGEBEE_APIS.contains(&api.as_str()))
            {
                return Err(FieldError::new(
                    format!("{field}.api"),
                    api,
                    "only Chargebee meters choose an api: usage_events or usages",
                )
                .into());
            }
            target
                .formula
                .accepts(configured.aggregation)
                .map_err(|problem| ProvidersError::Meter {
                    provider: self.name(),
                    meter: meter.clone(),
                    problem,
                })?;
        }
        for (ours, theirs) in &self.customers {
            let field = f(&format!("customers.{ours}"));
            CustomerId::new(ours).map_err(|e| FieldError::new(&field, ours, e.to_string()))?;
            if theirs.is_empty() {
                return Err(FieldError::new(&field, "", "the provider id is empty").into());
            }
        }
        if !self.subscription_items.is_empty()
            && (self.kind != ProviderKind::Stripe || self.api.as_deref() != Some("usage_records"))
        {
            return Err(FieldError::new(
                f("subscription_items"),
                "",
                "only for kind = \"stripe\" with api = \"usage_records\"",
            )
            .into());
        }
        Ok(())
    }

    /// The HTTP settings of this section.
    pub fn http_settings(&self) -> HttpSettings {
        let mut http = HttpSettings::default()
            .with_timeout(Duration::from_millis(self.timeout_ms))
            .with_connect_timeout(Duration::from_millis(self.connect_timeout_ms));
        http.rate_per_minute = self.rate_per_minute;
        http.burst = self.burst;
        http
    }

    /// The id mapping of this section.
    pub fn mapping(&self) -> Result<Mapping, ProvidersError> {
        let mut m = Mapping::new().with_same_customer_ids(self.customer_ids == CustomerIds::Same);
        for (ours, theirs) in &self.customers {
            let c = CustomerId::new(ours)
                .map_err(|e| FieldError::new(format!("customers.{ours}"), ours, e.to_string()))?;
            m = m.with_customer(c, theirs.clone());
        }
        for (ours, target) in &self.meters {
            let id = MeterId::new(ours)
                .map_err(|e| FieldError::new(format!("meters.{ours}"), ours, e.to_string()))?;
            m = m.with_meter(
                id,
                MeterTarget::new(&target.id).with_formula(target.formula),
            );
        }
        Ok(m)
    }

    /// The `webhook_plans` table, with our plan ids checked.
    pub fn webhook_plans(&self) -> Result<Vec<(String, PlanId)>, ProvidersError> {
        self.webhook_plans
            .iter()
            .map(|(theirs, ours)| {
                let plan = PlanId::new(ours).map_err(|e| {
                    FieldError::new(format!("webhook_plans.{theirs}"), ours, e.to_string())
                })?;
                Ok((theirs.clone(), plan))
            })
            .collect()
    }

    /// The meters this provider takes.
    pub fn meter_ids(&self) -> Vec<MeterId> {
        self.meters
            .keys()
            .filter_map(|m| MeterId::new(m).ok())
            .collect()
    }

    /// The API key, read from `api_key_env` through `env`.
    pub(crate) fn api_key(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SecretString, ProvidersError> {
        env(&self.api_key_env)
            .filter(|v| !v.is_empty())
            .map(SecretString::from)
            .ok_or_else(|| ProvidersError::MissingEnv {
                var: self.api_key_env.clone(),
                field: "api_key_env".into(),
            })
    }

    /// `base_url_env` when set in the environment, else `base_url`.
    pub(crate) fn base_url(&self, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
        self.base_url_env
            .as_deref()
            .and_then(env)
            .filter(|v| !v.is_empty())
            .or_else(|| self.base_url.clone())
    }

    /// `events_base_url_env` when set in the environment, else `events_base_url`.
    #[cfg_attr(not(any(feature = "stripe", feature = "chargebee")), allow(dead_code))]
    pub(crate) fn events_base_url(&self, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
        self.events_base_url_env
            .as_deref()
            .and_then(env)
            .filter(|v| !v.is_empty())
            .or_else(|| self.events_base_url.clone())
    }
}

fn check_url(field: &str, url: &str) -> Result<(), FieldError> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "https" || u.scheme() == "http" => Ok(()),
        _ => Err(FieldError::new(field, url, "must be an http(s) URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monetize_core::config::MeterConfig;
    use monetize_core::meter::Aggregation;

    fn engine() -> Config {
        Config::builder()
            .meter(MeterConfig::count("api_calls"))
            .meter(MeterConfig::count("peak").aggregation(Aggregation::Max))
            .build()
    }

    const GOOD: &str = r#"
instance = "x"
[[meters]]
id = "api_calls"

[[providers]]
kind = "stripe"
api_key_env = "STRIPE_API_KEY"
base_url_env = "STRIPE_BASE_URL"
[providers.customers]
acme = "cus_1"
[providers.meters.api_calls]
id = "api_requests"
"#;

    #[test]
    fn parses_and_validates() {
        let c = ProvidersConfig::from_toml_str(GOOD).unwrap();
        assert_eq!(c.providers.len(), 1);
        let s = &c.providers[0];
        assert_eq!((s.kind, s.name()), (ProviderKind::Stripe, "stripe".into()));
        assert_eq!(s.report_interval_ms, 10_000);
        assert_eq!(s.meters["api_calls"].id, "api_requests");
        c.validate(&engine()).unwrap();
        let (rest, _) = split_toml(GOOD).unwrap();
        assert!(!rest.contains("providers"));
        assert!(Config::from_toml_str(&rest).is_ok());
    }

    fn field_error(text: &str) -> FieldError {
        let r = ProvidersConfig::from_toml_str(text).and_then(|c| c.validate(&engine()));
        match r {
            Err(ProvidersError::Config(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = field_error(&GOOD.replace("api_key_env", "api_kye_env"));
        assert_eq!(e.field, "providers[0]");
        assert!(e.problem.contains("api_kye_env"), "{e}");
        let e = field_error(&GOOD.replace("kind = \"stripe\"", "kind = \"paypal\""));
        assert!(e.problem.contains("paypal"), "{e}");
        let e =
            field_error(&GOOD.replace("[providers.meters.api_calls]", "[providers.meters.nope]"));
        assert_eq!(e.field, "providers[0].meters.nope");
        let e =
            field_error(&GOOD.replace("id = \"api_requests\"", "id = \"x\"\nformula = \"max\""));
        assert_eq!(e.field, "providers[0].meters.api_calls.formula");
        let e = field_error(&GOOD.replace("kind = \"stripe\"", "kind = \"stripe\"\napi = \"v9\""));
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("providers[0].api", "v9")
        );
        let e = field_error(&GOOD.replace("acme = ", "\"a b\" = "));
        assert_eq!(e.field, "providers[0].customers.a b");
    }

    #[test]
    fn dishonest_aggregation_is_refused() {
        let text = GOOD.replace("[providers.meters.api_calls]", "[providers.meters.peak]")
            + "\n[[meters]]\nid = \"peak\"\naggregation = \"max\"\n";
        let c = ProvidersConfig::from_toml_str(&text).unwrap();
        match c.validate(&engine()) {
            Err(ProvidersError::Meter { meter, problem, .. }) => {
                assert_eq!(meter, "peak");
                assert!(problem.contains("max"), "{problem}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secrets_come_from_the_environment_only() {
        let c = ProvidersConfig::from_toml_str(GOOD).unwrap();
        let s = &c.providers[0];
        let env = |k: &str| (k == "STRIPE_API_KEY").then(|| "sk_test_123".to_owned());
        let key = s.api_key(&env).unwrap();
        assert!(!format!("{key:?}").contains("sk_test_123"));
        match s.api_key(&|_| None) {
            Err(ProvidersError::MissingEnv { var, .. }) => assert_eq!(var, "STRIPE_API_KEY"),
            other => panic!("{other:?}"),
        }
        let env = |k: &str| (k == "STRIPE_BASE_URL").then(|| "http://127.0.0.1:9".to_owned());
        assert_eq!(s.base_url(&env).as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(s.base_url(&|_| None), None);
    }
}
