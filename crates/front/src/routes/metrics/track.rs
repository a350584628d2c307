//! The layer that counts and times every HTTP request, by the route that matched, its method
//! and its status, and counts those in flight.
//!
//! Requests are labelled with the route that matched (`/api`), never the raw path: every
//! scanner's probe of a random path would otherwise become a series of its own. Requests that
//! match no route are labelled `unmatched`. Methods likewise: HTTP lets a client invent any
//! method name, so those outside the standard ones are labelled `other`.

use super::requests;
use axum::extract::MatchedPath;
use axum::http::{Method, Request};
use axum::response::Response;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tower::{Layer, Service};

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
            route: request
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |route| requests::route_label(route.as_str())),
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
        route: &'static str,
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
            let status = response.status().as_u16();
            requests::count(this.route, this.method, status, this.started.elapsed());
        }
        Poll::Ready(answered)
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
/// future mid-way) is not counted forever. Each thread counts in a counter of its own, one where
/// a request arrives and minus one where it ends (maybe another thread): the sum over threads,
/// written when `/metrics` is scraped, is the number in flight. One counter that both cores
/// wrote twice per request cost a cache line moving between them each time.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        requests::in_flight_add(1);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        requests::in_flight_add(-1);
    }
}
