//! The quickstart with `--config examples/channels.toml`: its `[slack]` section (named
//! `alerts`, the URL from the environment) pointed at wiremock receives the scenario's team
//! alerts as Slack Block Kit messages, instead of `alerts.jsonl`; a missing variable or a
//! wrong field stops the start with a message naming it.

use std::time::Duration;

use monetize_tests::quickstart::workspace_root;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const LIMIT: Duration = Duration::from_secs(120);

fn channels_toml(edit: impl Fn(&str) -> String) -> tempfile::NamedTempFile {
    let text = std::fs::read_to_string(workspace_root().join("examples/channels.toml")).unwrap();
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), edit(&text)).unwrap();
    file
}

async fn run(
    config: &std::path::Path,
    data: &std::path::Path,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let (mut cmd, what) = monetize_tests::quickstart::command();
    cmd.args(["--exit", "--port", "0", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .env_remove("SLACK_WEBHOOK_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_slack_section_receives_the_scenarios_team_alerts() {
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/T0/B0/secret-token"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&slack)
        .await;
    let config = channels_toml(str::to_owned);
    let data = tempfile::tempdir().unwrap();
    let url = format!("{}/services/T0/B0/secret-token", slack.uri());
    let (code, stdout, stderr) =
        run(config.path(), data.path(), &[("SLACK_WEBHOOK_URL", &url)]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("channel `alerts`: slack"), "{stdout}");
    assert!(!stdout.contains("secret-token") && !stderr.contains("secret-token"));

    let received = slack.received_requests().await.unwrap();
    let alerts: Vec<Value> = received
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let fallbacks: Vec<&str> = alerts.iter().map(|a| a["text"].as_str().unwrap()).collect();
    assert_eq!(alerts.len(), 3, "{fallbacks:?}");
    for (who, rule) in [
        ("globex", "credits_exhausted"),
        ("initech", "quota_exceeded"),
        ("acme", "blocked"),
    ] {
        let subject = format!("{who} keeps calling while refused by rule `{rule}`");
        let alert = alerts
            .iter()
            .find(|a| a["blocks"][0]["text"]["text"] == subject.as_str())
            .unwrap_or_else(|| panic!("no alert `{subject}` in {fallbacks:?}"));
        assert_eq!(alert["blocks"][0]["type"], "header");
        assert!(
            alert["blocks"][2]["elements"][0]["text"]
                .as_str()
                .unwrap()
                .contains("route `finance`"),
            "{alert}"
        );
    }
    assert!(
        !data.path().join("alerts.jsonl").exists(),
        "the Slack channel took the alerts' place"
    );
    // The customer emails still go to the outbox.
    assert_eq!(
        std::fs::read_dir(data.path().join("outbox"))
            .unwrap()
            .count(),
        4
    );
}

#[tokio::test]
async fn a_missing_variable_or_a_wrong_field_stops_the_start_naming_it() {
    let data = tempfile::tempdir().unwrap();
    let config = channels_toml(str::to_owned);
    let (code, _, stderr) = run(config.path(), data.path(), &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "[slack] webhook_url_env: environment variable `SLACK_WEBHOOK_URL` is not set"
        ),
        "{stderr}"
    );

    let config = channels_toml(|t| t.replace("webhook_url_env", "webhook_url"));
    let (code, _, stderr) = run(config.path(), data.path(), &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("[slack]") && stderr.contains("webhook_url"),
        "{stderr}"
    );
}
