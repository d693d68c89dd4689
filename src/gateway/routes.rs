//! The HTTP API. Every refusal is a 4xx (or 503) with a JSON `{"error": ...}` body and one
//! log line; nothing a client sends makes the gateway fail.
//!
//! | route | answer |
//! |---|---|
//! | `POST /activities/{id}/purchase[?wait_ms=]` | 200 the outcome (decided, or `door`), 202 pending with the request's URL |
//! | `GET /requests/{id}[?wait_ms=]` | 200 the outcome or `pending`; 404 unknown or another user's |
//! | `GET /activities/{id}` | 200 the sale's state (cached briefly); 404 unknown |
//! | `GET /activities[?ids=1,2]` | 200 those sales (default: the newest 50), with the answers read for each |
//! | `GET /` | the live page (in the binary: no build step, no CDN) |
//! | `GET /health`, `GET /ready` | 200 / 503 |

use super::auth::AuthError;
use super::limits::retry_after;
use super::outcomes::{Lookup, TableFull};
use super::Gateway;
use crate::common::{now_ms, SeckillRequest, SeckillResult};
use crate::kafka::sink::KafkaMessage;
use crate::report::Report;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Longest `Idempotency-Key`; only letters, digits, `.`, `_` and `-`.
pub const MAX_KEY_LEN: usize = 64;

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/activities/{id}/purchase", post(purchase))
        .route("/activities/{id}", get(activity))
        .route("/activities", get(activities))
        .route("/", get(page))
        .route("/requests/{id}", get(request))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .with_state(gateway)
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    tracing::info!(event = "rejected", status = status.as_u16(), %reason, "request refused");
    (status, Json(json!({ "error": reason }))).into_response()
}

fn limited(wait: Duration, who: &str) -> Response {
    let mut response = refuse(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("{who} is over its rate"),
    );
    if let Ok(value) = retry_after(wait).parse() {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn unauthorised(error: AuthError) -> Response {
    let mut response = refuse(StatusCode::UNAUTHORIZED, error.reason());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

fn user_of(gateway: &Gateway, headers: &HeaderMap) -> Result<u64, AuthError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().map_err(|_| AuthError::Malformed))
        .transpose()?;
    gateway.verifier.user(authorization)
}

#[derive(Debug, Deserialize)]
struct Wait {
    wait_ms: Option<u64>,
}

fn outcome_body(result: &SeckillResult) -> serde_json::Value {
    let mut body = json!({
        "request_id": result.request_id,
        "activity_id": result.activity_id,
        "outcome": result.outcome.as_str(),
        "decided_at": result.decided_at,
        "repeat": result.repeat,
    });
    if let Some(pay_by) = result.pay_by {
        body["pay_by"] = json!(pay_by);
    }
    body
}

async fn purchase(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<u64>, PathRejection>,
    wait: Result<Query<Wait>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(wait) = gateway.limits.check_address(peer.ip()) {
        return limited(wait, "this address");
    }
    let user = match user_of(&gateway, &headers) {
        Ok(user) => user,
        Err(error) => return unauthorised(error),
    };
    let Ok(Path(activity_id)) = path else {
        return refuse(StatusCode::BAD_REQUEST, "the activity id is not a number");
    };
    let Ok(Query(wait)) = wait else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "wait_ms is not a number of milliseconds",
        );
    };
    if !body.is_empty() && serde_json::from_slice::<serde_json::Map<_, _>>(&body).is_err() {
        return refuse(StatusCode::BAD_REQUEST, "the body is not a JSON object");
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key)
                if !key.is_empty()
                    && key.len() <= MAX_KEY_LEN
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                Some(key.to_string())
            }
            _ => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key must be 1 to 64 letters, digits, '.', '_' or '-'",
                )
            }
        },
    };
    if let Err(wait) = gateway.limits.check_user(user) {
        return limited(wait, "this user");
    }
    let sale = match gateway.sales.view(activity_id).await {
        Ok(Some(sale)) => sale,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "no such sale"),
        Err(error) => {
            tracing::warn!(error = %Report(&error), "Redis unreachable");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the sale's state cannot be read now",
            );
        }
    };
    // The request id: the key scoped to the user and the sale (a key reused on another sale
    // is another request, never the first sale's answer), or a new one.
    let request_id = match &key {
        Some(key) => format!("gw-{user}-{activity_id}-{key}"),
        None => format!("gw-{user}-{activity_id}-{:016x}", rand::random::<u64>()),
    };
    let wait = Duration::from_millis(
        wait.wait_ms
            .unwrap_or(gateway.settings.default_wait_ms)
            .min(gateway.settings.max_wait_ms),
    );
    match gateway.outcomes.lookup(&request_id) {
        Lookup::Decided(result) => {
            return (StatusCode::OK, Json(outcome_body(&result))).into_response()
        }
        Lookup::Pending => return answer_after(&gateway, &request_id, wait).await,
        Lookup::Unknown => {}
    }
    if let Some(answer) = sale.door_answer() {
        // Not a decision: not remembered, the key may be decided later.
        return (
            StatusCode::OK,
            Json(json!({
                "request_id": request_id,
                "activity_id": activity_id,
                "outcome": answer,
                "door": true,
            })),
        )
            .into_response();
    }
    match gateway.outcomes.register(&request_id) {
        Ok(_) => {}
        Err(TableFull) => {
            let mut response = refuse(StatusCode::SERVICE_UNAVAILABLE, "too many requests pending");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return response;
        }
    }
    let request = SeckillRequest {
        request_id: request_id.clone(),
        user_id: user,
        activity_id,
        request_initiation_time: now_ms(),
    };
    let message = KafkaMessage::new(request).key(user.to_string());
    if let Err(error) = gateway.requests.send(message).await {
        gateway.outcomes.abandon(&request_id);
        tracing::warn!(error = %Report(&error), "a purchase could not be sent to Kafka");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request could not be queued; try again",
        );
    }
    metrics::counter!("gateway_purchases_total").increment(1);
    answer_after(&gateway, &request_id, wait).await
}

/// 200 with the outcome if it comes within `wait`, else 202 with the request's URL.
async fn answer_after(gateway: &Gateway, request_id: &str, wait: Duration) -> Response {
    match gateway.outcomes.wait(request_id, wait).await {
        Lookup::Decided(result) => (StatusCode::OK, Json(outcome_body(&result))).into_response(),
        _ => (
            StatusCode::ACCEPTED,
            Json(json!({
                "request_id": request_id,
                "status": "pending",
                "url": format!("/requests/{request_id}"),
            })),
        )
            .into_response(),
    }
}

async fn request(
    State(gateway): State<Arc<Gateway>>,
    Path(request_id): Path<String>,
    wait: Result<Query<Wait>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let user = match user_of(&gateway, &headers) {
        Ok(user) => user,
        Err(error) => return unauthorised(error),
    };
    let Ok(Query(wait)) = wait else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "wait_ms is not a number of milliseconds",
        );
    };
    // Another user's request id is answered as if it did not exist.
    if !request_id.starts_with(&format!("gw-{user}-")) {
        return refuse(StatusCode::NOT_FOUND, "no such request");
    }
    let wait = Duration::from_millis(wait.wait_ms.unwrap_or(0).min(gateway.settings.max_wait_ms));
    match gateway.outcomes.wait(&request_id, wait).await {
        Lookup::Decided(result) => (StatusCode::OK, Json(outcome_body(&result))).into_response(),
        Lookup::Pending => (
            StatusCode::OK,
            Json(json!({ "request_id": request_id, "status": "pending" })),
        )
            .into_response(),
        Lookup::Unknown => refuse(StatusCode::NOT_FOUND, "no such request"),
    }
}

async fn activity(
    State(gateway): State<Arc<Gateway>>,
    path: Result<Path<u64>, PathRejection>,
) -> Response {
    let Ok(Path(activity_id)) = path else {
        return refuse(StatusCode::BAD_REQUEST, "the activity id is not a number");
    };
    match gateway.sales.view(activity_id).await {
        Ok(Some(sale)) => (StatusCode::OK, Json(sale)).into_response(),
        Ok(None) => refuse(StatusCode::NOT_FOUND, "no such sale"),
        Err(error) => {
            tracing::warn!(error = %Report(&error), "Redis unreachable");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the sale's state cannot be read now",
            )
        }
    }
}

async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("page.html"))
}

#[derive(Debug, Deserialize)]
struct Ids {
    ids: Option<String>,
}

/// Most sales one `GET /activities` shows.
const MAX_LISTED: usize = 50;

async fn activities(
    State(gateway): State<Arc<Gateway>>,
    ids: Result<Query<Ids>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(ids)) = ids else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "ids is a comma-separated list of sale ids",
        );
    };
    let listed: Result<Vec<u64>, _> = match ids.ids.as_deref().map(str::trim) {
        Some(list) if !list.is_empty() => {
            list.split(',').map(|id| id.trim().parse::<u64>()).collect()
        }
        _ => match gateway.sales.registered().await {
            Ok(mut all) => {
                all.sort_unstable_by(|a, b| b.cmp(a));
                Ok(all)
            }
            Err(error) => {
                tracing::warn!(error = %Report(&error), "Redis unreachable");
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the sales cannot be read now",
                );
            }
        },
    };
    let Ok(listed) = listed else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "ids is a comma-separated list of sale ids",
        );
    };
    let mut sales = Vec::new();
    for activity_id in listed.into_iter().take(MAX_LISTED) {
        match gateway.sales.view(activity_id).await {
            Ok(Some(sale)) => {
                let mut sale = json!(sale);
                sale["answered"] = json!(gateway.answered.of(activity_id));
                // Ids past 2^53 lose digits as JavaScript numbers: the page uses this.
                sale["id"] = json!(activity_id.to_string());
                sales.push(sale);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(error = %Report(&error), "Redis unreachable");
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the sales cannot be read now",
                );
            }
        }
    }
    (
        StatusCode::OK,
        Json(json!({ "at": now_ms(), "sales": sales })),
    )
        .into_response()
}

async fn ready(State(gateway): State<Arc<Gateway>>) -> StatusCode {
    if gateway.ready.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
