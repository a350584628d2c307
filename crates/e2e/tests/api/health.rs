//! `/health` and `/ready`: what an orchestrator sees with and without RabbitMQ.

use kv_e2e::app::{Options, json, spawn_app, spawn_app_with};
use serde_json::json;

#[tokio::test]
async fn with_the_broker_up_the_front_is_healthy_and_ready() {
    let app = spawn_app().await;

    let health = json(app.get_raw("/health").await).await;
    let ready = json(app.get_raw("/ready").await).await;

    assert_eq!(health, (200, json!({ "status": "ok" })));
    assert_eq!(ready, (200, json!({ "status": "ready" })));
    app.shutdown().await;
}

#[tokio::test]
async fn without_the_broker_the_front_is_healthy_but_not_ready() {
    // Nothing listens on port 1: the front-server keeps retrying in the background.
    let app = spawn_app_with(Options {
        amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        wait_for_broker: false,
        ..Options::front_only()
    })
    .await;

    let health = json(app.get_raw("/health").await).await;
    let ready = json(app.get_raw("/ready").await).await;

    assert_eq!(health, (200, json!({ "status": "ok" })));
    assert_eq!(
        ready,
        (
            503,
            json!({ "status": "not ready", "reason": "no working connection to RabbitMQ" })
        )
    );
    app.shutdown().await;
}
