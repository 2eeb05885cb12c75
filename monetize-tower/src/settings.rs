//! The settings a [`MonetizeLayer`](crate::MonetizeLayer) shares with every service it
//! makes: how to identify and when to refuse, which routes are exempt, and what the
//! response half keeps of the request. Below `layer`, `service` and `future`, which all read
//! them.

use std::sync::Arc;

use http::HeaderName;

use monetize_core::{CustomerHandle, CustomerId, CustomerToken, Engine};

use crate::identify::{Identify, Identity, KeyDirectory, header_key};
use crate::response::resolve_refusal;
use crate::{Error, RequestHead};

/// What to do with a request whose customer cannot be told: no credentials
/// ([`MonetizeLayer::on_missing`](crate::MonetizeLayer::on_missing)) or credentials that name no customer
/// ([`MonetizeLayer::on_unknown`](crate::MonetizeLayer::on_unknown)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingPolicy {
    /// Refuse with `401` and a JSON body naming what to send (the default).
    #[default]
    Reject,
    /// Let the request through, neither governed nor metered.
    Anonymous,
    /// Serve it as this customer: governed and metered like any other (for example a
    /// shared `anonymous` customer with a tight rate limit).
    Customer(CustomerId),
}

/// What the layer keeps from each request until metering, and when it meters: only what
/// a meter reads ([`Engine::exchange_needs`]). What meters read never changes while an
/// engine runs ([`Engine::reload`] refuses such a config), so this is computed once per
/// layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keep {
    /// Some meter needs the request side again at the response (its filter mixes request
    /// and response tests, or its value reads a request header): keep the method, path,
    /// query, route template (and headers, when `request_headers`) until metering.
    pub(crate) request_at_response: bool,
    /// A meter reads request headers.
    pub(crate) request_headers: bool,
    /// A meter counts request body bytes: the request body is tapped to count the bytes
    /// the inner service reads (`Content-Length` when the tap is not wrapped around it).
    pub(crate) request_bytes: bool,
    /// The request body prefix cap of request JSON-field meters: the request body is
    /// tapped.
    pub(crate) request_capture: Option<usize>,
    /// What to do when the response head arrives.
    pub(crate) response: AtResponse,
}

/// What the layer does with the response head (carried by each metered request's
/// response future, so kept small).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AtResponse {
    /// No meter reads the bodies (bytes or JSON fields): meter when the response head
    /// arrives and pass the body through untouched, unless a handler's recorder is still
    /// alive.
    pub(crate) at_head: bool,
    /// A meter reads handler-reported quantities: take [`ReportedUsage`] out of the
    /// response extensions, and wait for the end of the body while a
    /// [`UsageRecorder`](crate::UsageRecorder) of the request is alive (it may add while
    /// the body streams).
    ///
    /// [`ReportedUsage`]: monetize_core::ReportedUsage
    pub(crate) reported: bool,
    /// A meter reads response headers: keep a copy of the map when metering waits for
    /// the end of the body (metering at the head reads the response's own map).
    pub(crate) response_headers: bool,
    /// The response body prefix cap of response JSON-field meters.
    pub(crate) capture: Option<u32>,
}

impl Keep {
    pub(crate) fn of(engine: &Engine) -> Keep {
        let needs = engine.exchange_needs();
        let (request_capture, response_capture) = needs.json_capture;
        Keep {
            request_at_response: needs.request_at_response,
            request_headers: needs.request_headers,
            request_bytes: needs.request_bytes,
            request_capture,
            response: AtResponse {
                // Request bytes are counted as the inner service reads the body, which it
                // may do until its response body ends.
                at_head: !needs.response_bytes
                    && !needs.request_bytes
                    && request_capture.is_none()
                    && response_capture.is_none(),
                reported: needs.reported,
                response_headers: needs.response_headers,
                capture: response_capture.map(|c| u32::try_from(c).unwrap_or(u32::MAX)),
            },
        }
    }
}

/// A route pattern: exact, or a prefix when it ends in `*`.
#[derive(Clone, Debug)]
pub(crate) enum Pattern {
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl Pattern {
    pub(crate) fn parse(p: &str) -> Result<Pattern, Error> {
        if !p.starts_with('/') {
            return Err(Error::InvalidRoute(p.to_owned()));
        }
        match p.find('*') {
            None => Ok(Pattern::Exact(p.into())),
            Some(i) if i == p.len() - 1 => Ok(Pattern::Prefix(p[..i].into())),
            Some(_) => Err(Error::InvalidRoute(p.to_owned())),
        }
    }

    fn matches(&self, route: &str) -> bool {
        match self {
            Pattern::Exact(p) => **p == *route,
            Pattern::Prefix(p) => route.starts_with(&**p),
        }
    }
}

/// The layer's settings, shared by every service it makes.
#[derive(Clone)]
pub(crate) struct Settings<R> {
    pub(crate) engine: Engine,
    pub(crate) identify: Arc<dyn Identify>,
    /// `identify`'s key directory, when it has one: keys are then resolved by the layer,
    /// through each thread's remembered tokens ([`Identify::key_directory`]).
    pub(crate) keys: Option<KeyDirectory>,
    /// `identify`'s header, when it is an [`ApiKey`]: the layer reads the key itself
    /// rather than through `dyn Identify` (the same read: [`header_key`]).
    pub(crate) key_header: Option<HeaderName>,
    pub(crate) on_missing: MissingPolicy,
    pub(crate) on_unknown: MissingPolicy,
    pub(crate) exempt: Vec<Pattern>,
    pub(crate) route: R,
    pub(crate) keep: Keep,
    /// Also put the customer handle into the request extensions.
    pub(crate) customer_extension: bool,
    /// Add `X-Credits-Remaining` to allowed responses too (blocks always carry it).
    pub(crate) credits_header: bool,
}

/// Who a request belongs to, after identification and the missing-credentials policy.
pub(crate) enum Who {
    Customer(CustomerHandle),
    Anonymous,
    Refused(Box<monetize_core::Block>),
}

impl<R> Settings<R> {
    #[inline]
    pub(crate) fn who(&self, head: &RequestHead<'_>) -> Who {
        if let Some(keys) = &self.keys {
            return self.who_by_key(keys, head);
        }
        let resolved = match self.identify.identify(head) {
            Identity::Id(id) => self.engine.resolve(id),
            Identity::Customer(id) => self.engine.resolve(id.as_str()),
            Identity::Missing => return self.fallback(&self.on_missing, true),
            Identity::Unknown => return self.fallback(&self.on_unknown, false),
        };
        match resolved {
            Ok(h) => Who::Customer(h),
            Err(e) => Who::Refused(Box::new(resolve_refusal(&e))),
        }
    }

    /// [`Settings::who`] for a strategy with a key directory: the key's token, then this
    /// thread's remembered customer for it, else the directory and the customer map.
    #[inline]
    fn who_by_key(&self, keys: &KeyDirectory, head: &RequestHead<'_>) -> Who {
        let key = match &self.key_header {
            Some(name) => header_key(head.headers, name),
            None => self.identify.key(head),
        };
        let Some(key) = key else {
            return self.fallback(&self.on_missing, true);
        };
        let (token, mac) = keys.token(key);
        if let Some(h) = self.engine.resolve_token(token) {
            return Who::Customer(h);
        }
        self.who_by_key_lookup(keys, key, token, mac)
    }

    /// A key this thread does not remember (or whose customer was evicted since).
    #[inline(never)]
    fn who_by_key_lookup(
        &self,
        keys: &KeyDirectory,
        key: &[u8],
        token: CustomerToken,
        mac: u128,
    ) -> Who {
        let Some(id) = keys.lookup_mac(key, mac) else {
            return self.fallback(&self.on_unknown, false);
        };
        match self.engine.resolve(id.as_str()) {
            Ok(h) => {
                self.engine.remember_token(token, &h);
                Who::Customer(h)
            }
            Err(e) => Who::Refused(Box::new(resolve_refusal(&e))),
        }
    }

    #[cold]
    fn fallback(&self, policy: &MissingPolicy, missing: bool) -> Who {
        match policy {
            MissingPolicy::Reject => Who::Refused(Box::new(self.identify.unauthorized(missing))),
            MissingPolicy::Anonymous => Who::Anonymous,
            MissingPolicy::Customer(id) => match self.engine.resolve(id.as_str()) {
                Ok(h) => Who::Customer(h),
                Err(e) => Who::Refused(Box::new(resolve_refusal(&e))),
            },
        }
    }

    #[inline]
    pub(crate) fn is_exempt(&self, route: Option<&str>, path: &str) -> bool {
        !self.exempt.is_empty() && {
            let route = route.unwrap_or(path);
            self.exempt.iter().any(|p| p.matches(route))
        }
    }
}
