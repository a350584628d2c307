//! Probes for orchestrators and load balancers: `GET /health` answers while the process serves
//! HTTP at all; `GET /ready` answers `200` only while it holds a working RabbitMQ link, so that
//! traffic goes elsewhere while it would answer `503`. The bodies are the back-server's too
//! ([`kv_protocol::probe`]).

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use kv_protocol::probe::{self, Probe};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(probe::health))
        .route("/ready", get(ready))
}

async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Probe>) {
    probe::readiness(if state.broker.is_connected() {
        Ok(())
    } else {
        Err("no working connection to RabbitMQ".into())
    })
}
