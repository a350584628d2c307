//! The answers of `GET /health` and `GET /ready`, the same on both servers so that one
//! orchestrator configuration fits both: `200 {"status": "ok"}` while the process serves HTTP;
//! `200 {"status": "ready"}` while it can do its work, else `503 {"status": "not ready",
//! "reason": "..."}` saying what is missing.

use axum::Json;
use axum::http::StatusCode;
use serde::Serialize;

/// The JSON body of a probe's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /health`: the process is alive and serves HTTP.
pub async fn health() -> Json<Probe> {
    Json(Probe {
        status: "ok",
        reason: None,
    })
}

/// The answer of `GET /ready`: `Ok` when ready, else why not.
pub fn readiness(ready: Result<(), String>) -> (StatusCode, Json<Probe>) {
    match ready {
        Ok(()) => (
            StatusCode::OK,
            Json(Probe {
                status: "ready",
                reason: None,
            }),
        ),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Probe {
                status: "not ready",
                reason: Some(reason),
            }),
        ),
    }
}
