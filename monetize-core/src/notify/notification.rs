//! A notification: one event rendered for one route, ready for a channel.

use serde_json::Value;

use crate::event::Event;

/// One event rendered for one route: what a channel sends.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Notification {
    /// The route that produced it.
    pub route: String,
    /// The channel it goes to.
    pub channel: String,
    /// Unique per route, customer, event and period; the same on every retry (an email's
    /// `Message-ID`, a webhook's `webhook-id`).
    pub dedup_key: String,
    /// The event.
    pub event: Event,
    /// The recipient, when the route names one (the customer's address or a literal
    /// one); otherwise the channel's own.
    pub to: Option<String>,
    /// The subject (one line).
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// The HTML body, when the template has one.
    pub html: Option<String>,
    /// The template variables (for channels that build structured payloads).
    pub context: Value,
}

impl Notification {
    /// A notification of `event` with this subject and text (for tests and custom
    /// channels; the dispatcher renders its own).
    pub fn new(
        route: impl Into<String>,
        channel: impl Into<String>,
        dedup_key: impl Into<String>,
        event: Event,
        subject: impl Into<String>,
        text: impl Into<String>,
    ) -> Self {
        let context = serde_json::to_value(&event).unwrap_or(Value::Null);
        Self {
            route: route.into(),
            channel: channel.into(),
            dedup_key: dedup_key.into(),
            event,
            to: None,
            subject: subject.into(),
            text: text.into(),
            html: None,
            context,
        }
    }

    /// Sets the recipient.
    pub fn with_to(mut self, to: impl Into<String>) -> Self {
        self.to = Some(to.into());
        self
    }

    /// Sets the HTML body.
    pub fn with_html(mut self, html: impl Into<String>) -> Self {
        self.html = Some(html.into());
        self
    }
}
