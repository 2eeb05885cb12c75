//! The quickstart's notifications: customer emails written as `.eml` files (RFC 5322, the
//! bytes SMTP would carry) to `<data-dir>/outbox/`, or sent over SMTP when the config
//! file has an `[smtp]` section; team alerts as JSON lines in `<data-dir>/alerts.jsonl`.
//! Both are printed as they are written. The file's `[slack]`, `[pagerduty]`,
//! `[[webhooks]]` and `[twilio]` sections add channels under their names: a channel named
//! `email` or `alerts` replaces the built-in one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use monetize_core::notify::{Dispatcher, NotifyConfig};
use monetize_core::{Event, Notification, Notifier, NotifyError, StateStore};
use monetize_providers::notify::channels_config::ChannelsConfig;
use monetize_providers::notify::smtp::{EmailComposer, SmtpChannel, SmtpConfig};

/// The sender of the quickstart's emails.
const FROM: &str = "Example API Billing <billing@example.com>";

/// Writes each email as an `.eml` file.
struct Outbox {
    dir: PathBuf,
    composer: EmailComposer,
    next: AtomicUsize,
}

#[async_trait]
impl Notifier for Outbox {
    fn name(&self) -> &str {
        "outbox"
    }

    async fn notify(&self, _: &Event) -> Result<(), NotifyError> {
        Ok(())
    }

    async fn deliver(&self, n: &Notification) -> Result<(), NotifyError> {
        let message = self.composer.compose(n)?;
        let who = n.event.customer.as_ref().map_or("-", |c| c.as_str());
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let file = self
            .dir
            .join(format!("{seq:04}-{who}-{}.eml", n.event.kind.name()));
        std::fs::write(&file, message.formatted())
            .map_err(|e| NotifyError::Retryable(format!("{}: {e}", file.display())))?;
        println!(
            "    email  to {:<40} \"{}\"\n           {}",
            n.to.as_deref().unwrap_or("-"),
            n.subject,
            file.display()
        );
        Ok(())
    }
}

/// Appends each alert to a JSON-lines file.
struct Alerts {
    file: PathBuf,
}

#[async_trait]
impl Notifier for Alerts {
    fn name(&self) -> &str {
        "alerts"
    }

    async fn notify(&self, _: &Event) -> Result<(), NotifyError> {
        Ok(())
    }

    async fn deliver(&self, n: &Notification) -> Result<(), NotifyError> {
        let line = serde_json::json!({
            "route": n.route,
            "subject": n.subject,
            "event": n.event,
            "period_end": n.context["period_end"],
        });
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.file)?;
            writeln!(f, "{line}")
        };
        write().map_err(|e| NotifyError::Retryable(format!("{}: {e}", self.file.display())))?;
        println!(
            "    alert  [{}] {}: {}",
            n.route,
            n.subject,
            n.event.kind.name()
        );
        Ok(())
    }
}

/// The notification configuration: `notify` from the config file, else the embedded
/// `examples/notify.toml`.
pub fn config(notify: Option<NotifyConfig>) -> Result<NotifyConfig, String> {
    match notify {
        Some(c) => Ok(c),
        None => NotifyConfig::from_toml_str(include_str!("notify.toml"))
            .map_err(|e| format!("notify.toml: {e}")),
    }
}

/// Starts the dispatcher: `email` (SMTP with `smtp`, else the outbox) and `alerts`
/// channels, then those of `channels` (under their names, so one named `email` or
/// `alerts` replaces the built-in one), dedup marks in `store`. Returns it and a line
/// saying where emails go.
pub fn start(
    config: NotifyConfig,
    smtp: Option<&SmtpConfig>,
    channels: &ChannelsConfig,
    data_dir: &Path,
    store: Arc<dyn StateStore>,
) -> Result<(Dispatcher, String), String> {
    let (email, said): (Arc<dyn Notifier>, String) = match smtp {
        Some(s) => {
            let channel = SmtpChannel::from_config(s).map_err(|e| e.to_string())?;
            let port = s.port.map_or_else(String::new, |p| format!(":{p}"));
            (
                Arc::new(channel),
                format!("emails go to SMTP server {}{port}", s.server),
            )
        }
        None => {
            let dir = data_dir.join("outbox");
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let already = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            let composer = EmailComposer::new(FROM).map_err(|e| e.to_string())?;
            (
                Arc::new(Outbox {
                    dir: dir.clone(),
                    composer,
                    next: AtomicUsize::new(already),
                }),
                format!("emails are written to {}", dir.display()),
            )
        }
    };
    let alerts_file = data_dir.join("alerts.jsonl");
    let alerts = Arc::new(Alerts {
        file: alerts_file.clone(),
    });
    let mut builder = Dispatcher::builder(config)
        .channel("email", email)
        .channel("alerts", alerts);
    let mut said = said;
    let built = channels.build().map_err(|e| e.to_string())?;
    if !built.iter().any(|(name, _)| name == "alerts") {
        said.push_str(&format!("; team alerts to {}", alerts_file.display()));
    }
    for (name, channel) in built {
        said.push_str(&format!("; channel `{name}`: {}", channel.name()));
        builder = builder.channel(name, channel);
    }
    let dispatcher = builder.store(store).start().map_err(|e| e.to_string())?;
    Ok((dispatcher, said))
}
