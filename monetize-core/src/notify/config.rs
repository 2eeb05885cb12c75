//! The notification configuration: routes from events to channels, templates, and the
//! dispatcher's queue and retry settings. Read from TOML or JSON, or built in code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything the [`Dispatcher`](super::Dispatcher) needs besides its channels.
///
/// ```
/// use monetize_core::notify::NotifyConfig;
///
/// let config = NotifyConfig::from_toml_str(r#"
///     upgrade_link = "https://example.com/upgrade"
///
///     [[routes]]
///     name = "quota-email"
///     events = ["quota_warning", "quota_reached"]
///     channel = "email"
///     template = "quota"
///     to = "customer"
///
///     [[routes]]
///     name = "finance"
///     events = ["blocked", "payment_failed"]
///     channel = "slack"
///     repeat_after_secs = 86400
///
///     [templates.quota]
///     subject = "{{ customer }}: {{ percentage }} % of your {{ meter }} quota used"
///     text = "You used {{ usage }} of {{ limit }}. Upgrade: {{ upgrade_link }}"
/// "#).unwrap();
/// assert_eq!(config.routes.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NotifyConfig {
    /// Which events go where.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Named templates (subject, plain text, HTML), inline or from files.
    #[serde(default)]
    pub templates: BTreeMap<String, TemplateConfig>,
    /// Customer id to email address, for routes with `to = "customer"` (a
    /// [`CustomerDirectory`](super::CustomerDirectory) given to the dispatcher is asked
    /// first).
    #[serde(default)]
    pub recipients: BTreeMap<String, String>,
    /// The link templates see as `upgrade_link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_link: Option<String>,
    /// Events waiting to be routed, and notifications waiting per channel; beyond it new
    /// ones are dropped and counted (default 1,024).
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Retries of a failing delivery before it is given up (default 5).
    #[serde(default = "default_retries")]
    pub max_retries: usize,
    /// The first retry's delay in milliseconds, doubled each time with jitter (default
    /// 500).
    #[serde(default = "default_retry_min")]
    pub retry_min_ms: u64,
    /// The longest delay between retries in milliseconds (default 60,000).
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
}

fn default_queue() -> usize {
    1024
}
fn default_retries() -> usize {
    5
}
fn default_retry_min() -> u64 {
    500
}
fn default_retry_max() -> u64 {
    60_000
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            templates: BTreeMap::new(),
            recipients: BTreeMap::new(),
            upgrade_link: None,
            queue_capacity: default_queue(),
            max_retries: default_retries(),
            retry_min_ms: default_retry_min(),
            retry_max_ms: default_retry_max(),
        }
    }
}

/// A notification configuration that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyConfigError {
    /// The TOML or JSON text does not parse: fix the named field.
    #[error("notification config: {0}")]
    Parse(String),
    /// A route names a template that is not defined: define it under `[templates.NAME]`.
    #[error("route `{route}` uses template `{template}`, which is not defined")]
    UnknownTemplate {
        /// The route.
        route: String,
        /// The missing template.
        template: String,
    },
    /// A route names a channel the dispatcher was not given: add the channel or fix
    /// the name.
    #[error("route `{route}` sends to channel `{channel}`, which was not given to the dispatcher")]
    UnknownChannel {
        /// The route.
        route: String,
        /// The missing channel.
        channel: String,
    },
    /// Two routes share a name (dedup keys include it): rename one.
    #[error("two routes are named `{0}`")]
    DuplicateRoute(String),
    /// A route lists no events: add some.
    #[error("route `{0}` lists no events")]
    NoEvents(String),
    /// A template file could not be read: check the path.
    #[error("template `{template}`: cannot read {path}: {reason}")]
    TemplateFile {
        /// The template.
        template: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A template does not compile or does not render: the message has the line.
    #[error("template `{template}` ({part}): {reason}")]
    Template {
        /// The template.
        template: String,
        /// `subject`, `text` or `html`.
        part: &'static str,
        /// minijinja's message.
        reason: String,
    },
    /// A template has no subject or no text: give it both.
    #[error("template `{0}` needs a `subject` and a `text` (inline or `*_file`)")]
    TemplateIncomplete(String),
    /// A setting is out of range.
    #[error("notification config: {0}")]
    Invalid(String),
}

impl NotifyConfig {
    /// An empty configuration with default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a configuration from TOML.
    pub fn from_toml_str(text: &str) -> Result<Self, NotifyConfigError> {
        toml::from_str(text).map_err(|e| NotifyConfigError::Parse(e.to_string()))
    }

    /// Reads a configuration from JSON.
    pub fn from_json_str(text: &str) -> Result<Self, NotifyConfigError> {
        serde_json::from_str(text).map_err(|e| NotifyConfigError::Parse(e.to_string()))
    }

    /// Adds a route.
    pub fn route(mut self, route: RouteConfig) -> Self {
        self.routes.push(route);
        self
    }

    /// Adds (or replaces) a named template.
    pub fn template(mut self, name: impl Into<String>, template: TemplateConfig) -> Self {
        self.templates.insert(name.into(), template);
        self
    }

    /// Sets a customer's email address.
    pub fn recipient(mut self, customer: impl Into<String>, email: impl Into<String>) -> Self {
        self.recipients.insert(customer.into(), email.into());
        self
    }

    /// Sets the link templates see as `upgrade_link`.
    pub fn upgrade_link(mut self, link: impl Into<String>) -> Self {
        self.upgrade_link = Some(link.into());
        self
    }

    /// Sets the queue capacity (events, and notifications per channel).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Sets the retries and their delays.
    pub fn retries(mut self, max_retries: usize, min_ms: u64, max_ms: u64) -> Self {
        self.max_retries = max_retries;
        self.retry_min_ms = min_ms;
        self.retry_max_ms = max_ms;
        self
    }

    /// Reads every `*_file` of every template into its inline text; relative paths are
    /// taken from `base`.
    pub fn load_template_files(&mut self, base: &Path) -> Result<(), NotifyConfigError> {
        for (name, t) in &mut self.templates {
            for (file, text) in [
                (&t.subject_file, &mut t.subject),
                (&t.text_file, &mut t.text),
                (&t.html_file, &mut t.html),
            ] {
                if let Some(f) = file {
                    let path = base.join(f);
                    let read = std::fs::read_to_string(&path).map_err(|e| {
                        NotifyConfigError::TemplateFile {
                            template: name.clone(),
                            path: path.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    *text = Some(read.trim_end_matches('\n').to_owned());
                }
            }
        }
        Ok(())
    }

    /// Checks what can be checked without channels: settings, route names and events,
    /// template references.
    pub fn validate(&self) -> Result<(), NotifyConfigError> {
        if self.queue_capacity == 0 {
            return Err(NotifyConfigError::Invalid(
                "queue_capacity must be at least 1".into(),
            ));
        }
        if self.retry_min_ms > self.retry_max_ms {
            return Err(NotifyConfigError::Invalid(
                "retry_min_ms must not exceed retry_max_ms".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.routes {
            if !seen.insert(r.name.as_str()) {
                return Err(NotifyConfigError::DuplicateRoute(r.name.clone()));
            }
            if r.events.is_empty() {
                return Err(NotifyConfigError::NoEvents(r.name.clone()));
            }
            if r.repeat_after_secs == Some(0) {
                return Err(NotifyConfigError::Invalid(format!(
                    "route `{}`: repeat_after_secs must be at least 1",
                    r.name
                )));
            }
            if let Some(t) = &r.template
                && !self.templates.contains_key(t)
            {
                return Err(NotifyConfigError::UnknownTemplate {
                    route: r.name.clone(),
                    template: t.clone(),
                });
            }
        }
        Ok(())
    }
}

/// One route: events of these kinds go to this channel, rendered by this template, at
/// most once per customer, event and period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// The route's name (part of the dedup key: renaming a route sends again).
    pub name: String,
    /// Event names ([`EventKind::name`](crate::EventKind::name): `quota_warning`,
    /// `credits_low`, `tier_reached`, `upsell_candidate`, `blocked`, a custom event's
    /// name); `*` matches every event.
    pub events: Vec<String>,
    /// The channel's name, as given to the dispatcher (`email`, `slack`).
    pub channel: String,
    /// The template rendering subject and body; without one a one-line summary is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The recipient: `customer` (the customer's address from the directory or
    /// `recipients`), a literal address, or none (the channel's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The dedup period: once per customer and event per calendar `month` (default),
    /// `day` or `hour` (UTC).
    #[serde(default)]
    pub period: DedupPeriod,
    /// Instead of `period`: send again at most every this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_after_secs: Option<u64>,
}

impl RouteConfig {
    /// A route of `events` to `channel`, once a month per customer and event.
    pub fn new<I, S>(name: impl Into<String>, events: I, channel: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            name: name.into(),
            events: events.into_iter().map(Into::into).collect(),
            channel: channel.into(),
            template: None,
            to: None,
            period: DedupPeriod::default(),
            repeat_after_secs: None,
        }
    }

    /// Renders with the named template.
    pub fn template(mut self, name: impl Into<String>) -> Self {
        self.template = Some(name.into());
        self
    }

    /// Sends to the customer's own address.
    pub fn to_customer(mut self) -> Self {
        self.to = Some(CUSTOMER.into());
        self
    }

    /// Sends to this address.
    pub fn to(mut self, address: impl Into<String>) -> Self {
        self.to = Some(address.into());
        self
    }

    /// Sets the dedup period.
    pub fn period(mut self, period: DedupPeriod) -> Self {
        self.period = period;
        self
    }

    /// Sends again at most every `secs` seconds (instead of once per period).
    pub fn repeat_after_secs(mut self, secs: u64) -> Self {
        self.repeat_after_secs = Some(secs);
        self
    }

    pub(crate) fn matches(&self, name: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == name)
    }
}

/// `to = "customer"`.
pub(crate) const CUSTOMER: &str = "customer";

/// How long a notification is not repeated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DedupPeriod {
    /// A UTC hour.
    Hour,
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    #[default]
    Month,
}

/// A template: subject, plain text and optional HTML, each inline or from a file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TemplateConfig {
    /// The subject (one line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The plain-text body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The HTML body (auto-escaped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// The subject from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_file: Option<PathBuf>,
    /// The plain-text body from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_file: Option<PathBuf>,
    /// The HTML body from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_file: Option<PathBuf>,
}

impl TemplateConfig {
    /// A template with a subject and a plain-text body.
    pub fn new(subject: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            subject: Some(subject.into()),
            text: Some(text.into()),
            ..Self::default()
        }
    }

    /// Adds an HTML body.
    pub fn html(mut self, html: impl Into<String>) -> Self {
        self.html = Some(html.into());
        self
    }
}
