//! Request ids: every request has one, the client's own `x-request-id` or a new UUID, which the
//! handlers send on with its writes and reads, the log span shows, and the answer carries.
//!
//! tower-http's `SetRequestId` and `PropagateRequestId` do the same with five header-map and
//! extension operations and two allocations per request; a profile of `/health` put that at a
//! third of what all the HTTP layers together cost. Here the id lives only in the request's
//! headers, where the client put it or this layer puts a new one, and is copied into the
//! answer: two map operations and, for a new id, one allocation.

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::header::{Entry, HeaderName};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Request, Response};
use kv_protocol::RequestId;
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id as text: `-` if it is not printable ASCII (the client's choice), so that logs
/// and messages never carry bytes that could forge a line.
pub fn request_id(headers: &HeaderMap) -> &str {
    headers
        .get(X_REQUEST_ID)
        .and_then(|id| id.to_str().ok())
        .unwrap_or("-")
}

/// A new lower-case version 4 UUID. Its bytes are shared by reference count, so that the copy
/// in the answer costs no allocation (a `HeaderValue` from a `String` allocates again when
/// first cloned).
fn new_id() -> HeaderValue {
    let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_maybe_shared(Bytes::from_owner(text)).expect("a UUID is a valid header value")
}

/// The id of the request a handler serves, as [`request_id`] gives it, in the form it travels in
/// messages.
pub struct RequestIdOf(pub RequestId);

impl<S: Sync> FromRequestParts<S> for RequestIdOf {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self(RequestId::new(request_id(&parts.headers))))
    }
}

/// The layer that gives every request an id and every answer its request's id (unless the
/// handler set one).
#[derive(Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = WithRequestId<S>;

    fn layer(&self, inner: S) -> WithRequestId<S> {
        WithRequestId { inner }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Clone)]
pub struct WithRequestId<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for WithRequestId<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Identified<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = match request.headers_mut().entry(X_REQUEST_ID) {
            Entry::Occupied(client) => client.get().clone(),
            Entry::Vacant(none) => none.insert(new_id()).clone(),
        };
        Identified {
            inner: self.inner.call(request),
            id: Some(id),
        }
    }
}

pin_project! {
    /// A request being served, with the id its answer will carry.
    pub struct Identified<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for Identified<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut answered = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(id)) = (&mut answered, this.id.take()) {
            response.headers_mut().entry(X_REQUEST_ID).or_insert(id);
        }
        Poll::Ready(answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::{Router, http::StatusCode};
    use tower::ServiceExt;

    #[test]
    fn a_new_id_is_a_new_lower_case_version_4_uuid() {
        let (first, second) = (new_id(), new_id());
        let first = first.to_str().unwrap();
        let parsed = uuid::Uuid::parse_str(first).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(first, parsed.hyphenated().to_string());
        assert_ne!(first, second.to_str().unwrap());
    }

    async fn answer(request: Request<Body>) -> Response<Body> {
        let app = Router::new()
            .route(
                "/",
                get(|RequestIdOf(id): RequestIdOf| async move { id.to_string() }),
            )
            .route(
                "/own",
                get(|| async { ([(X_REQUEST_ID, "the handler's")], "") }),
            )
            .layer(RequestIdLayer);
        app.oneshot(request).await.unwrap()
    }

    async fn body_of(response: Response<Body>) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_handler_and_the_answer_see_the_same_id() {
        let client = Request::get("/")
            .header(X_REQUEST_ID, "trace-me")
            .body(Body::empty());
        let response = answer(client.unwrap()).await;
        assert_eq!(response.headers()[X_REQUEST_ID], "trace-me");
        assert_eq!(body_of(response).await, "trace-me");

        let response = answer(Request::get("/").body(Body::empty()).unwrap()).await;
        let made = response.headers()[X_REQUEST_ID]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
        assert_eq!(body_of(response).await, made);

        let response = answer(Request::get("/nowhere").body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.headers().contains_key(X_REQUEST_ID));
        let response = answer(Request::get("/own").body(Body::empty()).unwrap()).await;
        assert_eq!(response.headers()[X_REQUEST_ID], "the handler's");
    }

    #[test]
    fn an_id_that_is_not_printable_is_a_dash_in_logs() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_id(&headers), "-");
        headers.insert(
            X_REQUEST_ID,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(request_id(&headers), "-");
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("ok-1"));
        assert_eq!(request_id(&headers), "ok-1");
    }
}
