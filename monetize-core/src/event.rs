//! Events: things worth telling a customer or a team, pushed by the engine and reporter.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::id::{CustomerId, MeterId};

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The credit balance fell to or below the plan's low-credit mark.
    CreditsLow {
        /// Balance after the spend, micro-credits.
        balance: i64,
    },
    /// The credit balance reached zero or below: prepaid requests are now refused.
    CreditsExhausted {
        /// Balance after the spend, micro-credits.
        balance: i64,
    },
    /// Usage of a quota'd meter crossed the plan's warning share of the limit.
    QuotaWarning {
        /// The meter.
        meter: MeterId,
        /// Used in this period.
        used: u64,
        /// The period's limit.
        limit: u64,
    },
    /// Usage of a quota'd meter reached the limit.
    QuotaReached {
        /// The meter.
        meter: MeterId,
        /// Used in this period.
        used: u64,
        /// The period's limit.
        limit: u64,
    },
    /// A rule in shadow mode would have blocked a request.
    ShadowBlock {
        /// The rule's name.
        rule: Arc<str>,
    },
    /// A rule blocked a request of a customer (for "delinquent customer keeps calling").
    Blocked {
        /// The rule's name.
        rule: Arc<str>,
    },
    /// A usage record was refused for good and moved to the dead letter list.
    DeadLetter {
        /// The provider that refused it.
        provider: String,
        /// The record's idempotency key.
        idempotency_key: String,
        /// What the provider said.
        reason: String,
    },
    /// A new customer could not get its own usage cells because the customer cap was hit.
    CustomerOverflow,
    /// A usage record was first sent longer ago than its provider remembers idempotency
    /// keys and was never acknowledged: it is not re-sent blindly but moved to the
    /// reconciliation list. Check at the provider whether it was billed, then requeue it
    /// (`Spool::requeue`) if it was not.
    NeedsReconciliation {
        /// The provider.
        provider: String,
        /// The record's idempotency key.
        idempotency_key: String,
        /// The quantity it carries.
        quantity: u64,
    },
    /// A provider's own totals for a customer, meter and day differ from what the spool
    /// holds as acknowledged by it (Stripe's meter event summaries, for example): look
    /// for events it dropped or billed twice, and correct them (Stripe: meter event
    /// adjustments).
    ReconciliationDifference {
        /// The provider.
        provider: String,
        /// The meter.
        meter: MeterId,
        /// The day compared (UTC), as unix seconds of its midnight.
        day_start: u64,
        /// What the spool holds as acknowledged by the provider.
        acknowledged: u64,
        /// What the provider reports (rounded down to whole units).
        provider_quantity: u64,
    },
    /// A provider refused the credentials: its records stay pending and are retried until
    /// somebody fixes the key (raised once per failure streak).
    ProviderUnauthorized {
        /// The provider.
        provider: String,
        /// What it said.
        message: String,
    },
    /// A provider's calls have kept failing (timeouts, 5xx, refused credentials,
    /// throttling) for longer than `ReporterOptions::provider_failing_after`: usage waits
    /// in the spool (raised once per failure streak).
    ProviderFailing {
        /// The provider.
        provider: String,
        /// How long the streak had lasted, seconds.
        failing_for_secs: u64,
        /// The last failure.
        message: String,
    },
    /// A spool row could not be decoded and was moved to the quarantine table
    /// (`Spool::quarantined`): bill it by hand if needed.
    SpoolRowQuarantined {
        /// The row's key.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// Usage was recorded after the reporter's final checkpoint (requests still running
    /// at shutdown): it is not billed. Stop the server before the reporter
    /// (`ReporterHandle::shutdown_with`) to make this impossible.
    UsageAfterShutdown {
        /// Usage cells that were not empty.
        cells: u64,
    },
    /// A billing provider reported a failed payment (a webhook: Stripe
    /// `invoice.payment_failed`, Recurly `charge_invoice.failed`, Chargebee
    /// `payment_failed`).
    PaymentFailed {
        /// The provider that sent it (`stripe`, `recurly`, `chargebee`).
        provider: String,
        /// The provider's invoice (or transaction) id, when the event names one.
        invoice: Option<String>,
        /// The amount due, in the currency's minor unit, when the event names it.
        amount_due: Option<i64>,
        /// The ISO 4217 currency code, lower case, when the event names it.
        currency: Option<String>,
    },
    /// A billing provider reported an invoice past its due date (Stripe `invoice.overdue`,
    /// Recurly `charge_invoice.past_due`).
    InvoiceOverdue {
        /// The provider that sent it.
        provider: String,
        /// The provider's invoice id, when the event names one.
        invoice: Option<String>,
        /// The amount due, in the currency's minor unit, when the event names it.
        amount_due: Option<i64>,
        /// The ISO 4217 currency code, lower case, when the event names it.
        currency: Option<String>,
    },
    /// A delinquent customer paid: a billing provider reported the invoice paid or the
    /// subscription active again.
    PaymentRecovered {
        /// The provider that sent it.
        provider: String,
        /// The provider's invoice id, when the event names one.
        invoice: Option<String>,
    },
    /// An event of the application's own ([`Event::custom`]), routed by its `name` like
    /// the built-in kinds.
    Custom {
        /// The event's name (`trial_ending`), matched by routes.
        name: String,
        /// Anything the templates should see, under `data`.
        data: serde_json::Value,
    },
    /// A customer's usage of a meter in this period crossed one of its plan's tiers
    /// (`tiers` of the plan's meter settings: the next step of a graduated price), raised
    /// in the request that crossed it, once per tier and period.
    TierReached {
        /// The meter.
        meter: MeterId,
        /// The tier reached (the highest one the request crossed), in the meter's units.
        tier: u64,
        /// Used in this period, as the request left it.
        usage: u64,
        /// The plan's next tier for this meter, if there is one.
        next_tier: Option<u64>,
    },
    /// A customer's usage of a meter reached its plan's allowance (the quota limit, else
    /// the first tier) in each of the last `periods` periods, at least the plan's
    /// `upsell_after_periods` (for sales). Raised when a period ends, never on the request
    /// path; again at the end of each further period at the allowance.
    UpsellCandidate {
        /// The meter.
        meter: MeterId,
        /// Periods in a row at or above the allowance, the one just ended included.
        periods: u32,
        /// Used in the period just ended.
        usage: u64,
        /// The plan's allowance per period.
        allowance: u64,
    },
    /// A notification could not be delivered after its retries (or was refused for
    /// good): the channel's configuration or the service needs a look.
    NotificationFailed {
        /// The channel (`email`, `slack`).
        channel: String,
        /// The route that produced it.
        route: String,
        /// The last error.
        reason: String,
    },
}

impl EventKind {
    /// The name routes match: the snake_case kind (`quota_warning`, `credits_low`), or a
    /// custom event's own name.
    pub fn name(&self) -> &str {
        match self {
            EventKind::CreditsLow { .. } => "credits_low",
            EventKind::CreditsExhausted { .. } => "credits_exhausted",
            EventKind::QuotaWarning { .. } => "quota_warning",
            EventKind::QuotaReached { .. } => "quota_reached",
            EventKind::ShadowBlock { .. } => "shadow_block",
            EventKind::Blocked { .. } => "blocked",
            EventKind::DeadLetter { .. } => "dead_letter",
            EventKind::CustomerOverflow => "customer_overflow",
            EventKind::NeedsReconciliation { .. } => "needs_reconciliation",
            EventKind::ReconciliationDifference { .. } => "reconciliation_difference",
            EventKind::ProviderUnauthorized { .. } => "provider_unauthorized",
            EventKind::ProviderFailing { .. } => "provider_failing",
            EventKind::SpoolRowQuarantined { .. } => "spool_row_quarantined",
            EventKind::UsageAfterShutdown { .. } => "usage_after_shutdown",
            EventKind::PaymentFailed { .. } => "payment_failed",
            EventKind::InvoiceOverdue { .. } => "invoice_overdue",
            EventKind::PaymentRecovered { .. } => "payment_recovered",
            EventKind::Custom { name, .. } => name,
            EventKind::NotificationFailed { .. } => "notification_failed",
            EventKind::TierReached { .. } => "tier_reached",
            EventKind::UpsellCandidate { .. } => "upsell_candidate",
        }
    }
}

/// An event with its customer (when it concerns one) and time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Event {
    /// The customer concerned, if any.
    pub customer: Option<CustomerId>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
    /// When the engine saw it.
    #[serde(skip)]
    pub at: SystemTime,
}

impl Event {
    /// An event about a customer, now.
    pub fn new(customer: Option<CustomerId>, kind: EventKind) -> Self {
        Self {
            customer,
            kind,
            at: SystemTime::now(),
        }
    }

    /// An event of the application's own, routed by `name` ([`EventKind::Custom`]): raise
    /// it with `Engine::raise` or hand it to a notification dispatcher.
    pub fn custom(
        customer: Option<CustomerId>,
        name: impl Into<String>,
        data: serde_json::Value,
    ) -> Self {
        Self::new(
            customer,
            EventKind::Custom {
                name: name.into(),
                data,
            },
        )
    }

    /// The same event at another time (tests, replays).
    pub fn at(mut self, at: SystemTime) -> Self {
        self.at = at;
        self
    }
}
