//! Compiled rules and their evaluation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderName, HeaderValue, StatusCode};

use super::{Condition, Predicate};
use crate::config::{ActionConfig, Mode, RuleConfig};
use crate::error::ConfigError;
use crate::id::MeterIndex;
use crate::meter::Filter;

/// A compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) name: Arc<str>,
    pub(crate) when: Condition,
    pub(crate) request: Option<Filter>,
    pub(crate) action: Action,
    pub(crate) mode: Mode,
    /// Requests this rule blocked (enforce) or would have blocked (shadow).
    pub(crate) hits: AtomicU64,
}

#[derive(Debug)]
pub(crate) enum Action {
    Block {
        status: StatusCode,
        reason: Arc<str>,
        message: Arc<str>,
        headers: Arc<[(HeaderName, HeaderValue)]>,
    },
    Allow {
        headers: Arc<[(HeaderName, HeaderValue)]>,
    },
}

impl Rule {
    pub(crate) fn compile(
        cfg: &RuleConfig,
        field: &str,
        meters: &HashMap<&str, MeterIndex>,
        plans: &HashMap<&str, u32>,
        predicates: &HashMap<String, Arc<dyn Predicate>>,
    ) -> Result<Rule, ConfigError> {
        if cfg.name.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{field}.name"),
                "",
                "give the rule a name",
            ));
        }
        let when = Condition::compile(
            &cfg.when,
            &format!("{field}.when"),
            meters,
            plans,
            predicates,
        )?;
        let request = match &cfg.request {
            None => None,
            Some(f) => {
                let filter = Filter::compile(f, &format!("{field}.request"))?;
                if filter.needs_response() {
                    return Err(ConfigError::new(
                        format!("{field}.request"),
                        "status/response_header/reported",
                        "a rule runs before the response exists; filter on method, route, header or query only",
                    ));
                }
                Some(filter)
            }
        };
        let action = match &cfg.action {
            ActionConfig::Block(b) => {
                let f = format!("{field}.action.block");
                let status = StatusCode::from_u16(b.status)
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .ok_or_else(|| {
                        ConfigError::new(
                            format!("{f}.status"),
                            b.status,
                            "a block answers with a status from 400 to 599",
                        )
                    })?;
                if b.reason.is_empty() {
                    return Err(ConfigError::new(
                        format!("{f}.reason"),
                        "",
                        "give a machine-readable reason such as `payment_overdue`",
                    ));
                }
                let message = b
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("Request refused: {}.", b.reason));
                Action::Block {
                    status,
                    reason: Arc::from(b.reason.as_str()),
                    message: Arc::from(message.as_str()),
                    headers: compile_headers(&b.headers, &format!("{f}.headers"))?,
                }
            }
            ActionConfig::Allow { headers } => Action::Allow {
                headers: compile_headers(headers, &format!("{field}.action.allow.headers"))?,
            },
        };
        Ok(Rule {
            name: Arc::from(cfg.name.as_str()),
            when,
            request,
            action,
            mode: cfg.mode,
            hits: AtomicU64::new(0),
        })
    }

    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }
}

/// A summary of a rule set made only of state conditions (status flags, credits, quotas,
/// rate limits) on block rules without request filters: the common case, and the default
/// rules. With it, `decide` first checks in a few loads whether any rule could fire, and
/// walks the rules only when one might.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct QuietCheck {
    pub(crate) flag_mask: u32,
    pub(crate) credits: bool,
    pub(crate) quota: bool,
    pub(crate) rate: bool,
}

impl QuietCheck {
    /// The summary, or `None` when some rule needs the full walk.
    pub(crate) fn of(rules: &[Rule]) -> Option<QuietCheck> {
        use crate::customer::handle_flags::{BLOCKED, CANCELLED, DELINQUENT};
        let mut q = QuietCheck::default();
        for r in rules {
            if r.request.is_some() || !matches!(r.action, Action::Block { .. }) {
                return None;
            }
            match r.when {
                Condition::Blocked => q.flag_mask |= BLOCKED,
                Condition::Cancelled => q.flag_mask |= CANCELLED,
                Condition::Delinquent => q.flag_mask |= DELINQUENT,
                Condition::CreditsExhausted => q.credits = true,
                Condition::QuotaExceeded(_) => q.quota = true,
                Condition::RateLimited => q.rate = true,
                _ => return None,
            }
        }
        Some(q)
    }
}

fn compile_headers(
    hs: &std::collections::BTreeMap<String, String>,
    field: &str,
) -> Result<Arc<[(HeaderName, HeaderValue)]>, ConfigError> {
    let mut out = Vec::with_capacity(hs.len());
    for (k, v) in hs {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            ConfigError::new(format!("{field}.{k}"), k, "not a valid HTTP header name")
        })?;
        let value = HeaderValue::from_str(v).map_err(|_| {
            ConfigError::new(format!("{field}.{k}"), v, "not a valid HTTP header value")
        })?;
        out.push((name, value));
    }
    Ok(out.into())
}
