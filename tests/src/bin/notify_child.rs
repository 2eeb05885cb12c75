//! Helper of `tests/tests/notify_dedup.rs`: a process that raises a quota warning for
//! `acme` from 100 tasks at once, with its dedup marks in `DIR/state.redb` and emails to
//! the SMTP server on 127.0.0.1:`PORT`, prints `idle SENT DEDUPLICATED` once everything
//! was delivered or deduplicated, then waits to be killed (`kill -9`) or, with `exit`,
//! exits.
//!
//! Usage: notify_child DIR PORT MONTH(0: Dec 2026, 1: Jan 2027) wait|exit

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use monetize_core::notify::{Dispatcher, NotifyConfig, RouteConfig, TemplateConfig};
use monetize_core::{CustomerId, Event, EventKind, MeterId, RedbStore};
use monetize_providers::notify::smtp::{EmailComposer, Security, SmtpChannel};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, port, month, mode) = (&args[1], &args[2], &args[3], &args[4]);
    let store = Arc::new(RedbStore::open(std::path::Path::new(dir).join("state.redb")).unwrap());
    let composer = EmailComposer::new("Billing <billing@monetize.test>").unwrap();
    let email = SmtpChannel::new(
        "127.0.0.1",
        Some(port.parse().unwrap()),
        Security::None,
        None,
        composer,
    )
    .unwrap();
    let config = NotifyConfig::new()
        .route(
            RouteConfig::new("quota-email", ["quota_warning"], "email")
                .template("quota")
                .to_customer(),
        )
        .template(
            "quota",
            TemplateConfig::new(
                "You used {{ percentage }} % of your {{ meter }} quota",
                "{{ usage }} of {{ limit }} until {{ period_end }}",
            ),
        )
        .recipient("acme", "ops@acme.test");
    let d = Dispatcher::builder(config)
        .channel("email", Arc::new(email))
        .store(store)
        .start()
        .unwrap();
    // 2026-12-07T00:20:00Z, or a month later.
    let at = 1_796_602_800 + month.parse::<u64>().unwrap() * 31 * 86_400;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move {
                d.dispatch(
                    Event::new(
                        Some(CustomerId::new("acme").unwrap()),
                        EventKind::QuotaWarning {
                            meter: MeterId::new("api_calls").unwrap(),
                            used: 800,
                            limit: 1000,
                        },
                    )
                    .at(UNIX_EPOCH + Duration::from_secs(at)),
                )
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(d.idle(Duration::from_secs(30)).await);
    let s = d.stats();
    println!("idle {} {} {}", s.sent, s.deduplicated, s.failed);
    if mode == "wait" {
        std::future::pending::<()>().await;
    }
}
