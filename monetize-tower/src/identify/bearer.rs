//! A bearer token in the `Authorization` header.

use std::sync::Arc;

use crate::RequestHead;
use http::{HeaderValue, StatusCode, header};
use monetize_core::Block;

use super::{Identify, Identity, KeyDirectory};

/// Identifies the customer by `Authorization: Bearer <token>`, looked up in a
/// [`KeyDirectory`] (which stores only token digests).
///
/// A request without an `Authorization` header, or with another scheme, is
/// [`Identity::Missing`]; an unknown token is [`Identity::Unknown`]. Refusals are `401`
/// with reason `missing_bearer_token` or `unknown_bearer_token` and a
/// `WWW-Authenticate: Bearer` header.
#[derive(Clone, Debug)]
pub struct Bearer {
    keys: KeyDirectory,
}

impl Bearer {
    /// Looks tokens up in `keys`.
    pub fn new(keys: KeyDirectory) -> Self {
        Self { keys }
    }

    /// The directory tokens are looked up in.
    pub fn keys(&self) -> &KeyDirectory {
        &self.keys
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn token(value: &HeaderValue) -> Option<&[u8]> {
    let v = value.as_bytes();
    if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let t = v[7..].trim_ascii();
    (!t.is_empty()).then_some(t)
}

impl Identify for Bearer {
    fn identify<'a>(&'a self, request: &RequestHead<'a>) -> Identity<'a> {
        let Some(t) = self.key(request) else {
            return Identity::Missing;
        };
        match self.keys.lookup(t) {
            Some(id) => Identity::Customer(id),
            None => Identity::Unknown,
        }
    }

    fn key_directory(&self) -> Option<&KeyDirectory> {
        Some(&self.keys)
    }

    #[inline]
    fn key<'a>(&self, request: &RequestHead<'a>) -> Option<&'a [u8]> {
        request.headers.get(header::AUTHORIZATION).and_then(token)
    }

    fn unauthorized(&self, missing: bool) -> Block {
        let mut b = if missing {
            Block::new(
                StatusCode::UNAUTHORIZED,
                "missing_bearer_token",
                "This API needs a token: send `Authorization: Bearer <token>`.",
            )
        } else {
            Block::new(
                StatusCode::UNAUTHORIZED,
                "unknown_bearer_token",
                "The bearer token sent in `Authorization` is not valid.",
            )
        };
        b.headers = Arc::new([(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))]);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monetize_core::CustomerId;

    fn parts(auth: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::get("/");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn reads_bearer_tokens_only() {
        let keys = KeyDirectory::new();
        keys.insert("tok", CustomerId::new("a").unwrap());
        let b = Bearer::new(keys);
        assert_eq!(
            b.identify(&RequestHead::from_parts(&parts(None))),
            Identity::Missing
        );
        assert_eq!(
            b.identify(&RequestHead::from_parts(&parts(Some("Basic dG9rOg==")))),
            Identity::Missing
        );
        assert_eq!(
            b.identify(&RequestHead::from_parts(&parts(Some("Bearer ")))),
            Identity::Missing
        );
        assert_eq!(
            b.identify(&RequestHead::from_parts(&parts(Some("Bearer nope")))),
            Identity::Unknown
        );
        assert_eq!(
            b.identify(&RequestHead::from_parts(&parts(Some("bearer  tok ")))),
            Identity::Customer(CustomerId::new("a").unwrap())
        );
        let r = b.unauthorized(false);
        assert_eq!(&*r.reason, "unknown_bearer_token");
        assert_eq!(r.headers[0].0, header::WWW_AUTHENTICATE);
    }
}
