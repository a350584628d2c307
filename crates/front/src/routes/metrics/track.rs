//! What every HTTP request is counted by: the route that matched, its method and its status, and
//! whether it is still in flight.
//!
//! Requests are labelled with the route that matched (`/api`), never the raw path: every
//! scanner's probe of a random path would otherwise become a series of its own. Requests that
//! match no route are labelled `unmatched`. Methods likewise: HTTP lets a client invent any
//! method name, so those outside the standard ones are labelled `other`.

use super::requests;
use axum::extract::MatchedPath;
use axum::http::{Method, Request, StatusCode};
use std::time::Instant;

/// A request being served: counted in flight until dropped, counted and timed when answered.
pub struct Tracking {
    started: Instant,
    route: &'static str,
    method: &'static str,
    _in_flight: InFlight,
}

impl Tracking {
    /// Starts tracking `request`, which the router has matched (or not) to a route.
    pub fn start<B>(request: &Request<B>) -> Self {
        Self {
            started: Instant::now(),
            route: request
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |route| requests::route_label(route.as_str())),
            method: method_label(request.method()),
            _in_flight: InFlight::enter(),
        }
    }

    /// Counts and times the request, answered with `status`.
    pub fn answered(&self, status: StatusCode) {
        requests::count(
            self.route,
            self.method,
            status.as_u16(),
            self.started.elapsed(),
        );
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
