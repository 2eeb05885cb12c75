//! An API key in a request header.

use std::fmt;

use crate::RequestHead;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
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
/// use monetize_tower::RequestHead;
/// use monetize_tower::identify::{ApiKey, Identify, Identity, KeyDirectory};
///
/// let keys = KeyDirectory::new();
/// keys.insert("sk_1", CustomerId::new("acme").unwrap());
/// let api_key = ApiKey::new(keys).header("x-acme-key").unwrap();
///
/// let req = http::Request::get("/v1/x").header("x-acme-key", "sk_1").body(()).unwrap();
/// assert_eq!(api_key.identify(&RequestHead::of(&req)), Identity::Customer(CustomerId::new("acme").unwrap()));
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
    fn identify<'a>(&'a self, request: &RequestHead<'a>) -> Identity<'a> {
        match self.key(request) {
            Some(key) => match self.keys.lookup(key) {
                Some(id) => Identity::Customer(id),
                None => Identity::Unknown,
            },
            None => Identity::Missing,
        }
    }

    fn key_directory(&self) -> Option<&KeyDirectory> {
        Some(&self.keys)
    }

    #[inline]
    fn key<'a>(&self, request: &RequestHead<'a>) -> Option<&'a [u8]> {
        header_key(request.headers, &self.header)
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

/// The key in header `name`: its first value, unless empty. What [`ApiKey`] reads, also
/// called by the layer directly for an `ApiKey` strategy (no call through `dyn Identify`).
#[inline]
pub(crate) fn header_key<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    first_value(headers, name)
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.is_empty())
}

/// Headers up to which a linear scan beats hashing a custom header name.
const SCAN: usize = 12;

/// The first value of header `name`, as [`HeaderMap::get`] answers. Requests carry few
/// headers: comparing names beats hashing a non-standard name (`x-api-key`), which costs
/// `HeaderMap::get` about 150 instructions.
#[inline]
fn first_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.len() > SCAN {
        return headers.get(name);
    }
    let want = name.as_str().as_bytes();
    headers
        .iter()
        .find(|(k, _)| same_name(k.as_str().as_bytes(), want))
        .map(|(_, v)| v)
}

/// Whether two byte strings (header names, route templates) are equal.
#[inline]
pub(crate) fn same_name(a: &[u8], b: &[u8]) -> bool {
    a == b
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

    #[test]
    fn same_name_is_byte_equality() {
        let base: Vec<u8> = (0..24u8).map(|i| b'a' + i).collect();
        for n in 0..=base.len() {
            let a = &base[..n];
            assert!(same_name(a, a));
            for i in 0..n {
                let mut b = a.to_vec();
                b[i] ^= 1;
                assert!(!same_name(a, &b), "length {n}, byte {i}");
            }
            if n > 0 {
                assert!(!same_name(a, &base[..n - 1]));
            }
        }
    }

    #[test]
    fn the_scan_finds_what_get_finds() {
        let name = HeaderName::from_static("x-api-key");
        for n in [0usize, 1, 3, SCAN - 1, SCAN, SCAN + 1, 40] {
            for at in [None, Some(0), Some(n / 2), Some(n.saturating_sub(1))] {
                let mut h = HeaderMap::new();
                for i in 0..n {
                    if Some(i) == at {
                        h.append(name.clone(), HeaderValue::from_static("first"));
                        h.append(name.clone(), HeaderValue::from_static("second"));
                    }
                    h.append(
                        HeaderName::from_bytes(format!("x-other-{i}").as_bytes()).unwrap(),
                        HeaderValue::from_static("v"),
                    );
                }
                assert_eq!(
                    first_value(&h, &name),
                    h.get(&name),
                    "{n} headers, key at {at:?}"
                );
                // Names differing only in length or one byte do not match.
                assert_eq!(first_value(&h, &HeaderName::from_static("x-api-ke")), None);
                assert_eq!(first_value(&h, &HeaderName::from_static("x-api-kex")), None);
            }
        }
    }
    use monetize_core::CustomerId;

    fn parts(h: Option<(&str, &str)>) -> http::request::Parts {
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
        assert_eq!(
            ak.identify(&RequestHead::from_parts(&parts(None))),
            Identity::Missing
        );
        assert_eq!(
            ak.identify(&RequestHead::from_parts(&parts(Some(("x-api-key", ""))))),
            Identity::Missing
        );
        assert_eq!(
            ak.identify(&RequestHead::from_parts(&parts(Some((
                "x-api-key",
                "nope"
            ))))),
            Identity::Unknown
        );
        assert_eq!(
            ak.identify(&RequestHead::from_parts(&parts(Some(("x-api-key", "k1"))))),
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
