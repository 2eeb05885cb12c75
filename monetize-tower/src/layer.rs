//! [`MonetizeLayer`]: the layer and its settings.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use monetize_core::Engine;
use tower_layer::Layer;

use crate::Error;
use crate::identify::{ApiKey, Identify};
use crate::route::{FromRouteTemplate, RouteSource};
use crate::service::Monetize;
use crate::settings::{Keep, MissingPolicy, Pattern, Settings};

/// Applies [`Monetize`] to a service: identifies the customer, governs, and meters.
///
/// Build it once per app with the engine and an identification strategy; every service it
/// makes shares the same settings. See the [crate docs](crate) for a full example.
pub struct MonetizeLayer<R = FromRouteTemplate> {
    settings: Arc<Settings<R>>,
}

impl MonetizeLayer<FromRouteTemplate> {
    /// A layer identifying customers with `identify` and governing and metering with
    /// `engine`. Missing and unknown credentials are refused with `401`.
    pub fn new(engine: Engine, identify: impl Identify) -> Self {
        let keep = Keep::of(&engine);
        let keys = identify.key_directory().cloned();
        let key_header = (&identify as &dyn Any)
            .downcast_ref::<ApiKey>()
            .map(|a| a.header_name().clone());
        Self {
            settings: Arc::new(Settings {
                engine,
                identify: Arc::new(identify),
                keys,
                key_header,
                on_missing: MissingPolicy::Reject,
                on_unknown: MissingPolicy::Reject,
                exempt: Vec::new(),
                route: FromRouteTemplate,
                keep,
                customer_extension: false,
                credits_header: false,
            }),
        }
    }
}

impl<R: RouteSource> MonetizeLayer<R> {
    fn edit(mut self, f: impl FnOnce(&mut Settings<R>)) -> Self {
        f(Arc::make_mut(&mut self.settings));
        self
    }

    /// What to do with requests without credentials (default [`MissingPolicy::Reject`]).
    pub fn on_missing(self, policy: MissingPolicy) -> Self {
        self.edit(|s| s.on_missing = policy)
    }

    /// What to do with requests whose credentials name no customer (default
    /// [`MissingPolicy::Reject`]).
    pub fn on_unknown(self, policy: MissingPolicy) -> Self {
        self.edit(|s| s.on_unknown = policy)
    }

    /// Serves requests to this route (template, or path when no template is known;
    /// a trailing `*` matches a prefix) identified but neither governed nor metered:
    /// the usage route, so that a customer out of credits can still see its balance.
    /// Unknown credentials are still refused.
    pub fn exempt(self, route: &str) -> Result<Self, Error> {
        let p = Pattern::parse(route)?;
        Ok(self.edit(|s| s.exempt.push(p)))
    }

    /// Also puts the identified customer's [`CustomerHandle`](monetize_core::CustomerHandle) into the request extensions
    /// (default off: one allocation per request).
    ///
    /// The inner service finds the customer without it, through
    /// [`current_customer`](crate::current_customer) (what `monetize-axum`'s `Customer`
    /// extractor reads), while the layer polls its response future. Turn this on for inner
    /// services that read the customer elsewhere: in their `call`, behind a `Buffer`, or in
    /// another task.
    pub fn customer_extension(self, on: bool) -> Self {
        self.edit(|s| s.customer_extension = on)
    }

    /// Also adds `X-Credits-Remaining` (the prepaid balance after the decision, in
    /// micro-credits) to every allowed response of a prepaid customer (default off).
    ///
    /// Blocks always carry it. On allowed responses it tells clients their balance as
    /// they spend it, at the cost of one more header per response (a header map insert:
    /// a few hundred instructions).
    pub fn credits_header(self, on: bool) -> Self {
        self.edit(|s| s.credits_header = on)
    }

    /// Matches route templates against this table of the app's routes (see
    /// [`RouteTable`](crate::RouteTable)): for a layer around a whole router or a service
    /// that sets no templates. Shorthand for `route_source(table)`.
    pub fn route_table(self, table: crate::RouteTable) -> MonetizeLayer<crate::RouteTable> {
        self.route_source(table)
    }

    /// Reads route templates with another [`RouteSource`] (`monetize-axum` uses axum's
    /// `MatchedPath`).
    pub fn route_source<R2: RouteSource>(self, route: R2) -> MonetizeLayer<R2> {
        let s = Arc::unwrap_or_clone(self.settings);
        MonetizeLayer {
            settings: Arc::new(Settings {
                engine: s.engine,
                identify: s.identify,
                keys: s.keys,
                key_header: s.key_header,
                on_missing: s.on_missing,
                on_unknown: s.on_unknown,
                exempt: s.exempt,
                route,
                keep: s.keep,
                customer_extension: s.customer_extension,
                credits_header: s.credits_header,
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.settings.engine
    }

    /// Whether a meter counts request body bytes or reads a JSON field of the request
    /// body, so the request body must be wrapped with [`TapBody`](crate::TapBody) inside
    /// the layer (a framework adapter implementing [`TapRequestBody`](crate::TapRequestBody)
    /// does it by itself). Without the wrapper, request bytes fall back to
    /// `Content-Length` and JSON fields of the request are not read.
    pub fn taps_request_body(&self) -> bool {
        self.settings.keep.request_capture.is_some() || self.settings.keep.request_bytes
    }
}

impl<R> Clone for MonetizeLayer<R> {
    fn clone(&self) -> Self {
        Self {
            settings: self.settings.clone(),
        }
    }
}

impl<R> fmt::Debug for MonetizeLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("MonetizeLayer")
            .field("engine", &s.engine)
            .field("on_missing", &s.on_missing)
            .field("on_unknown", &s.on_unknown)
            .field("exempt", &s.exempt)
            .field("route", &std::any::type_name::<R>())
            .finish_non_exhaustive()
    }
}

impl<S, R: RouteSource> Layer<S> for MonetizeLayer<R> {
    type Service = Monetize<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Monetize::from_parts(inner, self.settings.clone())
    }
}
