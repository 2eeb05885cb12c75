//! Filters: which requests a meter (or a rule) applies to.

use http::{HeaderName, HeaderValue, Method};

use super::{Exchange, NameKey};
use crate::config::{FilterConfig, HeaderMatch, StatusSpec};
use crate::error::ConfigError;

/// A compiled filter.
#[derive(Clone, Debug)]
pub(crate) enum Filter {
    True,
    Method(Vec<Method>),
    Route(Vec<RoutePattern>),
    RouteOne(RoutePattern),
    Status(Vec<(u16, u16)>),
    StatusRange(u16, u16),
    RequestHeader(HeaderName, Option<HeaderValue>),
    ResponseHeader(HeaderName, Option<HeaderValue>),
    Query(String, Option<String>),
    Reported(NameKey),
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
}

/// A route template to match: exact, or a prefix when it ends in `*`.
#[derive(Clone, Debug)]
pub(crate) struct RoutePattern {
    /// The template, without the trailing `*` of a prefix.
    pattern: Box<str>,
    /// The route must be the pattern itself, not merely start with it.
    exact: bool,
    /// The pattern's first (up to) 8 bytes, little-endian, and the mask of those bytes in
    /// a little-endian load of a route's first 8 bytes.
    head: u64,
    mask: u64,
}

impl RoutePattern {
    /// A pattern matching the route `p` exactly, or every route starting with it.
    fn new(p: &str, exact: bool) -> Self {
        let b = p.as_bytes();
        let n = b.len().min(8);
        let mut word = [0u8; 8];
        word[..n].copy_from_slice(&b[..n]);
        Self {
            pattern: p.into(),
            exact,
            head: u64::from_le_bytes(word),
            mask: u64::MAX.checked_shr(64 - 8 * n as u32).unwrap_or(0),
        }
    }

    #[inline]
    fn matches(&self, route: &str) -> bool {
        // Word compares and byte loops instead of `==`/`starts_with`: route templates are
        // short, and this avoids a `memcmp` call per meter per request.
        let (r, p) = (route.as_bytes(), self.pattern.as_bytes());
        if r.len() < p.len() || (self.exact && r.len() != p.len()) {
            return false;
        }
        match r.first_chunk::<8>() {
            // The first 8 bytes in one compare, then the pattern's bytes past them.
            Some(w) => {
                u64::from_le_bytes(*w) & self.mask == self.head
                    && (p.len() <= 8
                        || r.get(8..p.len())
                            .zip(p.get(8..))
                            .is_some_and(|(a, b)| a.iter().zip(b).all(|(x, y)| x == y)))
            }
            // A route shorter than 8 bytes (and so is the pattern).
            None => r.iter().zip(p).all(|(a, b)| a == b),
        }
    }
}

impl Filter {
    /// Whether the exchange matches. Response-side tests fail while there is no response.
    #[inline]
    pub(crate) fn matches(&self, ex: &Exchange<'_>) -> bool {
        match self {
            Filter::True => true,
            Filter::RouteOne(p) => p.matches(ex.route_or_path()),
            Filter::StatusRange(lo, hi) => ex
                .response
                .is_some_and(|resp| (*lo..=*hi).contains(&resp.status.as_u16())),
            _ => self.matches_slow(ex),
        }
    }

    /// The other filters (a method test compares enums that may hold allocated extension
    /// methods), kept out of line so that the cheap common leaves inline.
    #[inline(never)]
    fn matches_slow(&self, ex: &Exchange<'_>) -> bool {
        match self {
            Filter::True => true,
            Filter::Method(ms) => ms.iter().any(|m| m == ex.method),
            Filter::Route(ps) => {
                let r = ex.route_or_path();
                ps.iter().any(|p| p.matches(r))
            }
            Filter::RouteOne(p) => p.matches(ex.route_or_path()),
            Filter::Status(ranges) => ex.response.is_some_and(|resp| {
                let s = resp.status.as_u16();
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&s))
            }),
            Filter::StatusRange(lo, hi) => ex
                .response
                .is_some_and(|resp| (*lo..=*hi).contains(&resp.status.as_u16())),
            Filter::RequestHeader(name, value) => header_matches(ex.request_headers, name, value),
            Filter::ResponseHeader(name, value) => ex
                .response
                .is_some_and(|r| header_matches(r.headers, name, value)),
            Filter::Query(name, value) => ex.query_matches(name, value.as_deref()),
            Filter::Reported(name) => ex.reported.is_some_and(|r| name.find(r).is_some()),
            Filter::All(fs) => fs.iter().all(|f| f.matches(ex)),
            Filter::Any(fs) => fs.iter().any(|f| f.matches(ex)),
            Filter::Not(f) => !f.matches(ex),
        }
    }

    /// Whether the filter looks at the response (status, response headers, reported usage).
    pub(crate) fn needs_response(&self) -> bool {
        match self {
            Filter::Status(_)
            | Filter::StatusRange(..)
            | Filter::ResponseHeader(..)
            | Filter::Reported(_) => true,
            Filter::All(fs) | Filter::Any(fs) => fs.iter().any(Filter::needs_response),
            Filter::Not(f) => f.needs_response(),
            _ => false,
        }
    }

    /// Which side of the exchange this filter reads.
    pub(crate) fn side(&self) -> Side {
        match self {
            Filter::True => Side::Neither,
            Filter::Method(_)
            | Filter::Route(_)
            | Filter::RouteOne(_)
            | Filter::RequestHeader(..)
            | Filter::Query(..) => Side::Request,
            Filter::Status(_)
            | Filter::StatusRange(..)
            | Filter::ResponseHeader(..)
            | Filter::Reported(_) => Side::Response,
            Filter::All(fs) | Filter::Any(fs) => {
                fs.iter().fold(Side::Neither, |s, f| s.join(f.side()))
            }
            Filter::Not(f) => f.side(),
        }
    }

    /// Splits the filter into a request-side part and a response-side part whose
    /// conjunction matches exactly the exchanges this filter matches: the request part
    /// reads only the request (method, route, path, query, request headers), the response
    /// part only the response (status, response headers, reported usage).
    ///
    /// Leaves go to their side; an `All` hands each child to its side, splitting a child
    /// `All` recursively; `True` goes nowhere; a part that reads nothing (a constant) goes
    /// to the request side. `None` when an `Any` or a `Not` reads both sides (a "mixed"
    /// filter, which only the whole exchange can decide).
    pub(crate) fn split(&self) -> Option<(Filter, Filter)> {
        let (mut request, mut response) = (Vec::new(), Vec::new());
        self.split_into(&mut request, &mut response)
            .then(|| (conjunction(request), conjunction(response)))
    }

    fn split_into(&self, request: &mut Vec<Filter>, response: &mut Vec<Filter>) -> bool {
        match (self, self.side()) {
            (Filter::True, _) => true,
            (_, Side::Neither | Side::Request) => {
                request.push(self.clone());
                true
            }
            (_, Side::Response) => {
                response.push(self.clone());
                true
            }
            (Filter::All(fs), Side::Both) => fs.iter().all(|f| f.split_into(request, response)),
            (_, Side::Both) => false,
        }
    }

    /// Records in `needs` what this filter looks at.
    pub(crate) fn note_needs(&self, needs: &mut super::ExchangeNeeds) {
        match self {
            Filter::RequestHeader(..) => needs.request_headers = true,
            Filter::ResponseHeader(..) => needs.response_headers = true,
            Filter::Query(..) => needs.query = true,
            Filter::Reported(_) => needs.reported = true,
            Filter::All(fs) | Filter::Any(fs) => fs.iter().for_each(|f| f.note_needs(needs)),
            Filter::Not(f) => f.note_needs(needs),
            Filter::True
            | Filter::Method(_)
            | Filter::Route(_)
            | Filter::RouteOne(_)
            | Filter::Status(_)
            | Filter::StatusRange(..) => {}
        }
    }

    /// Compiles a filter from config; `field` is the config path used in errors.
    pub(crate) fn compile(cfg: &FilterConfig, field: &str) -> Result<Filter, ConfigError> {
        let mut parts = Vec::new();
        if !cfg.method.is_empty() {
            let mut ms = Vec::new();
            for (i, m) in cfg.method.iter().enumerate() {
                let upper = m.to_ascii_uppercase();
                let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
                    ConfigError::new(
                        format!("{field}.method[{i}]"),
                        m,
                        "not an HTTP method (expected GET, POST, PUT, PATCH, DELETE, ...)",
                    )
                })?;
                ms.push(method);
            }
            parts.push(Filter::Method(ms));
        }
        if !cfg.route.is_empty() {
            let mut ps = Vec::new();
            for (i, r) in cfg.route.iter().enumerate() {
                let f = format!("{field}.route[{i}]");
                if !r.starts_with('/') {
                    return Err(ConfigError::new(
                        f,
                        r,
                        "a route template starts with `/` (for example `/v1/users/{id}` or `/v1/*`)",
                    ));
                }
                match r.find('*') {
                    None => ps.push(RoutePattern::new(r, true)),
                    Some(pos) if pos == r.len() - 1 => ps.push(RoutePattern::new(&r[..pos], false)),
                    Some(_) => {
                        return Err(ConfigError::new(
                            f,
                            r,
                            "`*` is only allowed at the end of a route (a prefix match)",
                        ));
                    }
                }
            }
            parts.push(match <[RoutePattern; 1]>::try_from(ps) {
                Ok([one]) => Filter::RouteOne(one),
                Err(ps) => Filter::Route(ps),
            });
        }
        if !cfg.status.is_empty() {
            let mut rs = Vec::new();
            for (i, s) in cfg.status.iter().enumerate() {
                rs.push(parse_status(s).ok_or_else(|| {
                    ConfigError::new(
                        format!("{field}.status[{i}]"),
                        s,
                        "not a status code, class or range (expected 100-599, `2xx`, or `400-499`)",
                    )
                })?);
            }
            parts.push(match rs.as_slice() {
                [(lo, hi)] => Filter::StatusRange(*lo, *hi),
                _ => Filter::Status(rs),
            });
        }
        if let Some(h) = &cfg.header {
            let (n, v) = compile_header(h, &format!("{field}.header"))?;
            parts.push(Filter::RequestHeader(n, v));
        }
        if let Some(h) = &cfg.response_header {
            let (n, v) = compile_header(h, &format!("{field}.response_header"))?;
            parts.push(Filter::ResponseHeader(n, v));
        }
        if let Some(q) = &cfg.query {
            if q.name.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.query.name"),
                    "",
                    "a query filter needs a parameter name",
                ));
            }
            parts.push(Filter::Query(q.name.clone(), q.value.clone()));
        }
        if let Some(r) = &cfg.reported {
            if r.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.reported"),
                    "",
                    "name the handler-reported quantity (for example `tokens`)",
                ));
            }
            parts.push(Filter::Reported(NameKey::new(r)));
        }
        for (i, f) in cfg.all.iter().enumerate() {
            parts.push(Filter::compile(f, &format!("{field}.all[{i}]"))?);
        }
        if !cfg.any.is_empty() {
            let mut any = Vec::new();
            for (i, f) in cfg.any.iter().enumerate() {
                any.push(Filter::compile(f, &format!("{field}.any[{i}]"))?);
            }
            parts.push(Filter::Any(any));
        }
        if let Some(f) = &cfg.not {
            parts.push(Filter::Not(Box::new(Filter::compile(
                f,
                &format!("{field}.not"),
            )?)));
        }
        // Cheapest tests first: a mismatch there skips the dearer ones.
        parts.sort_by_key(Filter::cost);
        Ok(match parts.len() {
            0 => Filter::True,
            1 => parts.pop().unwrap_or(Filter::True),
            _ => Filter::All(parts),
        })
    }

    /// A rough cost rank, for ordering the parts of an `All`.
    fn cost(&self) -> u8 {
        match self {
            Filter::True | Filter::StatusRange(..) | Filter::Status(_) | Filter::Method(_) => 0,
            Filter::RouteOne(_) | Filter::Route(_) => 1,
            Filter::Query(..) | Filter::Reported(_) => 2,
            Filter::RequestHeader(..) | Filter::ResponseHeader(..) => 3,
            Filter::All(_) | Filter::Any(_) | Filter::Not(_) => 4,
        }
    }
}

/// Which side of an exchange a filter reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Nothing (`True`, or a constant).
    Neither,
    /// Only the request: method, route, path, query, request headers.
    Request,
    /// Only the response: status, response headers, reported usage.
    Response,
    /// Both.
    Both,
}

impl Side {
    fn join(self, other: Side) -> Side {
        match (self, other) {
            (Side::Neither, s) | (s, Side::Neither) => s,
            (a, b) if a == b => a,
            _ => Side::Both,
        }
    }
}

/// The `All` of `parts` (cheapest first), `True` when there are none.
fn conjunction(mut parts: Vec<Filter>) -> Filter {
    parts.sort_by_key(Filter::cost);
    match parts.len() {
        0 => Filter::True,
        1 => parts.pop().unwrap_or(Filter::True),
        _ => Filter::All(parts),
    }
}

fn header_matches(
    headers: &http::HeaderMap,
    name: &HeaderName,
    want: &Option<HeaderValue>,
) -> bool {
    match (headers.get(name), want) {
        (Some(_), None) => true,
        (Some(v), Some(w)) => v == w,
        (None, _) => false,
    }
}

fn compile_header(
    h: &HeaderMatch,
    field: &str,
) -> Result<(HeaderName, Option<HeaderValue>), ConfigError> {
    let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
        ConfigError::new(
            format!("{field}.name"),
            &h.name,
            "not a valid HTTP header name",
        )
    })?;
    let value = match &h.value {
        None => None,
        Some(v) => Some(HeaderValue::from_str(v).map_err(|_| {
            ConfigError::new(
                format!("{field}.value"),
                v,
                "not a valid HTTP header value (visible ASCII only)",
            )
        })?),
    };
    Ok((name, value))
}

fn parse_status(s: &StatusSpec) -> Option<(u16, u16)> {
    let valid = |c: u16| (100..=599).contains(&c);
    match s {
        StatusSpec::Code(c) => valid(*c).then_some((*c, *c)),
        StatusSpec::Text(t) => {
            let t = t.trim();
            if t.len() == 3 && t.ends_with("xx") {
                let d = t[..1].parse::<u16>().ok()?;
                return (1..=5).contains(&d).then_some((d * 100, d * 100 + 99));
            }
            if let Some((a, b)) = t.split_once('-') {
                let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                return (valid(a) && valid(b) && a <= b).then_some((a, b));
            }
            let c = t.parse().ok()?;
            valid(c).then_some((c, c))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, StatusCode};

    #[test]
    fn status_forms() {
        assert_eq!(
            parse_status(&StatusSpec::Text("2xx".into())),
            Some((200, 299))
        );
        assert_eq!(
            parse_status(&StatusSpec::Text("400-499".into())),
            Some((400, 499))
        );
        assert_eq!(parse_status(&StatusSpec::Code(404)), Some((404, 404)));
        assert_eq!(parse_status(&StatusSpec::Text("7xx".into())), None);
        assert_eq!(parse_status(&StatusSpec::Code(99)), None);
        assert_eq!(parse_status(&StatusSpec::Text("500-400".into())), None);
    }

    #[test]
    fn combined_filter() {
        let cfg = FilterConfig {
            method: vec!["get".into()],
            route: vec!["/v1/*".into()],
            status: vec![StatusSpec::Text("2xx".into())],
            ..Default::default()
        };
        let f = Filter::compile(&cfg, "f").unwrap();
        assert!(f.needs_response());
        let h = HeaderMap::new();
        let get = Method::GET;
        let ex = Exchange::new(&get, "/v1/users/7", &h).route(Some("/v1/users/{id}"));
        assert!(!f.matches(&ex), "no response yet");
        assert!(f.matches(&ex.response(StatusCode::OK, &h, 0)));
        assert!(!f.matches(&ex.response(StatusCode::NOT_FOUND, &h, 0)));
        let post = Method::POST;
        let ex = Exchange::new(&post, "/v1/x", &h).response(StatusCode::OK, &h, 0);
        assert!(!f.matches(&ex));
    }

    #[test]
    fn route_patterns_match_like_strings() {
        let templates = [
            "/",
            "/a",
            "/v1/",
            "/v1/x",
            "/abcdefg",
            "/abcdefgh",
            "/abcdefghi",
            "/v1/users/",
            "/v1/users/{id}",
            "/v1/users/{id}/orders/{order}",
        ];
        let mut routes: Vec<String> = vec![String::new()];
        for t in templates {
            routes.push(t.to_owned());
            for extra in ["", "x", "/7", "/users/{id}/more"] {
                routes.push(format!("{t}{extra}"));
            }
            // Each byte changed in turn, and every shorter prefix.
            for i in 0..t.len() {
                let mut b = t.as_bytes().to_vec();
                b[i] = b'#';
                routes.push(String::from_utf8(b).unwrap_or_default());
                routes.push(t[..i].to_owned());
            }
        }
        for t in templates {
            let (exact, prefix) = (RoutePattern::new(t, true), RoutePattern::new(t, false));
            for r in &routes {
                assert_eq!(exact.matches(r), r == t, "exact {t:?} on {r:?}");
                assert_eq!(prefix.matches(r), r.starts_with(t), "prefix {t:?} on {r:?}");
            }
        }
    }

    #[test]
    fn query_and_not() {
        let cfg = FilterConfig {
            not: Some(Box::new(FilterConfig {
                query: Some(crate::config::QueryMatch {
                    name: "dry_run".into(),
                    value: Some("1".into()),
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let f = Filter::compile(&cfg, "f").unwrap();
        let h = HeaderMap::new();
        let m = Method::GET;
        assert!(!f.matches(&Exchange::new(&m, "/", &h).query(Some("a=2&dry_run=1"))));
        assert!(f.matches(&Exchange::new(&m, "/", &h).query(Some("dry_run=0"))));
        assert!(f.matches(&Exchange::new(&m, "/", &h)));
    }

    /// Under `not(query dry_run=1)`, whether each query string is billed.
    #[test]
    fn query_decoding_and_repeats_under_not() {
        let f = compile(FilterConfig::new().not(FilterConfig::new().query("dry_run", Some("1"))));
        let h = HeaderMap::new();
        let m = Method::GET;
        let billed = |q: &str| f.matches(&Exchange::new(&m, "/", &h).query(Some(q)));
        // Exempt: every reading of the query says dry_run=1.
        for q in [
            "dry_run=1",
            "dry%5Frun=1",
            "dry%5frun=%31",
            "dry_run=%31",
            "a=b&dry_run=1&dry_run=1",
            "dry_run=1&dry%5Frun=%31",
            "&&dry_run=1&",
        ] {
            assert!(!billed(q), "{q:?} is a dry run");
        }
        // Billed: no occurrence, another value, or occurrences that disagree.
        for q in [
            "",
            "dry_run=0",
            "dry_run=1&dry_run=0",
            "dry_run=0&dry_run=1",
            "dry%5Frun=0&dry_run=1",
            "dry_run=1&dry%5Frun=",
            "dry_run",
            "dry_run=1&dry_run",
            "dry_run=+1",
            "dry_run=1%00",
            "dry_run=%FF",
            "DRY_RUN=1",
            "dry_run%3D1",
            "xdry_run=1",
        ] {
            assert!(billed(q), "{q:?} is a billable call");
        }
    }

    #[test]
    fn query_presence_sees_encoded_names() {
        let f = compile(FilterConfig::new().query("dry_run", None));
        let h = HeaderMap::new();
        let m = Method::GET;
        let matches = |q: &str| f.matches(&Exchange::new(&m, "/", &h).query(Some(q)));
        assert!(matches("dry%5Frun"));
        assert!(matches("a=1&dry_run=0&dry_run=1"));
        assert!(matches("dry+run=1&dry_run"));
        assert!(!matches("dry+run=1"));
        assert!(!f.matches(&Exchange::new(&m, "/", &h)));
    }

    fn compile(cfg: FilterConfig) -> Filter {
        match Filter::compile(&cfg, "f") {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn split_all_by_side() {
        let f = compile(
            FilterConfig::new()
                .method("POST")
                .route("/v1/*")
                .status("2xx")
                .header("x-a", None)
                .response_header("x-r", Some("1"))
                .query("q", None)
                .reported("tokens"),
        );
        assert_eq!(f.side(), Side::Both);
        let Some((req, resp)) = f.split() else {
            panic!("an `all` of leaves splits");
        };
        assert_eq!(req.side(), Side::Request);
        assert_eq!(resp.side(), Side::Response);
        let Filter::All(rs) = &req else {
            panic!("request part: {req:?}");
        };
        assert_eq!(rs.len(), 4, "method, route, query, header: {rs:?}");
        let Filter::All(ps) = &resp else {
            panic!("response part: {resp:?}");
        };
        assert_eq!(ps.len(), 3, "status, response header, reported: {ps:?}");
    }

    #[test]
    fn split_nested_all_and_pure_composites() {
        // all: [ method, all: [status, any: [route, header]], not: reported ]
        let mut cfg = FilterConfig::new().method("GET");
        cfg.all = vec![
            FilterConfig::new().status("200").any(vec![
                FilterConfig::new().route("/a"),
                FilterConfig::new().header("x-a", None),
            ]),
            FilterConfig::new().not(FilterConfig::new().reported("tokens")),
        ];
        let f = compile(cfg);
        let Some((req, resp)) = f.split() else {
            panic!("every `any`/`not` is one-sided: {f:?}");
        };
        assert_eq!(req.side(), Side::Request);
        assert_eq!(resp.side(), Side::Response);
        let Filter::All(rs) = &req else {
            panic!("request part: {req:?}");
        };
        assert!(matches!(rs[0], Filter::Method(_)));
        assert!(matches!(rs[1], Filter::Any(_)));
        let Filter::All(ps) = &resp else {
            panic!("response part: {resp:?}");
        };
        assert!(matches!(ps[0], Filter::StatusRange(200, 200)));
        assert!(matches!(ps[1], Filter::Not(_)));
    }

    #[test]
    fn split_one_sided_and_true() {
        assert!(matches!(
            Filter::True.split(),
            Some((Filter::True, Filter::True))
        ));
        let f = compile(FilterConfig::new().route("/v1/*"));
        assert!(matches!(
            f.split(),
            Some((Filter::RouteOne(_), Filter::True))
        ));
        let f = compile(FilterConfig::new().status("5xx"));
        assert!(matches!(
            f.split(),
            Some((Filter::True, Filter::StatusRange(500, 599)))
        ));
        let f = compile(FilterConfig::new().not(FilterConfig::new().query("dry_run", None)));
        assert!(matches!(f.split(), Some((Filter::Not(_), Filter::True))));
    }

    #[test]
    fn mixed_any_and_not_do_not_split() {
        let any = compile(FilterConfig::new().any(vec![
            FilterConfig::new().route("/a"),
            FilterConfig::new().status("2xx"),
        ]));
        assert_eq!(any.side(), Side::Both);
        assert!(any.split().is_none());
        // Inside an `all`, one mixed child makes the whole filter mixed.
        let all = compile(FilterConfig::new().method("GET").any(vec![
            FilterConfig::new().header("x-a", None),
            FilterConfig::new().reported("tokens"),
        ]));
        assert!(all.split().is_none());
        let not = compile(FilterConfig::new().not(FilterConfig::new().method("GET").status("200")));
        assert!(not.split().is_none());
    }

    #[test]
    fn split_parts_agree_with_whole() {
        let f = compile(FilterConfig::new().method("GET").status("2xx"));
        let Some((req, resp)) = f.split() else {
            panic!("splits");
        };
        let h = HeaderMap::new();
        let (get, post) = (Method::GET, Method::POST);
        for (m, status) in [(&get, 200), (&get, 404), (&post, 200)] {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let ex = Exchange::new(m, "/", &h).response(status, &h, 0);
            let only_request = Exchange::new(m, "/", &h);
            let placeholder = Method::DELETE;
            let only_response = Exchange::new(&placeholder, "", &h).response(status, &h, 0);
            assert_eq!(
                f.matches(&ex),
                req.matches(&only_request) && resp.matches(&only_response)
            );
        }
    }
}
