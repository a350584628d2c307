//! `GET /metrics` and the layer that counts and times every HTTP request for it.
//!
//! Requests are labelled with the route that matched (`/api`), never the raw path: every
//! scanner's probe of a random path would otherwise become a series of its own. Requests that
//! match no route are labelled `unmatched`. Methods likewise: HTTP lets a client invent any
//! method name, so those outside the standard ones are labelled `other`.

use super::AppState;
use axum::Router;
use axum::extract::MatchedPath;
use axum::http::{Method, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{Counter, Gauge, Histogram};
use pin_project_lite::pin_project;
use std::cell::RefCell;
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tower::{Layer, Service};

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
    InFlight::publish();
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

/// The layer that counts and times each request by its matched route, method and status. A
/// plain tower layer, not `from_fn` middleware, which would clone the inner service and box a
/// future on every request.
#[derive(Clone, Copy, Default)]
pub struct TrackLayer;

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track { inner }
    }
}

/// The service of [`TrackLayer`].
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for Track<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Tracked {
            started: Instant::now(),
            route: request.extensions().get::<MatchedPath>().cloned(),
            method: method_label(request.method()),
            in_flight: InFlight::enter(),
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// A request being served: counted in flight until dropped, counted and timed when answered.
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: Option<MatchedPath>,
        method: &'static str,
        in_flight: InFlight,
    }
}

impl<F, B, E> Future for Tracked<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answered = ready!(this.inner.poll(cx));
        if let Ok(response) = &answered {
            let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
            let series = Series::of(route, this.method, response.status().as_u16());
            series.requests.increment(1);
            series.duration.record(this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(answered)
    }
}

/// The handles of one route, method and status's series. Looking a series up in the recorder
/// (hashing its name and labels, then its map) is what `counter!` does on every call, and cost
/// five times the rest of the middleware; so each worker thread looks each series up once, on
/// its first request there, and keeps the handles for the life of the process (threads, routes,
/// methods and statuses are small fixed sets). The recorder hands every thread the same
/// underlying counter and histogram.
struct Series {
    requests: Counter,
    duration: Histogram,
}

/// A series as a worker thread knows it.
struct Known {
    route: Box<str>,
    method: &'static str,
    status: u16,
    series: &'static Series,
}

thread_local! {
    /// The series this thread has served. Per thread, so that requests share no lock or
    /// reference count that both cores would write on every request.
    static KNOWN: RefCell<Vec<Known>> = const { RefCell::new(Vec::new()) };
}

impl Series {
    fn of(route: &str, method: &'static str, status: u16) -> &'static Series {
        KNOWN.with_borrow_mut(|known| {
            let found = known.iter().find(|known| {
                known.status == status && known.method == method && *known.route == *route
            });
            match found {
                Some(known) => known.series,
                None => {
                    let series = Self::look_up(route, method, status);
                    known.push(Known {
                        route: route.into(),
                        method,
                        status,
                        series,
                    });
                    series
                }
            }
        })
    }

    /// The series' handles, from the recorder.
    fn look_up(route: &str, method: &'static str, status: u16) -> &'static Series {
        let labels = [
            ("route", route.to_owned()),
            ("method", method.to_owned()),
            ("status", status.to_string()),
        ];
        Box::leak(Box::new(Series {
            requests: metrics::counter!(REQUESTS, &labels),
            duration: metrics::histogram!(DURATION, &labels),
        }))
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
/// future mid-way) is not counted forever. The count is one atomic, copied into its gauge when
/// `/metrics` is scraped: the gauge's own update is a compare-and-swap loop plus a second atomic,
/// twice per request.
pub struct InFlight;

static IN_FLIGHT_NOW: AtomicI64 = AtomicI64::new(0);

impl InFlight {
    fn enter() -> Self {
        IN_FLIGHT_NOW.fetch_add(1, Ordering::Relaxed);
        Self
    }

    /// Sets the gauge to the requests in flight now.
    fn publish() {
        static GAUGE: LazyLock<Gauge> = LazyLock::new(|| metrics::gauge!(IN_FLIGHT));
        GAUGE.set(IN_FLIGHT_NOW.load(Ordering::Relaxed) as f64);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT_NOW.fetch_sub(1, Ordering::Relaxed);
    }
}
