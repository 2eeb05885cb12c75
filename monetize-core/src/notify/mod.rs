//! Notifications: events delivered to customers (email) and teams (Slack, PagerDuty, SMS,
//! webhooks), at most once per customer, event and period.
//!
//! - [`NotifyConfig`]: routes from event names to channels, templates (`minijinja`,
//!   [`TemplateConfig`]), queue and retry settings; TOML, JSON or builder.
//! - [`Dispatcher`]: dedup through the [`StateStore`](crate::StateStore), rendering, one
//!   bounded queue and worker per channel, retries with backoff (see its module).
//! - [`Notifier`]: a channel. The network ones (SMTP, Slack, PagerDuty, signed webhooks,
//!   Twilio) live in `monetize-providers`; [`MemoryNotifier`] keeps what it is given.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use monetize_core::notify::{Dispatcher, MemoryNotifier, NotifyConfig, RouteConfig};
//! use monetize_core::{CustomerId, Event};
//!
//! let team = Arc::new(MemoryNotifier::new());
//! let config = NotifyConfig::new().route(RouteConfig::new("team", ["trial_ending"], "team"));
//! let dispatcher = Dispatcher::builder(config).channel("team", team.clone()).start().unwrap();
//! let acme = Some(CustomerId::new("acme").unwrap());
//! for _ in 0..3 {
//!     dispatcher.dispatch(Event::custom(acme.clone(), "trial_ending", serde_json::json!({})));
//! }
//! assert!(dispatcher.idle(Duration::from_secs(5)).await);
//! assert_eq!(team.notifications().len(), 1, "once per customer, event and month");
//! # }
//! ```

mod config;
mod dedup;
mod directory;
mod dispatcher;
mod notification;
mod retry;
mod template;

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::event::Event;

pub use config::{DedupPeriod, NotifyConfig, NotifyConfigError, RouteConfig, TemplateConfig};
pub use directory::CustomerDirectory;
pub use dispatcher::{ChannelStats, Dispatcher, DispatcherBuilder, DispatcherStats, FailureHook};
pub use notification::Notification;
pub use retry::RetryPolicy;

/// A delivery failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// A transient failure (network, 5xx, rate limit): retry later.
    #[error("notification failed, will retry: {0}")]
    Retryable(String),
    /// The notification can never be delivered as configured (bad address, revoked
    /// token): fix the channel's configuration.
    #[error("notification failed for good: {0}")]
    Permanent(String),
    /// The service asked us to slow down: retry after `after`.
    #[error("notification throttled, retry after {after:?}: {message}")]
    Throttled {
        /// The service's delay (`Retry-After`).
        after: Duration,
        /// What it said.
        message: String,
    },
}

impl NotifyError {
    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, NotifyError::Permanent(_))
    }

    /// The delay the service asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            NotifyError::Throttled { after, .. } => Some(*after),
            _ => None,
        }
    }
}

/// A notification channel.
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// A short stable name (`slack`, `email`).
    fn name(&self) -> &str;

    /// Delivers one event (the raw event, for notifiers that need no rendering).
    async fn notify(&self, event: &Event) -> Result<(), NotifyError>;

    /// Delivers one rendered notification (what the [`Dispatcher`] calls). By default it
    /// hands the event to [`Notifier::notify`]; channels that send the rendered subject
    /// and text override it.
    async fn deliver(&self, notification: &Notification) -> Result<(), NotifyError> {
        self.notify(&notification.event).await
    }

    /// How this channel's failed deliveries are retried; `None` (the default): the
    /// dispatcher's exponential backoff from the configuration. A
    /// [`DispatcherBuilder::retry_policy`] overrides it.
    fn retry_policy(&self) -> Option<RetryPolicy> {
        None
    }
}

/// Keeps every event and notification it is given, in order.
#[derive(Debug, Default)]
pub struct MemoryNotifier {
    events: Mutex<Vec<Event>>,
    notifications: Mutex<Vec<Notification>>,
}

impl MemoryNotifier {
    /// An empty notifier.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events delivered so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The notifications delivered so far (through [`Notifier::deliver`]).
    pub fn notifications(&self) -> Vec<Notification> {
        self.notifications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait]
impl Notifier for MemoryNotifier {
    fn name(&self) -> &str {
        "memory"
    }

    async fn notify(&self, event: &Event) -> Result<(), NotifyError> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
        Ok(())
    }

    async fn deliver(&self, notification: &Notification) -> Result<(), NotifyError> {
        self.notifications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(notification.clone());
        self.notify(&notification.event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    #[tokio::test]
    async fn memory_notifier_keeps_events() {
        let n = MemoryNotifier::new();
        n.notify(&Event::new(None, EventKind::CustomerOverflow))
            .await
            .unwrap();
        assert_eq!(n.events().len(), 1);
        assert_eq!(n.name(), "memory");
    }
}
