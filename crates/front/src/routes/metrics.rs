//! `GET /metrics` and the layer that counts and times every HTTP request for it.
//!
//! Requests are labelled with the route that matched (`/api`), never the raw path: every
//! scanner's probe of a random path would otherwise become a series of its own. Requests that
//! match no route are labelled `unmatched`. Methods likewise: HTTP lets a client invent any
//! method name, so those outside the standard ones are labelled `other`.

use super::AppState;
use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{Counter, Gauge, Histogram};
use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};
use std::time::Instant;

const REQUESTS: &str = "kv_http_requests_total";
const DURATION: &str = "kv_http_request_duration_seconds";
const IN_FLIGHT: &str = "kv_http_requests_in_flight";

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
    kv_runtime::render_metrics().await
}

/// Names and explains the front's HTTP series (the `# HELP` lines of `/metrics`).
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS,
        "HTTP requests answered, by route, method and status"
    );
    metrics::describe_histogram!(
        DURATION,
        metrics::Unit::Seconds,
        "Time from a request's arrival to its answer, by route, method and status"
    );
    metrics::describe_gauge!(IN_FLIGHT, "HTTP requests being served right now");
}

/// Middleware: counts and times each request by its matched route, method and status.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    let in_flight = InFlight::enter();
    let response = next.run(request).await;
    drop(in_flight);
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let series = Series::of(route, method, response.status().as_u16());
    series.requests.increment(1);
    series.duration.record(started.elapsed().as_secs_f64());
    response
}

/// The handles of one route, method and status's series. Looking a series up in the recorder
/// (hashing its name and labels, then its map) is what `counter!` does on every call, and cost
/// five times the rest of the middleware; so each is looked up once, on its first request.
#[derive(Clone)]
struct Series {
    requests: Counter,
    duration: Histogram,
}

type Registered = HashMap<String, HashMap<(&'static str, u16), Series>>;

impl Series {
    fn of(route: &str, method: &'static str, status: u16) -> Series {
        static REGISTERED: LazyLock<RwLock<Registered>> = LazyLock::new(Default::default);
        let found = REGISTERED
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(route)
            .and_then(|by_status| by_status.get(&(method, status)))
            .cloned();
        found.unwrap_or_else(|| {
            let labels = [
                ("route", route.to_owned()),
                ("method", method.to_owned()),
                ("status", status.to_string()),
            ];
            let series = Series {
                requests: metrics::counter!(REQUESTS, &labels),
                duration: metrics::histogram!(DURATION, &labels),
            };
            REGISTERED
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(route.to_owned())
                .or_default()
                .insert((method, status), series.clone());
            series
        })
    }
}

/// The method as a label: one of a fixed few, whatever the client sent.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Counts a request in flight until dropped, so that one whose client went away (hyper drops its
/// future mid-way) is not counted forever.
struct InFlight;

impl InFlight {
    fn gauge() -> &'static Gauge {
        static GAUGE: LazyLock<Gauge> = LazyLock::new(|| metrics::gauge!(IN_FLIGHT));
        &GAUGE
    }

    fn enter() -> Self {
        Self::gauge().increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        Self::gauge().decrement(1.0);
    }
}
