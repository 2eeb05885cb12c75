//! # monetize-tower
//!
//! One tower [`Layer`](tower_layer::Layer) that turns an HTTP service into a monetized
//! one: it identifies the customer of each request, asks the
//! [`monetize_core::Engine`] for a decision, answers `402`/`429`/`401` by itself when the
//! decision is a block, and meters the exchange (when the response head arrives, or as
//! its body streams when a meter reads the body).
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
//! // API keys are stored as SHA-256 digests (and found by a keyed MAC), never as keys.
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
//!     res.into_body().collect().await.unwrap();
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
//! ## Modules, in the order a request meets them
//!
//! | module | what it holds |
//! | --- | --- |
//! | `layer` | [`MonetizeLayer`], the builder users call |
//! | `settings` | what the layer shares with every service it makes ([`MissingPolicy`], exempt routes, what the response half keeps); `layer`, `service` and `future` all read it |
//! | `service` | the service: identify, resolve, decide, call the inner service |
//! | [`identify`] | strategies naming the customer ([`identify::ApiKey`] over a [`identify::KeyDirectory`], bearer tokens, extensions) |
//! | `route` | route templates ([`RouteTable`], `RouteTemplate`) |
//! | `scope` and `slots` | the request being served on this thread, and the slots its [`UsageRecorder`]s ([`usage`]) add to |
//! | `future` | the response future: the early block or the inner call, metered at its head |
//! | `body` | body wrappers that count bytes, capture JSON prefixes and meter at the end of a body |
//! | `response` | block responses and allow headers |
//! | `reserve` | [`ReserveLayer`]: reserve credits before the handler, settle after (`monetize_core::credits`) |
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
//! 3. **Serve**: the inner service is called; while the layer polls its response future,
//!    the request's customer is in scope on the running thread ([`current_customer`],
//!    what `monetize-axum`'s `Customer` extractor reads; or in the request extensions too,
//!    with [`MonetizeLayer::customer_extension`]). The decision's headers are added to the
//!    response (`RateLimit-*`; `X-Credits-Remaining` with
//!    [`MonetizeLayer::credits_header`]).
//! 4. **Meter** the exchange: method, route template ([`RouteTemplate`],
//!    [`RouteTable`] or another [`RouteSource`]), status, headers, the response bytes handed to the server,
//!    handler-reported quantities ([`usage`]), and body prefixes for JSON-field meters
//!    (captured up to the meter's cap, only when a meter asks; the client receives the
//!    body unchanged). When, see below.
//!
//! ## When an exchange is metered
//!
//! The layer keeps and waits for only what the engine's meters read
//! ([`Engine::exchange_needs`](monetize_core::Engine::exchange_needs)):
//!
//! - **When the response head arrives**, if no meter reads the bodies (no request- or
//!   response-bytes meter, no JSON-field meter) and no [`UsageRecorder`] of the request is still alive
//!   (none was taken, or the handler dropped them all, as it does when it returns). The
//!   response body is then passed through untouched (no wrapper is polled; with
//!   `monetize-axum`, the handler's body is handed on as it is).
//! - **When the response body ends, fails or is dropped**, otherwise: a meter counts
//!   request or response bytes or reads a JSON field of a body, or a meter reads
//!   handler-reported usage and a recorder is still alive (moved into a streaming body or a task: it may
//!   add while the body streams; adds after the body ended are not metered). **A client
//!   that disconnects mid-body is metered for the bytes sent so far**: the server drops
//!   the body, and dropping it meters. "Sent" means handed to the server, which writes it
//!   to the socket: it includes what the operating system had buffered but the client
//!   never read (up to the socket buffers, which reach a few MiB on loopback).
//!   **Request bytes are the bytes of the body frames the inner service read** (a
//!   chunked upload counts in full when read): a handler that never reads the body bills
//!   0 request bytes whatever `Content-Length` says, one that stops early bills what it
//!   read. The count comes from a [`TapBody`] around the request body (`monetize-axum`
//!   wraps it; with another framework, call [`TapBody::from_request`] inside the layer,
//!   or the figure falls back to `Content-Length`).
//!
//! Either way a request whose response future is dropped before the inner service
//! answered is not metered, and request and response header maps are copied only when a
//! meter reads headers.
//!
//! ## Cost
//!
//! Nothing on the allow path awaits, locks, or touches the network or the disk.
//! [`Engine::resolve`](monetize_core::Engine::resolve) reads a lock-free map and pins the
//! customer with one atomic increment on its own state, so no background pass
//! (checkpoint, eviction) can make a request wait. Only the first request of a customer
//! not in memory takes a lock, to admit it: one of 256 stripes, which an eviction holds
//! only while it moves one idle customer to its dormant record. Each thread keeps the
//! customers it resolves repeatedly in a cache of its own (72 KiB, allocated by its first
//! resolve; 128 KiB more for the keys it remembers), so a returning customer skips the
//! map. The layer reads the
//! request through a borrowed [`RequestHead`] and hands it on untouched. Metering is
//! split in two ([`Engine::meter_request`](monetize_core::Engine::meter_request) /
//! [`meter_response`](monetize_core::Engine::meter_response)): the request-side tests of
//! every meter (method, route template, path, query, request headers) run in `call`, so
//! until the response the layer keeps only a 16-byte mask of the meters still in play,
//! the customer handle and the decision. At the response, meters that read only the
//! status (counts filtered at most by a status range: the common case) are metered
//! without building a view of the exchange
//! ([`CustomerHandle::meter_status`](monetize_core::CustomerHandle::meter_status)): one
//! atomic add per meter, one more when a meter is priced. Only meters whose filters mix
//! request and response tests under `any`/`not`, or whose values read a request header,
//! make it keep the request side (one allocation per request). It wraps the response body only when
//! metering waits for its end, and allocates nothing of its own otherwise; a usage
//! recorder reuses a pooled slot and its list of reported quantities.
//!
//! Allowed responses carry `RateLimit-*` when a rate limit was checked, and
//! `X-Credits-Remaining` only with [`MonetizeLayer::credits_header`] (a header insert is a
//! few hundred instructions); blocks always carry both.
//!
//! Identification by key costs one keyed 128-bit MAC of the key sent (AES-CMAC from the
//! `cmac` and `aes` crates, with the CPU's AES instructions where it has them) and one probe of the thread's remembered keys (a key seen twice on the
//! thread) or else one map read:
//! [`KeyDirectory`](identify::KeyDirectory) keeps SHA-256 digests as the stored form and
//! verifies a key given only as a digest once, on its first request (a SHA-256: about
//! 65 ns with the CPU's SHA extensions, about 3,500 instructions without). See its docs
//! for why the MAC is as safe to hold as the digest.

#![warn(missing_docs)]

mod body;
mod error;
mod future;
mod head;
pub mod identify;
mod layer;
mod reserve;
mod response;
mod route;
mod scope;
mod service;
mod settings;
mod settlement;
mod slots;
pub mod usage;

pub use body::{KeepBody, MapBody, RequestTap, ResponseBody, TapBody, TapRequestBody};
pub use error::Error;
pub use future::ResponseFuture;
pub use head::RequestHead;
pub use layer::MonetizeLayer;
pub use reserve::{Reserve, ReserveFuture, ReserveLayer};
pub use response::BlockParts;
pub use route::{FromRouteTemplate, RouteSource, RouteTable, RouteTemplate};
pub use scope::current_customer;
pub use service::Monetize;
pub use settings::MissingPolicy;
pub use usage::UsageRecorder;
