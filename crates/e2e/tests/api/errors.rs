//! Every row of the error table in docs/CONTRACT.md ("Every failure of `/api`"), with its status
//! and exact message, and the promise that a bad request never reaches the broker.

use kv_e2e::app::{Options, assert_failure, json, spawn_app, spawn_app_with};
use lapin::options::QueueDeleteOptions;

const NOT_JSON: &str = "Incorrect input data format, must be JSON";
const BAD_PAIR: &str = "Acceptable only one pair key:value in JSON format, value must be a number";
const BAD_QUERY: &str = "Acceptable one parameter named 'key'";
const BAD_TYPE: &str = "Invalid Content-Type, must be 'application/json'";

#[tokio::test]
async fn bad_requests_get_their_contract_answers_and_never_reach_the_broker() {
    // No back-server: anything that reached the queue would stay there to be counted.
    let app = spawn_app_with(Options::front_only()).await;

    for content_type in [
        None,
        Some("text/plain"),
        Some("application/jsonx"),
        Some("json"),
    ] {
        assert_failure(app.post(content_type, r#"{"k": 1}"#).await, 415, BAD_TYPE).await;
    }
    for body in [
        "",
        "not json",
        "{\"k\": 1",
        "{'k': 1}",
        "{\"k\": NaN}",
        "{\"k\": 1} {}",
    ] {
        assert_failure(app.post_json(body).await, 400, NOT_JSON).await;
    }
    let long_key = format!(r#"{{"{}": 1}}"#, "k".repeat(257));
    for body in [
        "{}",
        "[1]",
        "42",
        "null",
        r#"{"k": true}"#,
        r#"{"k": "25"}"#,
        r#"{"k": null}"#,
        r#"{"k": [1]}"#,
        r#"{"k": {}}"#,
        r#"{"a": 1, "b": 2}"#,
        r#"{"a": 1, "a": 2}"#,
        r#"{"": 1}"#,
        r#"{"k": 1e400}"#,
        &long_key,
    ] {
        assert_failure(app.post_json(body).await, 400, BAD_PAIR).await;
    }
    let long_query = format!("/api?key={}", "k".repeat(257));
    for path in [
        "/api",
        "/api?",
        "/api?key=",
        "/api?key",
        "/api?name=a",
        "/api?key=a&key=b",
        "/api?key=a&x=1",
        &long_query,
    ] {
        assert_failure(app.get_raw(path).await, 400, BAD_QUERY).await;
    }

    assert_eq!(
        app.messages_in(&app.queue).await,
        0,
        "a bad request reached the queue"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_charset_parameter_and_any_case_of_the_content_type_are_accepted() {
    let app = spawn_app().await;

    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let response = app.post(Some(content_type), r#"{"k": 1}"#).await;
        assert_eq!(response.status(), 200, "{content_type}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_naming_the_limit() {
    let app = spawn_app().await;
    let body = format!(r#"{{"k": 1, "padding": "{}"}}"#, "x".repeat(64 * 1024));

    let (status, body) = json(app.post_json(&body).await).await;

    assert_eq!((status, &body["success"]), (413, &serde_json::json!(false)));
    assert!(
        body["message"].as_str().unwrap().contains("65536"),
        "{body}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_404_and_405() {
    let app = spawn_app().await;

    let (status, body) = json(app.get_raw("/nowhere").await).await;
    assert_eq!(
        (status, &body["success"]),
        (404, &serde_json::json!(false)),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("/nowhere"),
        "{body}"
    );

    for method in [
        reqwest::Method::DELETE,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
    ] {
        let response = app
            .client
            .request(method.clone(), format!("{}/api", app.address))
            .send()
            .await
            .unwrap();
        let (status, body) = json(response).await;
        assert_eq!(
            (status, &body["success"]),
            (405, &serde_json::json!(false)),
            "{method}"
        );
        assert!(
            body["message"].as_str().unwrap().contains(method.as_str()),
            "{body}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn with_the_broker_unreachable_requests_get_503_at_once() {
    // Nothing listens on port 1: the front-server keeps retrying in the background.
    let options = Options {
        amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        wait_for_broker: false,
        ..Options::front_only()
    };
    let app = spawn_app_with(options).await;
    let started = std::time::Instant::now();

    let (status, body) = json(app.post_json(r#"{"k": 1}"#).await).await;
    assert_eq!(
        (status, &body["success"]),
        (503, &serde_json::json!(false)),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("RabbitMQ"),
        "{body}"
    );
    let (status, _) = json(app.get_key("k").await).await;
    assert_eq!(status, 503);

    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_write_the_broker_cannot_route_gets_503_and_the_queue_is_declared_again() {
    // No back-server, which would declare the queue again as soon as it lost it.
    let app = spawn_app_with(Options::front_only()).await;
    let (connection, channel) = app.broker().await;
    channel
        .queue_delete(app.queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();

    let (status, body) = json(app.post_json(r#"{"lost": 1}"#).await).await;

    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("not stored"),
        "{body}"
    );
    // The front-server rebuilds its link, which declares the queue again.
    let started = std::time::Instant::now();
    while app.post_json(r#"{"kept": 1}"#).await.status() != 200 {
        assert!(
            started.elapsed() < kv_e2e::app::PATIENCE,
            "the queue never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(app.messages_in(&app.queue).await, 1);
    let _ = connection.close(200, "done".into()).await;
    app.shutdown().await;
}
