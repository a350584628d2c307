//! Probes for orchestrators and load balancers: `GET /health` answers while the process serves
//! HTTP at all; `GET /ready` answers `200` only while it holds a working RabbitMQ link, so that
//! traffic goes elsewhere while it would answer `503`.

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.broker.is_connected() {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        let body = json!({ "status": "not ready", "reason": "no working connection to RabbitMQ" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}
