//! The layer every request passes through first: it gives the request its id (the one the
//! handlers, the log span and the answer carry) and counts and times it by route, method and
//! status.
//!
//! One layer for the two, because a layer's future wraps the request's whole future: making it
//! moves everything inside, and polling it passes through one more level. A second layer would
//! pay both again on every request for no more than a second place to keep a few fields.

use super::metrics::Tracking;
use super::request_id::Assigned;
use axum::http::{Request, Response};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// The layer that identifies, counts and times every request. Outermost, so that it times and
/// counts what the client gets, panics and rejections included; `Router::layer` wraps each
/// route, so the matched route is known to it. A plain tower layer, not `from_fn` middleware,
/// which would clone the inner service and box a future on every request.
#[derive(Clone, Copy, Default)]
pub struct ObserveLayer {
    id_when_called: bool,
}

impl ObserveLayer {
    /// For layers inside that read the request's id when called, before its future is first
    /// polled, as the request's log span does: the id is then set around the call too. Only
    /// then, since that costs every request about 250 instructions of a GET's 38,000.
    pub fn with_id_when_called() -> Self {
        Self {
            id_when_called: true,
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            id_when_called: self.id_when_called,
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    id_when_called: bool,
}

impl<S, B, ResBody> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let tracking = Tracking::start(&request);
        let assigned = Assigned::new(request.headers());
        let inner = if self.id_when_called {
            assigned.set_around(|| self.inner.call(request))
        } else {
            self.inner.call(request)
        };
        Observed {
            inner,
            tracking,
            assigned: Some(assigned),
        }
    }
}

pin_project! {
    /// A request being served: its future, with its id set while polled, counted in flight
    /// until dropped, counted and timed when answered.
    pub struct Observed<F> {
        #[pin]
        inner: F,
        tracking: Tracking,
        // Until answered.
        assigned: Option<Assigned>,
    }
}

impl<F, B, E> Future for Observed<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        let mut answered = ready!(match this.assigned {
            Some(assigned) => assigned.set_around(|| inner.poll(cx)),
            None => inner.poll(cx),
        });
        if let Ok(response) = &mut answered {
            if let Some(assigned) = this.assigned.take() {
                assigned.put_in(response.headers_mut());
            }
            this.tracking.answered(response.status());
        }
        Poll::Ready(answered)
    }
}
