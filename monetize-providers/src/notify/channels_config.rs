//! Channel sections of a configuration file: `[slack]`, `[pagerduty]`, `[[webhooks]]` and
//! `[twilio]` (the `[smtp]` section is [`SmtpConfig`](super::smtp::SmtpConfig)'s). Secrets
//! are never in the file: each section names the environment variable that holds them.
//!
//! ```toml
//! [slack]
//! webhook_url_env = "SLACK_WEBHOOK_URL"    # the incoming-webhook URL is the secret
//! # name = "slack"                         # the channel name routes use (default: slack)
//!
//! [pagerduty]
//! routing_key_env = "PAGERDUTY_ROUTING_KEY"
//! # url = "https://events.eu.pagerduty.com/v2/enqueue"   # EU accounts
//! # severity = "error"                     # critical | error | warning | info
//! # source = "monetize"
//!
//! [[webhooks]]                             # Standard Webhooks, one table per endpoint
//! name = "billing-hooks"
//! url = "https://hooks.example.com/monetize"
//! secret_env = "BILLING_HOOKS_SECRET"      # whsec_...
//!
//! [twilio]
//! account_sid = "AC..."
//! # username = "SK..."                     # an API key SID (default: the account SID)
//! secret_env = "TWILIO_SECRET"             # the API key secret or the Auth Token
//! from = "+15005550006"                    # or messaging_service_sid = "MG..."
//! to = "+15005550001"                      # the number when a route names none
//! ```
//!
//! [`ChannelsConfig::build`] makes the channels, by name, for
//! [`DispatcherBuilder::channel`](monetize_core::notify::DispatcherBuilder::channel); a
//! section whose cargo feature is off is an error saying which feature to turn on.

use std::sync::Arc;

use monetize_core::Notifier;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A channel and the name routes use for it.
pub type NamedChannel = (String, Arc<dyn Notifier>);

/// The section names this module reads.
pub const SECTIONS: [&str; 4] = ["slack", "pagerduty", "webhooks", "twilio"];

/// The `[slack]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SlackConfig {
    /// The channel name routes use (default `slack`).
    #[serde(default)]
    pub name: Option<String>,
    /// The environment variable holding the incoming-webhook URL (a secret).
    pub webhook_url_env: String,
}

/// The `[pagerduty]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PagerDutyConfig {
    /// The channel name routes use (default `pagerduty`).
    #[serde(default)]
    pub name: Option<String>,
    /// The environment variable holding the integration's routing key.
    pub routing_key_env: String,
    /// The Events API endpoint (default the US one).
    #[serde(default)]
    pub url: Option<String>,
    /// `critical`, `error` (default), `warning` or `info`.
    #[serde(default)]
    pub severity: Option<String>,
    /// `payload.source` (default `monetize`).
    #[serde(default)]
    pub source: Option<String>,
}

/// One `[[webhooks]]` table: a Standard Webhooks endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WebhookConfig {
    /// The channel name routes use.
    pub name: String,
    /// Where to post.
    pub url: String,
    /// The environment variable holding the signing secret (`whsec_` + base64).
    pub secret_env: String,
}

/// The `[twilio]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TwilioConfig {
    /// The channel name routes use (default `twilio`).
    #[serde(default)]
    pub name: Option<String>,
    /// The account (`AC…`).
    pub account_sid: String,
    /// The user name for HTTP Basic: an API key SID (`SK…`); default the account SID.
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the API key secret (or the Auth Token).
    pub secret_env: String,
    /// The sending number (E.164); or `messaging_service_sid`.
    #[serde(default)]
    pub from: Option<String>,
    /// The Messaging Service (`MG…`); or `from`.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// The recipient when a route names none.
    #[serde(default)]
    pub to: Option<String>,
    /// Twilio's base URL (default `https://api.twilio.com`).
    #[serde(default)]
    pub base_url: Option<String>,
}

/// The channel sections of a configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelsConfig {
    /// `[slack]`.
    pub slack: Option<SlackConfig>,
    /// `[pagerduty]`.
    pub pagerduty: Option<PagerDutyConfig>,
    /// `[[webhooks]]`.
    pub webhooks: Vec<WebhookConfig>,
    /// `[twilio]`.
    pub twilio: Option<TwilioConfig>,
}

/// A channel section that is wrong or cannot be set up; the message names the section,
/// the field and, for secrets, the environment variable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelConfigError {
    /// The section does not parse (a missing or unknown field, a wrong type): fix the file.
    #[error("[{section}]: {reason}")]
    Parse {
        /// The section.
        section: String,
        /// What the parser said (it names the field).
        reason: String,
    },
    /// A field has a value that cannot work: fix the file.
    #[error("[{section}] {field}: {reason}")]
    Invalid {
        /// The section.
        section: String,
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A secret's environment variable is not set: set it before starting.
    #[error("[{section}] {field}: environment variable `{var}` is not set")]
    MissingEnv {
        /// The section.
        section: String,
        /// The field naming the variable.
        field: &'static str,
        /// The variable.
        var: String,
    },
    /// The section's channel is behind a cargo feature that is off: enable it.
    #[error(
        "[{section}]: this build has no `{feature}` channel (enable the `{feature}` feature of monetize-providers)"
    )]
    FeatureOff {
        /// The section.
        section: String,
        /// The feature.
        feature: &'static str,
    },
    /// Two channels have the same name: rename one (`name = ...`).
    #[error("[{section}]: a channel named `{name}` is already configured")]
    DuplicateName {
        /// The section.
        section: String,
        /// The name.
        name: String,
    },
}

fn parse<T: DeserializeOwned>(
    section: &str,
    v: serde_json::Value,
) -> Result<T, ChannelConfigError> {
    serde_json::from_value(v).map_err(|e| ChannelConfigError::Parse {
        section: section.to_owned(),
        reason: e.to_string(),
    })
}

fn from_toml<T: DeserializeOwned>(section: &str, v: toml::Value) -> Result<T, ChannelConfigError> {
    v.try_into()
        .map_err(|e: toml::de::Error| ChannelConfigError::Parse {
            section: section.to_owned(),
            reason: e.message().trim().to_owned(),
        })
}

impl ChannelsConfig {
    /// Takes the channel sections out of a parsed TOML file (they are removed, so the rest
    /// can go to the engine's parser).
    pub fn take_from_toml(table: &mut toml::Table) -> Result<Self, ChannelConfigError> {
        let mut c = Self::default();
        if let Some(v) = table.remove("slack") {
            c.slack = Some(from_toml("slack", v)?);
        }
        if let Some(v) = table.remove("pagerduty") {
            c.pagerduty = Some(from_toml("pagerduty", v)?);
        }
        if let Some(v) = table.remove("webhooks") {
            c.webhooks = from_toml("webhooks", v)?;
        }
        if let Some(v) = table.remove("twilio") {
            c.twilio = Some(from_toml("twilio", v)?);
        }
        c.validate()?;
        Ok(c)
    }

    /// Takes the channel sections out of a parsed JSON file.
    pub fn take_from_json(
        map: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, ChannelConfigError> {
        let mut c = Self::default();
        if let Some(v) = map.remove("slack") {
            c.slack = Some(parse("slack", v)?);
        }
        if let Some(v) = map.remove("pagerduty") {
            c.pagerduty = Some(parse("pagerduty", v)?);
        }
        if let Some(v) = map.remove("webhooks") {
            c.webhooks = parse("webhooks", v)?;
        }
        if let Some(v) = map.remove("twilio") {
            c.twilio = Some(parse("twilio", v)?);
        }
        c.validate()?;
        Ok(c)
    }

    /// Whether no channel section is present.
    pub fn is_empty(&self) -> bool {
        self.slack.is_none()
            && self.pagerduty.is_none()
            && self.webhooks.is_empty()
            && self.twilio.is_none()
    }

    /// The configured channel names, with their sections.
    pub fn names(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(s) = &self.slack {
            out.push(("slack".into(), name_or(&s.name, "slack")));
        }
        if let Some(p) = &self.pagerduty {
            out.push(("pagerduty".into(), name_or(&p.name, "pagerduty")));
        }
        for w in &self.webhooks {
            out.push((format!("webhooks.{}", w.name), w.name.clone()));
        }
        if let Some(t) = &self.twilio {
            out.push(("twilio".into(), name_or(&t.name, "twilio")));
        }
        out
    }

    /// Checks what can be checked without the environment: names, URLs, the severity,
    /// the Twilio sender.
    pub fn validate(&self) -> Result<(), ChannelConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for (section, name) in self.names() {
            if name.trim().is_empty() {
                return Err(invalid(&section, "name", "must not be empty".into()));
            }
            if !seen.insert(name.clone()) {
                return Err(ChannelConfigError::DuplicateName { section, name });
            }
        }
        if let Some(p) = &self.pagerduty {
            if let Some(url) = &p.url {
                check_url("pagerduty", "url", url)?;
            }
            if let Some(s) = &p.severity
                && !["critical", "error", "warning", "info"].contains(&s.as_str())
            {
                return Err(invalid(
                    "pagerduty",
                    "severity",
                    format!("`{s}` is not one of critical, error, warning, info"),
                ));
            }
        }
        for w in &self.webhooks {
            check_url(&format!("webhooks.{}", w.name), "url", &w.url)?;
        }
        if let Some(t) = &self.twilio {
            if t.from.is_some() == t.messaging_service_sid.is_some() {
                return Err(invalid(
                    "twilio",
                    "from",
                    "set exactly one of `from` and `messaging_service_sid`".into(),
                ));
            }
            if let Some(url) = &t.base_url {
                check_url("twilio", "base_url", url)?;
            }
        }
        Ok(())
    }

    /// Builds the channels, reading secrets from the process environment.
    pub fn build(&self) -> Result<Vec<NamedChannel>, ChannelConfigError> {
        self.build_with(&|name| std::env::var(name).ok())
    }

    /// Builds the channels, reading secrets through `env` (a variable name to its value).
    pub fn build_with(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<NamedChannel>, ChannelConfigError> {
        self.validate()?;
        let mut out: Vec<NamedChannel> = Vec::new();
        if let Some(s) = &self.slack {
            out.push((name_or(&s.name, "slack"), build::slack(s, env)?));
        }
        if let Some(p) = &self.pagerduty {
            out.push((name_or(&p.name, "pagerduty"), build::pagerduty(p, env)?));
        }
        for w in &self.webhooks {
            out.push((w.name.clone(), build::webhook(w, env)?));
        }
        if let Some(t) = &self.twilio {
            out.push((name_or(&t.name, "twilio"), build::twilio(t, env)?));
        }
        Ok(out)
    }
}

fn name_or(name: &Option<String>, default: &str) -> String {
    name.clone().unwrap_or_else(|| default.to_owned())
}

fn invalid(section: &str, field: &'static str, reason: String) -> ChannelConfigError {
    ChannelConfigError::Invalid {
        section: section.to_owned(),
        field,
        reason,
    }
}

fn check_url(section: &str, field: &'static str, url: &str) -> Result<(), ChannelConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        Ok(u) => Err(invalid(
            section,
            field,
            format!("`{url}`: scheme `{}` is not http or https", u.scheme()),
        )),
        Err(e) => Err(invalid(section, field, format!("`{url}`: {e}"))),
    }
}

/// A secret from the variable `var` named by `field` of `section`.
#[allow(dead_code)]
fn secret(
    env: &dyn Fn(&str) -> Option<String>,
    section: &str,
    field: &'static str,
    var: &str,
) -> Result<secrecy::SecretString, ChannelConfigError> {
    match env(var) {
        Some(v) if !v.is_empty() => Ok(v.into()),
        _ => Err(ChannelConfigError::MissingEnv {
            section: section.to_owned(),
            field,
            var: var.to_owned(),
        }),
    }
}

#[allow(dead_code)]
fn feature_off(section: &str, feature: &'static str) -> ChannelConfigError {
    ChannelConfigError::FeatureOff {
        section: section.to_owned(),
        feature,
    }
}

/// One builder per channel, each the feature's or an error naming the feature.
mod build {
    #![allow(unused_variables)]
    use super::*;

    type Env<'a> = &'a dyn Fn(&str) -> Option<String>;
    type Built = Result<Arc<dyn Notifier>, ChannelConfigError>;

    pub(super) fn slack(c: &SlackConfig, env: Env<'_>) -> Built {
        #[cfg(feature = "slack")]
        {
            let url = secret(env, "slack", "webhook_url_env", &c.webhook_url_env)?;
            Ok(Arc::new(crate::notify::slack::SlackChannel::new(url)))
        }
        #[cfg(not(feature = "slack"))]
        Err(feature_off("slack", "slack"))
    }

    pub(super) fn pagerduty(c: &PagerDutyConfig, env: Env<'_>) -> Built {
        #[cfg(feature = "pagerduty")]
        {
            let key = secret(env, "pagerduty", "routing_key_env", &c.routing_key_env)?;
            let mut ch = crate::notify::pagerduty::PagerDutyChannel::new(key);
            if let Some(u) = &c.url {
                ch = ch.url(u.clone());
            }
            if let Some(s) = &c.severity {
                ch = ch.severity(s.clone());
            }
            if let Some(s) = &c.source {
                ch = ch.source(s.clone());
            }
            Ok(Arc::new(ch))
        }
        #[cfg(not(feature = "pagerduty"))]
        Err(feature_off("pagerduty", "pagerduty"))
    }

    pub(super) fn webhook(c: &WebhookConfig, env: Env<'_>) -> Built {
        let section = format!("webhooks.{}", c.name);
        #[cfg(feature = "webhook")]
        {
            use secrecy::ExposeSecret;
            let s = secret(env, &section, "secret_env", &c.secret_env)?;
            let ch = crate::notify::webhook::WebhookChannel::new(c.url.clone(), s.expose_secret())
                .map_err(|e| invalid(&section, "secret_env", format!("`{}`: {e}", c.secret_env)))?;
            Ok(Arc::new(ch))
        }
        #[cfg(not(feature = "webhook"))]
        Err(feature_off(&section, "webhook"))
    }

    pub(super) fn twilio(c: &TwilioConfig, env: Env<'_>) -> Built {
        #[cfg(feature = "twilio")]
        {
            use crate::notify::twilio::{Sender, TwilioChannel};
            let s = secret(env, "twilio", "secret_env", &c.secret_env)?;
            let sender = match (&c.from, &c.messaging_service_sid) {
                (Some(f), _) => Sender::From(f.clone()),
                (None, Some(m)) => Sender::MessagingService(m.clone()),
                (None, None) => {
                    return Err(invalid(
                        "twilio",
                        "from",
                        "set `from` or `messaging_service_sid`".into(),
                    ));
                }
            };
            let user = c.username.clone().unwrap_or_else(|| c.account_sid.clone());
            let mut ch = TwilioChannel::new(c.account_sid.clone(), user, s, sender);
            if let Some(to) = &c.to {
                ch = ch.to(to.clone());
            }
            if let Some(b) = &c.base_url {
                ch = ch.base_url(b.clone());
            }
            Ok(Arc::new(ch))
        }
        #[cfg(not(feature = "twilio"))]
        Err(feature_off("twilio", "twilio"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> Result<ChannelsConfig, ChannelConfigError> {
        let mut t: toml::Table = text.parse().unwrap();
        let c = ChannelsConfig::take_from_toml(&mut t)?;
        assert!(
            t.keys().all(|k| !SECTIONS.contains(&k.as_str())),
            "taken out"
        );
        Ok(c)
    }

    const ALL: &str = r#"
        instance = "left for the engine"
        [slack]
        webhook_url_env = "T_SLACK"
        [pagerduty]
        routing_key_env = "T_PD"
        url = "http://127.0.0.1:1/v2/enqueue"
        severity = "warning"
        [[webhooks]]
        name = "hooks"
        url = "https://hooks.example.com/in"
        secret_env = "T_HOOK"
        [twilio]
        account_sid = "AC1"
        username = "SK1"
        secret_env = "T_TWILIO"
        from = "+15005550006"
        to = "+15005550001"
    "#;

    fn env(name: &str) -> Option<String> {
        match name {
            "T_SLACK" => Some("https://hooks.slack.com/services/T/B/secret-token".into()),
            "T_PD" => Some("0123456789abcdef0123456789abcdef".into()),
            "T_HOOK" => Some("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into()),
            "T_TWILIO" => Some("twilio-secret".into()),
            _ => None,
        }
    }

    #[test]
    fn every_section_parses_and_builds_channels_by_name() {
        let mut t: toml::Table = ALL.parse().unwrap();
        let c = ChannelsConfig::take_from_toml(&mut t).unwrap();
        assert_eq!(t.keys().collect::<Vec<_>>(), ["instance"]);
        assert_eq!(
            c.pagerduty.as_ref().unwrap().severity.as_deref(),
            Some("warning")
        );
        let built = c.build_with(&env).unwrap();
        let names: Vec<&str> = built.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["slack", "pagerduty", "hooks", "twilio"]);
        // The webhook channel carries the Standard Webhooks schedule.
        let hooks = &built[2].1;
        assert_eq!(
            hooks.retry_policy(),
            Some(monetize_core::notify::RetryPolicy::standard_webhooks())
        );
        let json: serde_json::Value =
            serde_json::to_value(toml::Value::Table(ALL.parse().unwrap())).unwrap();
        let mut map = json.as_object().unwrap().clone();
        assert_eq!(ChannelsConfig::take_from_json(&mut map).unwrap(), c);
    }

    #[test]
    fn errors_name_the_section_and_field() {
        let e = toml("[slack]\nurl = \"x\"").unwrap_err().to_string();
        assert!(e.starts_with("[slack]:") && e.contains("url"), "{e}");
        let e = toml("[slack]\n").unwrap_err().to_string();
        assert!(
            e.contains("[slack]") && e.contains("webhook_url_env"),
            "{e}"
        );
        let e = toml("[pagerduty]\nrouting_key_env = \"K\"\nseverity = \"loud\"")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "[pagerduty] severity: `loud` is not one of critical, error, warning, info"
        );
        let e = toml("[[webhooks]]\nname = \"h\"\nurl = \"ftp://x\"\nsecret_env = \"S\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("[webhooks.h] url:"), "{e}");
        let e = toml("[[webhooks]]\nurl = \"https://x\"\nsecret_env = \"S\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[webhooks]") && e.contains("name"), "{e}");
        let e = toml("[twilio]\naccount_sid = \"AC\"\nsecret_env = \"S\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[twilio] from") && e.contains("messaging_service_sid"),
            "{e}"
        );
        let e = toml("[slack]\nwebhook_url_env = \"A\"\n[pagerduty]\nname = \"slack\"\nrouting_key_env = \"B\"")
            .unwrap_err();
        assert_eq!(
            e,
            ChannelConfigError::DuplicateName {
                section: "pagerduty".into(),
                name: "slack".into()
            }
        );
        let mut map = serde_json::json!({"twilio": {"account_sid": 7}})
            .as_object()
            .unwrap()
            .clone();
        let e = ChannelsConfig::take_from_json(&mut map)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("[twilio]:"), "{e}");
    }

    #[test]
    fn a_missing_secret_names_its_variable_and_a_bad_one_is_not_echoed() {
        let c = toml(ALL).unwrap();
        for (missing, expected) in [
            (
                "T_SLACK",
                "[slack] webhook_url_env: environment variable `T_SLACK` is not set",
            ),
            (
                "T_PD",
                "[pagerduty] routing_key_env: environment variable `T_PD` is not set",
            ),
            (
                "T_HOOK",
                "[webhooks.hooks] secret_env: environment variable `T_HOOK` is not set",
            ),
            (
                "T_TWILIO",
                "[twilio] secret_env: environment variable `T_TWILIO` is not set",
            ),
        ] {
            let e = c
                .build_with(&|n| if n == missing { None } else { env(n) })
                .err()
                .unwrap();
            assert_eq!(e.to_string(), expected);
        }
        let e = c
            .build_with(&|n| {
                if n == "T_HOOK" {
                    Some("whsec_not base64!".into())
                } else {
                    env(n)
                }
            })
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("[webhooks.hooks] secret_env: `T_HOOK`"),
            "{e}"
        );
        assert!(!e.contains("not base64!"), "the secret is not echoed: {e}");
    }
}
