//! The HTTP API: routes, shared state, and the layers every request passes through.

mod api;
pub mod docs;
mod examples;
mod fallback;
mod health;
mod metrics;
mod observe;
mod request_id;

use crate::broker::Broker;
use crate::error::ApiError;
use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use observe::ObserveLayer;
use std::any::Any;
use std::sync::Arc;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower_http::LatencyUnit;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::{Level, Span};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    pub body_limit: usize,
    /// How long a POST's body may take to arrive in full.
    pub body_read_timeout: std::time::Duration,
    /// The tokens `/api` requires; `None` without `API_TOKENS_FILE`, and then `/api` is open.
    pub api_tokens: Option<Arc<crate::auth::ApiTokens>>,
}

pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .merge(api::router(&state))
        .merge(health::router())
        .merge(docs::router())
        .merge(metrics::router())
        .fallback(fallback::not_found)
        .method_not_allowed_fallback(fallback::method_not_allowed);
    // One line per request, when it is answered. ApiError logs our failures once, with their
    // cause; the trace layer need not repeat them. Only when the log filter lets its span or its
    // line through: otherwise it would only cost every request a microsecond. Two routers rather
    // than an optional layer, whose `Either` would cost every request a branch and a conversion
    // of its answer in every layer around it.
    let routes = if traced() {
        let trace = TraceLayer::new_for_http()
            .make_span_with(request_span)
            .on_request(())
            .on_response(
                DefaultOnResponse::new()
                    .level(Level::INFO)
                    .latency_unit(LatencyUnit::Micros),
            )
            .on_failure(());
        // The span is made when the trace layer is called, and shows the request's id.
        let observe = ObserveLayer::with_id_when_called();
        routes.layer(every_request(observe, trace, state.body_limit))
    } else {
        routes.layer(every_request(
            ObserveLayer::default(),
            Identity::new(),
            state.body_limit,
        ))
    };
    routes.with_state(state)
}

/// The layers of [`every_request`], outermost last.
type EveryRequest<Log> = Stack<
    DefaultBodyLimit,
    Stack<CatchPanicLayer<PanicResponse>, Stack<Log, Stack<ObserveLayer, Identity>>>,
>;

/// What turns a panic into an answer.
type PanicResponse = fn(Box<dyn Any + Send + 'static>) -> Response;

/// The layers every request passes through, with `log` (the request's log line, or nothing)
/// between `observe` (its id, count and time) and the rest. All in one: `Router::layer` boxes
/// each route again for every call, and clones every one of those boxes on every request.
fn every_request<Log>(
    observe: ObserveLayer,
    log: Log,
    body_limit: usize,
) -> ServiceBuilder<EveryRequest<Log>> {
    ServiceBuilder::new()
        .layer(observe)
        .layer(log)
        .layer(CatchPanicLayer::custom(panic_response as PanicResponse))
        .layer(DefaultBodyLimit::max(body_limit))
}

/// Whether the log filter lets through the request span or the line per answered request. The
/// filter is set once, at start-up, so asking once is enough.
fn traced() -> bool {
    tracing::enabled!(Level::INFO)
        || tracing::enabled!(target: "tower_http::trace::on_response", Level::INFO)
}

/// The span every log line of a request is in: its id, method and path. Not its query, which
/// holds the key a client reads.
fn request_span(request: &Request<Body>) -> Span {
    tracing::info_span!(
        "request",
        request_id = %request_id::current(request.headers()),
        method = %request.method(),
        path = %request.uri().path(),
    )
}

/// Installs the process's metrics recorder (once) and describes the front's series.
pub fn install_metrics() {
    kv_runtime::install_metrics();
    crate::broker::describe_metrics();
}

/// A panic is a bug: the client gets the contract's JSON 500, the log gets the panic's message.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::Unexpected(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_gets_a_json_500_without_details() {
        async fn buggy() -> &'static str {
            panic!("secret internals")
        }
        let app = Router::new()
            .route("/", get(buggy))
            .layer(CatchPanicLayer::custom(panic_response));

        let response = app
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"success": false, "message": "Internal server error"})
        );
    }
}
