//! The quickstart with `--config FILE` holding an `[smtp]` section (`examples/smtp.toml`
//! pointed at a local aiosmtpd requiring AUTH, credentials from the environment) sends the
//! scenario's emails over SMTP instead of writing them to `outbox/`; a template mistake in
//! a `[notify]` table stops it at start-up, naming the template.

use std::time::Duration;

use monetize_tests::quickstart::workspace_root;
use monetize_tests::smtp::SmtpSink;

const LIMIT: Duration = Duration::from_secs(120);

fn config_with(extra: impl Fn(&str) -> String) -> tempfile::NamedTempFile {
    let text = std::fs::read_to_string(workspace_root().join("examples/smtp.toml")).unwrap();
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), extra(&text)).unwrap();
    file
}

#[tokio::test]
async fn with_an_smtp_section_the_scenario_sends_real_email() {
    let sink = SmtpSink::start(Some("qs-user:qs-pass"));
    let config = config_with(|t| {
        t.replace("server = \"smtp.example.com\"", "server = \"127.0.0.1\"")
            .replace("port = 587", &format!("port = {}", sink.port))
            .replace("security = \"starttls\"", "security = \"none\"")
            .replace("SMTP_USERNAME", "QS_TEST_SMTP_USER")
            .replace("SMTP_PASSWORD", "QS_TEST_SMTP_PASS")
    });
    let data = tempfile::tempdir().unwrap();
    let (mut cmd, what) = monetize_tests::quickstart::command();
    cmd.args(["--exit", "--port", "0", "--config"])
        .arg(config.path())
        .arg("--data-dir")
        .arg(data.path())
        .env("QS_TEST_SMTP_USER", "qs-user")
        .env("QS_TEST_SMTP_PASS", "qs-pass");
    let out = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("emails go to SMTP server 127.0.0.1:{}", sink.port)),
        "{stdout}"
    );
    let got = sink.wait_for(4);
    let subjects: Vec<(&str, String)> = got
        .iter()
        .map(|m| {
            let s = m
                .data
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_default();
            (m.to[0].as_str(), s.to_owned())
        })
        .collect();
    assert_eq!(
        subjects,
        [
            (
                "billing@globex.example",
                "Your prepaid credits are running low".to_owned()
            ),
            (
                "billing@globex.example",
                "Your prepaid credits are used up".to_owned()
            ),
            (
                "it@initech.example",
                "You have used 80 % of your api_calls quota".to_owned()
            ),
            (
                "it@initech.example",
                "Your api_calls quota is used up".to_owned()
            ),
        ],
        "{stdout}"
    );
    assert!(got.iter().all(|m| m.from == "billing@example.com"));
    assert!(
        !data.path().join("outbox").exists(),
        "nothing written to outbox/"
    );
}

#[tokio::test]
async fn a_template_mistake_stops_the_start() {
    let config = config_with(|t| {
        format!(
            "{}\n[notify]\n[[notify.routes]]\nname = \"r\"\nevents = [\"credits_low\"]\n\
             channel = \"email\"\ntemplate = \"t\"\n[notify.templates.t]\n\
             subject = \"{{{{ custmer }}}}\"\ntext = \"x\"\n",
            t.replace("[smtp]", "[unused_smtp]")
                .split("[unused_smtp]")
                .next()
                .unwrap()
        )
    });
    let (mut cmd, what) = monetize_tests::quickstart::command();
    cmd.args(["--exit", "--port", "0", "--no-scenario", "--config"])
        .arg(config.path());
    let out = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("template `t` (subject)"), "{stderr}");
    assert!(stderr.contains("undefined"), "{stderr}");
}
