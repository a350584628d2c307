//! The API describing itself: the OpenAPI 3.1 document at `/openapi.json`, built by utoipa from
//! the handlers' `#[utoipa::path]` annotations, Swagger UI at `/docs` to read it and try the
//! calls, and `GET /` pointing at both.
//!
//! Swagger UI's files are compiled into the binary (utoipa-swagger-ui's `vendored` feature), so
//! the page works offline. They are served by our own handler rather than the crate's router, so
//! that a file it does not have gets our JSON 404 like any other unknown path.

use super::examples::failure;
use super::{AppState, api, health, metrics};
use crate::error::{ApiError, Failure};
use axum::extract::Path;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ResponseBuilder, content::ContentBuilder};
use utoipa_swagger_ui::Config;

/// Where the document and the page are served; `GET /` and the page itself name them.
pub const OPENAPI_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kv-over-rabbitmq front-server",
        description = "An HTTP key-value store whose writes and reads travel through RabbitMQ to a \
            back-server that owns a SQLite database. Every body is JSON: `{\"success\": true, \
            \"data\": ...}` or `{\"success\": false, \"message\": \"...\"}`. Any other path \
            answers `404` and any other method on a known path `405`, both with such a body \
            (see the `NotFound` and `MethodNotAllowed` responses under components).\n\n\
            When the server has an API tokens file (`API_TOKENS_FILE`), `/api` needs \
            `Authorization: Bearer <token>`: a `read` token may read, a `write` token may read \
            and store (in Swagger UI: \"Authorize\"). Without one, `/api` is open and never \
            answers `401` or `403`. The other paths are always open.",
    ),
    paths(
        api::write,
        api::read,
        health::health,
        health::ready,
        metrics::metrics,
        index,
        openapi_json,
        docs_page
    ),
    components(schemas(Failure)),
    modifiers(&FallbackResponses, &BearerToken),
    tags(
        (name = "kv", description = "Store and read values"),
        (name = "probes", description = "For orchestrators and load balancers"),
        (name = "meta", description = "This description of the API"),
    )
)]
pub struct ApiDoc;

pub fn router() -> Router<AppState> {
    // Serialized once: the document never changes while the process runs.
    let document: Arc<Value> =
        Arc::new(serde_json::to_value(ApiDoc::openapi()).expect("the document serializes"));
    let config = Arc::new(Config::new([OPENAPI_PATH]));
    let page = move |tail: Option<Path<String>>| {
        let config = config.clone();
        async move { swagger_file(tail.map(|Path(tail)| tail).unwrap_or_default(), config) }
    };
    Router::new()
        .route("/", get(index))
        .route(
            OPENAPI_PATH,
            get(move || async move { Json(document.as_ref().clone()) }),
        )
        .route(DOCS_PATH, get(docs_page))
        .route(&format!("{DOCS_PATH}/"), get(page.clone()))
        .route(&format!("{DOCS_PATH}/{{*file}}"), get(page))
}

/// Where to find the description of the API
///
/// A pointer for whoever opens the server's address; JSON like every other answer of this API.
#[utoipa::path(
    get,
    path = "/",
    tag = "meta",
    responses((status = 200, description = "Where the docs are", body = Object,
        example = json!({"name": "kv-over-rabbitmq front-server", "docs": "/docs", "openapi": "/openapi.json"})))
)]
async fn index() -> Json<Value> {
    Json(json!({
        "name": "kv-over-rabbitmq front-server",
        "docs": DOCS_PATH,
        "openapi": OPENAPI_PATH,
    }))
}

/// This document
///
/// The OpenAPI 3.1 description of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI document", body = Object))
)]
#[allow(
    dead_code,
    reason = "documents the route that `router` serves with a closure"
)]
async fn openapi_json() {}

/// Swagger UI
///
/// Redirects to `/docs/`, the page that shows this document and runs its calls from the browser.
/// Its files are under `/docs/`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "meta",
    responses((status = 303, description = "To the page, `/docs/`", headers(("location" = String))))
)]
async fn docs_page() -> Redirect {
    // The page's files are relative to it, so it must be served from a path ending in `/`.
    Redirect::to(&format!("{DOCS_PATH}/"))
}

/// One of Swagger UI's files, with the page's settings filled in; `""` is the page itself.
fn swagger_file(tail: String, config: Arc<Config<'static>>) -> Response {
    match utoipa_swagger_ui::serve(&tail, config) {
        Ok(Some(file)) => ([(CONTENT_TYPE, file.content_type)], file.bytes).into_response(),
        Ok(None) => ApiError::NoRoute(format!("{DOCS_PATH}/{tail}")).into_response(),
        Err(err) => {
            ApiError::Unexpected(anyhow::anyhow!("serve Swagger UI: {err}")).into_response()
        }
    }
}

/// Declares the `api_token` security scheme that the `/api` operations name.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A token of the server's `API_TOKENS_FILE`: `read` for `GET /api`, `write` for \
                 both operations.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("api_token", SecurityScheme::Http(scheme));
    }
}

/// Adds the answers of the fallbacks, which belong to no operation, as named responses.
struct FallbackResponses;

impl utoipa::Modify for FallbackResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let failure = |description: &str, example: ApiError| {
            let content = ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("Failure")))
                .example(Some(failure(example)))
                .build();
            ResponseBuilder::new()
                .description(description)
                .content("application/json", content)
                .build()
        };
        components.responses.insert(
            "NotFound".into(),
            failure("No such path", ApiError::NoRoute("/nowhere".into())).into(),
        );
        components.responses.insert(
            "MethodNotAllowed".into(),
            failure(
                "The path exists, not with this method",
                ApiError::MethodNotAllowed(axum::http::Method::PUT),
            )
            .into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_parses_back() {
        let text = ApiDoc::openapi().to_pretty_json().unwrap();

        let value: Value = serde_json::from_str(&text).unwrap();
        let parsed: utoipa::openapi::OpenApi = serde_json::from_str(&text).unwrap();

        assert_eq!(value["openapi"], "3.1.0");
        // Parsed into utoipa's model of OpenAPI and written again, nothing is lost or changed.
        assert_eq!(serde_json::to_value(&parsed).unwrap(), value);
        let paths: Vec<&String> = parsed.paths.paths.keys().collect();
        assert_eq!(
            paths,
            [
                "/",
                "/api",
                "/docs",
                "/health",
                "/metrics",
                "/openapi.json",
                "/ready"
            ]
        );
    }
}
