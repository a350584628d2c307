//! Probes for orchestrators and load balancers: `GET /health` answers while the process serves
//! HTTP at all; `GET /ready` answers `200` only while it holds a working RabbitMQ link, so that
//! traffic goes elsewhere while it would answer `503`. The bodies are the back-server's too
//! ([`kv_runtime::probe`]).

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use kv_runtime::probe;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

/// The body of both probes. Only describes it: the handlers build it with `json!`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document, never built")]
pub(super) struct Probe {
    status: ProbeStatus,
    /// Why the server is not ready; only in a `503`.
    #[schema(nullable = false)]
    reason: Option<String>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document, never built")]
pub(super) enum ProbeStatus {
    #[schema(rename = "ok")]
    Ok,
    #[schema(rename = "ready")]
    Ready,
    #[schema(rename = "not ready")]
    NotReady,
}

/// Liveness
///
/// `200` while the process serves HTTP, whatever the state of its RabbitMQ link.
#[utoipa::path(
    get,
    path = "/health",
    tag = "probes",
    responses((status = 200, description = "The process serves HTTP", body = Probe,
        example = json!({"status": "ok"})))
)]
async fn health() -> Json<probe::Probe> {
    probe::health().await
}

/// Readiness
///
/// `200` only while the server holds a working RabbitMQ link that RabbitMQ does not block (a
/// resource alarm), so that a load balancer sends traffic elsewhere while it would answer `503`.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "probes",
    responses(
        (status = 200, description = "Requests can be served", body = Probe,
            example = json!({"status": "ready"})),
        (status = 503, description = "No working connection to RabbitMQ, or RabbitMQ refuses new messages (a resource alarm)", body = Probe,
            example = json!({"status": "not ready", "reason": "no working connection to RabbitMQ"})),
    )
)]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<probe::Probe>) {
    probe::readiness(state.broker.readiness())
}
