//! Customer emails over SMTP with `lettre`: implicit TLS (465), STARTTLS (587) or
//! plaintext (tests, local relays), AUTH PLAIN/LOGIN as the server offers, a
//! `multipart/alternative` message (plain text, then HTML) when the template has HTML,
//! and a `Message-ID` made from the dedup key so that every retry carries the same one.
//!
//! | Answer | [`NotifyError`] |
//! |---|---|
//! | 2xx | delivered |
//! | 4xx (`451 try later`), connection refused or reset, timeout | `Retryable` |
//! | 5xx (`550 no such user`, `535`/`530` authentication) | `Permanent`, with the server's reply |
//! | TLS or client errors | `Permanent`: fix the configuration |
//!
//! A private relay whose certificate is not from a public CA: give its CA certificate
//! (PEM) with [`SmtpChannel::with_ca`] or `tls_ca_file` in `[smtp]`; it is trusted in
//! addition to the public roots.
//!
//! [`EmailComposer`] builds the message alone: the quickstart writes it to a `.eml` file
//! (`Message::formatted()`, the bytes SMTP would carry).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use monetize_core::{Event, Notification, Notifier, NotifyError};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// How the connection is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Security {
    /// TLS from the first byte (port 465 by default).
    Tls,
    /// Plaintext, then `STARTTLS`, required (port 587 by default).
    #[default]
    Starttls,
    /// No encryption (port 25 by default): local relays and tests only.
    None,
}

/// The `[smtp]` section of a configuration file: credentials come from the environment
/// variables it names.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SmtpConfig {
    /// The server's host name.
    pub server: String,
    /// The port (default by `security`: 465, 587 or 25).
    #[serde(default)]
    pub port: Option<u16>,
    /// `tls`, `starttls` (default) or `none`.
    #[serde(default)]
    pub security: Security,
    /// The environment variable holding the user name (no AUTH when unset).
    #[serde(default)]
    pub username_env: Option<String>,
    /// The environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The sender (`Billing <billing@example.com>`).
    pub from: String,
    /// The recipient when a route names none.
    #[serde(default)]
    pub to: Option<String>,
    /// A PEM file of CA certificates to trust besides the public roots (a private relay).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

/// An SMTP channel that cannot be set up; the message says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmtpSetupError {
    /// An address does not parse.
    #[error("smtp: `{address}` is not an email address: {reason}")]
    Address {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// A named environment variable is not set.
    #[error("smtp: environment variable `{0}` is not set")]
    MissingEnv(String),
    /// The transport could not be built (TLS set-up).
    #[error("smtp: {0}")]
    Transport(String),
    /// The CA file cannot be read or holds no PEM certificate: fix `tls_ca_file`.
    #[error("smtp: tls_ca_file `{path}`: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A CA certificate was given for a plaintext connection: set `security` to `tls`
    /// or `starttls`, or drop the CA.
    #[error("smtp: a CA certificate needs `security` = `tls` or `starttls`")]
    CaWithoutTls,
}

fn mailbox(address: &str) -> Result<Mailbox, SmtpSetupError> {
    address
        .parse()
        .map_err(|e: lettre::address::AddressError| SmtpSetupError::Address {
            address: address.to_owned(),
            reason: e.to_string(),
        })
}

/// Builds the email of a notification.
#[derive(Clone, Debug)]
pub struct EmailComposer {
    from: Mailbox,
    to: Option<Mailbox>,
    domain: String,
}

impl EmailComposer {
    /// Emails from `from`; `Message-ID`s on the sender's domain.
    pub fn new(from: &str) -> Result<Self, SmtpSetupError> {
        let from = mailbox(from)?;
        let domain = from.email.domain().to_owned();
        Ok(Self {
            from,
            to: None,
            domain,
        })
    }

    /// The recipient when a notification names none.
    pub fn default_to(mut self, to: &str) -> Result<Self, SmtpSetupError> {
        self.to = Some(mailbox(to)?);
        Ok(self)
    }

    /// `<` + the first 32 hex digits of SHA-256 of the dedup key + `@domain>`: the same
    /// for every retry of one notification.
    pub fn message_id(&self, dedup_key: &str) -> String {
        let digest = Sha256::digest(dedup_key.as_bytes());
        format!("<{}@{}>", &hex::encode(digest)[..32], self.domain)
    }

    /// The message for `n`: plain text, or plain text and HTML as alternatives.
    pub fn compose(&self, n: &Notification) -> Result<Message, NotifyError> {
        let to = match &n.to {
            Some(a) => a
                .parse::<Mailbox>()
                .map_err(|e| NotifyError::Permanent(format!("smtp: bad recipient `{a}`: {e}")))?,
            None => self.to.clone().ok_or_else(|| {
                NotifyError::Permanent("smtp: no recipient (route `to` or `smtp.to`)".into())
            })?,
        };
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(n.subject.clone())
            .message_id(Some(self.message_id(&n.dedup_key)));
        let built = match &n.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                n.text.clone(),
                html.clone(),
            )),
            None => builder.singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(n.text.clone()),
            ),
        };
        built.map_err(|e| NotifyError::Permanent(format!("smtp: cannot build the message: {e}")))
    }
}

/// Sends notifications as email over SMTP.
pub struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    composer: EmailComposer,
    server: String,
}

impl std::fmt::Debug for SmtpChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpChannel")
            .field("server", &self.server)
            .field("composer", &self.composer)
            .finish_non_exhaustive()
    }
}

impl SmtpChannel {
    /// A channel to `server` (`port` or the default of `security`), with optional
    /// credentials, composing with `composer`.
    pub fn new(
        server: &str,
        port: Option<u16>,
        security: Security,
        credentials: Option<(String, SecretString)>,
        composer: EmailComposer,
    ) -> Result<Self, SmtpSetupError> {
        Self::build(server, port, security, credentials, composer, None)
    }

    /// Like [`SmtpChannel::new`], also trusting the CA certificates in `ca_pem` (PEM) for
    /// the server's certificate: a private relay, or a test server.
    pub fn with_ca(
        server: &str,
        port: Option<u16>,
        security: Security,
        credentials: Option<(String, SecretString)>,
        composer: EmailComposer,
        ca_pem: &[u8],
    ) -> Result<Self, SmtpSetupError> {
        Self::build(server, port, security, credentials, composer, Some(ca_pem))
    }

    fn build(
        server: &str,
        port: Option<u16>,
        security: Security,
        credentials: Option<(String, SecretString)>,
        composer: EmailComposer,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, SmtpSetupError> {
        let setup = |e: lettre::transport::smtp::Error| SmtpSetupError::Transport(e.to_string());
        let tls = |ca: &[u8]| -> Result<TlsParameters, SmtpSetupError> {
            let cert = Certificate::from_pem(ca).map_err(setup)?;
            TlsParameters::builder(server.to_owned())
                .add_root_certificate(cert)
                .build()
                .map_err(setup)
        };
        let mut builder = match (security, ca_pem) {
            (Security::Tls, None) => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(server).map_err(setup)?
            }
            (Security::Starttls, None) => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(server).map_err(setup)?
            }
            (Security::Tls, Some(ca)) => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server)
                    .port(lettre::transport::smtp::SUBMISSIONS_PORT)
                    .tls(Tls::Wrapper(tls(ca)?))
            }
            (Security::Starttls, Some(ca)) => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server)
                    .port(lettre::transport::smtp::SUBMISSION_PORT)
                    .tls(Tls::Required(tls(ca)?))
            }
            (Security::None, None) => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server)
            }
            (Security::None, Some(_)) => return Err(SmtpSetupError::CaWithoutTls),
        };
        if let Some(p) = port {
            builder = builder.port(p);
        }
        if let Some((user, pass)) = credentials {
            builder = builder.credentials(Credentials::new(user, pass.expose_secret().to_owned()));
        }
        let transport = builder.timeout(Some(Duration::from_secs(30))).build();
        Ok(Self {
            transport,
            composer,
            server: server.to_owned(),
        })
    }

    /// A channel from an `[smtp]` section, reading credentials from the environment.
    pub fn from_config(c: &SmtpConfig) -> Result<Self, SmtpSetupError> {
        let env = |name: &String| {
            std::env::var(name).map_err(|_| SmtpSetupError::MissingEnv(name.clone()))
        };
        let credentials = match (&c.username_env, &c.password_env) {
            (Some(u), Some(p)) => Some((env(u)?, SecretString::from(env(p)?))),
            (Some(u), None) => Some((env(u)?, SecretString::from(String::new()))),
            _ => None,
        };
        let mut composer = EmailComposer::new(&c.from)?;
        if let Some(to) = &c.to {
            composer = composer.default_to(to)?;
        }
        let ca = match &c.tls_ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| SmtpSetupError::CaFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(SmtpSetupError::CaFile {
                        path: path.clone(),
                        reason: "no PEM certificate in it".into(),
                    });
                }
                Some(pem)
            }
            None => None,
        };
        Self::build(
            &c.server,
            c.port,
            c.security,
            credentials,
            composer,
            ca.as_deref(),
        )
    }
}

/// Sorts lettre's errors (see the module docs).
fn classify(e: lettre::transport::smtp::Error) -> NotifyError {
    let message = format!("smtp: {e}");
    if e.is_permanent() || e.is_tls() || e.is_client() {
        NotifyError::Permanent(message)
    } else {
        // 4xx, and errors without a status: refused, reset, timed out.
        NotifyError::Retryable(message)
    }
}

#[async_trait]
impl Notifier for SmtpChannel {
    fn name(&self) -> &str {
        "smtp"
    }

    async fn notify(&self, event: &Event) -> Result<(), NotifyError> {
        let subject = format!("{} event", event.kind.name());
        self.deliver(&Notification::new(
            "-",
            "smtp",
            "-",
            event.clone(),
            subject,
            "",
        ))
        .await
    }

    async fn deliver(&self, n: &Notification) -> Result<(), NotifyError> {
        let message = self.composer.compose(n)?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(classify)
    }
}
