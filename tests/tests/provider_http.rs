//! The real provider clients, through the real reporter, against HTTP servers that fail
//! the way networks and billing APIs do: 500s, 429s with and without `Retry-After`,
//! answers slower than the client's timeout (after billing), connections closed before
//! and after billing, an expiring Stripe stream session, Chargebee batches with
//! `failed_events`. Each provider's final ledger equals the usage recorded, no
//! idempotency key is billed twice, and refused records reach the dead letter list with
//! the provider's message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use monetize_core::report::{ProviderRoute, RedbSpool, Reporter, ReporterOptions, Spool};
use monetize_core::{BillingProvider, CustomerId, Engine, MeterId};
use monetize_providers::chargebee::ChargebeeProvider;
use monetize_providers::http::HttpSettings;
use monetize_providers::recurly::RecurlyProvider;
use monetize_providers::stripe::{StripeApi, StripeProvider};
use monetize_providers::{Mapping, MeterTarget};
use monetize_tests::billing_mock::{Handler, MockRequest, MockServer, Reply};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use tokio::time::Instant;

const CLIENT_TIMEOUT: Duration = Duration::from_millis(300);
const CUSTOMERS: [&str; 3] = ["c0", "c1", "c2"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fault {
    /// 500 before billing.
    Error500,
    /// 429 with `Retry-After: 1`.
    Throttled,
    /// 429 without a hint.
    ThrottledBare,
    /// Bills, then answers after the client gave up.
    SlowAfterBilling,
    /// Bills, then closes the connection without answering.
    DropAfterBilling,
    /// Closes the connection without billing.
    DropBefore,
}

const FAULTS: [Fault; 6] = [
    Fault::Error500,
    Fault::Throttled,
    Fault::ThrottledBare,
    Fault::SlowAfterBilling,
    Fault::DropAfterBilling,
    Fault::DropBefore,
];

/// The provider's books, and the faults it injected.
struct Books {
    rng: Mutex<StdRng>,
    faults_on: AtomicBool,
    injected: Mutex<HashMap<Fault, u64>>,
    /// Billed usage: key -> (customer, quantity, times created).
    ledger: Mutex<HashMap<String, (String, u64, u64)>>,
    requests: AtomicU64,
}

impl Books {
    fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            faults_on: AtomicBool::new(true),
            injected: Mutex::default(),
            ledger: Mutex::default(),
            requests: AtomicU64::new(0),
        })
    }

    fn draw(&self) -> Option<Fault> {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) as usize;
        if !self.faults_on.load(Ordering::SeqCst) {
            return None;
        }
        let roll: f64 = self.rng.lock().unwrap().random();
        // every fault early (every other request), then at random
        let fault = match roll {
            _ if n < 2 * FAULTS.len() => {
                if n % 2 == 1 {
                    return None;
                }
                FAULTS[n / 2]
            }
            r if r < 0.08 => Fault::Error500,
            r if r < 0.10 => Fault::Throttled,
            r if r < 0.12 => Fault::ThrottledBare,
            r if r < 0.20 => Fault::SlowAfterBilling,
            r if r < 0.28 => Fault::DropAfterBilling,
            r if r < 0.34 => Fault::DropBefore,
            _ => return None,
        };
        *self.injected.lock().unwrap().entry(fault).or_default() += 1;
        Some(fault)
    }

    fn covered(&self) -> bool {
        let injected = self.injected.lock().unwrap();
        FAULTS
            .iter()
            .all(|f| injected.get(f).copied().unwrap_or(0) > 0)
    }

    fn injected(&self, fault: Fault) -> u64 {
        self.injected
            .lock()
            .unwrap()
            .get(&fault)
            .copied()
            .unwrap_or(0)
    }

    /// Bills a key; `dedupe`: a key already held is not billed again (Stripe,
    /// Chargebee); otherwise every call bills (Recurly).
    fn bill(&self, key: &str, customer: &str, quantity: u64, dedupe: bool) -> bool {
        let mut ledger = self.ledger.lock().unwrap();
        let entry = ledger
            .entry(key.to_owned())
            .or_insert_with(|| (customer.to_owned(), 0, 0));
        if dedupe && entry.2 > 0 {
            return false;
        }
        entry.1 += quantity;
        entry.2 += 1;
        true
    }

    fn total(&self, customer: &str) -> u64 {
        let ledger = self.ledger.lock().unwrap();
        ledger
            .values()
            .filter(|(c, _, _)| c == customer)
            .map(|(_, q, _)| q)
            .sum()
    }

    fn billed_twice(&self) -> usize {
        self.ledger
            .lock()
            .unwrap()
            .values()
            .filter(|(_, _, n)| *n > 1)
            .count()
    }

    fn len(&self) -> usize {
        self.ledger.lock().unwrap().len()
    }

    /// The answer for a fault that strikes before billing, if any.
    fn before(fault: Option<Fault>) -> Option<Reply> {
        let err = |code: &str| serde_json::json!({"error": {"type": "api_error", "code": code, "message": code}});
        match fault {
            Some(Fault::Error500) => Some(Reply::json(500, err("api_error"))),
            Some(Fault::Throttled) => {
                Some(Reply::json(429, err("rate_limit")).with_header("Retry-After", "1"))
            }
            Some(Fault::ThrottledBare) => Some(Reply::json(429, err("rate_limit"))),
            Some(Fault::DropBefore) => Some(Reply::Drop),
            _ => None,
        }
    }

    /// The answer once billed.
    fn after(fault: Option<Fault>, ok: Reply) -> Reply {
        match fault {
            Some(Fault::SlowAfterBilling) => ok.delayed(CLIENT_TIMEOUT * 2),
            Some(Fault::DropAfterBilling) => Reply::Drop,
            _ => ok,
        }
    }
}

fn http() -> HttpSettings {
    HttpSettings::default().with_timeout(CLIENT_TIMEOUT)
}

/// Records usage while the provider fails, until every fault has struck; then heals the
/// network and shuts down gracefully. Returns the usage recorded per customer and the
/// spool.
async fn run(
    provider: Arc<dyn BillingProvider>,
    books: &Arc<Books>,
    customers: &[&str],
    enough: usize,
) -> (HashMap<String, u64>, Arc<RedbSpool>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::for_tests(&["calls"]);
    let spool = Arc::new(RedbSpool::open(dir.path().join("spool.redb")).unwrap());
    let options = ReporterOptions::default()
        .with_checkpoint_interval(Duration::from_millis(20))
        .with_window(Duration::from_secs(1))
        .with_call_timeout(Duration::from_secs(20))
        .with_min_backoff(Duration::from_millis(10))
        .with_max_backoff(Duration::from_millis(200))
        .with_max_retries(3)
        .with_shutdown_timeout(Duration::from_secs(60));
    let route = ProviderRoute::new(provider).with_report_interval(Duration::from_millis(50));
    let reporter = Reporter::start(engine.clone(), spool.clone(), vec![route], options)
        .expect("the reporter starts");

    let mut rng = StdRng::seed_from_u64(7);
    let mut expected: HashMap<String, u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(books.covered() && books.len() >= enough) {
        assert!(
            Instant::now() < deadline,
            "faults not all exercised: {:?}, {} billed",
            books.injected.lock().unwrap(),
            books.len()
        );
        let customer = customers[rng.random_range(0..customers.len())];
        let value = rng.random_range(1..=10u64);
        engine.record_by_id(customer, "calls", value).unwrap();
        *expected.entry(customer.to_owned()).or_default() += value;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    books.faults_on.store(false, Ordering::SeqCst);
    let summary = reporter.shutdown().await.unwrap();
    println!(
        "requests {}, faults {:?}, summary {summary:?}",
        books.requests.load(Ordering::SeqCst),
        books.injected.lock().unwrap()
    );
    assert_eq!(
        summary.pending_left, 0,
        "everything delivered or dead-lettered"
    );
    assert!(summary.stats.call_failures > 0);
    (expected, spool, dir)
}

fn stripe_mapping() -> Mapping {
    let mut m = Mapping::new().with_meter(
        MeterId::new("calls").unwrap(),
        MeterTarget::new("api_requests"),
    );
    for c in CUSTOMERS {
        m = m.with_customer(CustomerId::new(c).unwrap(), format!("cus_{c}"));
    }
    m
}

fn stripe_v2_fake(books: Arc<Books>) -> Handler {
    Arc::new(move |req: MockRequest| {
        if req.method != "POST" || req.path() != "/v2/billing/meter_events" {
            return Reply::json(404, serde_json::json!({}));
        }
        if req.header("authorization") != Some("Bearer sk_test_x") {
            return Reply::json(401, serde_json::json!({"error": {"message": "bad key"}}));
        }
        let fault = books.draw();
        if let Some(r) = Books::before(fault) {
            return r;
        }
        let b = req.json();
        let id = b["identifier"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            req.header("idempotency-key"),
            Some(id.as_str()),
            "Idempotency-Key = identifier"
        );
        let customer = b["payload"]["stripe_customer_id"]
            .as_str()
            .unwrap_or_default();
        let value: u64 = b["payload"]["value"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap();
        let customer = customer.trim_start_matches("cus_").to_owned();
        // a replayed Idempotency-Key gets the first answer back: billed once either way
        books.bill(&id, &customer, value, true);
        Books::after(
            fault,
            Reply::json(
                200,
                serde_json::json!({"object": "v2.billing.meter_event", "identifier": id}),
            ),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_meter_events_bill_every_unit_once_through_faults() {
    let books = Books::new(1);
    let server = MockServer::start(stripe_v2_fake(Arc::clone(&books))).await;
    let provider = StripeProvider::builder(SecretString::from("sk_test_x"))
        .api(StripeApi::MeterEventsV2)
        .base_url(server.url())
        .mapper(Arc::new(stripe_mapping()))
        .http(http())
        .build()
        .unwrap();
    let mut customers = CUSTOMERS.to_vec();
    customers.push("stranger"); // not mapped: refused for good
    let (expected, spool, _dir) = run(Arc::new(provider), &books, &customers, 30).await;
    for c in CUSTOMERS {
        assert_eq!(books.total(c), expected[c], "billed total of {c}");
    }
    assert_eq!(books.billed_twice(), 0);
    let dead = spool.dead_letters(Some("stripe")).unwrap();
    assert!(!dead.is_empty());
    assert!(dead.iter().all(|d| {
        d.record.customer.as_str() == "stranger"
            && d.reason
                .contains("no stripe id is mapped for customer `stranger`")
    }));
    let dead_total: u64 = dead.iter().map(|d| d.record.quantity).sum();
    assert_eq!(dead_total, expected["stranger"]);
}

fn stripe_stream_fake(
    books: Arc<Books>,
    sessions: Arc<AtomicU64>,
    expired: Arc<AtomicU64>,
) -> Handler {
    // each session token takes three stream calls, then expires
    let state: Arc<Mutex<(String, u32)>> = Arc::new(Mutex::new((String::new(), 0)));
    Arc::new(
        move |req: MockRequest| match (req.method.as_str(), req.path()) {
            ("POST", "/v2/billing/meter_event_session") => {
                let n = sessions.fetch_add(1, Ordering::SeqCst);
                let token = format!("tok_{n}");
                *state.lock().unwrap() = (token.clone(), 3);
                let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(900);
                Reply::json(
                    200,
                    serde_json::json!({"id": format!("mes_{n}"), "object": "v2.billing.meter_event_session",
                "authentication_token": token, "expires_at": expires.to_string(), "created": "2026-01-01T00:00:00Z", "livemode": false}),
                )
            }
            ("POST", "/stream/v2/billing/meter_event_stream") => {
                {
                    let mut s = state.lock().unwrap();
                    let presented = req
                        .header("authorization")
                        .unwrap_or_default()
                        .trim_start_matches("Bearer ")
                        .to_owned();
                    if presented != s.0 || s.1 == 0 {
                        expired.fetch_add(1, Ordering::SeqCst);
                        return Reply::json(
                            401,
                            serde_json::json!({"error": {"type": "temporary_session_expired",
                        "code": "billing_meter_event_session_expired", "message": "expired", "doc_url": "x"}}),
                        );
                    }
                    s.1 -= 1;
                }
                let fault = books.draw();
                if let Some(r) = Books::before(fault) {
                    return r;
                }
                let events = req.json()["events"].as_array().cloned().unwrap_or_default();
                assert!(events.len() <= 100);
                for e in events {
                    let customer = e["payload"]["stripe_customer_id"]
                        .as_str()
                        .unwrap_or_default()
                        .trim_start_matches("cus_");
                    let value: u64 = e["payload"]["value"]
                        .as_str()
                        .unwrap_or("0")
                        .parse()
                        .unwrap();
                    // the stream deduplicates on identifier
                    books.bill(
                        e["identifier"].as_str().unwrap_or_default(),
                        customer,
                        value,
                        true,
                    );
                }
                Books::after(fault, Reply::json(200, serde_json::json!({})))
            }
            _ => Reply::json(404, serde_json::json!({})),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_stream_bills_every_unit_once_across_expiring_sessions() {
    let books = Books::new(2);
    let (sessions, expired) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let server = MockServer::start(stripe_stream_fake(
        Arc::clone(&books),
        sessions.clone(),
        expired.clone(),
    ))
    .await;
    let provider = StripeProvider::builder(SecretString::from("sk_test_x"))
        .api(StripeApi::MeterEventStream)
        .base_url(server.url())
        .stream_url(format!("{}/stream", server.url()))
        .mapper(Arc::new(stripe_mapping()))
        .http(http())
        .build()
        .unwrap();
    let (expected, _spool, _dir) = run(Arc::new(provider), &books, &CUSTOMERS, 30).await;
    for c in CUSTOMERS {
        assert_eq!(books.total(c), expected[c], "billed total of {c}");
    }
    assert_eq!(books.billed_twice(), 0);
    assert!(expired.load(Ordering::SeqCst) > 0, "sessions expired");
    assert!(sessions.load(Ordering::SeqCst) > 1, "and were recreated");
}

fn recurly_fake(books: Arc<Books>) -> Handler {
    // Recurly keeps every usage it is sent: (merchant_tag, usage_timestamp)
    let usages: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    Arc::new(move |req: MockRequest| {
        if req.header("accept") != Some("application/vnd.recurly.v2021-02-25+json") {
            return Reply::json(
                406,
                serde_json::json!({"error": {"type": "invalid_api_version", "message": "no version"}}),
            );
        }
        let Some(sub) = req
            .path()
            .strip_prefix("/subscriptions/")
            .and_then(|p| p.strip_suffix("/add_ons/code-calls/usage"))
            .map(str::to_owned)
        else {
            return Reply::json(
                404,
                serde_json::json!({"error": {"type": "not_found", "message": "no route"}}),
            );
        };
        match req.method.as_str() {
            "GET" => {
                let (begin, end) = (
                    req.query("begin_time").unwrap(),
                    req.query("end_time").unwrap(),
                );
                let data: Vec<serde_json::Value> = usages
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, ts)| *ts >= begin && *ts <= end)
                    .map(|(tag, ts)| serde_json::json!({"object": "usage", "merchant_tag": tag, "usage_timestamp": ts}))
                    .collect();
                Reply::json(
                    200,
                    serde_json::json!({"object": "list", "has_more": false, "data": data}),
                )
            }
            "POST" => {
                let fault = books.draw();
                if let Some(r) = Books::before(fault) {
                    return r;
                }
                let b = req.json();
                let tag = b["merchant_tag"].as_str().unwrap_or_default().to_owned();
                let ts = b["usage_timestamp"].as_str().unwrap_or_default().to_owned();
                books.bill(&tag, &sub, b["amount"].as_u64().unwrap_or(0), false);
                usages.lock().unwrap().push((tag, ts));
                Books::after(
                    fault,
                    Reply::json(201, serde_json::json!({"object": "usage"})),
                )
            }
            _ => Reply::json(405, serde_json::json!({})),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurly_checks_before_resending_so_nothing_is_billed_twice() {
    let books = Books::new(3);
    let server = MockServer::start(recurly_fake(Arc::clone(&books))).await;
    let provider = RecurlyProvider::builder(SecretString::from("rk_x"))
        .base_url(server.url())
        .mapper(Arc::new(
            Mapping::new().with_same_customer_ids(true).with_meter(
                MeterId::new("calls").unwrap(),
                MeterTarget::new("code-calls"),
            ),
        ))
        .http(http())
        .build()
        .unwrap();
    // Recurly does not deduplicate: the same record sent blindly twice is billed twice.
    {
        let blind = Books::new(99);
        blind.faults_on.store(false, Ordering::SeqCst);
        let s = MockServer::start(recurly_fake(Arc::clone(&blind))).await;
        let p = RecurlyProvider::builder(SecretString::from("rk_x"))
            .base_url(s.url())
            .mapper(Arc::new(
                Mapping::new().with_same_customer_ids(true).with_meter(
                    MeterId::new("calls").unwrap(),
                    MeterTarget::new("code-calls"),
                ),
            ))
            .build()
            .unwrap();
        let r = monetize_core::UsageRecord::new(
            "i",
            "recurly",
            MeterId::new("calls").unwrap(),
            CustomerId::new("c0").unwrap(),
            60,
            60,
            0,
            5,
        );
        p.report(std::slice::from_ref(&r)).await.unwrap();
        p.report(std::slice::from_ref(&r)).await.unwrap();
        assert_eq!(blind.billed_twice(), 1, "a blind resend duplicates");
        // ... while a resend marked as such (attempts > 0) looks first
        let mut again = r.clone();
        again.attempts = 1;
        p.report(&[again]).await.unwrap();
        assert_eq!(blind.total("c0"), 10);
    }
    let (expected, _spool, _dir) = run(Arc::new(provider), &books, &CUSTOMERS, 30).await;
    for c in CUSTOMERS {
        assert_eq!(books.total(c), expected[c], "billed total of {c}");
    }
    // Records billed before their answer was lost were resent only after a look-up.
    assert!(books.injected(Fault::DropAfterBilling) + books.injected(Fault::SlowAfterBilling) > 0);
    assert_eq!(books.billed_twice(), 0, "no merchant_tag billed twice");
}

fn chargebee_fake(books: Arc<Books>) -> Handler {
    Arc::new(move |req: MockRequest| {
        if req.method != "POST" || req.path() != "/ingest/api/v2/batch/usage_events" {
            return Reply::json(
                404,
                serde_json::json!({"message": "no route", "api_error_code": "resource_not_found"}),
            );
        }
        let fault = books.draw();
        if let Some(r) = Books::before(fault) {
            return r;
        }
        let events = req.json()["events"].as_array().cloned().unwrap_or_default();
        assert!(events.len() <= 500);
        let mut failed = Vec::new();
        for e in events {
            let id = e["deduplication_id"].as_str().unwrap_or_default();
            let sub = e["subscription_id"].as_str().unwrap_or_default();
            if sub == "sub_cancelled" {
                failed.push(serde_json::json!({"deduplication_id": id, "error_code": "subscription_cancelled",
                    "error_message": "Subscription sub_cancelled is cancelled"}));
                continue;
            }
            books.bill(
                id,
                sub,
                e["properties"]["quantity"].as_u64().unwrap_or(0),
                true,
            );
        }
        Books::after(
            fault,
            Reply::json(
                200,
                serde_json::json!({"batch_id": "b1", "failed_events": failed}),
            ),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chargebee_batches_bill_once_and_failed_events_reach_the_dead_letter_list() {
    let books = Books::new(4);
    let server = MockServer::start(chargebee_fake(Arc::clone(&books))).await;
    let provider = ChargebeeProvider::builder(SecretString::from("cb_x"), "acme-test")
        .base_url(format!("{}/api/v2", server.url()))
        .ingest_url(format!("{}/ingest/api/v2", server.url()))
        .mapper(Arc::new(
            Mapping::new()
                .with_same_customer_ids(true)
                .with_customer(CustomerId::new("gone").unwrap(), "sub_cancelled")
                .with_meter(
                    MeterId::new("calls").unwrap(),
                    MeterTarget::new("calls-USD"),
                ),
        ))
        .http(http())
        .build()
        .unwrap();
    let mut customers = CUSTOMERS.to_vec();
    customers.push("gone");
    let (expected, spool, _dir) = run(Arc::new(provider), &books, &customers, 30).await;
    for c in CUSTOMERS {
        assert_eq!(books.total(c), expected[c], "billed total of {c}");
    }
    assert_eq!(books.billed_twice(), 0);
    let dead = spool.dead_letters(Some("chargebee")).unwrap();
    assert!(
        dead.iter().all(|d| d.record.customer.as_str() == "gone"
            && d.reason.contains("Subscription sub_cancelled is cancelled")),
        "{dead:?}"
    );
    assert_eq!(
        dead.iter().map(|d| d.record.quantity).sum::<u64>(),
        expected["gone"]
    );
}
