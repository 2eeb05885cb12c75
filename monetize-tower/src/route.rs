//! Route templates: `/users/{id}` rather than `/users/42`, so one meter filter covers a route.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::RequestHead;

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
/// The layer reads the template in `call`, where it decides and picks the meters whose
/// request-side filters match; it keeps nothing of it afterwards (except for meters whose
/// filters mix request and response tests, see
/// [`ExchangeNeeds`](monetize_core::ExchangeNeeds)).
pub trait RouteSource: Clone + Send + Sync + 'static {
    /// The template of this request, if known.
    fn route<'a>(&'a self, request: &RequestHead<'a>) -> Option<&'a str>;
}

/// Reads a [`RouteTemplate`] request extension (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct FromRouteTemplate;

impl RouteSource for FromRouteTemplate {
    #[inline]
    fn route<'a>(&'a self, request: &RequestHead<'a>) -> Option<&'a str> {
        request
            .extensions
            .get::<RouteTemplate>()
            .map(RouteTemplate::as_str)
    }
}

/// Route templates matched by the layer itself, from a list of the app's routes: for a
/// layer wrapped around a whole router (rather than placed on each route), or a service
/// that knows no templates.
///
/// Matching uses `matchit`, the router axum uses, with its syntax (`/users/{id}`,
/// `/files/{*path}`) and its priorities (a static segment wins over a parameter): given
/// the same templates, a path gets the template axum's `MatchedPath` would name. List
/// every route of the app whose paths a metered template could also match (`/users/me`
/// next to `/users/{id}`), or list them all. A path that matches no listed template
/// has no template: filters then match against the path itself. A path equal to a
/// template without parameters is answered from a hash map before the tree is walked.
///
/// ```
/// use monetize_tower::RouteTable;
///
/// let routes = RouteTable::new(["/v1/users/{id}", "/v1/users/me", "/v1/files/{*path}"]).unwrap();
/// assert_eq!(routes.template("/v1/users/42"), Some("/v1/users/{id}"));
/// assert_eq!(routes.template("/v1/users/me"), Some("/v1/users/me"));
/// assert_eq!(routes.template("/v1/files/a/b.txt"), Some("/v1/files/{*path}"));
/// assert_eq!(routes.template("/v2/other"), None);
/// assert!(RouteTable::new(["users"]).is_err());
/// ```
#[derive(Clone)]
pub struct RouteTable(Arc<Table>);

struct Table {
    /// The templates without parameters (nor `{{`/`}}` escapes), by the path they match
    /// exactly. A path equal to one of them gets it (matchit would answer the same: a
    /// static route wins over any parameter), without walking the tree.
    statics: Statics,
    router: matchit::Router<Arc<str>>,
}

/// Up to this many static templates are compared one by one (length first) rather than
/// hashed: cheaper than hashing the path for the few static routes most apps have.
const FEW: usize = 8;

/// The static templates: a short list, or a map.
enum Statics {
    Few(Box<[Arc<str>]>),
    Many(HashMap<Box<str>, Arc<str>, foldhash::fast::RandomState>),
}

impl Statics {
    fn of(templates: Vec<Arc<str>>) -> Self {
        if templates.len() <= FEW {
            return Statics::Few(templates.into());
        }
        Statics::Many(templates.into_iter().map(|t| (Box::from(&*t), t)).collect())
    }

    #[inline]
    fn get(&self, path: &str) -> Option<&str> {
        match self {
            Statics::Few(list) => list
                .iter()
                .find(|t| crate::identify::same_name(t.as_bytes(), path.as_bytes()))
                .map(|t| &**t),
            Statics::Many(map) => map.get(path).map(|t| &**t),
        }
    }
}

impl RouteTable {
    /// A table of these templates. Fails on a template that does not start with `/`, is
    /// not valid matchit/axum syntax, or conflicts with another.
    pub fn new<I>(templates: I) -> Result<Self, crate::Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut router = matchit::Router::new();
        let mut statics = Vec::new();
        for t in templates {
            let t = t.as_ref();
            let invalid = |problem: String| crate::Error::InvalidTemplate {
                template: t.to_owned(),
                problem,
            };
            if !t.starts_with('/') {
                return Err(invalid("a route template starts with `/`".to_owned()));
            }
            let template = Arc::<str>::from(t);
            router
                .insert(t, Arc::clone(&template))
                .map_err(|e| invalid(e.to_string()))?;
            if !t.contains(['{', '}']) {
                statics.push(template);
            }
        }
        let statics = Statics::of(statics);
        Ok(Self(Arc::new(Table { statics, router })))
    }

    /// The template `path` matches, if any.
    #[inline]
    pub fn template(&self, path: &str) -> Option<&str> {
        let t = &self.0;
        if let Some(s) = t.statics.get(path) {
            return Some(s);
        }
        t.router.at(path).ok().map(|m| &**m.value)
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable").finish_non_exhaustive()
    }
}

impl RouteSource for RouteTable {
    #[inline]
    fn route<'a>(&'a self, request: &RequestHead<'a>) -> Option<&'a str> {
        self.template(request.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_templates_are_refused_with_the_template_and_the_problem() {
        let err = RouteTable::new(["/users/{id}", "/users/{name}"]).unwrap_err();
        let crate::Error::InvalidTemplate { template, problem } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(template, "/users/{name}");
        assert!(!problem.is_empty());
        assert!(err.to_string().contains("/users/{name}"), "{err}");
        for bad in ["users", "", "/files/{*path}/more", "/a/{"] {
            let err = RouteTable::new([bad]).unwrap_err();
            assert!(
                matches!(&err, crate::Error::InvalidTemplate { template, .. } if template == bad),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn paths_get_the_template_axum_would_match() {
        let t = RouteTable::new(["/v1/users/{id}", "/v1/users/me", "/v1/{*rest}"]).unwrap();
        assert_eq!(t.template("/v1/users/me"), Some("/v1/users/me"));
        assert_eq!(t.template("/v1/users/7"), Some("/v1/users/{id}"));
        assert_eq!(t.template("/v1/users/7/posts"), Some("/v1/{*rest}"));
        assert_eq!(t.template("/v2"), None);
        let req = http::Request::get("/v1/users/9").body(()).unwrap();
        assert_eq!(t.route(&RequestHead::of(&req)), Some("/v1/users/{id}"));
    }

    #[test]
    fn static_templates_answer_as_the_tree_does() {
        let base = [
            "/",
            "/v1/hello",
            "/v1/users/me",
            "/v1/users/{id}",
            "/v1/users/{id}/posts",
            "/v1/files/{*path}",
            "/v1/files/readme",
            "/v1/{{literal}}",
            "/v2/a",
            "/v2/a/",
        ];
        // Few static templates (compared one by one), then many (a map).
        let extra: Vec<String> = (0..FEW).map(|i| format!("/v3/s{i}")).collect();
        for many in [false, true] {
            let mut templates: Vec<&str> = base.to_vec();
            if many {
                templates.extend(extra.iter().map(String::as_str));
            }
            let t = RouteTable::new(&templates).unwrap();
            assert_eq!(matches!(t.0.statics, Statics::Many(_)), many);
            let tree = {
                let mut r = matchit::Router::new();
                for x in &templates {
                    r.insert(*x, *x).unwrap();
                }
                r
            };
            for path in [
                "/",
                "",
                "/v1/hello",
                "/v1/hello/",
                "/v1/hellp",
                "/v1/users/me",
                "/v1/users/you",
                "/v1/users/me/posts",
                "/v1/files/readme",
                "/v1/files/readme/x",
                "/v1/{literal}",
                "/v1/{{literal}}",
                "/v2/a",
                "/v2/a/",
                "/v2/b",
                "/v3/s0",
                "/v3/s7",
                "/v3/s8",
            ] {
                let want = tree.at(path).ok().map(|m| *m.value);
                assert_eq!(t.template(path), want, "{path:?}, many: {many}");
            }
        }
    }
}
