//! Notifiers: deliver events to customers (email) and teams (Slack, PagerDuty, SMS,
//! webhooks). Channel implementations live in `monetize-providers`; this is the trait and
//! an in-process notifier for tests and local runs.

use std::sync::Mutex;

use async_trait::async_trait;

use crate::event::Event;

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
}

/// A notification channel.
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// A short stable name (`slack`, `email`).
    fn name(&self) -> &str;

    /// Delivers one event.
    async fn notify(&self, event: &Event) -> Result<(), NotifyError>;
}

/// Keeps every event it is given, in order.
#[derive(Debug, Default)]
pub struct MemoryNotifier {
    events: Mutex<Vec<Event>>,
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
