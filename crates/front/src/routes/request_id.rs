//! Request ids: every request has one, the client's own `x-request-id` or a new UUID, which the
//! handlers send on with its writes and reads, the log span shows, and the answer carries.
//!
//! tower-http's `SetRequestId` and `PropagateRequestId` do the same with five header-map and
//! extension operations and two allocations per request. Here the id reaches the code serving
//! the request through a task-local, set while the request's future is polled (and while its
//! service is called, where a layer inside reads it then): a header or an extension added to
//! the request would grow a map that hyper or axum sized without it, and the handler would parse
//! a new id back from its text. The answer gets the id as a header, the only copy of a new id
//! made as text.

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::header::HeaderName;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use kv_protocol::RequestId;
use std::convert::Infallible;
use uuid::Uuid;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    /// The id of the request whose service is being called or whose future is being polled.
    static CURRENT: RequestId;
}

/// The id of the request being served: the one [`Assigned`] gave it, else (outside the layer
/// that assigns ids) the client's own, as [`printable`] shows it, or `-`.
pub fn current(headers: &HeaderMap) -> RequestId {
    CURRENT
        .try_with(RequestId::clone)
        .unwrap_or_else(|_| RequestId::new(headers.get(X_REQUEST_ID).map_or("-", printable)))
}

/// A client's id as text: `-` if it is not printable ASCII, so that logs and messages never
/// carry bytes that could forge a line. The answer carries it back as it came.
fn printable(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

/// `id` as a header value, in the lower-case text of a new id. Its bytes are shared by reference
/// count rather than copied into a `HeaderValue` from a `String`, which allocates twice.
fn header_value(id: Uuid) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from_owner(hyphenated(id)))
        .expect("a UUID is a valid header value")
}

/// `id`'s canonical text (lower-case, hyphenated), as `uuid` writes it. Written here a byte, not
/// a digit, at a time: `uuid` works out each of the 32 digits with a comparison of its own,
/// about 200 instructions of every answer that carries a new id, this a quarter of that.
fn hyphenated(id: Uuid) -> [u8; uuid::fmt::Hyphenated::LENGTH] {
    /// Each byte's two digits.
    const DIGITS: [[u8; 2]; 256] = {
        let hex = b"0123456789abcdef";
        let mut digits = [[0; 2]; 256];
        let mut byte = 0;
        while byte < 256 {
            digits[byte] = [hex[byte >> 4], hex[byte & 0xf]];
            byte += 1;
        }
        digits
    };
    let mut text = [b'-'; uuid::fmt::Hyphenated::LENGTH];
    let mut at = 0;
    for (i, &byte) in id.as_bytes().iter().enumerate() {
        // The groups of 4, 2, 2, 2 and 6 bytes.
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        text[at..at + 2].copy_from_slice(&DIGITS[usize::from(byte)]);
        at += 2;
    }
    text
}

/// The id of the request a handler serves, as [`current`] gives it, in the form it travels in
/// messages.
pub struct RequestIdOf(pub RequestId);

impl<S: Sync> FromRequestParts<S> for RequestIdOf {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self(current(&parts.headers)))
    }
}

/// The id of a request: what the code serving it reads, through the task-local (see
/// [`Assigned::set_around`]), and what its answer carries.
pub enum Assigned {
    /// The client sent none: a new UUID.
    Made(Uuid),
    /// The client's own, as the answer carries it back and as the code serving it reads it.
    Client { header: HeaderValue, id: RequestId },
}

impl Assigned {
    /// The id of a request with these headers: the client's own `x-request-id` (it may trace the
    /// request across services), or else a new UUID.
    pub fn new(headers: &HeaderMap) -> Self {
        match headers.get(X_REQUEST_ID) {
            Some(client) => Self::Client {
                id: RequestId::new(printable(client)),
                header: client.clone(),
            },
            None => Self::Made(Uuid::new_v4()),
        }
    }

    /// Runs `serve` (the call of the request's service, a poll of its future) with the id set
    /// for the code serving the request. Set around each poll rather than held by a
    /// `TaskLocalFuture` around the request's future: that one more level would move the whole
    /// future once more on every request, and enter the scope again to drop it.
    pub fn set_around<R>(&self, serve: impl FnOnce() -> R) -> R {
        let id = match self {
            Self::Made(id) => RequestId::Uuid(*id),
            Self::Client { id, .. } => id.clone(),
        };
        CURRENT.sync_scope(id, serve)
    }

    /// Puts the id in the answer's headers, unless the handler put one there.
    pub fn put_in(self, headers: &mut HeaderMap) {
        headers.entry(X_REQUEST_ID).or_insert_with(|| match self {
            Self::Client { header, .. } => header,
            Self::Made(id) => header_value(id),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::observe::ObserveLayer;
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, Response, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    #[test]
    fn an_id_is_written_as_uuid_writes_it() {
        for id in [Uuid::nil(), Uuid::max(), Uuid::new_v4(), Uuid::new_v4()] {
            let text = hyphenated(id);
            assert_eq!(
                std::str::from_utf8(&text),
                Ok(id.hyphenated().to_string().as_str())
            );
        }
    }

    #[test]
    fn a_new_id_is_a_new_lower_case_version_4_uuid() {
        let (first, second) = (header_value(Uuid::new_v4()), header_value(Uuid::new_v4()));
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
            .layer(ObserveLayer::default());
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

    #[tokio::test]
    async fn an_id_that_is_not_printable_is_a_dash_in_logs() {
        let mut headers = HeaderMap::new();
        assert_eq!(current(&headers).to_string(), "-");
        headers.insert(
            X_REQUEST_ID,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(current(&headers).to_string(), "-");
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("ok-1"));
        assert_eq!(current(&headers).to_string(), "ok-1");

        let client = Request::get("/")
            .header(
                X_REQUEST_ID,
                HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
            )
            .body(Body::empty());
        let response = answer(client.unwrap()).await;
        assert_eq!(response.headers()[X_REQUEST_ID].as_bytes(), b"caf\xc3\xa9");
        assert_eq!(body_of(response).await, "-");
    }
}
