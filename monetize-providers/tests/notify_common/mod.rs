//! A notification for the channel tests.
#![allow(dead_code)]

use std::time::{Duration, UNIX_EPOCH};

use monetize_core::{CustomerId, Event, EventKind, MeterId, Notification};

/// `acme` at 80 % of its api_calls quota, 2026-12-07T00:20:00Z.
pub fn warning() -> Notification {
    let event = Event::new(
        Some(CustomerId::new("acme").unwrap()),
        EventKind::QuotaWarning {
            meter: MeterId::new("api_calls").unwrap(),
            used: 800,
            limit: 1000,
        },
    )
    .at(UNIX_EPOCH + Duration::from_secs(1_796_602_800));
    Notification::new(
        "quota-team",
        "team",
        "notify/quota-team/acme/quota_warning/api_calls/1796083200",
        event,
        "acme used 80 % of api_calls",
        "800 of 1000 calls this month",
    )
}
