//! Logs: each HTTP request logged once, when answered, with its method, path, status, latency
//! and id; the same id in the back-server's lines about the message; JSON with `LOG_FORMAT=json`.

use kv_e2e::app::{Options, spawn_app_with};
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

fn id_of(response: &reqwest::Response) -> String {
    let id = response
        .headers()
        .get("x-request-id")
        .expect("an x-request-id");
    id.to_str().unwrap().to_owned()
}
