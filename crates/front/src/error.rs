//! Every way a request can fail, and the JSON answer each one gets. Handlers return
//! `Result<_, ApiError>`, so no failure can escape as a non-JSON body.

use crate::broker::BrokerError;
use axum::Json;
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use kv_protocol::Key;
use serde::Serialize;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 415: a POST whose `Content-Type` is missing or not `application/json`.
    #[error("Invalid Content-Type, must be 'application/json'")]
    UnsupportedMediaType,
    /// 400: a POST body that is not JSON.
    #[error("Incorrect input data format, must be JSON")]
    NotJson,
    /// 400: JSON that is not exactly one `"key": number` pair with a valid key.
    #[error("Acceptable only one pair key:value in JSON format, value must be a number")]
    BadPair,
    /// 400: a GET whose query is not exactly one valid `key` parameter.
    #[error("Acceptable one parameter named 'key'")]
    BadQuery,
    /// 408: a body that did not arrive in full within the body read timeout (a slow client).
    #[error("The request body did not arrive within {0} ms")]
    BodyTimeout(u64),
    /// 413: a body over the configured limit.
    #[error("Request body too large, the limit is {0} bytes")]
    TooLarge(usize),
    /// 401: `/api` without a token of `API_TOKENS_FILE` (only when it is set); the answer
    /// carries `WWW-Authenticate: Bearer`. Missing and unknown tokens get the same answer.
    #[error("Missing or unknown API token, must be 'Authorization: Bearer <token>'")]
    Unauthorized,
    /// 403: a `read` token on a write.
    #[error("This API token may only read, storing a value needs a 'write' token")]
    ReadOnlyToken,
    /// 404: a read of a key that has no value.
    #[error("Value for key '{0}' not found")]
    KeyNotFound(Key),
    /// 404: a path we do not serve.
    #[error("Not found: {0}")]
    NoRoute(String),
    /// 405: a known path with a method it does not accept.
    #[error("Method {0} not allowed on this path")]
    MethodNotAllowed(Method),
    /// 504 when the back-server did not answer a read in time ([`BrokerError::NoReply`]); else
    /// 503: RabbitMQ could not take the request, or did not say in time that it had.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// 500: a bug or an unforeseen failure; details go to the log, not to the client.
    #[error("Internal server error")]
    Unexpected(#[source] anyhow::Error),
}

/// Every failure's body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Failure<'a> {
    #[schema(schema_with = always_false)]
    pub success: bool,
    pub message: &'a str,
}

/// `success` in a failure body, for the OpenAPI document: always `false`.
fn always_false() -> Schema {
    constant(false)
}

/// The schema of a boolean that always has `value`.
pub fn constant(value: bool) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Boolean)
        .enum_values(Some([value]))
        .into()
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotJson | Self::BadPair | Self::BadQuery => StatusCode::BAD_REQUEST,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::ReadOnlyToken => StatusCode::FORBIDDEN,
            Self::KeyNotFound(_) | Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Broker(BrokerError::NoReply(_)) => StatusCode::GATEWAY_TIMEOUT,
            Self::Broker(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // The client's mistakes are not ours to log; our failures are, with their cause.
        match &self {
            Self::Unexpected(cause) => {
                tracing::error!(error = %format!("{cause:#}"), "request failed")
            }
            Self::Broker(err) => tracing::warn!(%err, "request failed"),
            _ => {}
        }
        let message = self.to_string();
        let mut response = (
            status,
            Json(Failure {
                success: false,
                message: &message,
            }),
        )
            .into_response();
        if let Self::Unauthorized = self {
            // RFC 6750: a 401 names the scheme that would have worked.
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
