//! # monetize-tower
//!
//! One tower [`Layer`](tower_layer::Layer) that turns an HTTP service into a monetized
//! one: it identifies the customer of each request, asks the
//! [`monetize_core::Engine`] for a decision, answers `402`/`429`/`401` by itself when the
//! decision is a block, and meters the response as its body streams.
//!
//! It works with any `tower::Service<http::Request<B>>` whose response body yields
//! [`Bytes`](bytes::Bytes) (hyper, axum, tonic-style services). For axum, `monetize-axum`
//! adds route templates from `MatchedPath`, extractors and the usage route.
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use monetize_core::config::{Config, MeterConfig, PlanConfig};
//! use monetize_core::{CustomerId, Engine, PlanId, StateChange};
//! use monetize_tower::identify::{ApiKey, KeyDirectory};
//! use monetize_tower::MonetizeLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! // A prepaid plan: 2,000 micro-credits, 1,000 per call.
//! let engine = Engine::new(
//!     Config::builder()
//!         .meter(MeterConfig::count("calls").route("/v1/*").status("2xx"))
//!         .plan(PlanConfig::new("prepaid").prepaid(2_000).price("calls", 1_000))
//!         .default_plan("prepaid")
//!         .build(),
//! )
//! .unwrap();
//!
//! // API keys are stored as SHA-256 digests only.
//! let keys = KeyDirectory::new();
//! keys.insert("sk_test_acme", CustomerId::new("acme").unwrap());
//!
//! let api = ServiceBuilder::new()
//!     .layer(MonetizeLayer::new(engine.clone(), ApiKey::new(keys)))
//!     .service(service_fn(|_req: Request<Full<bytes::Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::from("hello")))
//!     }));
//!
//! let call = || Request::get("/v1/hello").header("x-api-key", "sk_test_acme").body(Full::default()).unwrap();
//! for _ in 0..2 {
//!     let res = api.clone().oneshot(call()).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::OK);
//!     res.into_body().collect().await.unwrap(); // metered when the body ends
//! }
//! // The credits are spent: the third call is answered by the layer with 402.
//! let res = api.clone().oneshot(call()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(json["reason"], "credits_exhausted");
//! # });
//! ```
//!
//! ## What happens to a request
//!
//! 1. **Identify** with an [`Identify`](identify::Identify) strategy ([`identify`] module):
//!    an API key, a bearer token, an extension set by your auth layer, or a closure.
//!    No or unknown credentials: [`MissingPolicy`] (refuse with `401` by default).
//! 2. **Resolve** the customer's handle once (one map read), and **decide**. A block is
//!    answered by the layer with the block's status, a JSON body
//!    (`{"error": "payment_required", "reason": "credits_exhausted", ...}`) and its
//!    headers (`Retry-After`, `RateLimit-*`, `X-Credits-Remaining`); the inner service is
//!    not called. Shadow-mode rules only count what they would have blocked.
//! 3. **Serve**: the [`CustomerHandle`](monetize_core::CustomerHandle) is put into the
//!    request extensions, the inner service is called, and the decision's headers are
//!    added to its response.
//! 4. **Meter** when the response body ends, fails or is dropped: method, route template
//!    ([`RouteTemplate`] / [`RouteSource`]), status, headers, the response bytes handed to
//!    the server, handler-reported quantities ([`usage`]), and body prefixes for
//!    JSON-field meters (captured up to the meter's cap, only when a meter asks; the
//!    client receives the body unchanged). **A client that disconnects mid-body is
//!    metered for the bytes sent so far**: the server drops the body, and dropping it
//!    meters. "Sent" means handed to the server, which writes it to the socket: it
//!    includes what the operating system had buffered but the client never read (up to
//!    the socket buffers, which reach a few MiB on loopback). A request whose response
//!    future is dropped before the inner service answered is not metered.
//!
//! ## Cost
//!
//! Nothing on the allow path waits, locks or touches the network. Per metered request the
//! layer keeps the method, the URI (reference-counted), the route template and the
//! customer handle until the body ends. It allocates the request-extension slot of the
//! handle, and — until monetize-core can say which meters read headers — one copy each
//! of the request and response header maps. Body capture, usage recorders and request
//! taps allocate only when a meter or a handler uses them.
//!
//! Identification by key hashes the key sent with SHA-256 on every request (about 65 ns
//! with the CPU's SHA extensions; about 3,500 instructions without, as under callgrind).
//! [`KeyDirectory::with_verified_cache`](identify::KeyDirectory::with_verified_cache)
//! replaces that, for keys seen before, with a keyed-MAC lookup.

#![warn(missing_docs)]

mod body;
mod error;
mod future;
pub mod identify;
mod layer;
mod response;
mod route;
mod service;
pub mod usage;

pub use body::{RequestTap, ResponseBody, TapBody};
pub use error::Error;
pub use future::ResponseFuture;
pub use layer::{MissingPolicy, MonetizeLayer};
pub use response::BlockParts;
pub use route::{FromRouteTemplate, RouteSource, RouteTemplate};
pub use service::Monetize;
pub use usage::UsageRecorder;
