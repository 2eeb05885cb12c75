//! The minimal axum app of the HTTP-layer benchmark (issue 3), in its variants.
//!
//! Shared by `benches/http_layer.rs` (criterion), `src/bin/http_driver.rs` (callgrind) and
//! `src/bin/http_server.rs` (wrk), which include this file with `#[path]` so that the three
//! measurements run exactly the same app. It is not part of the `monetize_benches` library.
//!
//! One route, `GET /v1/hello`, answering `hello`:
//!
//! - `plain`: the router alone;
//! - `monetize`: `RouterExt::monetize(MonetizeLayer::new(engine, ApiKey::new(keys)))` with
//!   [`CUSTOMERS`] customers, each with its own API key (`KeyDirectory::new()`, as the
//!   quickstart builds it: one SHA-256 per request), the default rules, two meters (`api_calls`,
//!   a count on `/v1/*` 2xx, priced; `requests`, a count of every request), all customers on
//!   a prepaid plan with a balance nothing can spend; the handler is the plain app's;
//! - `monetize-router`: the same layer wrapped around the whole router
//!   (`RouterExt::monetize_router`, one service for the app, no per-route box) with a
//!   `RouteTable` of the app's one route, so `/v1/*` still matches the template;
//! - `monetize-tokens`: `monetize-router` with the second meter the sum of handler-reported
//!   `tokens` instead, the handler adding [`TOKENS`] through the `Usage` extractor (the cost
//!   of handler-reported usage; the handler differs from the plain app's);
//! - `monetize-cached`: the same as `monetize` with `KeyDirectory::with_verified_cache` (a key seen
//!   before costs a MAC and a cache read instead of a SHA-256);
//! - `governor`: `tower_governor` alone, keyed per client on the `x-api-key` header (a
//!   custom `KeyExtractor`: 0.8 ships only IP-based and global ones), with a quota that
//!   never refuses;
//! - `governor-router`: `governor` wrapped around the whole router (`GovernorLayer::layer`
//!   on the finalized router, no per-route box): the peer of `monetize-router`;
//! - `governor-ip`: `tower_governor` alone with its default peer-IP key extractor; its
//!   requests carry a fixed `ConnectInfo<SocketAddr>` extension in-process (the server
//!   uses `into_make_service_with_connect_info`);
//! - `plain-ci`: the plain app with that `ConnectInfo` extension in every request, the
//!   baseline of `governor-ip` (the extension costs an allocation per request);
//! - `noop-layer`: the plain app with `route_layer(Identity)`, a layer that does nothing:
//!   what axum charges for any route layer (a boxed route, a boxed future per request),
//!   which the monetize and governor variants pay too.
//!
//! Layers are applied with `Router::route_layer` (what `RouterExt::monetize` does), so all
//! peers sit at the same place: on the route, after routing; `monetize-router` is the
//! exception, around the router. Every router is finalized with
//! `with_state(())`, as `axum::serve` does per connection (without it axum converts the
//! handler into a route, boxing it, on every request).

use axum::Router;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::get;
use http::{HeaderName, HeaderValue, Request};
use monetize_axum::{AxumMonetize, RouterExt, Usage};
use monetize_core::config::{Config, MeterConfig, PlanConfig, ValueConfig};
use monetize_core::{CustomerId, Engine};
use monetize_tower::identify::{ApiKey, KeyDigest, KeyDirectory};
use monetize_tower::{MonetizeLayer, RouteTable};
use tower::{Layer, ServiceExt};
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

/// Customers, each with its own API key; requests rotate over all of them.
pub const CUSTOMERS: usize = 1_000;

/// Tokens the monetized handler reports per request.
pub const TOKENS: u64 = 3;

/// The prepaid balance of every customer (micro-credits): at 1 micro-credit a call,
/// nothing a benchmark does can spend it, so the `credits_exhausted` rule never blocks.
pub const CREDITS: i64 = 1_000_000_000_000_000;

/// The header the API key travels in.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The route every variant serves.
pub const PATH: &str = "/v1/hello";

/// The body every variant answers.
pub const BODY: &str = "hello";

/// The app variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The router alone.
    Plain,
    /// The full monetize layer, default key directory (SHA-256 per request).
    Monetize,
    /// The full monetize layer, key directory with the verified-key cache.
    MonetizeCached,
    /// The full monetize layer around the whole router, templates from a `RouteTable`.
    MonetizeRouter,
    /// `MonetizeRouter` with handler-reported tokens as the second meter.
    MonetizeTokens,
    /// `tower_governor` alone, keyed on `x-api-key`.
    Governor,
    /// `Governor` around the whole router.
    GovernorRouter,
    /// `tower_governor` alone, keyed on the peer IP (`ConnectInfo`).
    GovernorIp,
    /// The router alone, requests carrying `ConnectInfo` (baseline of `GovernorIp`).
    PlainCi,
    /// The router with a route layer that does nothing (`tower::layer::util::Identity`).
    NoopLayer,
}

impl Variant {
    /// Every variant, in the order they are reported.
    pub const ALL: [Variant; 10] = [
        Variant::Plain,
        Variant::NoopLayer,
        Variant::Monetize,
        Variant::MonetizeRouter,
        Variant::MonetizeTokens,
        Variant::MonetizeCached,
        Variant::Governor,
        Variant::GovernorRouter,
        Variant::PlainCi,
        Variant::GovernorIp,
    ];

    /// The variant's name on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Monetize => "monetize",
            Variant::MonetizeCached => "monetize-cached",
            Variant::MonetizeRouter => "monetize-router",
            Variant::MonetizeTokens => "monetize-tokens",
            Variant::Governor => "governor",
            Variant::GovernorRouter => "governor-router",
            Variant::GovernorIp => "governor-ip",
            Variant::PlainCi => "plain-ci",
            Variant::NoopLayer => "noop-layer",
        }
    }

    /// Whether requests to this variant carry a `ConnectInfo<SocketAddr>` extension
    /// (in-process) or the server must provide one (over TCP).
    pub fn connect_info(self) -> bool {
        matches!(self, Variant::GovernorIp | Variant::PlainCi)
    }

    /// Whether the handler reports tokens through the `Usage` extractor (and the second
    /// meter sums them).
    pub fn tokens(self) -> bool {
        self == Variant::MonetizeTokens
    }

    /// What the monetized variants meter after `n` requests: (`api_calls`, the second
    /// meter: `requests`, or `tokens` for [`Variant::MonetizeTokens`]).
    pub fn expected(self, n: u64) -> (u64, u64) {
        (n, if self.tokens() { n * TOKENS } else { n })
    }

    /// The variant named `s`.
    pub fn parse(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == s)
    }

    /// All names, for usage messages.
    pub fn names() -> String {
        Variant::ALL.map(Variant::name).join("|")
    }
}

/// The API key of customer `i` (the wrk Lua script builds the same strings).
pub fn api_key(i: usize) -> String {
    format!("sk_test_{i:06}_0123456789abcdef")
}

/// The id of customer `i`.
pub fn customer_id(i: usize) -> String {
    format!("cus_{i:06}")
}

/// The `x-api-key` values of all customers, in order.
pub fn key_values() -> Vec<HeaderValue> {
    (0..CUSTOMERS)
        .map(|i| HeaderValue::from_str(&api_key(i)).expect("ASCII key"))
        .collect()
}

/// The peer address the in-process requests of `connect_info` variants come from.
pub const PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 40_000));

/// A `GET /v1/hello` request to `variant` carrying `key`.
pub fn request(variant: Variant, key: &HeaderValue) -> Request<Body> {
    let mut req = Request::new(Body::empty());
    *req.uri_mut() = http::Uri::from_static(PATH);
    req.headers_mut().insert(X_API_KEY, key.clone());
    if variant.connect_info() {
        req.extensions_mut().insert(ConnectInfo(PEER));
    }
    req
}

/// The engine of the monetized variants: two meters, one prepaid plan, default rules.
/// The second meter counts every request, or with `tokens` sums the handler-reported
/// tokens.
pub fn config(tokens: bool) -> Config {
    let second = if tokens {
        MeterConfig::sum("tokens", ValueConfig::Reported("tokens".into()))
    } else {
        MeterConfig::count("requests")
    };
    Config::builder()
        .meter(MeterConfig::count("api_calls").route("/v1/*").status("2xx"))
        .meter(second)
        .plan(
            PlanConfig::new("prepaid")
                .prepaid(CREDITS)
                .price("api_calls", 1),
        )
        .default_plan("prepaid")
        .build()
}

/// An engine on [`config`] with the [`CUSTOMERS`] customers registered on the prepaid
/// plan, and their keys in a directory.
pub fn engine_and_keys(cached: bool, tokens: bool) -> (Engine, KeyDirectory) {
    let engine = Engine::new(config(tokens)).expect("bench config");
    let keys = if cached {
        KeyDirectory::with_verified_cache(2 * CUSTOMERS)
    } else {
        KeyDirectory::new()
    };
    for i in 0..CUSTOMERS {
        engine
            .register(&customer_id(i), "prepaid")
            .expect("register");
    }
    keys.extend_digests((0..CUSTOMERS).map(|i| {
        let id = CustomerId::new(customer_id(i)).expect("customer id");
        (KeyDigest::of(api_key(i)), id)
    }));
    (engine, keys)
}

async fn hello() -> &'static str {
    BODY
}

async fn hello_metered(usage: Usage) -> &'static str {
    usage.add("tokens", TOKENS);
    BODY
}

/// A `tower_governor` key extractor on the `x-api-key` header (tower_governor 0.8 ships
/// only IP-based and global extractors; the trait is public).
#[derive(Clone, Copy, Debug)]
pub struct ApiKeyHeader;

impl KeyExtractor for ApiKeyHeader {
    type Key = HeaderValue;

    fn extract<T>(&self, req: &Request<T>) -> Result<HeaderValue, GovernorError> {
        req.headers()
            .get(X_API_KEY)
            .cloned()
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// The governor variants' configuration, keyed on `x-api-key`: one cell every
/// nanosecond and a burst of a million, so it never refuses.
fn governor_config() -> tower_governor::governor::GovernorConfig<
    ApiKeyHeader,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
> {
    GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000)
        .key_extractor(ApiKeyHeader)
        .finish()
        .expect("governor config")
}

/// A variant's app: a router (possibly with route layers), or the monetize service
/// wrapped around one.
#[derive(Clone)]
pub enum App {
    /// A finalized router.
    Routed(Router),
    /// The monetize layer around the whole router.
    Wrapped(AxumMonetize<Router, RouteTable>),
    /// `tower_governor` around the whole router.
    Governed(GovernedRouter),
}

/// `tower_governor`'s service around a router.
pub type GovernedRouter = tower_governor::governor::Governor<
    ApiKeyHeader,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
    Router,
    Body,
>;

impl App {
    /// Serves one request (`oneshot` on a clone, as a server does per request).
    pub async fn serve(&self, req: Request<Body>) -> Response {
        let res = match self {
            App::Routed(r) => r.clone().oneshot(req).await,
            App::Wrapped(s) => s.clone().oneshot(req).await,
            App::Governed(s) => s.clone().oneshot(req).await,
        };
        match res {
            Ok(res) => res,
            Err(never) => match never {},
        }
    }
}

/// The app of `variant`, and the engine when the variant has one.
pub fn app(variant: Variant) -> (App, Option<Engine>) {
    if matches!(variant, Variant::MonetizeRouter | Variant::MonetizeTokens) {
        let (engine, keys) = engine_and_keys(false, variant.tokens());
        let routes = RouteTable::new([PATH]).expect("route table");
        let layer = MonetizeLayer::new(engine.clone(), ApiKey::new(keys)).route_table(routes);
        let router = if variant.tokens() {
            Router::new().route(PATH, get(hello_metered))
        } else {
            Router::new().route(PATH, get(hello))
        };
        let app = router.with_state(()).monetize_router(layer);
        return (App::Wrapped(app), Some(engine));
    }
    if variant == Variant::GovernorRouter {
        let app = Router::new().route(PATH, get(hello)).with_state(());
        return (
            App::Governed(GovernorLayer::new(governor_config()).layer(app)),
            None,
        );
    }
    let (app, engine) = unfinalized(variant);
    (App::Routed(app.with_state(())), engine)
}

fn unfinalized(variant: Variant) -> (Router, Option<Engine>) {
    match variant {
        Variant::Plain | Variant::PlainCi => (Router::new().route(PATH, get(hello)), None),
        Variant::NoopLayer => {
            let app = Router::new()
                .route(PATH, get(hello))
                .route_layer(tower::layer::util::Identity::new());
            (app, None)
        }
        Variant::Monetize
        | Variant::MonetizeCached
        | Variant::MonetizeRouter
        | Variant::MonetizeTokens => {
            let (engine, keys) = engine_and_keys(variant == Variant::MonetizeCached, false);
            let layer = MonetizeLayer::new(engine.clone(), ApiKey::new(keys));
            let app = Router::new().route(PATH, get(hello)).monetize(layer);
            (app, Some(engine))
        }
        Variant::Governor | Variant::GovernorRouter => {
            let app = Router::new()
                .route(PATH, get(hello))
                .route_layer(GovernorLayer::new(governor_config()));
            (app, None)
        }
        Variant::GovernorIp => {
            let config = GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(1_000_000)
                .finish()
                .expect("governor config");
            let app = Router::new()
                .route(PATH, get(hello))
                .route_layer(GovernorLayer::new(config));
            (app, None)
        }
    }
}

/// What the engine metered: (`api_calls` summed over customers, the second meter summed).
pub fn metered(engine: &Engine) -> (u64, u64) {
    let mut totals = (0, 0);
    for i in 0..CUSTOMERS {
        if let Some(u) = engine.usage(&customer_id(i)) {
            for m in &u.meters {
                match m.meter.as_str() {
                    "api_calls" => totals.0 += m.used,
                    "requests" | "tokens" => totals.1 += m.used,
                    _ => {}
                }
            }
        }
    }
    totals
}

/// Serves one request and reads its body to the end (where metering happens); returns the
/// body's length. The unit of work of the in-process benchmarks.
pub async fn serve_to_end(app: &App, req: Request<Body>) -> usize {
    let res = app.serve(req).await;
    debug_assert_eq!(res.status(), http::StatusCode::OK);
    match http_body_util::BodyExt::collect(res.into_body()).await {
        Ok(b) => b.to_bytes().len(),
        Err(e) => panic!("body: {e}"),
    }
}

/// The app of `variant`, checked once, outside any measurement: one request per customer
/// is answered `hello` and, for the monetized variants, metered.
pub fn checked_app(
    variant: Variant,
    keys: &[HeaderValue],
    rt: &tokio::runtime::Runtime,
) -> (App, Option<Engine>) {
    let (app, engine) = app(variant);
    let served: usize = (0..CUSTOMERS)
        .map(|i| rt.block_on(serve_to_end(&app, request(variant, &keys[i]))))
        .sum();
    assert_eq!(served, CUSTOMERS * BODY.len(), "{}", variant.name());
    if let Some(engine) = &engine {
        assert_eq!(
            metered(engine),
            variant.expected(CUSTOMERS as u64),
            "{}: (api_calls, requests or tokens)",
            variant.name()
        );
    }
    (app, engine)
}
