//! Customer emails through a real SMTP server that is not ours (Python's aiosmtpd,
//! `tests/smtp_sink.py`): sender, recipient, subject and both parts as they arrived;
//! once with AUTH; and the server's refusals sorted into retryable and permanent. Then
//! with TLS: STARTTLS with AUTH and implicit TLS, the server's certificate from a CA made
//! for the test and given to the channel (`with_ca`, `tls_ca_file`); a certificate from
//! another CA is refused, and a plaintext client is refused by the STARTTLS server.

use std::sync::Arc;
use std::time::Duration;

use monetize_core::notify::{Dispatcher, NotifyConfig, RouteConfig, TemplateConfig};
use monetize_core::{CustomerId, Event, EventKind, Notification, Notifier, NotifyError};
use monetize_providers::notify::smtp::{
    EmailComposer, Security, SmtpChannel, SmtpConfig, SmtpSetupError,
};
use monetize_tests::smtp::{SinkTls, SmtpSink, TestCa, free_port};
use secrecy::SecretString;

fn channel(port: u16, credentials: Option<(&str, &str)>) -> SmtpChannel {
    SmtpChannel::new(
        "127.0.0.1",
        Some(port),
        Security::None,
        credentials.map(|(u, p)| (u.to_owned(), SecretString::from(p.to_owned()))),
        EmailComposer::new("Acme Billing <billing@monetize.test>").unwrap(),
    )
    .unwrap()
}

fn low_credits() -> Event {
    Event::new(
        Some(CustomerId::new("globex").unwrap()),
        EventKind::CreditsLow { balance: 1_500 },
    )
}

fn config() -> NotifyConfig {
    NotifyConfig::new()
        .route(
            RouteConfig::new("credits", ["credits_low"], "email")
                .template("credits")
                .to_customer(),
        )
        .template(
            "credits",
            TemplateConfig::new(
                "{{ customer }}: your credits are running low",
                "Balance: {{ balance }} micro-credits. Top up: {{ upgrade_link }}",
            )
            .html("<p>Balance: <b>{{ balance }}</b> micro-credits.</p>"),
        )
        .recipient("globex", "Globex Ops <ops@globex.test>")
        .upgrade_link("https://monetize.test/top-up")
        .retries(2, 10, 50)
}

/// Asserts the arrived message carries the notification.
fn check(sink: &SmtpSink) {
    let got = sink.wait_for(1);
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.from, "billing@monetize.test");
    assert_eq!(m.to, ["ops@globex.test"]);
    let d = &m.data;
    assert!(
        d.contains("From: \"Acme Billing\" <billing@monetize.test>"),
        "{d}"
    );
    assert!(d.contains("To: \"Globex Ops\" <ops@globex.test>"), "{d}");
    assert!(
        d.contains("Subject: globex: your credits are running low"),
        "{d}"
    );
    assert!(d.contains("Message-ID: <"), "{d}");
    assert!(d.contains("Content-Type: multipart/alternative"), "{d}");
    let plain = d
        .find("Content-Type: text/plain")
        .expect("a text/plain part");
    let html = d.find("Content-Type: text/html").expect("a text/html part");
    assert!(plain < html, "plain text first");
    assert!(
        d.contains("Balance: 1500 micro-credits. Top up: https://monetize.test/top-up"),
        "{d}"
    );
    assert!(
        d.contains("<p>Balance: <b>1500</b> micro-credits.</p>"),
        "{d}"
    );
}

#[tokio::test]
async fn a_customer_email_arrives_with_both_parts() {
    let sink = SmtpSink::start(None);
    let d = Dispatcher::builder(config())
        .channel("email", Arc::new(channel(sink.port, None)))
        .start()
        .unwrap();
    d.dispatch(low_credits());
    assert!(d.idle(Duration::from_secs(10)).await);
    assert_eq!(d.stats().sent, 1);
    check(&sink);
}

#[tokio::test]
async fn with_auth_the_right_password_delivers_and_a_wrong_one_is_permanent() {
    let sink = SmtpSink::start(Some("mailer:hunter2"));
    let d = Dispatcher::builder(config())
        .channel(
            "email",
            Arc::new(channel(sink.port, Some(("mailer", "hunter2")))),
        )
        .start()
        .unwrap();
    d.dispatch(low_credits());
    assert!(d.idle(Duration::from_secs(10)).await);
    check(&sink);

    let n =
        Notification::new("r", "email", "k", low_credits(), "s", "t").with_to("ops@globex.test");
    let e = channel(sink.port, Some(("mailer", "wrong")))
        .deliver(&n)
        .await
        .unwrap_err();
    assert!(matches!(e, NotifyError::Permanent(_)), "{e}");
    let e = channel(sink.port, None).deliver(&n).await.unwrap_err();
    assert!(matches!(e, NotifyError::Permanent(_)), "no AUTH: 530, {e}");
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn server_refusals_are_sorted() {
    let sink = SmtpSink::start(None);
    let smtp = channel(sink.port, None);
    let to = |a: &str| Notification::new("r", "email", "k", low_credits(), "s", "t").with_to(a);
    let e = smtp.deliver(&to("tempfail@globex.test")).await.unwrap_err();
    assert!(matches!(e, NotifyError::Retryable(_)), "451: {e}");
    let e = smtp.deliver(&to("reject@globex.test")).await.unwrap_err();
    assert!(matches!(e, NotifyError::Permanent(_)), "550: {e}");
    let e = channel(free_port(), None)
        .deliver(&to("ops@globex.test"))
        .await
        .unwrap_err();
    assert!(matches!(e, NotifyError::Retryable(_)), "refused: {e}");
    assert!(sink.received().is_empty());
}

fn tls_channel(
    port: u16,
    security: Security,
    ca: &TestCa,
    credentials: Option<(&str, &str)>,
) -> SmtpChannel {
    SmtpChannel::with_ca(
        "127.0.0.1",
        Some(port),
        security,
        credentials.map(|(u, p)| (u.to_owned(), SecretString::from(p.to_owned()))),
        EmailComposer::new("Acme Billing <billing@monetize.test>").unwrap(),
        ca.ca_pem.as_bytes(),
    )
    .unwrap()
}

async fn send_through(channel: SmtpChannel) -> Dispatcher {
    let d = Dispatcher::builder(config())
        .channel("email", Arc::new(channel))
        .start()
        .unwrap();
    d.dispatch(low_credits());
    assert!(d.idle(Duration::from_secs(10)).await);
    d
}

#[tokio::test]
async fn starttls_with_auth_delivers_to_a_server_that_requires_it() {
    let ca = TestCa::new();
    let sink = SmtpSink::start_tls(Some("mailer:hunter2"), SinkTls::Starttls, &ca);
    let d = send_through(tls_channel(
        sink.port,
        Security::Starttls,
        &ca,
        Some(("mailer", "hunter2")),
    ))
    .await;
    assert_eq!(d.stats().sent, 1);
    check(&sink);

    let n =
        Notification::new("r", "email", "k", low_credits(), "s", "t").with_to("ops@globex.test");
    // The server really requires TLS: a plaintext client is refused (530).
    let e = channel(sink.port, Some(("mailer", "hunter2")))
        .deliver(&n)
        .await
        .unwrap_err();
    assert!(matches!(e, NotifyError::Permanent(_)), "plaintext: {e}");
    // And the certificate is really checked: another CA's trust fails the handshake (lettre
    // reports it as a connection error: retried, then given up).
    let e = tls_channel(
        sink.port,
        Security::Starttls,
        &TestCa::new(),
        Some(("mailer", "hunter2")),
    )
    .deliver(&n)
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("invalid peer certificate"),
        "untrusted: {e}"
    );
    // Without the CA, the public roots alone do not trust it either.
    let e = SmtpChannel::new(
        "127.0.0.1",
        Some(sink.port),
        Security::Starttls,
        None,
        EmailComposer::new("billing@monetize.test").unwrap(),
    )
    .unwrap()
    .deliver(&n)
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("invalid peer certificate"),
        "public roots: {e}"
    );
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn implicit_tls_with_auth_delivers() {
    let ca = TestCa::new();
    let sink = SmtpSink::start_tls(Some("mailer:hunter2"), SinkTls::Implicit, &ca);
    let d = send_through(tls_channel(
        sink.port,
        Security::Tls,
        &ca,
        Some(("mailer", "hunter2")),
    ))
    .await;
    assert_eq!(d.stats().sent, 1);
    check(&sink);
    // TLS from the first byte, under the test CA's certificate: another CA's trust fails.
    let n =
        Notification::new("r", "email", "k", low_credits(), "s", "t").with_to("ops@globex.test");
    let e = tls_channel(
        sink.port,
        Security::Tls,
        &TestCa::new(),
        Some(("mailer", "hunter2")),
    )
    .deliver(&n)
    .await
    .unwrap_err();
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn an_smtp_section_with_tls_ca_file_sends_over_starttls() {
    let ca = TestCa::new();
    let sink = SmtpSink::start_tls(None, SinkTls::Starttls, &ca);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let section = |ca_file: &std::path::Path| -> SmtpConfig {
        serde_json::from_value(serde_json::json!({
            "server": "127.0.0.1",
            "port": sink.port,
            "security": "starttls",
            "from": "Acme Billing <billing@monetize.test>",
            "tls_ca_file": ca_file,
        }))
        .unwrap()
    };
    let d = send_through(SmtpChannel::from_config(&section(&ca_file)).unwrap()).await;
    assert_eq!(d.stats().sent, 1);
    check(&sink);

    let missing = dir.path().join("missing.pem");
    let e = SmtpChannel::from_config(&section(&missing)).unwrap_err();
    assert!(matches!(e, SmtpSetupError::CaFile { .. }), "{e}");
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let e = SmtpChannel::from_config(&section(&junk)).unwrap_err();
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
}
