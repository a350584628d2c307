//! `POST /api` and `GET /api?key=K`: their inputs, parsed once into types that cannot be
//! invalid ([`NewPair`], [`Key`]), and their handlers.

use super::AppState;
use super::request_id::RequestIdOf;
use crate::broker::BrokerError;
use crate::error::{ApiError, Failure};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::{Json, Router};
use kv_protocol::Key;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{RefOr, schema::AdditionalProperties};

/// Both operations behind the token check, which runs before any extractor reads the request:
/// without a valid token, the answer is `401`/`403` whatever the body or query.
pub fn router(state: &AppState) -> Router<AppState> {
    let operations = get(read)
        .post(write)
        .route_layer(axum::middleware::from_fn_with_state(
            state.api_tokens.clone(),
            crate::auth::require_token,
        ));
    Router::new().route("/api", operations)
}

/// A success answer; `data` is what the operation returns.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Success<T> {
    #[schema(schema_with = super::examples::always_true)]
    success: bool,
    data: T,
}

fn success<T>(data: T) -> Json<Success<T>> {
    Json(Success {
        success: true,
        data,
    })
}

/// Store a value
///
/// The body is one `"key": number` pair; the key is 1 to 256 bytes of UTF-8. The `200` comes
/// once RabbitMQ has written the write to disk: from then on it is never lost. Writing a key
/// that exists replaces its value. With `API_TOKENS_FILE`, needs a `write` token.
#[utoipa::path(
    post,
    path = "/api",
    tag = "kv",
    request_body(content = NewPair, content_type = "application/json"),
    security(("api_token" = [])),
    responses(
        (status = 200, description = "RabbitMQ holds the write durably", body = Success<String>,
            example = json!({"success": true, "data": "Value 21.5 stored for key 'temperature'"})),
        (status = 401, description = super::examples::UNAUTHORIZED, body = Failure,
            headers(("www-authenticate" = String, description = "`Bearer`")),
            example = json!(super::examples::failure(ApiError::Unauthorized))),
        (status = 403, description = "A `read` token: storing needs a `write` one (only with `API_TOKENS_FILE`; checked before the body)", body = Failure,
            example = json!(super::examples::failure(ApiError::ReadOnlyToken))),
        (status = 400, description = "The body is not JSON, or not exactly one `\"key\": number` pair with a valid key", body = Failure,
            examples(
                ("not JSON" = (value = json!(super::examples::failure(ApiError::NotJson)))),
                ("wrong shape" = (value = json!(super::examples::failure(ApiError::BadPair)))),
            )),
        (status = 408, description = "The body did not arrive in full within `BODY_READ_TIMEOUT_MS` (the number in the message)", body = Failure,
            example = json!(super::examples::failure(ApiError::BodyTimeout(10_000)))),
        (status = 413, description = "The body is over `BODY_LIMIT_BYTES` (the number in the message)", body = Failure,
            example = json!(super::examples::failure(ApiError::TooLarge(65_536)))),
        (status = 415, description = "`Content-Type` is missing or not `application/json` (parameters such as `; charset=utf-8` are fine)", body = Failure,
            example = json!(super::examples::failure(ApiError::UnsupportedMediaType))),
        (status = 500, description = super::examples::UNEXPECTED, body = Failure,
            example = json!(super::examples::failure(super::examples::unexpected()))),
        (status = 503, description = "The write was not acknowledged. Most messages say it was not processed: RabbitMQ is unreachable, refused it, routed it nowhere, refuses new messages during a resource alarm (answered at once, never sent), or `MAX_IN_FLIGHT` requests were in flight until the deadline. When RabbitMQ did not confirm it in time, the message says so: it may still be applied (after an alarm clears, say), and retrying is safe", body = Failure,
            examples(
                ("unreachable" = (value = json!(super::examples::failure(BrokerError::Unavailable("not connected").into())))),
                ("refused" = (value = json!(super::examples::failure(BrokerError::Nacked.into())))),
                ("alarm" = (value = json!(super::examples::failure(BrokerError::Blocked("low on disk".into()).into())))),
                ("busy" = (value = json!(super::examples::failure(BrokerError::Busy(1024).into())))),
                ("unconfirmed" = (value = json!(super::examples::failure(BrokerError::Unconfirmed(5000).into())))),
                ("unconfirmed in an alarm" = (value = json!(super::examples::failure(BrokerError::UnconfirmedInAlarm { ms: 5000, alarm: "low on disk".into() }.into())))),
            )),
    )
)]
async fn write(
    State(state): State<AppState>,
    RequestIdOf(id): RequestIdOf,
    NewPair { key, value }: NewPair,
) -> Result<Json<Success<String>>, ApiError> {
    let sentence = format!("Value {value} stored for key '{key}'");
    state.broker.write(key, value, id).await?;
    Ok(success(sentence))
}

/// Read a value
///
/// Exactly one query parameter, `key`. A read that starts after a write's `200` sees that write
/// or a later one. With `API_TOKENS_FILE`, needs a `read` or `write` token.
#[utoipa::path(
    get,
    path = "/api",
    tag = "kv",
    params(
        ("key" = String, Query, description = "The key: 1 to 256 bytes of UTF-8, percent-encoded. The only parameter allowed.",
            min_length = 1, max_length = 256, example = "temperature"),
    ),
    security(("api_token" = [])),
    responses(
        (status = 200, description = "The key's value", body = Success<f64>,
            example = json!({"success": true, "data": 21.5})),
        (status = 401, description = super::examples::UNAUTHORIZED, body = Failure,
            headers(("www-authenticate" = String, description = "`Bearer`")),
            example = json!(super::examples::failure(ApiError::Unauthorized))),
        (status = 400, description = "Not exactly one parameter named `key`, or an empty or too long key", body = Failure,
            example = json!(super::examples::failure(ApiError::BadQuery))),
        (status = 404, description = "The key has no value", body = Failure,
            example = json!(super::examples::failure(ApiError::KeyNotFound(Key::parse("humidity").expect("a valid key"))))),
        (status = 500, description = super::examples::UNEXPECTED, body = Failure,
            example = json!(super::examples::failure(super::examples::unexpected()))),
        (status = 503, description = "RabbitMQ is unreachable, the link dropped before the reply, RabbitMQ refuses new messages during a resource alarm (answered at once), or `MAX_IN_FLIGHT` requests were in flight until the deadline", body = Failure,
            examples(
                ("unreachable" = (value = json!(super::examples::failure(BrokerError::Unavailable("not connected").into())))),
                ("alarm" = (value = json!(super::examples::failure(BrokerError::Blocked("low on disk".into()).into())))),
                ("busy" = (value = json!(super::examples::failure(BrokerError::Busy(1024).into())))),
            )),
        (status = 504, description = "No reply from the back-server within `RPC_TIMEOUT_MS` (the number in the message)", body = Failure,
            example = json!(super::examples::failure(BrokerError::NoReply(5000).into()))),
    )
)]
async fn read(
    State(state): State<AppState>,
    RequestIdOf(id): RequestIdOf,
    RawQuery(query): RawQuery,
) -> Result<Json<Success<f64>>, ApiError> {
    let key = parse_key_query(query.as_deref())?;
    match state.broker.read(&key, id).await? {
        Some(value) => Ok(success(value)),
        None => Err(ApiError::KeyNotFound(key)),
    }
}

/// The query of a read: exactly one parameter, named `key`, holding a valid [`Key`].
fn parse_key_query(query: Option<&str>) -> Result<Key, ApiError> {
    let mut parameters = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
    match (parameters.next(), parameters.next()) {
        (Some((name, value)), None) if name == "key" => {
            Key::parse(value.into_owned()).map_err(|_| ApiError::BadQuery)
        }
        _ => Err(ApiError::BadQuery),
    }
}

/// The body of a write: a JSON object with exactly one member, whose name is a valid [`Key`]
/// and whose value is a JSON number that fits an `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPair {
    pub key: Key,
    pub value: f64,
}

impl NewPair {
    /// Tells apart "not JSON at all" from "JSON of the wrong shape", as the contract's messages
    /// do: the first pass only checks syntax, the second the shape.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let json: &RawValue = serde_json::from_slice(body).map_err(|_| ApiError::NotJson)?;
        serde_json::from_str(json.get()).map_err(|_| ApiError::BadPair)
    }
}

/// Written by hand: the pair's name is the key, which no derived schema can say. JSON Schema
/// counts a name's length in characters, not bytes, so `maxLength` is the bound for ASCII keys
/// and the description says the rest.
impl utoipa::PartialSchema for NewPair {
    fn schema() -> RefOr<Schema> {
        let key = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(kv_protocol::MAX_KEY_BYTES));
        let number = ObjectBuilder::new().schema_type(Type::Number);
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Exactly one member: its name is the key (1 to 256 bytes of UTF-8), its value a \
                 JSON number that fits a 64-bit float (not `true`, `\"25\"`, `null`, an array or \
                 an object).",
            ))
            .min_properties(Some(1))
            .max_properties(Some(1))
            .property_names(Some(key))
            .additional_properties(Some(AdditionalProperties::RefOr(number.into())))
            .examples([serde_json::json!({ "temperature": 21.5 })])
            .into()
    }
}

impl utoipa::ToSchema for NewPair {}

impl<'de> Deserialize<'de> for NewPair {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PairVisitor)
    }
}

/// Reads the object member by member, so that a duplicated name counts as a second member
/// (a map type would silently keep only the last one).
struct PairVisitor;

impl<'de> Visitor<'de> for PairVisitor {
    type Value = NewPair;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object with exactly one key and a number")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NewPair, A::Error> {
        let key: String = map
            .next_key()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        // serde_json::Number accepts JSON numbers only: not `true`, `"25"`, `null` or `[1]`.
        let number: serde_json::Number = map.next_value()?;
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(2, &self));
        }
        let key = Key::parse(key).map_err(de::Error::custom)?;
        let value = number
            .as_f64()
            .filter(|value| value.is_finite())
            .ok_or_else(|| de::Error::custom("the number does not fit a 64-bit float"))?;
        Ok(NewPair { key, value })
    }
}

impl FromRequest<AppState> for NewPair {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(&request) {
            return Err(ApiError::UnsupportedMediaType);
        }
        // A deadline for the whole body, not per chunk: a client trickling a byte now and then
        // would otherwise hold its connection, and a connection slot, for as long as it likes.
        let timeout = state.body_read_timeout;
        let body = tokio::time::timeout(timeout, Bytes::from_request(request, state))
            .await
            .map_err(|_| ApiError::BodyTimeout(timeout.as_millis() as u64))?
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                    ApiError::TooLarge(state.body_limit)
                }
                _ => ApiError::NotJson,
            })?;
        Self::parse(&body)
    }
}

/// `application/json`, in any case, with or without parameters such as `; charset=utf-8`.
///
/// Exactly one `Content-Type` header: with two, a proxy in front of us may have read the other
/// one, and then the body we store is not the one it checked.
fn has_json_content_type(request: &Request) -> bool {
    let mut values = request.headers().get_all(CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(body: &str) -> Result<NewPair, ApiError> {
        NewPair::parse(body.as_bytes())
    }

    fn pair(key: &str, value: f64) -> NewPair {
        NewPair {
            key: Key::parse(key).unwrap(),
            value,
        }
    }

    #[test]
    fn one_pair_with_a_number_is_accepted() {
        assert_eq!(
            parse(r#"{"temperature": 25}"#).unwrap(),
            pair("temperature", 25.0)
        );
        assert_eq!(parse(r#" {"k":-1.5e-3} "#).unwrap(), pair("k", -0.0015));
        assert_eq!(parse(r#"{"ключ":0}"#).unwrap(), pair("ключ", 0.0));
        assert_eq!(
            parse(r#"{"k":18446744073709551616}"#).unwrap(),
            pair("k", 2f64.powi(64))
        );
    }

    #[test]
    fn bodies_that_are_not_json_are_told_apart_from_wrong_shapes() {
        for body in [
            "",
            "{",
            "key=1",
            "{'k': 1}",
            "{\"k\": NaN}",
            "{\"k\": 1} x",
            "\u{feff}{}",
        ] {
            assert!(matches!(parse(body), Err(ApiError::NotJson)), "{body:?}");
        }
        assert!(matches!(
            NewPair::parse(b"{\"k\": \xff1}"),
            Err(ApiError::NotJson)
        ));
    }

    #[test]
    fn json_of_the_wrong_shape_is_rejected() {
        let long_key = format!(r#"{{"{}": 1}}"#, "k".repeat(257));
        let bodies = [
            "{}",
            "[1]",
            "1",
            "\"k\"",
            "null",
            r#"{"k": true}"#,
            r#"{"k": "25"}"#,
            r#"{"k": null}"#,
            r#"{"k": [1]}"#,
            r#"{"k": {"n": 1}}"#,
            r#"{"a": 1, "b": 2}"#,
            r#"{"a": 1, "a": 2}"#,
            r#"{"": 1}"#,
            r#"{"k": 1e400}"#,
            r#"{"k": -1e400}"#,
            &long_key,
        ];
        for body in bodies {
            assert!(matches!(parse(body), Err(ApiError::BadPair)), "{body:?}");
        }
    }

    #[test]
    fn only_one_json_content_type_header_is_accepted() {
        let with = |values: &[&str]| {
            let mut request = Request::new(axum::body::Body::empty());
            for value in values {
                let value = axum::http::HeaderValue::from_str(value).unwrap();
                request.headers_mut().append(CONTENT_TYPE, value);
            }
            has_json_content_type(&request)
        };
        assert!(with(&["application/json"]));
        assert!(with(&["Application/JSON; charset=utf-8"]));
        assert!(!with(&[]));
        assert!(!with(&["application/json", "application/json"]));
        assert!(!with(&["application/json", "text/plain"]));
        assert!(!with(&["text/plain", "application/json"]));
    }

    #[test]
    fn a_key_of_exactly_256_bytes_is_accepted() {
        let body = format!(r#"{{"{}": 1}}"#, "é".repeat(128));
        assert!(parse(&body).is_ok());
    }

    #[test]
    fn the_read_query_must_be_exactly_one_key() {
        assert_eq!(parse_key_query(Some("key=abc")).unwrap().as_str(), "abc");
        assert_eq!(
            parse_key_query(Some("key=a%20b%2Bc")).unwrap().as_str(),
            "a b+c"
        );
        assert_eq!(parse_key_query(Some("key=%D0%BA")).unwrap().as_str(), "к");
        let long = format!("key={}", "k".repeat(257));
        for query in [
            None,
            Some(""),
            Some("key="),
            Some("key"),
            Some("name=a"),
            Some("key=a&key=b"),
            Some("key=a&other=b"),
            Some("KEY=a"),
            Some(long.as_str()),
        ] {
            assert!(
                matches!(parse_key_query(query), Err(ApiError::BadQuery)),
                "{query:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn no_body_makes_the_parser_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = NewPair::parse(&body);
        }

        #[test]
        fn no_json_like_text_makes_the_parser_panic(body in r#"[\{\}\[\]":,0-9eE.+\- a-z\\]{0,64}"#) {
            let _ = parse(&body);
        }

        #[test]
        fn no_query_makes_the_query_parser_panic(query in ".{0,300}") {
            let _ = parse_key_query(Some(&query));
        }

        #[test]
        fn every_valid_pair_round_trips(key in "\\PC{1,64}", value in any::<f64>().prop_filter("finite", |v| v.is_finite())) {
            prop_assume!(key.len() <= kv_protocol::MAX_KEY_BYTES);
            let body = serde_json::json!({ key.clone(): value }).to_string();
            let parsed = NewPair::parse(body.as_bytes()).unwrap();
            prop_assert_eq!(parsed.key.as_str(), key.as_str());
            prop_assert_eq!(parsed.value, value);
        }

        #[test]
        fn every_accepted_body_round_trips(
            key in "\\PC{1,16}",
            literal in r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?",
        ) {
            let body = format!("{{{}: {literal}}}", serde_json::to_string(&key).unwrap());
            if let Ok(parsed) = NewPair::parse(body.as_bytes()) {
                // What the front forwards is its own serialization; it must parse to the same pair.
                let forwarded = serde_json::json!({ parsed.key.as_str(): parsed.value }).to_string();
                let reparsed = NewPair::parse(forwarded.as_bytes()).unwrap();
                prop_assert_eq!(reparsed.key, parsed.key);
                prop_assert_eq!(reparsed.value.to_bits(), parsed.value.to_bits());
                // And the value is the literal's nearest double, as Rust's exact parser reads it.
                prop_assert_eq!(parsed.value, literal.parse::<f64>().unwrap());
            }
        }

        #[test]
        fn every_valid_key_round_trips_through_a_query(key in "\\PC{1,64}") {
            prop_assume!(key.len() <= kv_protocol::MAX_KEY_BYTES);
            let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("key", &key).finish();
            let parsed = parse_key_query(Some(&query)).unwrap();
            prop_assert_eq!(parsed.as_str(), key.as_str());
        }
    }
}
