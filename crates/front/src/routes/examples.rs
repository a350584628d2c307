//! What the OpenAPI document shows besides the handlers: example bodies, built by the same code
//! as real answers so that they cannot drift from them, and the schema of a constant `success`.
//! The handlers' annotations (`api.rs`) and the document's extra responses (`docs.rs`) use them.

use crate::error::{ApiError, constant};
use serde_json::{Value, json};
use utoipa::openapi::schema::Schema;

/// The body `error` gets.
pub fn failure(error: ApiError) -> Value {
    json!({ "success": false, "message": error.to_string() })
}

/// An unforeseen failure, as clients see it.
pub fn unexpected() -> ApiError {
    ApiError::Unexpected(anyhow::anyhow!("example"))
}

pub const UNEXPECTED: &str =
    "Something unexpected; the details go to the server's log, never to the client";

pub const UNAUTHORIZED: &str = "No `Authorization: Bearer <token>` header, or not a token of \
    `API_TOKENS_FILE` (only when it is set; checked before anything else of the request)";

/// `success` in a success body: always `true`.
pub fn always_true() -> Schema {
    constant(true)
}
