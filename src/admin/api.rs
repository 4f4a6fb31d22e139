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
use crate::policy::engine::{Engine, ManualRestriction};
use crate::policy::hourly::HourSample;
use crate::policy::restriction::Restriction;

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
        .layer(middleware::map_response(errors_as_json))
        .with_state(state)
}

fn too_large() -> String {
    format!("request body too large (the limit is {BODY_LIMIT} bytes)")
}

/// Errors the layers raise rather than the handlers — 413 from the body limit (plain text),
/// 408 from the timeout and 405 from the router (empty) — get the JSON shape of every other
/// API error, so a script reads one form. Headers such as `Allow` are kept.
async fn errors_as_json(response: Response) -> Response {
    let status = response.status();
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        StatusCode::REQUEST_TIMEOUT => format!("request not completed within {} s", REQUEST_TIMEOUT.as_secs()),
        other => other.canonical_reason().unwrap_or("request refused").to_owned(),
    };
    let (parts, _) = response.into_parts();
    let mut json = ApiError(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}

async fn require_token(State(state): State<AdminState>, headers: HeaderMap, request: Request, next: Next) -> Response {
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_credentials);
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

/// The credentials of an `Authorization: Bearer …` value; the scheme's name is
/// case-insensitive (RFC 9110 §11.1), so `bearer` and `BEARER` are the same scheme.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

/// The account named in a request, in the engine's form, for a lookup or a release: any name
/// the engine may have counted, control characters included (a SASL login can carry them, and
/// such an account must still be released with the command its notice gives).
fn canonical(state: &AdminState, raw: &str) -> Result<String, ApiError> {
    state.engine.canonical_account(raw).ok_or_else(|| ApiError::bad_request(format!("{raw:?} is not an account name")))
}

/// The account a new restriction names: as [`canonical`], and a name an administrator can
/// mean — no control characters, and an address with both its parts.
fn new_account(state: &AdminState, raw: &str) -> Result<String, ApiError> {
    if raw.chars().any(char::is_control) {
        return Err(ApiError::bad_request("the account name has control characters"));
    }
    let bare = raw.trim().trim_start_matches('<').trim_end_matches('>');
    if bare.starts_with('@') {
        let account = canonical(state, bare)?;
        if !state.engine.is_capped_domain(&account) {
            return Err(ApiError::bad_request(format!(
                "{account} has no [[policy.domain]] cap: only a capped domain can be restricted as a unit"
            )));
        }
        return Ok(account);
    }
    if let Some((local, domain)) = bare.rsplit_once('@')
        && (local.is_empty() || domain.is_empty())
    {
        return Err(ApiError::bad_request(format!(
            "{raw:?} is not an account name: an address needs a local part and a domain"
        )));
    }
    canonical(state, raw)
}

/// A free text of the request (`reason`, `by`) that goes to the audit trail and the notices:
/// one line (a tab is allowed).
fn one_line(name: &str, text: &str) -> Result<(), ApiError> {
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ApiError::bad_request(format!("the {name} has control characters")));
    }
    Ok(())
}

fn restriction_json(r: &Restriction) -> Value {
    let mut value = serde_json::to_value(r).unwrap_or(Value::Null);
    // The documented keys exactly (README, "HTTP API and web page"); the cause is kept for the metrics, and `reason` says it in words.
    if let Some(fields) = value.as_object_mut() {
        fields.remove("cause");
    }
    value
}

async fn list_restricted(State(state): State<AdminState>) -> Json<Value> {
    let list = state.engine.restrictions().list(state.engine.clock().now().secs());
    Json(json!({ "restricted": list.iter().map(restriction_json).collect::<Vec<_>>() }))
}

async fn show_restriction(State(state): State<AdminState>, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let account = canonical(&state, &raw)?;
    let store = state.engine.restrictions();
    let r = store
        .get(&account, state.engine.clock().now().secs())
        .ok_or_else(|| ApiError::not_found(format!("account {account} is not restricted")))?;
    let mut body = restriction_json(&r);
    body["history"] = serde_json::to_value(state.engine.history(&account)).unwrap_or(Value::Null);
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
    let Json(req) = body.map_err(|e| {
        // Keep the rejection's own status: 413 for a body over the cap, 415 without JSON.
        match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError(e.status(), too_large()),
            StatusCode::UNPROCESSABLE_ENTITY => {
                ApiError(StatusCode::BAD_REQUEST, format!("invalid request body: {}", e.body_text()))
            }
            status => ApiError(status, format!("invalid request body: {}", e.body_text())),
        }
    })?;
    let account = new_account(&state, &req.account)?;
    let until = match req.until.as_deref() {
        None => None,
        Some(text) if text.trim().is_empty() => {
            return Err(ApiError::bad_request(
                "until is empty: give an RFC 3339 time, or leave until out for \"until released\"",
            ));
        }
        Some(text) => {
            let t = OffsetDateTime::parse(text, &Rfc3339)
                .map_err(|_| ApiError::bad_request(format!("until {text:?} is not an RFC 3339 time")))?;
            if t.unix_timestamp() <= state.engine.clock().now().secs() {
                return Err(ApiError::bad_request(format!("until {text:?} is in the past")));
            }
            Some(t.to_offset(time::UtcOffset::UTC))
        }
    };
    let reason = req.reason.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| "restricted by an administrator".into());
    one_line("reason", &reason)?;
    let by = req.by.unwrap_or_else(|| "admin".into());
    one_line("by", &by)?;
    let (restriction, outcome) =
        state.engine.restrict_manually(&account, &reason, until, &by).map_err(ApiError::internal)?;
    // In cluster mode: on the other nodes too before the answer.
    state.engine.restrictions().settled().await;
    let replaced = outcome == ManualRestriction::Replaced;
    let status = if replaced { StatusCode::OK } else { StatusCode::CREATED };
    let mut body = restriction_json(&restriction);
    body["replaced"] = Value::Bool(replaced);
    Ok((status, Json(body)))
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
    one_line("by", &by)?;
    if let Some(reason) = &q.reason {
        one_line("reason", reason)?;
    }
    let released = state
        .engine
        .release(&account, &by, q.reason.as_deref().filter(|r| !r.is_empty()))
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("account {account} is not restricted")))?;
    state.engine.restrictions().settled().await;
    // The restriction that was lifted, in the restriction's shape; who released it and why
    // are in its history.
    Ok(Json(restriction_json(&released)))
}

#[derive(Deserialize)]
struct TopQuery {
    top: Option<String>,
}

/// Most accounts `GET /api/v1/senders` lists.
const TOP_MAX: usize = 10_000;

async fn top_senders(State(state): State<AdminState>, Query(q): Query<TopQuery>) -> Result<Json<Value>, ApiError> {
    let n = match q.top.as_deref() {
        None => 20,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n.min(TOP_MAX),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "top {text:?} is not a number of accounts: give a whole number from 1 (at most {TOP_MAX} are listed)"
                )));
            }
        },
    };
    Ok(Json(json!({ "senders": state.engine.top_senders(n) })))
}

async fn show_sender(State(state): State<AdminState>, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let account = canonical(&state, &raw)?;
    let d = state
        .engine
        .sender_detail(&account)
        .ok_or_else(|| ApiError::not_found(format!("the filter knows nothing of account {account}")))?;
    Ok(Json(json!({
        "account": d.account,
        "policy": d.policy,
        "counters": d.counters,
        "limits": d.limits,
        "restriction": d.restriction.as_ref().map_or(Value::Null, restriction_json),
        "history": d.history,
        "as_of": crate::policy::clock::rfc3339(d.as_of),
        "hourly": hourly_json(&d.hourly),
    })))
}

/// The per-hour series as `GET /api/v1/senders/{account}` gives it (README, "HTTP API and web
/// page"): what each figure is, how often it was sampled, and the whole hours, oldest first,
/// `null` where not recorded.
fn hourly_json(hours: &[HourSample]) -> Value {
    let figure = |h: &HourSample, i: usize| h.in_use.map_or(Value::Null, |v| json!(v[i]));
    json!({
        "measure": "peak_in_use",
        "sample_seconds": crate::policy::hourly::SAMPLE_EVERY.as_secs(),
        "hours": hours.iter().map(|h| json!({
            "start": crate::policy::clock::rfc3339(h.start.datetime()),
            "external": figure(h, 0),
            "internal": figure(h, 1),
        })).collect::<Vec<_>>(),
    })
}

async fn reload(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    (state.reload)().map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    Ok(Json(json!({ "reloaded": true })))
}

/// `GET /metrics`: the Prometheus text format, or OpenMetrics for a scraper that asks for it.
async fn metrics(State(state): State<AdminState>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let m = state.engine.metrics();
    m.restrictions_active.set(state.engine.restrictions().list(state.engine.clock().now().secs()).len() as i64);
    m.tracked_accounts.set(state.engine.tracked_accounts() as i64);
    m.set_events_dropped(state.engine.events_dropped());
    m.set_domain_usage(&state.engine.domain_usage());
    if let Some(hook) = &state.on_scrape {
        hook();
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
    if openmetrics {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.render_openmetrics())
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, UNIX_EPOCH};

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::policy::clock::EngineClock;
    use crate::policy::events::EventSink;
    use crate::state::memory::MemoryRestrictions;

    fn app() -> Router {
        let config = Arc::new(Config::parse(Path::new("t.toml"), "").unwrap());
        let (sink, _rx) = EventSink::channel(16);
        let clock = EngineClock::manual(UNIX_EPOCH + Duration::from_secs(1_795_341_600));
        let engine =
            Engine::new(config, Arc::new(MemoryRestrictions::default()), sink, clock, Arc::new(Metrics::new()));
        router(AdminState {
            engine: Arc::new(engine),
            token: "secret".into(),
            reload: Arc::new(|| Err("test.toml:3: bogus: unknown field".into())),
            on_scrape: None,
        })
    }

    async fn send(method: &str, uri: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let response = app().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn token_required_and_constant_answers() {
        assert_eq!(send("GET", "/api/v1/restricted", None, None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(send("GET", "/api/v1/restricted", Some("wrong"), None).await.0, StatusCode::UNAUTHORIZED);
        let (status, body) = send("GET", "/api/v1/restricted", Some("secret"), None).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"restricted": []})));
        assert_eq!(
            send("GET", "/api/v1/restricted/a@example.com", Some("secret"), None).await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn manual_restriction_then_release() {
        let app = app();
        let post = Request::post("/api/v1/restricted")
            .header(header::AUTHORIZATION, "Bearer secret")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"account": "A@Example.com", "reason": "test"}).to_string()))
            .unwrap();
        let response = app.clone().oneshot(post).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let delete = Request::delete("/api/v1/restricted/a@example.com?reason=done")
            .header(header::AUTHORIZATION, "Bearer secret")
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.clone().oneshot(delete).await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_failed_reload_is_422_with_the_configuration_error() {
        let (status, body) = send("POST", "/api/v1/reload", Some("secret"), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"], "test.toml:3: bogus: unknown field");
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let big = json!({"account": "a@example.com", "reason": "x".repeat(100_000)});
        let (status, body) = send("POST", "/api/v1/restricted", Some("secret"), Some(big.clone())).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body["error"].as_str().is_some_and(|e| e.contains("too large")), "{body}");

        // Announced by Content-Length, the body is refused by the limit layer before it is read.
        let text = big.to_string();
        let req = Request::post("/api/v1/restricted")
            .header(header::AUTHORIZATION, "Bearer secret")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, text.len())
            .body(Body::from(text))
            .unwrap();
        let (status, body) = answer(req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"], format!("request body too large (the limit is {BODY_LIMIT} bytes)"));
    }

    async fn answer(req: Request<Body>) -> (StatusCode, Value) {
        let response = app().oneshot(req).await.unwrap();
        let status = response.status();
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_times_out_with_a_json_error() {
        let never = futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        let req = Request::post("/api/v1/restricted")
            .header(header::AUTHORIZATION, "Bearer secret")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(never))
            .unwrap();
        let (status, body) = answer(req).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(body["error"], "request not completed within 10 s");
    }

    #[tokio::test]
    async fn a_wrong_method_keeps_allow_and_answers_json() {
        let req =
            Request::put("/api/v1/senders").header(header::AUTHORIZATION, "Bearer secret").body(Body::empty()).unwrap();
        let response = app().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(response.headers().contains_key(header::ALLOW));
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}
