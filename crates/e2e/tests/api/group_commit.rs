//! Group commit: a backlog is applied in batches, and batching changes nothing a client can see.
//! Each test queues requests while no back-server runs, so that the back-server finds a backlog
//! and takes it in batches (of at most 32 here), then checks answers, SQLite and the queues.

use kv_e2e::app::{Options, PATIENCE, TestApp, json, spawn_app_with};
use lapin::options::BasicGetOptions;
use std::time::Duration;

/// Waits until `count` messages are ready in the app's request queue.
async fn wait_for_backlog(app: &TestApp, count: u32) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.messages_in(&app.queue).await < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {count} queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_read_in_a_backlog_sees_exactly_the_writes_queued_before_it() {
    // The first read waits while the backlog is built: give it a deadline far beyond that.
    let mut app = spawn_app_with(Options {
        front_env: &[("RPC_TIMEOUT_MS", "60000")],
        ..Options::front_only()
    })
    .await;
    let app_address = app.address.clone();
    let mut reads = Vec::new();
    for round in 0..40u32 {
        app.put("k", f64::from(round)).await;
        let url = format!("{app_address}/api?key=k");
        reads.push(tokio::spawn(async move {
            let response = reqwest::get(url).await.unwrap();
            json(response).await
        }));
        // The read must be in the queue before the next write, or the order is not known.
        wait_for_backlog(&app, 2 * (round + 1)).await;
    }
    // A write nobody reads, to see the last of the backlog applied too.
    app.put("other", -1.5).await;

    app.start_back().await;

    for (round, read) in reads.into_iter().enumerate() {
        let (status, body) = read.await.unwrap();
        assert_eq!(
            (status, body["data"].as_f64()),
            (200, Some(round as f64)),
            "read {round}"
        );
    }
    app.wait_for_db_value("other", -1.5).await;
    assert_eq!(app.db_value("k"), Some(39.0));
    assert_eq!(app.db_row_count(), 2);
    // Stopped first: a delivered but unacked message would then be counted as ready again.
    app.stop_back().await;
    assert_eq!(app.messages_in(&app.queue).await, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_malformed_message_inside_a_batch_is_dead_lettered_and_the_rest_applied() {
    let mut app = spawn_app_with(Options::front_only()).await;
    let (connection, channel) = app.publisher().await;
    let bodies: [&[u8]; 5] = [
        br#"{"op":"put","key":"a","value":1}"#,
        b"garbage in the middle",
        br#"{"op":"put","key":"a","value":2}"#,
        br#"{"op":"put","key":"b","value":3}"#,
        b"garbage at the end",
    ];
    for body in bodies {
        app.publish_raw(&channel, body).await;
    }

    app.start_back().await;

    app.wait_for_db_value("b", 3.0).await;
    assert_eq!(app.db_value("a"), Some(2.0));
    let dead = kv_protocol::dead_letter_queue(&app.queue);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.messages_in(&dead).await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut kept = Vec::new();
    while let Some(message) = channel
        .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        kept.push(message.delivery.data);
    }
    assert_eq!(kept, [&b"garbage in the middle"[..], b"garbage at the end"]);
    // The back-server's channel is still healthy (a bad ack would have closed it): it serves.
    let (status, body) = json(app.get_key("a").await).await;
    assert_eq!((status, body["data"].as_f64()), (200, Some(2.0)));
    app.stop_back().await;
    assert_eq!(app.messages_in(&app.queue).await, 0);
    let _ = connection.close(200, "done".into()).await;
    app.shutdown().await;
}
