//! An API key in a request header.

use std::fmt;

use http::request::Parts;
use http::{HeaderName, StatusCode};
use monetize_core::Block;

use super::{Identify, Identity, KeyDirectory};
use crate::Error;

/// Identifies the customer by an API key sent in a header (default `x-api-key`), looked
/// up in a [`KeyDirectory`].
///
/// Without the header (or with an empty one) the request is [`Identity::Missing`]; with a
/// key the directory does not know, [`Identity::Unknown`]. Refusals are `401` with reason
/// `missing_api_key` or `unknown_api_key` and a message naming the header. The key itself
/// is never stored, logged or shown.
///
/// ```
/// use monetize_core::CustomerId;
/// use monetize_tower::identify::{ApiKey, Identify, Identity, KeyDirectory};
///
/// let keys = KeyDirectory::new();
/// keys.insert("sk_1", CustomerId::new("acme").unwrap());
/// let api_key = ApiKey::new(keys).header("x-acme-key").unwrap();
///
/// let (parts, ()) = http::Request::get("/v1/x").header("x-acme-key", "sk_1").body(()).unwrap().into_parts();
/// assert_eq!(api_key.identify(&parts), Identity::Customer(CustomerId::new("acme").unwrap()));
/// ```
#[derive(Clone)]
pub struct ApiKey {
    header: HeaderName,
    keys: KeyDirectory,
}

impl ApiKey {
    /// Reads the key from `x-api-key`.
    pub fn new(keys: KeyDirectory) -> Self {
        Self {
            header: HeaderName::from_static("x-api-key"),
            keys,
        }
    }

    /// Reads the key from another header. Fails when `name` is not a valid header name.
    pub fn header(mut self, name: &str) -> Result<Self, Error> {
        self.header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::InvalidHeaderName(name.to_owned()))?;
        Ok(self)
    }

    /// The header the key is read from.
    pub fn header_name(&self) -> &HeaderName {
        &self.header
    }

    /// The directory keys are looked up in.
    pub fn keys(&self) -> &KeyDirectory {
        &self.keys
    }
}

impl Identify for ApiKey {
    fn identify<'a>(&'a self, request: &'a Parts) -> Identity<'a> {
        match request.headers.get(&self.header) {
            Some(v) if !v.is_empty() => match self.keys.lookup(v.as_bytes()) {
                Some(id) => Identity::Customer(id),
                None => Identity::Unknown,
            },
            _ => Identity::Missing,
        }
    }

    fn unauthorized(&self, missing: bool) -> Block {
        let h = self.header.as_str();
        if missing {
            Block::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                &format!("This API needs an API key: send it in the `{h}` header."),
            )
        } else {
            Block::new(
                StatusCode::UNAUTHORIZED,
                "unknown_api_key",
                &format!(
                    "The API key sent in the `{h}` header is not valid: check it, or create a new one."
                ),
            )
        }
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("header", &self.header)
            .field("keys", &self.keys)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monetize_core::CustomerId;

    fn parts(h: Option<(&str, &str)>) -> Parts {
        let mut b = http::Request::get("/");
        if let Some((k, v)) = h {
            b = b.header(k, v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn identifies_missing_unknown_and_known() {
        let keys = KeyDirectory::new();
        keys.insert("k1", CustomerId::new("a").unwrap());
        let ak = ApiKey::new(keys);
        assert_eq!(ak.identify(&parts(None)), Identity::Missing);
        assert_eq!(
            ak.identify(&parts(Some(("x-api-key", "")))),
            Identity::Missing
        );
        assert_eq!(
            ak.identify(&parts(Some(("x-api-key", "nope")))),
            Identity::Unknown
        );
        assert_eq!(
            ak.identify(&parts(Some(("x-api-key", "k1")))),
            Identity::Customer(CustomerId::new("a").unwrap())
        );
        assert!(
            ApiKey::new(KeyDirectory::new())
                .header("bad header")
                .is_err()
        );
        let b = ak.unauthorized(true);
        assert_eq!(b.status, StatusCode::UNAUTHORIZED);
        assert_eq!(&*b.reason, "missing_api_key");
        assert!(b.message.contains("x-api-key"));
        assert_eq!(&*ak.unauthorized(false).reason, "unknown_api_key");
    }
}
