//! The quickstart: a real axum API on 127.0.0.1, monetized with one layer, driven through a
//! narrated scenario over real HTTP.
//!
//! Embedded defaults only: in-memory customer state, a redb spool and a JSON-lines ledger
//! (the local stand-in for a billing provider) in a data folder. No account, no server.
//! A `--config` file with `[[providers]]` sections also reports to Stripe, Recurly or
//! Chargebee (`examples/stripe.toml`, `recurly.toml`, `chargebee.toml`: credentials and
//! base URLs from the environment variables they name); the ledger keeps a local copy.
//!
//! Customer emails are written as `.eml` files to `<data-dir>/outbox/` and team alerts as
//! JSON lines to `<data-dir>/alerts.jsonl` (routes and templates: `examples/notify.toml`;
//! a `[notify]` table in the config file replaces them). An `[smtp]` section in the
//! config file (`examples/smtp.toml`) sends the emails over SMTP instead; `[slack]`,
//! `[pagerduty]`, `[[webhooks]]` and `[twilio]` sections (`examples/channels.toml`) add
//! channels under their names (one named `alerts` takes the team alerts' place).
//!
//! ```sh
//! cargo run --release --example quickstart                  # scenario, then serve until Ctrl-C
//! cargo run --release --example quickstart -- --exit        # scenario, then exit
//! cargo run --release --example quickstart -- --port 8080 --data-dir ./.monetize-data
//! cargo run --release --example quickstart -- --config my.toml --no-scenario  # your meters
//! STRIPE_API_KEY=sk_test_... cargo run --release --example quickstart -- --config examples/stripe.toml --exit
//! cargo run --release --example quickstart -- --help
//! ```
//!
//! Provider webhooks are served at `/webhooks/stripe`, `/webhooks/recurly` and
//! `/webhooks/chargebee` when their secrets are in the environment
//! (`STRIPE_WEBHOOK_SECRET`, `RECURLY_WEBHOOK_SECRET`, `CHARGEBEE_WEBHOOK_USER` and
//! `CHARGEBEE_WEBHOOK_PASSWORD`; a `--config` file's provider section may name others),
//! and the operator's admin routes under `/admin` when `MONETIZE_ADMIN_TOKEN` is set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use clap::Parser;
use monetize_axum::{AdminRoutes, Customer, RouterExt, Usage, UsageRoutes, webhook_route};
use monetize_core::config::Config;
use monetize_core::ledger::LedgerProvider;
use monetize_core::notify::{Dispatcher, NotifyConfig};
use monetize_core::operator::Operator;
use monetize_core::report::{ProviderRoute, RedbSpool, Reporter, ReporterHandle, ReporterOptions};
use monetize_core::webhook::WebhookProcessor;
use monetize_core::{CoreError, CustomerId, Engine, RedbStore, StateChange, StateSync};
use monetize_providers::ProvidersConfig;
use monetize_providers::notify::channels_config::ChannelsConfig;
use monetize_providers::notify::smtp::SmtpConfig;
use monetize_tower::MonetizeLayer;
use monetize_tower::identify::{ApiKey, KeyDirectory};
use serde_json::Value;

#[path = "quickstart_notify.rs"]
mod notify;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The customers of the scenario: (name, API key, plan).
const CUSTOMERS: [(&str, &str, &str); 3] = [
    ("acme", "sk_live_acme", "postpaid"),
    ("globex", "sk_live_globex", "prepaid"),
    ("initech", "sk_live_initech", "free"),
];

/// The quickstart: a demo API monetized with one layer, driven through a narrated
/// scenario over real HTTP, then served until Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "quickstart", about, long_about = None)]
struct Args {
    /// Exit after the scenario instead of serving (at once with --no-scenario).
    #[arg(long, alias = "exit-after-scenario")]
    exit: bool,
    /// The port to serve on, on 127.0.0.1 (0: any free port; a taken port falls back to
    /// a free one).
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Where the spool, the ledger and customer state live (default: a temporary folder).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Meters, plans and rules from this file (`.toml`, or `.json`) instead of the
    /// built-in `examples/quickstart.toml`; start from a copy of that file. Checked like
    /// the library checks a config: a bad file is refused, naming the field. Its
    /// `[[providers]]` sections (see `examples/stripe.toml`) add billing providers.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve the demo API without running the narrated scenario.
    #[arg(long)]
    no_scenario: bool,
}

/// What `--config FILE` holds besides the engine's configuration.
#[derive(Default)]
struct Extras {
    providers: Vec<ProviderRoute>,
    /// The `[[providers]]` sections (webhook secrets' variables, event maps).
    providers_config: ProvidersConfig,
    notify: Option<NotifyConfig>,
    smtp: Option<SmtpConfig>,
    /// `[slack]`, `[pagerduty]`, `[[webhooks]]`, `[twilio]`.
    channels: ChannelsConfig,
}

/// Takes the `notify` and `smtp` tables out of a parsed file.
fn take_notify<T, E: std::fmt::Display>(
    notify: Option<T>,
    smtp: Option<T>,
    as_notify: impl Fn(T) -> Result<NotifyConfig, E>,
    as_smtp: impl Fn(T) -> Result<SmtpConfig, E>,
) -> Result<(Option<NotifyConfig>, Option<SmtpConfig>), String> {
    let notify = notify
        .map(as_notify)
        .transpose()
        .map_err(|e| format!("[notify]: {e}"))?;
    let smtp = smtp
        .map(as_smtp)
        .transpose()
        .map_err(|e| format!("[smtp]: {e}"))?;
    Ok((notify, smtp))
}

/// The engine, the billing provider routes (`[[providers]]`), the notification config
/// (`[notify]`) and the SMTP server (`[smtp]`) from `--config FILE`, or the engine from
/// the built-in `quickstart.toml` and nothing else.
fn load(args: &Args) -> Result<(Engine, Extras), String> {
    let Some(path) = &args.config else {
        let config = Config::from_toml_str(include_str!("quickstart.toml"))
            .map_err(|e| format!("quickstart.toml: {e}"))?;
        let engine = Engine::new(config).map_err(|e| format!("quickstart.toml: {e}"))?;
        return Ok((engine, Extras::default()));
    };
    let origin = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{origin}: {e}"))?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    // Core reads everything but the `providers` sections, which monetize-providers reads,
    // and the `notify` and `smtp` tables, which the notifications read.
    let (config, providers, notify, smtp, channels) = if json {
        let providers =
            ProvidersConfig::from_json_str(&text).map_err(|e| format!("{origin}: {e}"))?;
        let mut rest: Value = serde_json::from_str(&text).map_err(|e| format!("{origin}: {e}"))?;
        let (mut notify, mut smtp, mut channels) = (None, None, ChannelsConfig::default());
        if let Some(map) = rest.as_object_mut() {
            map.remove("providers");
            notify = map.remove("notify");
            smtp = map.remove("smtp");
            channels = ChannelsConfig::take_from_json(map).map_err(|e| format!("{origin}: {e}"))?;
        }
        let (notify, smtp) =
            take_notify(notify, smtp, serde_json::from_value, serde_json::from_value)
                .map_err(|e| format!("{origin}: {e}"))?;
        let config =
            Config::from_json_str(&rest.to_string()).map_err(|e| format!("{origin}: {e}"))?;
        (config, providers, notify, smtp, channels)
    } else {
        let mut table: toml::Table = text.parse().map_err(|e| format!("{origin}: {e}"))?;
        let channels =
            ChannelsConfig::take_from_toml(&mut table).map_err(|e| format!("{origin}: {e}"))?;
        let (notify, smtp) = take_notify(
            table.remove("notify"),
            table.remove("smtp"),
            toml::Value::try_into,
            toml::Value::try_into,
        )
        .map_err(|e| format!("{origin}: {e}"))?;
        let text = toml::to_string(&table).map_err(|e| format!("{origin}: {e}"))?;
        let (core_text, providers) =
            monetize_providers::split_toml(&text).map_err(|e| format!("{origin}: {e}"))?;
        let config = Config::from_toml_str(&core_text).map_err(|e| format!("{origin}: {e}"))?;
        (config, providers, notify, smtp, channels)
    };
    let routes = monetize_providers::routes_from_config(&providers, &config)
        .map_err(|e| format!("{origin}: {e}"))?;
    let engine = Engine::new(config).map_err(|e| format!("{origin}: {e}"))?;
    Ok((
        engine,
        Extras {
            providers: routes,
            providers_config: providers,
            notify,
            smtp,
            channels,
        },
    ))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    // 1. The engine, from a config file (meters, plans, rules). A bad file is refused with
    //    the library's validation error, naming the field.
    let (engine, extras) = match load(&args) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("quickstart: {e}");
            std::process::exit(2);
        }
    };
    let Extras {
        providers,
        providers_config,
        notify: notify_config,
        smtp,
        channels,
    } = extras;
    // Routes and templates are checked now: a template mistake stops the start-up.
    let notify_config = match notify::config(notify_config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quickstart: {e}");
            std::process::exit(2);
        }
    };

    // Where the spool and the ledger live: a folder you name, or a temporary one.
    let temp;
    let data_dir = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create data dir {}: {e}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };

    // 2. Customers and their API keys (only SHA-256 digests are kept).
    let keys = KeyDirectory::new();
    for (customer, key, _) in CUSTOMERS {
        keys.insert(key, CustomerId::new(customer)?);
    }

    // Customer state (balances, status, quota usage) survives restarts in a redb store.
    let store = Arc::new(RedbStore::open(data_dir.join("state.redb"))?);
    let state_sync =
        StateSync::start(engine.clone(), store.clone(), Duration::from_secs(1)).await?;

    // Notifications: customer emails and team alerts, at most once per customer, event and
    // month (the dedup marks live in the same redb file), delivered in the background.
    let (dispatcher, where_emails_go) = match notify::start(
        notify_config,
        smtp.as_ref(),
        &channels,
        &data_dir,
        store.clone(),
    ) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("quickstart: {e}");
            std::process::exit(2);
        }
    };
    if state_sync.restored().restored > 0 {
        println!(
            "restored {} customers from {}",
            state_sync.restored().restored,
            data_dir.join("state.redb").display()
        );
    }

    // A new customer on a prepaid plan starts with the plan's initial credits; a restored
    // one keeps its balance.
    // With `--config`, a demo customer whose plan the file lacks stays on its default plan.
    for (customer, _, plan) in CUSTOMERS {
        match engine.register(customer, plan) {
            Ok(_) => {}
            Err(CoreError::UnknownPlan(_)) if args.config.is_some() => {
                engine.resolve(customer)?;
                println!("no plan `{plan}` in the config: {customer} is on the default plan");
            }
            Err(e) => return Err(e.into()),
        }
    }

    // 3. The reporter: checkpoints into the redb spool, reports closed windows to the ledger
    //    and to every billing provider of the config file, each exactly once.
    let spool = Arc::new(RedbSpool::open(data_dir.join("spool.redb"))?);
    let ledger = Arc::new(LedgerProvider::open(data_dir.join("ledger.jsonl"))?);
    let reporting = engine.reporting();
    for route in &providers {
        println!(
            "reporting to {} as well as the local ledger",
            route.provider.name()
        );
    }
    let mut routes = vec![ProviderRoute::from_config(ledger.clone(), &reporting)];
    routes.extend(providers);
    let reporter = Reporter::start(
        engine.clone(),
        spool,
        routes,
        ReporterOptions::from(&reporting),
    )?;

    // Webhooks and operator changes are remembered in the same redb file (event ids for
    // dedup, the newest value of each field they set), and re-applied here over what the
    // spool restored (its last checkpoint may predate the last delivery).
    let webhooks = WebhookProcessor::new(engine.clone(), store.clone());
    webhooks.restore().await?;

    // 4. The API, monetized with one layer.
    let usage_routes = UsageRoutes::new(engine.clone());
    let layer = MonetizeLayer::new(engine.clone(), ApiKey::new(keys))
        .credits_header(true)
        .exempt(&usage_routes.exempt_pattern())?;
    let app = Router::new()
        .route("/v1/hello", get(hello))
        .route("/v1/complete", post(complete))
        .merge(usage_routes.into_router())
        .monetize(layer)
        .route("/health", get(|| async { "ok" }));
    // Provider webhooks and the admin routes sit outside the layer: they carry no
    // customer API key (signatures, Basic auth or the admin token instead).
    let env = |k: &str| std::env::var(k).ok();
    let mut app = app;
    let mut served = Vec::new();
    for mount in monetize_providers::webhooks_with_env(&providers_config, &env)? {
        served.push(mount.path.clone());
        app = app.route(&mount.path, webhook_route(mount.source, webhooks.clone()));
    }
    let admin_token = env("MONETIZE_ADMIN_TOKEN").filter(|t| !t.is_empty());
    let admin = admin_token.is_some();
    if let Some(token) = admin_token {
        let operator = Operator::new(engine.clone()).with_webhooks(webhooks.clone());
        app = app.merge(AdminRoutes::new(operator, token.into()).into_router());
    }

    let listener = bind(args.port).await?;
    let addr = listener.local_addr()?;
    // Stopped gracefully: calls in flight finish and are metered before the last checkpoint.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    println!(
        "monetize quickstart: API on http://{addr}  (data in {})",
        data_dir.display()
    );
    for path in &served {
        println!("webhooks: POST http://{addr}{path}");
    }
    if admin {
        println!("admin routes: http://{addr}/admin/customers/{{id}} (MONETIZE_ADMIN_TOKEN)");
    }
    println!("{where_emails_go}\n");

    if !args.no_scenario {
        scenario(addr, &engine, &reporter, &ledger, &dispatcher).await?;
    }
    // From now on events are routed in the background as they come.
    let pump = dispatcher.pump(engine.clone(), Duration::from_millis(200));

    if !args.exit {
        println!("\nStill serving on http://{addr} — try:");
        println!("  curl -i http://{addr}/v1/hello -H 'x-api-key: sk_live_acme'");
        println!("  curl -i http://{addr}/v1/usage -H 'x-api-key: sk_live_globex'");
        println!("Ctrl-C reports everything still pending and exits.");
        tokio::signal::ctrl_c().await?;
    }
    let _ = stop.send(());
    // Waits for the server to finish its calls, then checkpoints and reports everything.
    let summary = reporter
        .shutdown_after(async move {
            server
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        })
        .await?;
    println!(
        "\nshutdown: {} records reported, {} pending, {} dead letters; ledger holds {} records",
        summary.records_sent,
        summary.pending_left,
        summary.dead_letters,
        ledger.len()
    );
    let saved = state_sync.shutdown().await?;
    println!("customer state saved ({saved} changed since the last sync)");
    pump.abort();
    dispatcher.take_from(&engine);
    if !dispatcher.idle(Duration::from_secs(10)).await {
        println!("notifications still pending at exit were not sent");
    }
    Ok(())
}

/// Binds the requested port; when it is taken, any free port (said on the console).
async fn bind(port: u16) -> Result<tokio::net::TcpListener, Error> {
    match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => Ok(l),
        Err(e) if port != 0 => {
            println!("port {port} is taken ({e}); using a free one");
            Ok(tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?)
        }
        Err(e) => Err(e.into()),
    }
}

async fn hello(customer: Customer) -> String {
    format!("hello, {}\n", customer.id())
}

/// A pretend completion endpoint: reports one token per word of the prompt, plus the reply.
async fn complete(usage: Usage, body: String) -> axum::Json<Value> {
    let prompt_tokens = body.split_whitespace().count() as u64;
    let reply = "monetize meters this reply";
    let tokens = prompt_tokens + reply.split_whitespace().count() as u64;
    usage.add("tokens", tokens);
    axum::Json(serde_json::json!({ "reply": reply, "tokens": tokens }))
}

struct Client {
    http: reqwest::Client,
    base: String,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Client {
    async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Result<Answer, Error> {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "POST" => self.http.post(&url),
            _ => self.http.get(&url),
        };
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        if let Some(b) = body {
            req = req.body(b.to_owned());
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.text().await?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

fn key_of(customer: &str) -> &'static str {
    CUSTOMERS
        .iter()
        .find(|(c, _, _)| *c == customer)
        .map_or("", |(_, k, _)| k)
}

async fn scenario(
    addr: SocketAddr,
    engine: &Engine,
    reporter: &ReporterHandle,
    ledger: &LedgerProvider,
    dispatcher: &Dispatcher,
) -> Result<(), Error> {
    let c = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        base: format!("http://{addr}"),
    };
    let step = |n: u32, text: &str| println!("[{n}] {text}");

    step(
        1,
        "acme (postpaid) calls the API; every call is metered and billed later",
    );
    for _ in 0..4 {
        let a = c
            .send("GET", "/v1/hello", Some(key_of("acme")), None)
            .await?;
        println!("    GET /v1/hello -> {} {}", a.status, a.body.trim());
    }

    step(
        2,
        "acme calls the completion endpoint; the handler reports the tokens it used",
    );
    let a = c
        .send(
            "POST",
            "/v1/complete",
            Some(key_of("acme")),
            Some("count the words in this prompt"),
        )
        .await?;
    println!("    POST /v1/complete -> {} {}", a.status, a.body.trim());

    step(
        3,
        "globex (prepaid, 3 credits, 1 credit per call) spends its credits, then gets 402",
    );
    loop {
        let a = c
            .send("GET", "/v1/hello", Some(key_of("globex")), None)
            .await?;
        if a.status == 200 {
            println!(
                "    GET /v1/hello -> 200, X-Credits-Remaining: {}",
                header(&a, "x-credits-remaining")
            );
        } else {
            println!("    GET /v1/hello -> {} {}", a.status, a.body.trim());
            break;
        }
    }

    step(
        4,
        "initech (free plan, 5 calls a month) goes over its quota and gets 429",
    );
    for _ in 0..6 {
        let a = c
            .send("GET", "/v1/hello", Some(key_of("initech")), None)
            .await?;
        if a.status == 200 {
            println!("    GET /v1/hello -> 200");
        } else {
            println!(
                "    GET /v1/hello -> {} Retry-After: {} {}",
                a.status,
                header(&a, "retry-after"),
                a.body.trim()
            );
        }
    }

    step(
        5,
        "requests without a key, or with an unknown key, are refused with 401",
    );
    let a = c.send("GET", "/v1/hello", None, None).await?;
    println!("    no key      -> {} {}", a.status, a.body.trim());
    let a = c
        .send("GET", "/v1/hello", Some("sk_live_nobody"), None)
        .await?;
    println!("    unknown key -> {} {}", a.status, a.body.trim());

    step(6, "each customer sees its own usage, and only its own");
    for (customer, key, _) in CUSTOMERS {
        let a = c.send("GET", "/v1/usage", Some(key), None).await?;
        let v: Value = serde_json::from_str(&a.body).unwrap_or(Value::Null);
        let calls = v["meters"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["meter"] == "api_calls"))
            .map_or(Value::Null, |m| m["used"].clone());
        println!(
            "    {customer:<8} GET /v1/usage -> {} plan={} balance={} api_calls={}",
            a.status, v["plan"], v["balance"], calls
        );
    }
    let a = c
        .send("GET", "/v1/usage/acme", Some(key_of("globex")), None)
        .await?;
    println!(
        "    globex asks for acme's usage -> {} {}",
        a.status,
        a.body.trim()
    );

    step(
        7,
        "an operator blocks acme; acme keeps calling and is refused with 403",
    );
    engine.apply("acme", StateChange::Blocked(true))?;
    for _ in 0..2 {
        let a = c
            .send("GET", "/v1/hello", Some(key_of("acme")), None)
            .await?;
        println!("    GET /v1/hello -> {} {}", a.status, a.body.trim());
    }
    engine.apply("acme", StateChange::Blocked(false))?;

    step(
        8,
        "the events become customer emails and team alerts, once per customer, event and month",
    );
    dispatcher.take_from(engine);
    dispatcher.idle(Duration::from_secs(10)).await;
    let s = dispatcher.stats();
    println!(
        "    {} sent, {} already sent this month (dedup survives restarts), {} failed",
        s.sent, s.deduplicated, s.failed
    );

    step(
        9,
        "the reporter checkpoints usage into the spool and reports it to the ledger, once",
    );
    reporter.flush_now().await?;
    let mut records = ledger.records();
    records.sort_by(|a, b| {
        (a.customer.as_str(), a.meter.as_str()).cmp(&(b.customer.as_str(), b.meter.as_str()))
    });
    println!(
        "    {:<8} {:<13} {:>8}  idempotency key",
        "customer", "meter", "quantity"
    );
    for r in &records {
        println!(
            "    {:<8} {:<13} {:>8}  {}",
            r.customer.as_str(),
            r.meter.as_str(),
            r.quantity,
            r.idempotency_key
        );
    }

    println!("\nFinal usage table (this period):");
    println!(
        "    {:<8} {:<9} {:>12} {:>9} {:>7} {:>12}",
        "customer", "plan", "balance", "api_calls", "tokens", "egress_bytes"
    );
    for (customer, _, _) in CUSTOMERS {
        if let Some(u) = engine.usage(customer) {
            let used = |m: &str| {
                u.meters
                    .iter()
                    .find(|x| x.meter.as_str() == m)
                    .map_or(0, |x| x.used)
            };
            println!(
                "    {:<8} {:<9} {:>12} {:>9} {:>7} {:>12}",
                customer,
                u.plan.as_ref().map_or("-", |p| p.as_str()),
                u.balance,
                used("api_calls"),
                used("tokens"),
                used("egress_bytes")
            );
        }
    }
    let billed: u64 = records
        .iter()
        .filter(|r| r.meter.as_str() == "api_calls")
        .map(|r| r.quantity)
        .sum();
    println!(
        "\nledger: {} records, {billed} api_calls billed",
        records.len()
    );
    Ok(())
}
