//! Notification channels, each behind its cargo feature: [`smtp`] (customer emails),
//! [`slack`], [`pagerduty`], [`webhook`] (Standard Webhooks signing) and [`twilio`]
//! (SMS). Each implements [`monetize_core::Notifier`] and is given to a
//! [`monetize_core::notify::Dispatcher`] under a name routes use; each sorts the service's
//! answers into [`NotifyError`] classes (transient: retried with backoff; throttled:
//! retried after the service's delay; permanent: reported) as `CHANNELS.md` lists them.
//! Base URLs are settable (tests point them at wiremock); secrets (webhook URLs, keys,
//! passwords) are kept out of `Debug` and of error messages.

pub mod channels_config;
#[cfg(any(
    feature = "slack",
    feature = "pagerduty",
    feature = "webhook",
    feature = "twilio"
))]
mod client;
#[cfg(feature = "pagerduty")]
pub mod pagerduty;
#[cfg(feature = "slack")]
pub mod slack;
#[cfg(feature = "smtp")]
pub mod smtp;
#[cfg(feature = "twilio")]
pub mod twilio;
#[cfg(feature = "webhook")]
pub mod webhook;

#[allow(unused_imports)]
use monetize_core::NotifyError;
