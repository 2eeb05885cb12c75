//! Governance rule configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::FilterConfig;

/// A rule: when the condition holds (and the request filter matches), take the action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RuleConfig {
    /// The rule's name (in decisions, events and shadow counts).
    pub name: String,
    /// The condition on the customer's state.
    pub when: ConditionConfig,
    /// Only requests matching this (request-side) filter are considered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<FilterConfig>,
    /// What to do.
    pub action: ActionConfig,
    /// Enforce, or only record what would have happened.
    #[serde(default)]
    pub mode: Mode,
}

/// A condition on the customer's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConditionConfig {
    /// Always.
    Always,
    /// An invoice is overdue or a payment failed.
    Delinquent,
    /// The subscription is cancelled.
    Cancelled,
    /// An operator blocked the customer.
    Blocked,
    /// On a prepaid plan, the balance is at or below zero.
    CreditsExhausted,
    /// A quota of the plan (of one meter, or any) is used up for the period.
    QuotaExceeded(Option<String>),
    /// The plan's rate limit refuses this request (consumes a token when it allows).
    RateLimited,
    /// The customer's plan is one of these.
    PlanIn(Vec<String>),
    /// A predicate registered in code under this name.
    Custom(String),
    /// All hold.
    All(Vec<ConditionConfig>),
    /// Any holds.
    Any(Vec<ConditionConfig>),
    /// Does not hold.
    Not(Box<ConditionConfig>),
}

/// What a rule does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ActionConfig {
    /// Answer with this status and a JSON body instead of calling the API.
    Block(BlockConfig),
    /// Let the request through, adding these response headers.
    Allow {
        /// Headers to add.
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
}

/// A block response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BlockConfig {
    /// The status, 400-599 (402, 403, 429, ...).
    pub status: u16,
    /// A machine-readable reason (`payment_overdue`, `credits_exhausted`).
    pub reason: String,
    /// What the customer should do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl BlockConfig {
    /// A block with status and reason.
    pub fn new(status: u16, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            message: Some(message.into()),
            headers: BTreeMap::new(),
        }
    }
}

/// Enforce or shadow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mode {
    /// Block for real.
    #[default]
    Enforce,
    /// Let the request through; count and report what would have been blocked.
    Shadow,
}

impl RuleConfig {
    /// A blocking rule.
    pub fn block(name: impl Into<String>, when: ConditionConfig, block: BlockConfig) -> Self {
        Self {
            name: name.into(),
            when,
            request: None,
            action: ActionConfig::Block(block),
            mode: Mode::Enforce,
        }
    }

    /// An allowing rule: requests for which `when` holds skip the later rules and get
    /// these response headers.
    pub fn allow(
        name: impl Into<String>,
        when: ConditionConfig,
        headers: BTreeMap<String, String>,
    ) -> Self {
        Self {
            name: name.into(),
            when,
            request: None,
            action: ActionConfig::Allow { headers },
            mode: Mode::Enforce,
        }
    }

    /// Puts the rule in shadow mode.
    pub fn shadow(mut self) -> Self {
        self.mode = Mode::Shadow;
        self
    }

    /// Limits the rule to requests matching a filter.
    pub fn request(mut self, f: FilterConfig) -> Self {
        self.request = Some(f);
        self
    }

    /// The rules used when a config names none: blocked (403), cancelled (402),
    /// delinquent (402), credits exhausted (402), quota exceeded (429), rate limited (429).
    pub fn defaults() -> Vec<RuleConfig> {
        vec![
            RuleConfig::block(
                "blocked",
                ConditionConfig::Blocked,
                BlockConfig::new(
                    403,
                    "customer_blocked",
                    "This account is blocked. Contact support.",
                ),
            ),
            RuleConfig::block(
                "cancelled",
                ConditionConfig::Cancelled,
                BlockConfig::new(
                    402,
                    "subscription_cancelled",
                    "The subscription is cancelled. Renew it to use the API again.",
                ),
            ),
            RuleConfig::block(
                "delinquent",
                ConditionConfig::Delinquent,
                BlockConfig::new(
                    402,
                    "payment_overdue",
                    "An invoice is overdue. Pay it or update the payment method to continue.",
                ),
            ),
            RuleConfig::block(
                "credits_exhausted",
                ConditionConfig::CreditsExhausted,
                BlockConfig::new(
                    402,
                    "credits_exhausted",
                    "Prepaid credits are used up. Top up the balance to continue.",
                ),
            ),
            RuleConfig::block(
                "quota_exceeded",
                ConditionConfig::QuotaExceeded(None),
                BlockConfig::new(
                    429,
                    "quota_exceeded",
                    "The plan's quota for this period is used up. Wait for the next period or upgrade.",
                ),
            ),
            RuleConfig::block(
                "rate_limited",
                ConditionConfig::RateLimited,
                BlockConfig::new(
                    429,
                    "rate_limited",
                    "Too many requests. Slow down and retry later.",
                ),
            ),
        ]
    }
}
