//! The HTTP API (axum): restricted accounts, live counters, reload, `/metrics`, `/healthz`, and
//! the web page at `/` (see [`super::page`]).
//!
//! [`router`] builds the whole app so tests drive it with `oneshot` and no socket. Every
//! `/api` route wants `Authorization: Bearer <token>`; errors are `{"error": "…"}` with a status
//! that says what kind of problem it is, never an internal detail. Bodies are capped and every
//! request has a deadline.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use super::token;
use crate::policy::engine::Engine;
use crate::state::restrictions::Restriction;

/// Largest request body accepted.
const BODY_LIMIT: usize = 64 * 1024;
/// Deadline of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Re-reads the configuration; `Err` carries the same text the file would give at start.
pub type Reloader = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
/// Extra numbers to copy into the metrics at scrape time (e.g. notification counts).
pub type ScrapeHook = Arc<dyn Fn() + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub engine: Arc<Engine>,
    pub token: Arc<str>,
    pub reload: Reloader,
    pub on_scrape: Option<ScrapeHook>,
}

/// An API error: status and a message for the administrator.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
    fn not_found(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::NOT_FOUND, msg.into())
    }
    fn internal(msg: impl std::fmt::Display) -> Self {
        // The detail goes to the log; the client learns only that it failed.
        tracing::error!("admin API: {msg}");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the filter's log".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// The admin application.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/api/v1/restricted", get(list_restricted).post(add_restriction))
        .route("/api/v1/restricted/{account}", get(show_restriction).delete(release))
        .route("/api/v1/senders", get(top_senders))
        .route("/api/v1/senders/{account}", get(show_sender))
        .route("/api/v1/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .merge(super::page::routes())
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .with_state(state)
}

async fn require_token(State(state): State<AdminState>, headers: HeaderMap, request: Request, next: Next) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if token::matches(t, &state.token) => next.run(request).await,
        _ => {
            let mut response =
                ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()).into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            response
        }
    }
}

fn canonical(state: &AdminState, raw: &str) -> Result<String, ApiError> {
    if raw.chars().any(char::is_control) {
        return Err(ApiError::bad_request("the account name has control characters"));
    }
    state.engine.canonical_account(raw).ok_or_else(|| ApiError::bad_request(format!("{raw:?} is not an account name")))
}

fn restriction_json(r: &Restriction) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

async fn list_restricted(State(state): State<AdminState>) -> Json<Value> {
    let list = state.engine.restrictions().list(state.engine.clock().now_secs());
    Json(json!({ "restricted": list.iter().map(restriction_json).collect::<Vec<_>>() }))
}

async fn show_restriction(State(state): State<AdminState>, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let account = canonical(&state, &raw)?;
    let store = state.engine.restrictions();
    let r = store
        .get(&account, state.engine.clock().now_secs())
        .ok_or_else(|| ApiError::not_found(format!("account {account} is not restricted")))?;
    let mut body = restriction_json(&r);
    body["history"] = serde_json::to_value(store.history(&account)).unwrap_or(Value::Null);
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRestriction {
    account: String,
    reason: Option<String>,
    until: Option<String>,
    by: Option<String>,
}

async fn add_restriction(
    State(state): State<AdminState>,
    body: Result<Json<NewRestriction>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(format!("invalid request body: {}", e.body_text())))?;
    let account = canonical(&state, &req.account)?;
    let until = match req.until.as_deref() {
        None | Some("") => None,
        Some(text) => {
            let t = OffsetDateTime::parse(text, &Rfc3339)
                .map_err(|_| ApiError::bad_request(format!("until {text:?} is not an RFC 3339 time")))?;
            if t.unix_timestamp() <= state.engine.clock().now_secs() {
                return Err(ApiError::bad_request(format!("until {text:?} is in the past")));
            }
            Some(t.to_offset(time::UtcOffset::UTC))
        }
    };
    let reason = req.reason.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| "restricted by an administrator".into());
    if reason.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ApiError::bad_request("the reason has control characters"));
    }
    let by = req.by.unwrap_or_else(|| "admin".into());
    let (restriction, created) =
        state.engine.restrict_manually(&account, &reason, until, &by).map_err(ApiError::internal)?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(restriction_json(&restriction))))
}

#[derive(Deserialize)]
struct ReleaseQuery {
    reason: Option<String>,
    by: Option<String>,
}

async fn release(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
    Query(q): Query<ReleaseQuery>,
) -> Result<Json<Value>, ApiError> {
    let account = canonical(&state, &raw)?;
    let by = q.by.unwrap_or_else(|| "admin".into());
    let released = state
        .engine
        .release(&account, &by, q.reason.as_deref().filter(|r| !r.is_empty()))
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("account {account} is not restricted")))?;
    let mut body = restriction_json(&released);
    body["released"] = Value::Bool(true);
    body["released_by"] = Value::String(by);
    Ok(Json(body))
}

#[derive(Deserialize)]
struct TopQuery {
    top: Option<usize>,
}

async fn top_senders(State(state): State<AdminState>, Query(q): Query<TopQuery>) -> Json<Value> {
    let n = q.top.unwrap_or(20).min(10_000);
    Json(json!({ "senders": state.engine.top_senders(n) }))
}

async fn show_sender(State(state): State<AdminState>, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let account = canonical(&state, &raw)?;
    let info = state
        .engine
        .sender(&account)
        .ok_or_else(|| ApiError::not_found(format!("no counters for account {account}")))?;
    let mut body = serde_json::to_value(&info).unwrap_or(Value::Null);
    body["restriction"] = state
        .engine
        .restrictions()
        .get(&account, state.engine.clock().now_secs())
        .map_or(Value::Null, |r| restriction_json(&r));
    Ok(Json(body))
}

async fn reload(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    (state.reload)().map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    Ok(Json(json!({ "reloaded": true })))
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let m = state.engine.metrics();
    m.restrictions_active.set(state.engine.restrictions().list(state.engine.clock().now_secs()).len() as i64);
    m.tracked_accounts.set(state.engine.tracked_accounts() as i64);
    m.events_dropped.set(state.engine.events_dropped() as i64);
    if let Some(hook) = &state.on_scrape {
        hook();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render())
}
