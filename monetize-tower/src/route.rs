//! Route templates: `/users/{id}` rather than `/users/42`, so one meter filter covers a route.

use std::fmt;
use std::sync::Arc;

/// The route template of a request, as a request extension.
///
/// A router that knows the template puts it into the request extensions before the
/// monetize layer runs (`monetize-axum` reads axum's `MatchedPath` directly instead).
/// Without it, meters match route filters against the request path.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RouteTemplate(pub Arc<str>);

impl RouteTemplate {
    /// A template.
    pub fn new(template: impl Into<Arc<str>>) -> Self {
        Self(template.into())
    }

    /// The template as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for RouteTemplate {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RouteTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RouteTemplate({:?})", &*self.0)
    }
}

/// Where the layer finds a request's route template.
///
/// The template is kept (cloned out of the request) until the response is metered, so
/// [`RouteSource::Route`] should be cheap to clone out of the extensions: an `Arc`, not a
/// `String`.
pub trait RouteSource: Clone + Send + Sync + 'static {
    /// The template, as kept until metering.
    type Route: AsRef<str> + Send + Sync + 'static;

    /// The template of this request, if known.
    fn route(&self, extensions: &http::Extensions) -> Option<Self::Route>;
}

/// Reads a [`RouteTemplate`] request extension (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct FromRouteTemplate;

impl RouteSource for FromRouteTemplate {
    type Route = RouteTemplate;

    #[inline]
    fn route(&self, extensions: &http::Extensions) -> Option<RouteTemplate> {
        extensions.get::<RouteTemplate>().cloned()
    }
}
