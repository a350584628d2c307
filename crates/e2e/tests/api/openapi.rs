//! The OpenAPI document at `/openapi.json` against the real server: every route it lists exists
//! with exactly the methods it lists, no undocumented route answers, and each documented answer
//! is one the server really gives, with a body that fits the documented schema and message.
//!
//! Bodies are checked by a small validator of the JSON Schema keywords the document uses, which
//! refuses any keyword it does not know: the `jsonschema` crate would do more, but brings a large
//! tree (regex engines, an HTTP client for remote references) for the dozen keywords we emit.

use kv_e2e::app::{Options, spawn_app, spawn_app_with};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Methods probed on every documented path; axum answers `HEAD` wherever it answers `GET`.
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Paths that must not be routes (each must get the JSON 404): near misses of the real ones and
/// paths other servers commonly have.
const NOT_ROUTES: [&str; 11] = [
    "/api/",
    "/API",
    "/health/",
    "/openapi.yaml",
    "/openapi",
    "/swagger-ui",
    "/docs.json",
    "/index.html",
    "/admin",
    "/v1/api",
    "/api/docs",
];

/// Documented answers no request can provoke from a working server: a `500` is a bug.
const UNREACHABLE: [(&str, &str, u16); 2] = [("post", "/api", 500), ("get", "/api", 500)];

/// One request and the answer it got.
struct Exchange {
    method: &'static str,
    path: String,
    status: u16,
    content_type: Option<String>,
    location: Option<String>,
    www_authenticate: Option<String>,
    body: String,
}

/// A client that shows redirects instead of following them, so `/docs`'s `303` is seen.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn send(
    address: &str,
    method: &'static str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Exchange {
    send_with_token(address, None, method, path, content_type, body).await
}

/// [`send`], with `Authorization: Bearer <token>` if there is a token.
async fn send_with_token(
    address: &str,
    token: Option<&str>,
    method: &'static str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Exchange {
    let mut request = client()
        .request(method.parse().unwrap(), format!("{address}{path}"))
        .body(body.to_owned());
    if let Some(content_type) = content_type {
        request = request.header("Content-Type", content_type);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("answered");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let (content_type, location) = (header("content-type"), header("location"));
    let www_authenticate = header("www-authenticate");
    Exchange {
        method,
        path: path.split('?').next().unwrap().to_owned(),
        status: response.status().as_u16(),
        content_type,
        location,
        www_authenticate,
        body: response.text().await.unwrap(),
    }
}

async fn document(address: &str) -> Value {
    let response = client()
        .get(format!("{address}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.expect("the document is JSON")
}

fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert((path.clone(), method.clone()));
        }
    }
    operations
}

/// The fallbacks' answers: the path is not a route, or the method is not one of its routes.
fn is_no_route(exchange: &Exchange) -> bool {
    exchange.status == 404 && exchange.body.contains("\"Not found: ")
}
fn is_no_method(exchange: &Exchange) -> bool {
    exchange.status == 405 && exchange.body.contains("not allowed on this path")
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_and_methods_the_server_has() {
    let app = spawn_app().await;
    let doc = document(&app.address).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = documented_operations(&doc);
    let paths: BTreeSet<&String> = documented.iter().map(|(path, _)| path).collect();

    let mut answered = BTreeSet::new();
    for path in &paths {
        for method in METHODS {
            let exchange = send(&app.address, method, path, None, "").await;
            assert!(
                !is_no_route(&exchange),
                "{method} {path}: {}",
                exchange.body
            );
            if !is_no_method(&exchange) {
                answered.insert((path.to_string(), method.to_lowercase()));
            }
        }
    }
    for path in NOT_ROUTES {
        for method in ["GET", "POST"] {
            let exchange = send(&app.address, method, path, None, "").await;
            assert!(
                is_no_route(&exchange),
                "{method} {path} is an undocumented route: {} {}",
                exchange.status,
                exchange.body
            );
        }
    }

    assert_eq!(answered, documented, "routes answered vs documented");
    app.shutdown().await;
}

#[tokio::test]
async fn every_documented_answer_is_what_the_server_really_answers() {
    // Arrange: a working system; one without a back-server and a short read deadline (504);
    // one whose broker never answers (503); a short body deadline (408); one that needs API
    // tokens (401, 403).
    let app = spawn_app_with(Options {
        front_env: &[("BODY_READ_TIMEOUT_MS", "300")],
        ..Options::default()
    })
    .await;
    let no_back = spawn_app_with(Options {
        front_env: &[("RPC_TIMEOUT_MS", "300")],
        ..Options::front_only()
    })
    .await;
    let no_broker = spawn_app_with(Options {
        amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        wait_for_broker: false,
        ..Options::front_only()
    })
    .await;
    let tokens = crate::auth::TokensFile::new("read reader-token\nwrite writer-token\n");
    let guarded = spawn_app_with(Options {
        front_env: tokens.front_env(),
        ..Options::front_only()
    })
    .await;
    let doc = document(&app.address).await;
    let json_type = Some("application/json");
    let key = format!("openapi-{}", app.queue);
    let pair = json!({ &key: 21.5 }).to_string();
    let (ok, down) = (&app.address, &no_broker.address);

    // Act: each documented answer, provoked.
    let mut exchanges = vec![
        send(ok, "POST", "/api", json_type, &pair).await,
        send(ok, "POST", "/api", json_type, "not json").await,
        send(ok, "POST", "/api", json_type, r#"{"k": "25"}"#).await,
        send(ok, "POST", "/api", json_type, &"1".repeat(65_537)).await,
        send(ok, "POST", "/api", None, &pair).await,
        send(down, "POST", "/api", json_type, &pair).await,
        send(ok, "GET", &format!("/api?key={key}"), None, "").await,
        send(ok, "GET", "/api?name=a", None, "").await,
        send(ok, "GET", "/api?key=humidity", None, "").await,
        send(down, "GET", "/api?key=a", None, "").await,
        send(&no_back.address, "GET", "/api?key=a", None, "").await,
        send(ok, "GET", "/health", None, "").await,
        send(ok, "GET", "/ready", None, "").await,
        send(down, "GET", "/ready", None, "").await,
        send(ok, "GET", "/", None, "").await,
        send(ok, "GET", "/openapi.json", None, "").await,
        send(ok, "GET", "/docs", None, "").await,
        send(ok, "GET", "/metrics", None, "").await,
        send(&guarded.address, "GET", "/api?key=a", None, "").await,
        send_with_token(
            &guarded.address,
            Some("wrong"),
            "POST",
            "/api",
            json_type,
            &pair,
        )
        .await,
        send_with_token(
            &guarded.address,
            Some("reader-token"),
            "POST",
            "/api",
            json_type,
            &pair,
        )
        .await,
    ];
    exchanges.push(slow_body(&app).await);

    // Assert: each answer is documented and fits; every documented answer was seen.
    let mut seen = BTreeSet::new();
    for exchange in &exchanges {
        let (method, path) = (exchange.method.to_lowercase(), exchange.path.clone());
        let responses = &doc["paths"][&path][&method]["responses"];
        let response = &responses[exchange.status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} answered {}, which the document does not list: {}",
            exchange.status,
            exchange.body
        );
        check_answer(&doc, response, exchange);
        seen.insert((method, path, exchange.status));
    }
    for (path, method) in documented_operations(&doc) {
        for status in doc["paths"][&path][&method]["responses"]
            .as_object()
            .unwrap()
            .keys()
        {
            let status: u16 = status.parse().unwrap();
            let operation = (method.clone(), path.clone(), status);
            let unreachable = UNREACHABLE.contains(&(method.as_str(), path.as_str(), status));
            assert!(
                seen.contains(&operation) || unreachable,
                "{operation:?} is documented but this test never saw it"
            );
        }
    }
    // `/openapi.json` serves the document itself, the same with API tokens or without.
    let served: Value = serde_json::from_str(&exchanges[15].body).unwrap();
    assert_eq!(served, doc);
    assert_eq!(document(&guarded.address).await, doc);
    // Both operations of `/api` need the bearer scheme the document declares.
    let scheme = &doc["components"]["securitySchemes"]["api_token"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
    for method in ["get", "post"] {
        assert_eq!(
            doc["paths"]["/api"][method]["security"],
            json!([{"api_token": []}])
        );
    }

    app.shutdown().await;
    no_back.shutdown().await;
    no_broker.shutdown().await;
    guarded.shutdown().await;
}

#[tokio::test]
async fn the_fallback_answers_are_the_documented_ones() {
    let app = spawn_app().await;
    let doc = document(&app.address).await;

    let no_route = send(&app.address, "GET", "/nowhere", None, "").await;
    let no_method = send(&app.address, "PUT", "/api", None, "").await;

    assert_eq!(no_route.status, 404);
    check_answer(&doc, &doc["components"]["responses"]["NotFound"], &no_route);
    assert_eq!(no_method.status, 405);
    check_answer(
        &doc,
        &doc["components"]["responses"]["MethodNotAllowed"],
        &no_method,
    );
    app.shutdown().await;
}

/// A POST whose body never arrives in full: the `408`.
async fn slow_body(app: &kv_e2e::app::TestApp) -> Exchange {
    let mut stream = tokio::net::TcpStream::connect(app.socket_address())
        .await
        .unwrap();
    let head = "POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"slow\": ";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    // The server answers and closes at its body deadline (300 ms); the bound is for a failure.
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the server answers within its body deadline")
        .unwrap();
    let text = String::from_utf8(received).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|line| line.strip_prefix("content-type: "))
        .map(str::to_owned);
    Exchange {
        method: "POST",
        path: "/api".into(),
        status,
        content_type,
        location: None,
        www_authenticate: None,
        body: body.to_owned(),
    }
}

/// The answer fits the documented response: its media type, its schema, and, for failures, one
/// of the documented messages (up to the numbers in them, which are settings).
fn check_answer(doc: &Value, response: &Value, exchange: &Exchange) {
    let what = format!(
        "{} {} → {} {}",
        exchange.method, exchange.path, exchange.status, exchange.body
    );
    if let Some(headers) = response["headers"].as_object() {
        for name in headers.keys() {
            match name.as_str() {
                "location" => assert!(exchange.location.is_some(), "{what}: no {name}"),
                "www-authenticate" => {
                    assert_eq!(
                        exchange.www_authenticate.as_deref(),
                        Some("Bearer"),
                        "{what}"
                    )
                }
                _ => panic!("{what}: an unchecked header {name} is documented"),
            }
        }
    }
    let Some(content) = response["content"].as_object() else {
        assert!(
            exchange.body.is_empty(),
            "{what}: a body where none is documented"
        );
        return;
    };
    let (media_type, media) = content.iter().next().expect("one media type");
    assert_eq!(content.len(), 1, "{what}");
    let actual_type = exchange.content_type.as_deref().unwrap_or_default();
    assert_eq!(actual_type, media_type, "{what}");
    if media_type.starts_with("text/plain") {
        // Prometheus' text format: comments, and samples that end in a number.
        let sample = |line: &str| {
            line.rsplit_once(' ')
                .is_some_and(|(_, value)| value.parse::<f64>().is_ok())
        };
        assert!(
            exchange
                .body
                .lines()
                .all(|line| line.is_empty() || line.starts_with('#') || sample(line)),
            "{what}: not Prometheus' text format"
        );
        return;
    }
    let body: Value = serde_json::from_str(&exchange.body).unwrap();
    if let Err(err) = validate(doc, &media["schema"], &body) {
        panic!("{what}: {err}\nschema: {}", media["schema"]);
    }
    let examples: Vec<&Value> = match (&media["example"], media["examples"].as_object()) {
        (Value::Null, Some(named)) => named.values().map(|example| &example["value"]).collect(),
        (Value::Null, None) => Vec::new(),
        (example, _) => vec![example],
    };
    if body.get("success") == Some(&json!(false)) {
        let message = without_numbers(body["message"].as_str().unwrap());
        assert!(
            examples
                .iter()
                .any(|example| without_numbers(example["message"].as_str().unwrap()) == message),
            "{what}: not one of the documented messages {examples:?}"
        );
    } else if !examples.is_empty() {
        // A success: the examples show its shape; they must fit the schema too.
        for example in examples {
            validate(doc, &media["schema"], example).unwrap();
        }
    }
}

fn without_numbers(message: &str) -> String {
    let mut out = String::new();
    for c in message.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('#') {
            out.push('#');
        }
    }
    out
}

/// Checks `value` against `schema`, for the JSON Schema keywords the document uses. An unknown
/// keyword is an error, so that no constraint the document states goes unchecked.
fn validate(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    let schema = schema.as_object().ok_or("a schema is an object")?;
    for (keyword, expected) in schema {
        match keyword.as_str() {
            "$ref" => {
                let name = expected.as_str().unwrap();
                let name = name.strip_prefix("#/components/schemas/").ok_or(name)?;
                validate(doc, &doc["components"]["schemas"][name], value)?;
            }
            "type" => {
                let types = match expected {
                    Value::Array(types) => types.iter().map(|t| t.as_str().unwrap()).collect(),
                    other => vec![other.as_str().unwrap()],
                };
                if !types.iter().any(|t| has_type(value, t)) {
                    return Err(format!("{value} is not of type {expected}"));
                }
            }
            "enum" if !expected.as_array().unwrap().contains(value) => {
                return Err(format!("{value} is not one of {expected}"));
            }
            "required" => {
                for name in expected.as_array().unwrap() {
                    if value.get(name.as_str().unwrap()).is_none() {
                        return Err(format!("{value} lacks {name}"));
                    }
                }
            }
            "properties" | "additionalProperties" | "propertyNames" => {
                if let Some(object) = value.as_object() {
                    check_members(doc, schema, object)?;
                }
            }
            "minProperties" | "maxProperties" | "minLength" | "maxLength" => {
                let bound = expected.as_u64().unwrap() as usize;
                let size = match value {
                    Value::Object(object) => object.len(),
                    Value::String(text) => text.chars().count(),
                    _ => continue,
                };
                let fits = match keyword.as_str() {
                    "minProperties" | "minLength" => size >= bound,
                    _ => size <= bound,
                };
                if !fits {
                    return Err(format!("{value}: {keyword} {bound}"));
                }
            }
            // Annotations: they describe, they do not constrain.
            "enum" | "description" | "examples" | "example" | "format" | "title" => {}
            other => return Err(format!("the validator does not know `{other}`")),
        }
    }
    Ok(())
}

/// `properties`, `additionalProperties` and `propertyNames`, which together decide each member.
fn check_members(
    doc: &Value,
    schema: &Map<String, Value>,
    object: &Map<String, Value>,
) -> Result<(), String> {
    for (name, member) in object {
        if let Some(names) = schema.get("propertyNames") {
            validate(doc, names, &json!(name))?;
        }
        match (
            schema.get("properties").and_then(|p| p.get(name)),
            schema.get("additionalProperties"),
        ) {
            (Some(property), _) => validate(doc, property, member)?,
            (None, Some(Value::Bool(false))) => return Err(format!("unexpected member {name}")),
            (None, Some(additional @ Value::Object(_))) => validate(doc, additional, member)?,
            (None, _) => {}
        }
    }
    Ok(())
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    }
}

#[test]
fn the_validator_catches_what_the_document_forbids() {
    let doc = json!({"components": {"schemas": {}}});
    let pair = json!({"type": "object", "minProperties": 1, "maxProperties": 1,
        "propertyNames": {"type": "string", "minLength": 1, "maxLength": 3},
        "additionalProperties": {"type": "number"}});
    let failure = json!({"type": "object", "required": ["success", "message"],
        "properties": {"success": {"type": "boolean", "enum": [false]}, "message": {"type": "string"}}});

    assert!(validate(&doc, &pair, &json!({"k": 1.5})).is_ok());
    for bad in [
        json!({}),
        json!({"a": 1, "b": 2}),
        json!({"k": "1"}),
        json!({"long": 1}),
        json!([1]),
    ] {
        assert!(validate(&doc, &pair, &bad).is_err(), "{bad}");
    }
    assert!(validate(&doc, &failure, &json!({"success": false, "message": "m"})).is_ok());
    for bad in [
        json!({"success": true, "message": "m"}),
        json!({"success": false}),
    ] {
        assert!(validate(&doc, &failure, &bad).is_err(), "{bad}");
    }
    assert!(validate(&doc, &json!({"pattern": "x"}), &json!("x")).is_err());
}
