//! Guarantees 4 and 5 of docs/CONTRACT.md, with the back-server away: reads end in 504 within
//! their deadline, writes are still acknowledged and are applied when it returns.

use kv_e2e::app::{Options, json, spawn_app_with};
use std::time::{Duration, Instant};

#[tokio::test]
async fn with_the_back_server_down_reads_time_out_and_writes_wait_in_the_queue() {
    let options = Options {
        front_env: &[("RPC_TIMEOUT_MS", "500")],
        ..Options::front_only()
    };
    let mut app = spawn_app_with(options).await;

    let started = Instant::now();
    let (status, body) = json(app.get_key("k").await).await;
    let waited = started.elapsed();
    assert_eq!(
        (status, &body["success"]),
        (504, &serde_json::json!(false)),
        "{body}"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "answered before the deadline: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1500),
        "answered long after the deadline: {waited:?}"
    );

    let (status, _) = json(app.post_json(r#"{"k": 3.5}"#).await).await;
    assert_eq!(status, 200);

    app.start_back().await;
    app.wait_for_db_value("k", 3.5).await;
    let (status, body) = json(app.get_key("k").await).await;
    assert_eq!((status, body["data"].as_f64()), (200, Some(3.5)));
    // The read that timed out expired in the queue; it did not end up among the dead.
    assert_eq!(
        app.messages_in(&kv_protocol::dead_letter_queue(&app.queue))
            .await,
        0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn stopping_the_front_server_lets_a_read_in_flight_finish() {
    let options = Options::front_only();
    let mut app = spawn_app_with(options).await;
    app.put("k", 8.0).await;
    let client = app.client.clone();
    let url = format!("{}/api?key=k", app.address);
    let read = tokio::spawn(async move { client.get(url).send().await });
    // The read is in flight once its request waits in the queue.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.messages_in(&app.queue).await < 2 {
        assert!(
            Instant::now() < deadline,
            "the read never reached the queue"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stopped = app.signal_front();
    app.start_back().await;

    let response = read.await.unwrap().expect("the read in flight is answered");
    let (status, body) = json(response).await;
    assert_eq!((status, body["data"].as_f64()), (200, Some(8.0)));
    stopped.await;
    app.shutdown().await;
}
