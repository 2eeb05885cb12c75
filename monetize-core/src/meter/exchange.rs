//! A read-only view of one request (and, after the inner service, its response) that
//! filters and value sources look at.

use http::{HeaderMap, Method, StatusCode};

use super::ReportedUsage;

/// What a filter or value source may look at. Built by the HTTP layer once per request.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Exchange<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The route template (`/users/{id}`) when the framework knows it, else `None`.
    pub route: Option<&'a str>,
    /// The request path (`/users/42`).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The request headers.
    pub request_headers: &'a HeaderMap,
    /// Request body bytes (from `Content-Length` or counted).
    pub request_bytes: u64,
    /// The response, once there is one.
    pub response: Option<ResponseView<'a>>,
    /// Quantities the handler reported (tokens, rows, ...).
    pub reported: Option<&'a ReportedUsage>,
    /// The start of the request body, captured only when a meter asks for a JSON field.
    pub request_body: Option<&'a [u8]>,
    /// The start of the response body, captured only when a meter asks for a JSON field.
    pub response_body: Option<&'a [u8]>,
}

/// What the configured meters look at, so that the HTTP layer keeps only that (no header
/// map copies, no body wrapper) for each request. Fixed for an engine's life:
/// [`Engine::reload`](crate::Engine::reload) refuses a config whose meters read otherwise.
///
/// Rules are evaluated before the response and see the request's method, path, route
/// template, query and headers, never its body size: a layer may skip reading
/// `Content-Length` when `request_bytes` is false.
///
/// With two-phase metering ([`crate::Engine::meter_request`] at the request,
/// [`crate::Engine::meter_response`] at the response) the request-side filters are done
/// before the response; [`ExchangeNeeds::request_at_response`] says whether the response
/// half still reads the request's method, route, path, query or headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExchangeNeeds {
    /// A meter reads request headers (filter or value).
    pub request_headers: bool,
    /// A meter reads response headers (filter or value).
    pub response_headers: bool,
    /// A meter counts response body bytes.
    pub response_bytes: bool,
    /// A meter counts request body bytes.
    pub request_bytes: bool,
    /// A meter filters on the query string.
    pub query: bool,
    /// A meter reads handler-reported quantities.
    pub reported: bool,
    /// Request / response body prefixes JSON-field meters read (the largest cap).
    pub json_capture: (Option<usize>, Option<usize>),
    /// [`crate::Engine::meter_response`] reads the request's method, route template, path,
    /// query or headers from the exchange it is given, which must then carry them as they
    /// were at the request. Set when some meter's filter is evaluated whole at the
    /// response and reads the request (a mixed filter: an `any` or `not` over both request
    /// and response tests; or, in a config with more than 64 meters, a meter from index 64
    /// on whose filter reads the request), or when a meter's value is a request header.
    ///
    /// When `false`, the layer may pass placeholders for those fields at the response
    /// (method `GET`, path `""`, no route, no query, an empty header map). Request body
    /// bytes (`request_bytes`) and the request body prefix for JSON-field meters
    /// (`request_body`) are not covered by this flag: the response half reads them from
    /// its exchange whenever [`ExchangeNeeds::request_bytes`] or
    /// [`ExchangeNeeds::json_capture`] asks for them.
    pub request_at_response: bool,
}

impl ExchangeNeeds {
    /// Whether metering must wait for the end of the response body (bytes are counted,
    /// a JSON field is read, or reported usage may be added while the body streams).
    pub fn needs_body(&self) -> bool {
        self.response_bytes || self.json_capture.1.is_some() || self.reported
    }
}

/// The response side of an [`Exchange`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ResponseView<'a> {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: &'a HeaderMap,
    /// Response body bytes sent to the client.
    pub bytes: u64,
}

impl<'a> ResponseView<'a> {
    /// A response: its status, headers and the body bytes sent so far.
    #[inline]
    pub fn new(status: StatusCode, headers: &'a HeaderMap, bytes: u64) -> Self {
        Self {
            status,
            headers,
            bytes,
        }
    }
}

impl<'a> Exchange<'a> {
    /// A request-side view; add the rest with the builder methods.
    pub fn new(method: &'a Method, path: &'a str, request_headers: &'a HeaderMap) -> Self {
        Self {
            method,
            route: None,
            path,
            query: None,
            request_headers,
            request_bytes: 0,
            response: None,
            reported: None,
            request_body: None,
            response_body: None,
        }
    }

    /// The exchange the response half of two-phase metering
    /// ([`Engine::meter_response`](crate::Engine::meter_response)) is given when
    /// [`ExchangeNeeds::request_at_response`] is `false`: the response and the request body
    /// size, with placeholders for the rest of the request (method `GET`, path `""`, no
    /// route or query, the response headers standing in for the request's, which nothing
    /// reads then). Built in one step, where the builder methods copy the whole view at
    /// each call: this is the exchange an HTTP layer builds for every metered response.
    #[inline]
    pub fn at_response(response: ResponseView<'a>, request_bytes: u64) -> Self {
        Self {
            method: &Method::GET,
            route: None,
            path: "",
            query: None,
            request_headers: response.headers,
            request_bytes,
            response: Some(response),
            reported: None,
            request_body: None,
            response_body: None,
        }
    }

    /// Sets the route template.
    pub fn route(mut self, route: Option<&'a str>) -> Self {
        self.route = route;
        self
    }

    /// Sets the raw query string.
    pub fn query(mut self, query: Option<&'a str>) -> Self {
        self.query = query;
        self
    }

    /// Sets the request body size.
    pub fn request_bytes(mut self, bytes: u64) -> Self {
        self.request_bytes = bytes;
        self
    }

    /// Adds the response.
    pub fn response(mut self, status: StatusCode, headers: &'a HeaderMap, bytes: u64) -> Self {
        self.response = Some(ResponseView {
            status,
            headers,
            bytes,
        });
        self
    }

    /// Adds handler-reported quantities.
    pub fn reported(mut self, reported: Option<&'a ReportedUsage>) -> Self {
        self.reported = reported;
        self
    }

    /// Adds captured body prefixes (for JSON-field meters).
    pub fn bodies(mut self, request: Option<&'a [u8]>, response: Option<&'a [u8]>) -> Self {
        self.request_body = request;
        self.response_body = response;
        self
    }

    /// The path to match route filters against: the template when known, else the path.
    pub(crate) fn route_or_path(&self) -> &'a str {
        self.route.unwrap_or(self.path)
    }

    /// Whether query parameter `name` is present and, when `want` is given, every
    /// occurrence of it has that value; names and values compared decoded
    /// (`application/x-www-form-urlencoded`, see [`crate::config::QueryMatch`]). Borrows
    /// from the query string unless a pair holds `%` or `+`.
    pub(crate) fn query_matches(&self, name: &str, want: Option<&str>) -> bool {
        let Some(q) = self.query else {
            return false;
        };
        let mut seen = false;
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if k == name {
                match want {
                    None => return true,
                    Some(w) if v != w => return false,
                    Some(_) => seen = true,
                }
            }
        }
        seen
    }
}
