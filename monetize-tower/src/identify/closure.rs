//! Identification by a closure.

use std::fmt;

use crate::RequestHead;

use super::{Identify, Identity};

/// An [`Identify`] strategy made from a closure; see [`identify_fn`].
#[derive(Clone)]
pub struct IdentifyFn<F> {
    f: F,
}

/// Identifies customers with a closure from the request head to an [`Identity`].
///
/// ```
/// use monetize_tower::RequestHead;
/// use monetize_tower::identify::{Identify, Identity, identify_fn};
///
/// // Customers are identified by a header set by a trusted gateway.
/// let by_gateway = identify_fn(|req| match req.headers.get("x-gateway-customer") {
///     Some(v) => v.to_str().map_or(Identity::Unknown, Identity::Id),
///     None => Identity::Missing,
/// });
/// let req = http::Request::get("/").header("x-gateway-customer", "acme").body(()).unwrap();
/// assert_eq!(by_gateway.identify(&RequestHead::of(&req)), Identity::Id("acme"));
/// ```
pub fn identify_fn<F>(f: F) -> IdentifyFn<F>
where
    F: for<'a> Fn(&RequestHead<'a>) -> Identity<'a> + Send + Sync + 'static,
{
    IdentifyFn { f }
}

impl<F> Identify for IdentifyFn<F>
where
    F: for<'a> Fn(&RequestHead<'a>) -> Identity<'a> + Send + Sync + 'static,
{
    fn identify<'a>(&'a self, request: &RequestHead<'a>) -> Identity<'a> {
        (self.f)(request)
    }
}

impl<F> fmt::Debug for IdentifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyFn").finish_non_exhaustive()
    }
}
