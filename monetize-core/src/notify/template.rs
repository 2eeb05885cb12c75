//! Templates: subject, plain text and HTML rendered with `minijinja`, compiled and tried
//! once at start-up so that a mistake is an error then, never at send time.
//!
//! Variables: `customer`, `kind` (the event name), `meter`, `usage`, `limit`,
//! `percentage`, `balance` (micro-credits), `period_end` (ISO 8601, UTC), `upgrade_link`;
//! the other fields of the event under their own names (`provider`, `invoice`,
//! `amount_due`, `currency`, `rule`, `reason`, `tier` and `next_tier` of `tier_reached`, `periods` and
//! `allowance` of `upsell_candidate`, `data` for a custom event).

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};

use super::config::{NotifyConfig, NotifyConfigError, TemplateConfig};
use crate::event::Event;

const PARTS: [(&str, &str); 3] = [("subject", "subject"), ("text", "txt"), ("html", "html")];

/// Every variable a template may use, with a sample value (the start-up trial).
fn sample() -> Value {
    serde_json::json!({
        "customer": "acme", "kind": "quota_warning", "meter": "api_calls", "usage": 800,
        "limit": 1000, "percentage": 80, "balance": 1000, "period_end": "2026-01-01T00:00:00Z",
        "upgrade_link": "https://example.com/upgrade", "provider": "stripe", "invoice": "in_1",
        "amount_due": 1000, "currency": "usd", "rule": "rule", "reason": "reason",
        "channel": "email", "route": "route", "idempotency_key": "key", "quantity": 1,
        "message": "message", "name": "custom", "data": {}, "used": 800, "event": {},
        "tier": 10000, "next_tier": 100000, "periods": 3, "allowance": 1000,
    })
}

/// The compiled templates.
pub(crate) struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

/// A rendered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rendered {
    pub(crate) subject: String,
    pub(crate) text: String,
    pub(crate) html: Option<String>,
}

impl Templates {
    /// Compiles every template and renders each once with sample values and strict
    /// undefined variables: a syntax error, an unknown filter or a misspelt variable is
    /// an error here.
    pub(crate) fn compile(config: &NotifyConfig) -> Result<Self, NotifyConfigError> {
        let mut env = Environment::new();
        let mut strict = Environment::new();
        strict.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        for (name, t) in &config.templates {
            if t.subject.is_none() || t.text.is_none() {
                return Err(NotifyConfigError::TemplateIncomplete(name.clone()));
            }
            for ((part, ext), source) in PARTS.iter().zip(sources(t)) {
                let Some(source) = source else { continue };
                let key = format!("{name}.{ext}");
                let err = |e: minijinja::Error| NotifyConfigError::Template {
                    template: name.clone(),
                    part,
                    reason: describe(&e),
                };
                env.add_template_owned(key.clone(), source.clone())
                    .map_err(err)?;
                strict
                    .add_template_owned(key.clone(), source.clone())
                    .map_err(err)?;
                strict
                    .get_template(&key)
                    .and_then(|t| t.render(sample()))
                    .map_err(err)?;
            }
        }
        Ok(Self { env })
    }

    /// Renders template `name` (known to exist) with `ctx`.
    pub(crate) fn render(&self, name: &str, ctx: &Value) -> Result<Rendered, String> {
        let part = |ext: &str| -> Result<Option<String>, String> {
            match self.env.get_template(&format!("{name}.{ext}")) {
                Ok(t) => t.render(ctx).map(Some).map_err(|e| describe(&e)),
                Err(_) => Ok(None),
            }
        };
        Ok(Rendered {
            subject: part("subject")?
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            text: part("txt")?.unwrap_or_default(),
            html: part("html")?,
        })
    }
}

fn sources(t: &TemplateConfig) -> [&Option<String>; 3] {
    [&t.subject, &t.text, &t.html]
}

fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("{e} (line {line})"),
        None => e.to_string(),
    }
}

/// The variables of one event.
pub(crate) fn context(event: &Event, upgrade_link: Option<&str>, period_end: &str) -> Value {
    let mut map = match serde_json::to_value(event) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let whole = Value::Object(map.clone());
    map.insert("kind".into(), event.kind.name().into());
    map.insert(
        "customer".into(),
        event
            .customer
            .as_ref()
            .map_or(Value::Null, |c| c.as_str().into()),
    );
    if let Some(used) = map.get("used").cloned() {
        map.insert("usage".into(), used);
    }
    if let (Some(u), Some(l)) = (
        map.get("used").and_then(Value::as_u64),
        map.get("limit").and_then(Value::as_u64),
    ) && l > 0
    {
        map.insert("percentage".into(), (u.saturating_mul(100) / l).into());
    }
    map.insert("period_end".into(), period_end.into());
    if let Some(link) = upgrade_link {
        map.insert("upgrade_link".into(), link.into());
    }
    map.insert("event".into(), whole);
    Value::Object(map)
}

/// The subject and text of a route without a template: one line naming the event.
pub(crate) fn summary(event: &Event, ctx: &Value) -> Rendered {
    let who = event.customer.as_ref().map_or("-", |c| c.as_str());
    let subject = format!("{} for {who}", event.kind.name());
    let details = serde_json::to_string(&ctx["event"]).unwrap_or_default();
    Rendered {
        text: format!("{subject}: {details}"),
        subject,
        html: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::id::{CustomerId, MeterId};

    fn config(t: TemplateConfig) -> NotifyConfig {
        NotifyConfig::new().template("t", t)
    }

    #[test]
    fn renders_the_documented_variables_and_escapes_html_only() {
        let t = Templates::compile(&config(
            TemplateConfig::new(
                "{{ customer }}: {{ percentage }} % of {{ meter }}",
                "{{ usage }}/{{ limit }} until {{ period_end }} <{{ upgrade_link }}>",
            )
            .html("<p>{{ customer }}</p>"),
        ))
        .unwrap();
        let e = Event::new(
            Some(CustomerId::new("a<b").unwrap()),
            EventKind::QuotaWarning {
                meter: MeterId::new("api_calls").unwrap(),
                used: 900,
                limit: 1000,
            },
        );
        let r = t
            .render("t", &context(&e, Some("https://x/up"), "2027-01-01"))
            .unwrap();
        assert_eq!(r.subject, "a<b: 90 % of api_calls");
        assert_eq!(r.text, "900/1000 until 2027-01-01 <https://x/up>");
        assert_eq!(r.html.as_deref(), Some("<p>a&lt;b</p>"));
    }

    #[test]
    fn mistakes_are_errors_at_compile_time() {
        for (bad, what) in [
            ("{{ customer ", "syntax"),
            ("{{ custmer }}", "unknown variable"),
            ("{{ customer | nosuchfilter }}", "unknown filter"),
        ] {
            let e = Templates::compile(&config(TemplateConfig::new("s", bad))).unwrap_err();
            assert!(
                matches!(&e, NotifyConfigError::Template { template, part: "text", .. } if template == "t"),
                "{what}: {e}"
            );
        }
        assert!(matches!(
            Templates::compile(&config(TemplateConfig {
                subject: Some("s".into()),
                ..TemplateConfig::default()
            })),
            Err(NotifyConfigError::TemplateIncomplete(_))
        ));
    }
}
