//! JSON answers for requests that match no route or no method, instead of axum's empty bodies.

use crate::error::ApiError;
use axum::http::{Method, Uri};

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_owned())
}

pub async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method)
}
