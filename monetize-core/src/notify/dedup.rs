//! Dedup keys: a notification fires at most once per route, customer, event and period.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::Timestamp;

use super::config::{DedupPeriod, RouteConfig};
use crate::config::Period;
use crate::event::{Event, EventKind};
use crate::quota::Calendar;

/// The period an event falls in for a route: its start and end, unix seconds.
pub(crate) fn period(route: &RouteConfig, at: SystemTime) -> (u64, u64) {
    let now = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if let Some(every) = route.repeat_after_secs.filter(|s| *s > 0) {
        let start = now - now % every;
        return (start, start.saturating_add(every));
    }
    let fixed = |len: u64| {
        let start = now - now % len;
        (start, start + len)
    };
    match route.period {
        DedupPeriod::Hour => fixed(3600),
        DedupPeriod::Day => fixed(86_400),
        DedupPeriod::Month => {
            let b = Calendar::default().bounds(Period::Month, now);
            (b.start, b.end)
        }
    }
}

/// ISO 8601 of unix seconds (UTC).
pub(crate) fn iso(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .map_or_else(String::new, |t| t.to_string())
}

/// What distinguishes two events of one kind for one customer: the meter of a quota
/// event, the provider of a reporter event, the channel of a failure.
fn subject(kind: &EventKind) -> String {
    match kind {
        // Warnings at different shares (80 %, 90 %) are different notifications: told
        // apart by the tens of percent reached.
        EventKind::QuotaWarning { meter, used, limit } => {
            let tens = used.saturating_mul(100) / (*limit).max(1) / 10 * 10;
            format!("{meter}/{tens}")
        }
        EventKind::QuotaReached { meter, .. } | EventKind::UpsellCandidate { meter, .. } => {
            meter.to_string()
        }
        // Each tier is its own notification.
        EventKind::TierReached { meter, tier, .. } => format!("{meter}/{tier}"),
        EventKind::ReconciliationDifference {
            meter, provider, ..
        } => format!("{provider}/{meter}"),
        EventKind::DeadLetter {
            provider,
            idempotency_key,
            ..
        }
        | EventKind::NeedsReconciliation {
            provider,
            idempotency_key,
            ..
        } => format!("{provider}/{idempotency_key}"),
        EventKind::ProviderUnauthorized { provider, .. }
        | EventKind::ProviderFailing { provider, .. } => provider.clone(),
        EventKind::PaymentFailed {
            provider, invoice, ..
        }
        | EventKind::InvoiceOverdue {
            provider, invoice, ..
        }
        | EventKind::PaymentRecovered { provider, invoice } => {
            format!("{provider}/{}", invoice.as_deref().unwrap_or("-"))
        }
        EventKind::Blocked { rule } | EventKind::ShadowBlock { rule } => rule.to_string(),
        EventKind::NotificationFailed { channel, route, .. } => format!("{channel}/{route}"),
        EventKind::SpoolRowQuarantined { key, .. } => key.clone(),
        _ => String::new(),
    }
}

/// The dedup key of `event` on `route` in the period starting at `period_start`; the
/// mark lives until a day after the period ends.
pub(crate) fn key(
    route: &RouteConfig,
    event: &Event,
    (start, end): (u64, u64),
) -> (String, Duration) {
    let who = event.customer.as_ref().map_or("-", |c| c.as_str());
    let key = format!(
        "notify/{}/{}/{}/{}/{start}",
        route.name,
        who,
        event.kind.name(),
        subject(&event.kind)
    );
    let now = event
        .at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ttl = Duration::from_secs(end.saturating_sub(now).saturating_add(86_400));
    (key, ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn periods_are_calendar_months_days_hours_or_fixed_repeats() {
        // 2026-12-07T00:20:00Z
        let t = at(1_796_602_800);
        let r = RouteConfig::new("r", ["x"], "c");
        let (s, e) = period(&r, t);
        assert_eq!(iso(s), "2026-12-01T00:00:00Z");
        assert_eq!(iso(e), "2027-01-01T00:00:00Z");
        let (s, e) = period(&r.clone().period(DedupPeriod::Day), t);
        assert_eq!((iso(s).as_str(), e - s), ("2026-12-07T00:00:00Z", 86_400));
        let (s, e) = period(&r.clone().repeat_after_secs(600), t);
        assert_eq!((s % 600, e - s), (0, 600));
    }
}
