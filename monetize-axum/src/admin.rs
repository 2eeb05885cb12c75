//! The operator's admin routes over an [`Operator`], behind an admin token.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use http::{HeaderMap, StatusCode, header};
use monetize_core::credits::Grant;
use monetize_core::operator::{Listing, Operator, OperatorError};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

/// The header naming who makes a change (logged with it); `admin` when absent.
pub const ACTOR_HEADER: &str = "x-admin-actor";

/// The admin routes, protected by an admin token (`Authorization: Bearer <token>`,
/// compared in constant time; never a customer's API key): every call without it, or
/// with another, is refused with `401`. Who made a change is the [`ACTOR_HEADER`] header
/// (default `admin`), logged with the change.
///
/// | route | does |
/// | --- | --- |
/// | `GET {prefix}/customers?status=delinquent` (or `blocked`, `cancelled`) | lists those customers |
/// | `GET {prefix}/customers/{id}` | the customer's whole state: status, plan, balance, quota usage per meter, last webhook events applied (`404` if unknown) |
/// | `POST {prefix}/customers/{id}/block`, `.../unblock` | blocks / unblocks |
/// | `POST {prefix}/customers/{id}/credits` `{"id": "...", "amount": 1000000, "expires_at": 1830297600, "priority": 1}` | grants micro-credits through the credits ledger, once per `id`; `expires_at` (unix seconds, in the future) and `priority` (lower spent first among grants expiring together) are optional; the same `id` with another grant is a `409` |
/// | `PUT {prefix}/customers/{id}/plan` `{"plan": "pro"}` | changes plan |
///
/// Mount it outside the monetize layer (after `.monetize(...)`).
#[derive(Clone)]
pub struct AdminRoutes {
    operator: Operator,
    token: Arc<SecretString>,
    prefix: String,
}

impl std::fmt::Debug for AdminRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminRoutes")
            .field("prefix", &self.prefix)
            .field("token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
}

/// The body of a credit grant: `{"id": "...", "amount": 1000000, "expires_at":
/// 1830297600, "priority": 1}` (the last two optional).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    id: String,
    amount: i64,
    /// Unix seconds; in the future.
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    priority: Option<u32>,
}

#[derive(Deserialize)]
struct PlanBody {
    plan: String,
}

impl AdminRoutes {
    /// The routes under `/admin`, accepting `token` (an empty token accepts nothing).
    pub fn new(operator: Operator, token: SecretString) -> Self {
        Self {
            operator,
            token: Arc::new(token),
            prefix: "/admin".into(),
        }
    }

    /// Serves them under `prefix` instead (it must start with `/`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().trim_end_matches('/').to_owned();
        self
    }

    /// The router.
    pub fn into_router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let p = self.prefix.clone();
        Router::new()
            .route(&format!("{p}/customers"), get(list))
            .route(&format!("{p}/customers/{{id}}"), get(show))
            .route(&format!("{p}/customers/{{id}}/block"), post(block))
            .route(&format!("{p}/customers/{{id}}/unblock"), post(unblock))
            .route(&format!("{p}/customers/{{id}}/credits"), post(grant))
            .route(&format!("{p}/customers/{{id}}/plan"), put(plan))
            .with_state(self)
    }

    /// The actor, when the request carries the admin token.
    #[allow(clippy::result_large_err)]
    fn authorize(&self, headers: &HeaderMap) -> Result<String, Response> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = self.token.expose_secret().as_bytes();
        let ok = !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected));
        if !ok {
            tracing::warn!(target: "monetize::operator", "admin call refused: bad or missing admin token");
            return Err((
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({ "error": "admin token required" })),
            )
                .into_response());
        }
        let actor = headers
            .get(ACTOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|a| !a.is_empty() && a.len() <= 64)
            .unwrap_or("admin");
        Ok(actor.to_owned())
    }
}

fn failed(e: OperatorError) -> Response {
    let status = match e {
        OperatorError::UnknownCustomer(_) => StatusCode::NOT_FOUND,
        OperatorError::Invalid(_) => StatusCode::BAD_REQUEST,
        OperatorError::Conflict(_) => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(json!({ "error": e.to_string() }))).into_response()
}

async fn view(a: &AdminRoutes, id: &str) -> Response {
    match a.operator.customer(id).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => failed(OperatorError::UnknownCustomer(id.to_owned())),
        Err(e) => failed(e),
    }
}

async fn list(
    State(a): State<AdminRoutes>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Err(r) = a.authorize(&headers) {
        return r;
    }
    let which = match q.status.as_deref() {
        Some("delinquent") => Listing::Delinquent,
        Some("blocked") => Listing::Blocked,
        Some("cancelled") => Listing::Cancelled,
        _ => {
            return failed(OperatorError::Invalid(
                "give `?status=delinquent`, `blocked` or `cancelled`".into(),
            ));
        }
    };
    Json(json!({ "customers": a.operator.list(which) })).into_response()
}

async fn show(
    State(a): State<AdminRoutes>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = a.authorize(&headers) {
        return r;
    }
    view(&a, &id).await
}

async fn set_blocked(a: AdminRoutes, headers: HeaderMap, id: String, on: bool) -> Response {
    let actor = match a.authorize(&headers) {
        Ok(actor) => actor,
        Err(r) => return r,
    };
    match a.operator.block(&actor, &id, on).await {
        Ok(()) => view(&a, &id).await,
        Err(e) => failed(e),
    }
}

async fn block(
    State(a): State<AdminRoutes>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    set_blocked(a, headers, id, true).await
}

async fn unblock(
    State(a): State<AdminRoutes>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    set_blocked(a, headers, id, false).await
}

async fn grant(
    State(a): State<AdminRoutes>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<GrantBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let actor = match a.authorize(&headers) {
        Ok(actor) => actor,
        Err(r) => return r,
    };
    let Json(g) = match body {
        Ok(b) => b,
        Err(e) => return failed(OperatorError::Invalid(format!("body: {e}"))),
    };
    let mut grant = Grant::new(g.id.clone(), g.amount);
    grant.expires_at = g.expires_at;
    grant.priority = g.priority.unwrap_or(0);
    match a.operator.grant(&actor, &id, grant).await {
        Ok(granted) => {
            let balance = a
                .operator
                .customer(&id)
                .await
                .ok()
                .flatten()
                .map(|v| v.usage.balance);
            Json(json!({
                "customer": id,
                "grant": g.id,
                "granted": granted,
                "expires_at": g.expires_at,
                "balance": balance,
            }))
            .into_response()
        }
        Err(e) => failed(e),
    }
}

async fn plan(
    State(a): State<AdminRoutes>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<PlanBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let actor = match a.authorize(&headers) {
        Ok(actor) => actor,
        Err(r) => return r,
    };
    let Json(p) = match body {
        Ok(b) => b,
        Err(e) => return failed(OperatorError::Invalid(format!("body: {e}"))),
    };
    match a.operator.set_plan(&actor, &id, &p.plan).await {
        Ok(()) => view(&a, &id).await,
        Err(e) => failed(e),
    }
}
