//! `GET /metrics`, and what the front-server counts of the HTTP requests it serves.

mod requests;
mod track;

pub use track::Tracking;

use super::AppState;
use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Prometheus metrics
///
/// Every series of this server, in Prometheus' text format; the README's "Metrics" lists them.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses((status = 200, description = "The metrics, for Prometheus to scrape",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String))
)]
pub(super) async fn metrics() -> impl IntoResponse {
    kv_runtime::render_metrics_with(requests::render)
}
