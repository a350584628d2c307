//! Logs: each HTTP request logged once, when answered, with its method, path, status, latency
//! and id; the same id in the back-server's lines about the message; JSON with `LOG_FORMAT=json`.

use kv_e2e::app::{Options, TestApp, publish_persistent_to, spawn_app_with};
use kv_protocol::{BATCH_TYPE, REQUEST_ID_HEADER, RequestId, request_ids_header};
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel};
use serde_json::{Value, json};

#[tokio::test]
async fn each_request_is_logged_once_with_an_id_the_back_server_logs_too() {
    let mut app = spawn_app_with(Options::no_servers()).await;
    let json_logs = ("LOG_FORMAT", "json");
    let back = app
        .start_back_process(&[json_logs, ("RUST_LOG", "info,back_server=debug")])
        .await;
    back.wait_for_log("consuming").await;
    let front = app.start_front_process(&[json_logs]).await;

    // A client's own id is kept; without one, the front-server makes one.
    let write = app
        .client
        .post(format!("{}/api", app.address))
        .header("Content-Type", "application/json")
        .header("x-request-id", "trace-me-42")
        .body(r#"{"logged": 1.5}"#)
        .send()
        .await
        .unwrap();
    let read = app.get_key("logged").await;
    let (write_id, read_id) = (id_of(&write), id_of(&read));

    assert_eq!(
        (write.status().as_u16(), read.status().as_u16()),
        (200, 200)
    );
    assert_eq!(write_id, "trace-me-42");
    assert_eq!(read_id.len(), 36, "a UUID: {read_id}");
    for (id, method) in [(&write_id, "POST"), (&read_id, "GET")] {
        front.wait_for_log(id).await;
        let lines: Vec<Value> = front
            .json_log()
            .into_iter()
            .filter(|line| line["span"]["request_id"] == id.as_str())
            .collect();
        let [line] = lines.as_slice() else {
            panic!("one line per request, not {lines:#?}")
        };
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["status"], 200, "{line}");
        assert!(line["fields"]["latency"].is_string(), "{line}");
        assert_eq!(line["span"]["method"], method, "{line}");
        assert_eq!(line["span"]["path"], "/api", "{line}");

        back.wait_for_log(id).await;
        let applied: Vec<Value> = back
            .json_log()
            .into_iter()
            .filter(|line| line["fields"]["request_id"] == id.as_str())
            .collect();
        assert_eq!(applied.len(), 1, "{applied:#?}");
        assert_eq!(applied[0]["fields"]["message"], json!("applied"));
    }
}

#[tokio::test]
async fn the_back_server_logs_request_ids_in_every_form_front_servers_have_sent() {
    // Mid-upgrade, front-servers of every version publish at once: today's compact ids, the
    // array of strings before them, and version 1's single string.
    let app = spawn_app_with(Options::no_servers()).await;
    let back = app
        .start_back_process(&[
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info,back_server=debug"),
        ])
        .await;
    back.wait_for_log("consuming").await;
    let (connection, channel) = app.publisher().await;
    let made = "4d1f3c2a-8b7e-4f6d-9c5b-1a2e3f4d5c6b";

    let compact = request_ids_header([RequestId::new(made), RequestId::new("client-7")].iter());
    let batch = br#"[{"op":"put","key":"made","value":1},{"op":"put","key":"client","value":2}]"#;
    publish(&app, &channel, Some(BATCH_TYPE), compact, batch).await;
    // Ids are for logs: ones that cannot be read never cost the write.
    let garbled = header(AMQPValue::ByteArray(b"\x07garbled".as_slice().into()));
    let body = br#"[{"op":"put","key":"garbled","value":3}]"#;
    publish(&app, &channel, Some(BATCH_TYPE), garbled, body).await;
    let strings = ["older-1", "older-2"].map(|id| AMQPValue::LongString(id.into()));
    let array = header(AMQPValue::FieldArray(FieldArray::from(strings.to_vec())));
    let batch =
        br#"[{"op":"put","key":"older-1","value":4},{"op":"put","key":"older-2","value":5}]"#;
    publish(&app, &channel, Some(BATCH_TYPE), array, batch).await;
    let single = header(AMQPValue::LongString("version-1".into()));
    let body = br#"{"op":"put","key":"single","value":6}"#;
    publish(&app, &channel, None, single, body).await;
    // Each message is logged after its commit, and in queue order.
    back.wait_for_log("version-1").await;

    let ids: Vec<String> = back
        .json_log()
        .into_iter()
        .filter(|line| line["fields"]["message"] == "applied")
        .map(|line| {
            line["fields"]["request_id"]
                .as_str()
                .unwrap_or("none")
                .to_owned()
        })
        .collect();
    assert_eq!(
        ids,
        [made, "client-7", "-", "older-1", "older-2", "version-1"]
    );
    let keys = ["made", "client", "garbled", "older-1", "older-2", "single"];
    for (key, value) in keys.into_iter().zip(1..) {
        assert_eq!(app.db_value(key), Some(f64::from(value)), "{key}");
    }
    let dead = kv_protocol::dead_letter_queue(&app.queue);
    assert_eq!(app.messages_in(&dead).await, 0);
    let _ = connection.close(200, "done".into()).await;
    app.shutdown().await;
}

/// Headers with `ids` as the request ids.
fn header(ids: AMQPValue) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(REQUEST_ID_HEADER.into(), ids);
    headers
}

/// Publishes writes on the request queue as a front-server of the protocol version `kind` would,
/// with `headers`, and waits for RabbitMQ's ack.
async fn publish(
    app: &TestApp,
    channel: &Channel,
    kind: Option<&str>,
    headers: FieldTable,
    body: &[u8],
) {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(headers);
    let properties = match kind {
        Some(kind) => properties.with_type(kind.into()),
        None => properties,
    };
    publish_persistent_to(channel, &app.queue, properties, body).await
}

fn id_of(response: &reqwest::Response) -> String {
    let id = response
        .headers()
        .get("x-request-id")
        .expect("an x-request-id");
    id.to_str().unwrap().to_owned()
}
