//! [`RequestHead`]: what identification and route sources see of a request.

use http::{Extensions, HeaderMap, Method, Request, Uri, Version};

/// A borrowed view of a request's head: method, URI, version, headers and extensions.
///
/// The layer reads requests through this view rather than taking them apart, so that the
/// request is handed to the inner service as it came (no moves of its head). Fields are
/// named as on [`http::request::Parts`], so code written for `Parts` reads the same.
///
/// ```
/// use monetize_tower::RequestHead;
///
/// let req = http::Request::get("/v1/users?page=2").header("x-api-key", "sk_1").body(()).unwrap();
/// let head = RequestHead::of(&req);
/// assert_eq!(head.path, "/v1/users");
/// assert_eq!(head.headers.get("x-api-key").unwrap(), "sk_1");
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request URI.
    pub uri: &'a Uri,
    /// The request path (`uri.path()`, read once for everything that looks at it).
    pub path: &'a str,
    /// The HTTP version.
    pub version: Version,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions.
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `request`.
    #[inline]
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            path: request.uri().path(),
            version: request.version(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }

    /// The head of a request taken apart.
    #[inline]
    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        Self {
            method: &parts.method,
            uri: &parts.uri,
            path: parts.uri.path(),
            version: parts.version,
            headers: &parts.headers,
            extensions: &parts.extensions,
        }
    }
}
