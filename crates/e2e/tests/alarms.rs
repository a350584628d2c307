//! RabbitMQ saying "not now": a disk alarm, which blocks every connection that publishes, and a
//! broker frozen in place. A test binary of its own, because an alarm or a frozen broker stops
//! every client of the broker: Cargo runs test binaries one after another, and each test here
//! holds the broker lock exclusively (see [`kv_e2e::app::lock_broker`]), so no other test of
//! this run or of a concurrent one runs meanwhile.

use kv_e2e::app::{Lock, Options, TestApp, eventually, json, spawn_app_with};
use kv_e2e::broker_faults::{DiskAlarm, FrozenBroker};
use kv_protocol::{Key, Request};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use std::time::{Duration, Instant};

fn alone(options: Options) -> Options {
    Options {
        broker: Lock::Exclusive,
        ..options
    }
}

/// Queues `writes` writes (key `k<i>`, value `i`) with a read after every tenth, as persistent
/// messages straight into the request queue; the reads ask for their reply on `reply_queue`.
async fn queue_backlog(app: &TestApp, writes: u32, reply_queue: &str) {
    let (connection, channel) = app.publisher().await;
    // Declared as the servers declare it: no server has run on this queue yet.
    kv_protocol::declare_topology(&connection, &app.layout())
        .await
        .unwrap();
    channel
        .queue_declare(
            reply_queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..writes {
        let key = Key::parse(format!("k{i}")).unwrap();
        let mut messages = vec![(
            Request::Put {
                key: key.clone(),
                value: f64::from(i),
            }
            .to_vec(),
            None,
        )];
        if i % 10 == 9 {
            messages.push((Request::Get { key: &key }.to_vec(), Some(reply_queue)));
        }
        for (body, reply_to) in messages {
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(format!("m{i}.{}", reply_to.is_some()).into());
            if let Some(reply_to) = reply_to {
                properties = properties
                    .with_reply_to(reply_to.into())
                    .with_correlation_id(i.to_string().into());
            }
            let confirm = channel
                .basic_publish(
                    "".into(),
                    app.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .unwrap();
            confirms.push(confirm);
        }
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    let _ = connection.close(200, "backlog queued".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_into_sqlite_while_a_disk_alarm_blocks_all_publishing() {
    // Arrange: 3,000 writes and 300 reads queued while no back-server runs, then a disk alarm.
    let app = spawn_app_with(alone(Options::no_servers())).await;
    let reply_queue = format!("{}.replies", app.queue);
    queue_backlog(&app, 3000, &reply_queue).await;
    let alarm = DiskAlarm::raise();

    // Act: the back-server starts during the alarm; its replies cannot be published.
    let back = app.start_back_process(&[]).await;
    back.wait_for_log("consuming").await;

    // Assert: every write committed and the queue empty, with the alarm still on.
    app.wait_for_row_count(3000).await;
    eventually("the request queue is empty", || async {
        match app.messages_in(&app.queue).await {
            0 => Ok(()),
            ready => Err(format!("{ready} ready")),
        }
    })
    .await;
    assert!(
        back.log().contains("RabbitMQ blocks publishing"),
        "the replies' connection was never blocked, so this test proved nothing:\n{}",
        back.log()
    );
    assert_eq!(app.db_value("k2999"), Some(2999.0));
    alarm.clear();
    drop(back);
    let (_connection, channel) = app.broker().await;
    let _ = channel
        .queue_delete(reply_queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_rabbitmq_blocks_publishing_requests_get_503_at_once_and_are_served_after() {
    let app = spawn_app_with(alone(Options {
        front_env: &[("RPC_TIMEOUT_MS", "1000")],
        ..Options::default()
    }))
    .await;
    app.put("before", 1.0).await;
    let alarm = DiskAlarm::raise();

    // RabbitMQ says it blocks a connection only when that connection next publishes: the write
    // that reveals the alarm waits for its deadline, and its outcome is unknown.
    let (status, body) = json(app.post_json(r#"{"revealing": 2}"#).await).await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("outcome is unknown") && message.contains("resource alarm"),
        "{message}"
    );
    let (_, ready) = eventually("/ready says RabbitMQ refuses messages", || async {
        match json(app.get_raw("/ready").await).await {
            (503, body)
                if body["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("resource alarm") =>
            {
                Ok((503, body))
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        ready["reason"].as_str().unwrap().contains("disk"),
        "{ready}"
    );

    for _ in 0..20 {
        let started = Instant::now();
        let (write, write_body) = json(app.post_json(r#"{"during": 3}"#).await).await;
        let (read, read_body) = json(app.get_key("before").await).await;
        let took = started.elapsed();
        assert_eq!((write, read), (503, 503), "{write_body} {read_body}");
        assert!(took < Duration::from_millis(100), "took {took:?}");
        let message = write_body["message"].as_str().unwrap();
        assert!(
            message.contains("resource alarm") && message.contains("not processed"),
            "{message}"
        );
    }

    alarm.clear();
    let cleared = Instant::now();
    eventually("a write is served again", || async {
        match app.post_json(r#"{"after": 4}"#).await.status().as_u16() {
            200 => Ok(()),
            status => Err(format!("{status}")),
        }
    })
    .await;
    assert!(
        cleared.elapsed() < Duration::from_secs(1),
        "{:?}",
        cleared.elapsed()
    );
    let (status, _) = json(app.get_raw("/ready").await).await;
    assert_eq!(status, 200);
    let (status, body) = json(app.get_key("after").await).await;
    assert_eq!((status, body["data"].as_f64()), (200, Some(4.0)));
    // A write refused at once was never sent, so never applied.
    assert_eq!(app.db_value("during"), None);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_writes_during_an_alarm_leaves_the_front_servers_memory_flat() {
    let mut app = spawn_app_with(alone(Options::no_servers())).await;
    let back = app.start_back_process(&[]).await;
    back.wait_for_log("consuming").await;
    let front = app.start_front_process(&[("RPC_TIMEOUT_MS", "1000")]).await;
    app.put("before", 1.0).await;
    let alarm = DiskAlarm::raise();

    // Each flooding write has a key of its own; those whose answer said their outcome is
    // unknown (sent before RabbitMQ said it blocks) may be applied later, no other may.
    let flood = |round: &'static str, seconds: u64| {
        let url = format!("{}/api", app.address);
        async move {
            let until = Instant::now() + Duration::from_secs(seconds);
            let clients: Vec<_> = (0..64)
                .map(|client| {
                    let url = url.clone();
                    tokio::spawn(async move {
                        let http = reqwest::Client::new();
                        let (mut answered, mut unknown) = (0u64, Vec::new());
                        while Instant::now() < until {
                            let key = format!("{round}.{client}.{answered}");
                            let response = http
                                .post(&url)
                                .header("Content-Type", "application/json")
                                .body(serde_json::json!({ &key: 1 }).to_string())
                                .send()
                                .await
                                .expect("the front-server answers");
                            let (status, body) = json(response).await;
                            assert_eq!(status, 503, "{body}");
                            if body["message"]
                                .as_str()
                                .unwrap()
                                .contains("outcome is unknown")
                            {
                                unknown.push(key);
                            }
                            answered += 1;
                        }
                        (answered, unknown)
                    })
                })
                .collect();
            let (mut answered, mut unknown) = (0, Vec::new());
            for client in clients {
                let (count, keys) = client.await.unwrap();
                answered += count;
                unknown.extend(keys);
            }
            (answered, unknown)
        }
    };
    // The first flood reveals the alarm and warms the server up; the second is measured.
    let (_, mut unknown) = flood("warm-up", 5).await;
    let before = front.memory().unwrap().rss;
    let (answered, more_unknown) = flood("measured", 60).await;
    let after = front.memory().unwrap().rss;
    unknown.extend(more_unknown);

    let growth = after.saturating_sub(before);
    eprintln!("front-server RSS {before} → {after} bytes over {answered} refused writes");
    assert!(answered > 1000, "only {answered} answers");
    assert!(
        growth <= 2 * 1024 * 1024,
        "RSS grew by {growth} bytes ({before} → {after}) over {answered} refused writes"
    );
    alarm.clear();
    // Nothing answered "not processed" was applied later.
    app.put("after", 2.0).await;
    app.wait_for_db_value("after", 2.0).await;
    let applied_anyway: Vec<String> = app
        .db_values()
        .into_keys()
        .filter(|key| !["before", "after"].contains(&key.as_str()) && !unknown.contains(key))
        .collect();
    assert!(
        applied_anyway.is_empty(),
        "refused writes were applied: {:?}",
        &applied_anyway[..applied_anyway.len().min(10)]
    );
    drop((back, front));
    app.shutdown().await;
}

/// Both servers as processes under load, stopped with SIGTERM while `fault` holds: each must
/// exit within 10 s, and every acknowledged write must be in SQLite once the fault is over.
async fn sigterm_during<F>(fault: impl FnOnce() -> F, end: impl FnOnce(F)) {
    let mut app = spawn_app_with(alone(Options::no_servers())).await;
    let mut back = app.start_back_process(&[]).await;
    back.wait_for_log("consuming").await;
    let mut front = app.start_front_process(&[("RPC_TIMEOUT_MS", "1000")]).await;
    let writers = kv_e2e::writers::Writers::start(&app.address, 8, 16, usize::MAX);
    writers.wait_for_acked(200).await;

    let fault = fault();
    front.signal("TERM");
    back.signal("TERM");
    let stopped = Instant::now();
    let front_exit = front.exit_within(Duration::from_secs(10)).await;
    let back_exit = back.exit_within(Duration::from_secs(10)).await;
    let took = stopped.elapsed();
    let attempts = writers.stop().await;
    end(fault);

    assert!(
        front_exit.success() && back_exit.success(),
        "{front_exit} {back_exit}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // What was not acked is redelivered to the next back-server; nothing acknowledged is lost.
    let back = app.start_back_process(&[]).await;
    back.wait_for_log("consuming").await;
    kv_e2e::writers::audit(&app, &attempts).await;
    drop(back);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_both_servers_within_10_s_during_a_disk_alarm() {
    sigterm_during(DiskAlarm::raise, DiskAlarm::clear).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_both_servers_within_10_s_while_rabbitmq_is_frozen() {
    sigterm_during(FrozenBroker::freeze, FrozenBroker::thaw).await;
}
