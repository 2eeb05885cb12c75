//! Identification: which customer a request belongs to.
//!
//! An [`Identify`] strategy looks at the request head and answers an [`Identity`]: a
//! customer, no credentials at all ([`Identity::Missing`]), or credentials that name no
//! customer ([`Identity::Unknown`]). The layer then applies its
//! [`MissingPolicy`](crate::MissingPolicy) to the last two.
//!
//! | strategy | reads | typical use |
//! |---|---|---|
//! | [`ApiKey`] | a header (default `x-api-key`), looked up in a [`KeyDirectory`] | public APIs with keys |
//! | [`Bearer`] | `Authorization: Bearer <token>`, looked up in a [`KeyDirectory`] | token APIs |
//! | [`FromExtension`] | a [`CustomerId`] your own auth layer put into the request extensions | apps with auth already |
//! | [`identify_fn`] | anything, through a closure | everything else |
//!
//! Strategies are synchronous and run on every request: they must not block or wait.

mod api_key;
mod bearer;
mod closure;
mod extension;
mod key_directory;
mod key_mac;

use crate::RequestHead;
use http::StatusCode;
use monetize_core::{Block, CustomerId};

pub use api_key::ApiKey;
pub(crate) use api_key::{header_key, same_name};
pub use bearer::Bearer;
pub use closure::{IdentifyFn, identify_fn};
pub use extension::FromExtension;
pub use key_directory::{KeyDigest, KeyDirectory};

/// What an [`Identify`] strategy found in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Identity<'a> {
    /// The customer, borrowed from the request or the strategy.
    Id(&'a str),
    /// The customer, owned (a [`CustomerId`] clone is a reference-count increment).
    Customer(CustomerId),
    /// The request carries no credentials this strategy understands.
    Missing,
    /// The request carries credentials, but they name no customer.
    Unknown,
}

/// A way to tell which customer a request belongs to.
///
/// Implement it for custom schemes, or use [`identify_fn`] with a closure.
pub trait Identify: Send + Sync + 'static {
    /// Identifies the customer from the request head. Runs on every request: keep it
    /// cheap, and never block.
    fn identify<'a>(&'a self, request: &RequestHead<'a>) -> Identity<'a>;

    /// For a strategy that reads a key from the request and looks it up in a
    /// [`KeyDirectory`] (as [`ApiKey`] and [`Bearer`] do): that directory. The layer then
    /// reads the key with [`Identify::key`] and resolves the customer itself, and each
    /// thread remembers which customer a key it saw twice names, under a
    /// [`CustomerToken`](monetize_core::CustomerToken) made of the key's MAC and the
    /// directory's version (never the key), so that the key's next request skips the
    /// directory and the customer map. Any change to the directory changes every token.
    ///
    /// A strategy that answers here must identify as the directory does: `identify` is
    /// [`Identity::Missing`] when `key` is `None`, else [`Identity::Customer`] with the
    /// directory's customer for the key, or [`Identity::Unknown`]. The default: `None`
    /// (the layer calls `identify`).
    fn key_directory(&self) -> Option<&KeyDirectory> {
        None
    }

    /// The key a request carries, for a strategy with a
    /// [`key_directory`](Identify::key_directory); `None` when it carries none (the
    /// request is then [`Identity::Missing`]). The default: `None`.
    fn key<'a>(&self, request: &RequestHead<'a>) -> Option<&'a [u8]> {
        let _ = request;
        None
    }

    /// The refusal sent when the layer's policy rejects a request without credentials
    /// (`missing` is true) or with unknown ones. The default is a `401` with reason
    /// `missing_credentials` or `unknown_credentials`.
    fn unauthorized(&self, missing: bool) -> Block {
        if missing {
            Block::new(
                StatusCode::UNAUTHORIZED,
                "missing_credentials",
                "This API needs credentials: send them with the request.",
            )
        } else {
            Block::new(
                StatusCode::UNAUTHORIZED,
                "unknown_credentials",
                "The credentials sent do not belong to any customer.",
            )
        }
    }
}

impl<T: Identify + ?Sized> Identify for std::sync::Arc<T> {
    fn identify<'a>(&'a self, request: &RequestHead<'a>) -> Identity<'a> {
        (**self).identify(request)
    }

    fn key_directory(&self) -> Option<&KeyDirectory> {
        (**self).key_directory()
    }

    fn key<'a>(&self, request: &RequestHead<'a>) -> Option<&'a [u8]> {
        (**self).key(request)
    }

    fn unauthorized(&self, missing: bool) -> Block {
        (**self).unauthorized(missing)
    }
}

impl<T: Identify + ?Sized> Identify for Box<T> {
    fn identify<'a>(&'a self, request: &RequestHead<'a>) -> Identity<'a> {
        (**self).identify(request)
    }

    fn key_directory(&self) -> Option<&KeyDirectory> {
        (**self).key_directory()
    }

    fn key<'a>(&self, request: &RequestHead<'a>) -> Option<&'a [u8]> {
        (**self).key(request)
    }

    fn unauthorized(&self, missing: bool) -> Block {
        (**self).unauthorized(missing)
    }
}
