//! A real SMTP server for the email tests: `tests/smtp_sink.py` (aiosmtpd, installed by
//! `scripts/test`) on a free port, killed on drop; in plaintext, or with STARTTLS or
//! implicit TLS under a certificate from a CA made for the test ([`TestCa`]).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::quickstart::{target_dir, workspace_root};

/// One message as the server received it.
#[derive(Clone, Debug)]
pub struct Received {
    /// `MAIL FROM`.
    pub from: String,
    /// `RCPT TO`s.
    pub to: Vec<String>,
    /// The message as sent (RFC 5322).
    pub data: String,
}

/// A running `smtp_sink.py`.
pub struct SmtpSink {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

/// The Python with aiosmtpd: `MONETIZE_PYTHON` (set by `scripts/test`), else the venv
/// `scripts/test` makes under target/, else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MONETIZE_PYTHON") {
        return p.into();
    }
    let venv = target_dir().join("aiosmtpd-venv/bin/python");
    if venv.exists() {
        return venv;
    }
    "python3".into()
}

/// A free port on 127.0.0.1 (nothing listens on it when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How the server secures connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkTls {
    /// `STARTTLS` required before anything else (AUTH only after it).
    Starttls,
    /// TLS from the first byte (SMTPS).
    Implicit,
}

/// A certificate authority made for one test, and a server certificate it signed for
/// `127.0.0.1`.
pub struct TestCa {
    /// The CA certificate (PEM): what the client trusts.
    pub ca_pem: String,
    /// The server's certificate (PEM).
    pub cert_pem: String,
    /// The server's private key (PEM).
    pub key_pem: String,
}

impl TestCa {
    /// A new CA and a server certificate for `127.0.0.1`.
    pub fn new() -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, "monetize test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let cert = server.signed_by(&key, &ca).unwrap();
        TestCa {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl SmtpSink {
    /// Starts the server, with `auth` (`user:pass`) required when given.
    pub fn start(auth: Option<&str>) -> SmtpSink {
        Self::spawn(auth, None)
    }

    /// Starts the server with TLS (`tls`) under `ca`'s server certificate, with `auth`
    /// required (after TLS) when given.
    pub fn start_tls(auth: Option<&str>, tls: SinkTls, ca: &TestCa) -> SmtpSink {
        Self::spawn(auth, Some((tls, ca)))
    }

    fn spawn(auth: Option<&str>, tls: Option<(SinkTls, &TestCa)>) -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.args(["-W", "ignore::UserWarning"])
            .arg(workspace_root().join("tests/smtp_sink.py"))
            .arg(port.to_string())
            .arg(dir.path().join("mail"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd.arg(auth.unwrap_or("-"));
        if let Some((mode, ca)) = tls {
            let cert = dir.path().join("cert.pem");
            let key = dir.path().join("key.pem");
            std::fs::write(&cert, &ca.cert_pem).unwrap();
            std::fs::write(&key, &ca.key_pem).unwrap();
            cmd.arg(match mode {
                SinkTls::Starttls => "starttls",
                SinkTls::Implicit => "smtps",
            })
            .arg(cert)
            .arg(key);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {:?} tests/smtp_sink.py ({e}): run scripts/test, which installs aiosmtpd",
                python()
            )
        });
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "smtp_sink.py did not start (is aiosmtpd installed for {:?}? scripts/test installs it)",
            python()
        );
        SmtpSink { child, port, dir }
    }

    /// The messages received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        let mail = self.dir.path().join("mail");
        let mut files: Vec<_> = std::fs::read_dir(&mail)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
            .map(|v| Received {
                from: v["from"].as_str().unwrap_or_default().to_owned(),
                to: v["to"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                data: v["data"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// Waits until at least `n` messages arrived (at most 10 s); returns them.
    pub fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
