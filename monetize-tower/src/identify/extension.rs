//! A customer id put into the request extensions by the app's own auth layer.

use std::fmt;
use std::marker::PhantomData;

use crate::RequestHead;
use monetize_core::CustomerId;

use super::{Identify, Identity};

/// Identifies the customer from a value your own authentication layer put into the
/// request extensions (by default a [`CustomerId`]; any `T: AsRef<str>` works).
///
/// Place your auth layer outside (before) the monetize layer. A request without the
/// extension is [`Identity::Missing`].
///
/// ```
/// use monetize_core::CustomerId;
/// use monetize_tower::RequestHead;
/// use monetize_tower::identify::{FromExtension, Identify, Identity};
///
/// let mut req = http::Request::get("/").body(()).unwrap();
/// req.extensions_mut().insert(CustomerId::new("acme").unwrap());
/// assert_eq!(FromExtension::new().identify(&RequestHead::of(&req)), Identity::Id("acme"));
/// ```
pub struct FromExtension<T = CustomerId> {
    _t: PhantomData<fn() -> T>,
}

impl FromExtension {
    /// Reads a [`CustomerId`] from the request extensions.
    pub fn new() -> Self {
        Self::of_type()
    }
}

impl<T> FromExtension<T> {
    /// Reads a `T` from the request extensions (`FromExtension::<MyUser>::of_type()`).
    pub fn of_type() -> Self {
        Self { _t: PhantomData }
    }
}

impl<T> Default for FromExtension<T> {
    fn default() -> Self {
        Self::of_type()
    }
}

impl<T> Clone for FromExtension<T> {
    fn clone(&self) -> Self {
        Self::of_type()
    }
}

impl<T> fmt::Debug for FromExtension<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromExtension")
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T> Identify for FromExtension<T>
where
    T: AsRef<str> + Clone + Send + Sync + 'static,
{
    fn identify<'a>(&'a self, request: &RequestHead<'a>) -> Identity<'a> {
        match request.extensions.get::<T>() {
            Some(id) => Identity::Id(id.as_ref()),
            None => Identity::Missing,
        }
    }
}
