//! The README's configuration file (with a plan's usage tiers and `upsell_after_periods`)
//! is a valid configuration, and its routes for `tier_reached` and `upsell_candidate`
//! validate and render what it says.

use std::sync::Arc;
use std::time::Duration;

use monetize_core::config::Config;
use monetize_core::notify::{Dispatcher, MemoryNotifier, NotifyConfig};
use monetize_core::{CustomerId, Engine, Event, EventKind, MeterId};

const README: &str = include_str!("../../README.md");

/// The first ```toml block after the line `after`.
fn toml_block_after(after: &str) -> &'static str {
    let from = README.find(after).expect("the README has the section");
    let rest = &README[from..];
    let start = rest.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let len = rest[start..].find("```").expect("a closed block");
    &rest[start..start + len]
}

#[test]
fn the_readme_configuration_with_tiers_and_upsell_is_valid() {
    let text = toml_block_after("## Configuration file");
    assert!(text.contains("tiers = ["), "{text}");
    let config = Config::from_toml_str(text).unwrap();
    let free = config.plans.iter().find(|p| p.id == "free").unwrap();
    assert_eq!(free.meters["api_calls"].tiers, [10_000, 100_000]);
    assert_eq!(free.upsell_after_periods, Some(2));
    let engine = Engine::new(config).unwrap();
    let h = engine.resolve("acme").unwrap();
    engine.record(&h, engine.meter_index("api_calls").unwrap(), 10_000);
    let kinds: Vec<_> = engine
        .drain_events(100)
        .into_iter()
        .map(|e| e.kind.name().to_owned())
        .collect();
    assert!(kinds.contains(&"tier_reached".to_owned()), "{kinds:?}");
}

#[tokio::test]
async fn the_readme_routes_send_the_tier_email_and_the_sales_alert() {
    let text = toml_block_after("Routing\nthose two");
    let config = NotifyConfig::from_toml_str(text).unwrap();
    let (email, slack) = (
        Arc::new(MemoryNotifier::new()),
        Arc::new(MemoryNotifier::new()),
    );
    let dispatcher = Dispatcher::builder(
        config
            .upgrade_link("https://x.test/plans")
            .recipient("acme", "ops@acme.test"),
    )
    .channel("email", email.clone())
    .channel("slack", slack.clone())
    .start()
    .unwrap();
    let acme = Some(CustomerId::new("acme").unwrap());
    let meter = MeterId::new("api_calls").unwrap();
    for _ in 0..2 {
        dispatcher.dispatch(Event::new(
            acme.clone(),
            EventKind::TierReached {
                meter: meter.clone(),
                tier: 10_000,
                usage: 10_003,
                next_tier: Some(100_000),
            },
        ));
    }
    dispatcher.dispatch(Event::new(
        acme.clone(),
        EventKind::TierReached {
            meter: meter.clone(),
            tier: 100_000,
            usage: 100_000,
            next_tier: None,
        },
    ));
    dispatcher.dispatch(Event::new(
        acme.clone(),
        EventKind::UpsellCandidate {
            meter,
            periods: 2,
            usage: 1_000,
            allowance: 1_000,
        },
    ));
    assert!(dispatcher.idle(Duration::from_secs(10)).await);
    let emails = email.notifications();
    let subjects: Vec<_> = emails.iter().map(|n| n.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "You passed 10000 api_calls this month",
            "You passed 100000 api_calls this month"
        ],
        "one email per tier"
    );
    assert_eq!(emails[0].to.as_deref(), Some("ops@acme.test"));
    assert_eq!(
        emails[0].text,
        "Your usage is 10003 api_calls: the next price applies from 10000. Plans: https://x.test/plans"
    );
    let alerts = slack.notifications();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].subject, "upsell_candidate for acme");
    assert!(
        alerts[0].text.contains(r#""allowance":1000"#),
        "{}",
        alerts[0].text
    );
}
