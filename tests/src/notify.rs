//! The dispatcher of the end-to-end notification tests: channel `email` to a real SMTP
//! server ([`SmtpSink`]), channel `slack` posting to a URL (a wiremock server, or nowhere),
//! and the dedup marks in a redb store on disk.

use std::sync::Arc;

use monetize_core::RedbStore;
use monetize_core::notify::{Dispatcher, NotifyConfig};
use monetize_providers::notify::slack::SlackChannel;
use monetize_providers::notify::smtp::{EmailComposer, Security, SmtpChannel};
use secrecy::SecretString;

use crate::smtp::SmtpSink;

/// A started dispatcher of `config` with the channels above; keep the directory (the
/// store's) as long as the dispatcher.
pub fn email_and_slack(
    config: NotifyConfig,
    sink: &SmtpSink,
    slack_url: String,
) -> (Dispatcher, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(dir.path().join("state.redb")).unwrap());
    let email = SmtpChannel::new(
        "127.0.0.1",
        Some(sink.port),
        Security::None,
        None,
        EmailComposer::new("API Billing <billing@api.test>").unwrap(),
    )
    .unwrap();
    let dispatcher = Dispatcher::builder(config)
        .channel("email", Arc::new(email))
        .channel(
            "slack",
            Arc::new(SlackChannel::new(SecretString::from(slack_url))),
        )
        .store(store)
        .start()
        .unwrap();
    (dispatcher, dir)
}
