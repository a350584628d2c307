//! Fault injection: servers killed, stopped and starved mid-traffic, and messages that come back.
//! Each case ends by reading SQLite directly: every write that got a `200` must be there.
//! (The broker restart lives in its own test binary, `tests/broker_restart.rs`: it must run alone.)

use crate::proxy::Proxy;
use kv_e2e::app::{Options, PATIENCE, TestApp, eventually, json, spawn_app, spawn_app_with};
use kv_e2e::broker_faults::close_connections_of;
use kv_e2e::writers::{Writers, assert_none_slower_than, audit};
use kv_protocol::{DEAD_REASON_HEADER, Format, Key, Request, dead_letter_queue};
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use std::time::Duration;

/// How long a server may take to stop on SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_back_server_killed_mid_writes_loses_no_acknowledged_write() {
    let app = spawn_app_with(Options::front_only()).await;
    let mut back = app.start_back_process(&[]).await;
    back.wait_for_log("consuming").await;
    let writers = Writers::start(&app.address, 8, 16, 640);

    writers.wait_for_acked(1500).await;
    back.kill().await;
    // RabbitMQ holds what the dead back-server had in hand, and keeps taking writes.
    let killed_at = writers.acked();
    writers.wait_for_acked(killed_at + 1000).await;
    let _back = app.start_back_process(&[]).await;
    let attempts = writers.finish().await;

    let failed: Vec<_> = attempts.iter().filter(|a| !a.acked()).collect();
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    assert_eq!(audit(&app, &attempts).await, 8 * 640);
    assert_eq!(app.messages_in(&app.queue).await, 0);
}

#[tokio::test]
async fn connections_closed_by_rabbitmq_are_reopened_and_lose_nothing() {
    let app = spawn_app().await;
    app.put("check", 1.0).await;
    let writers = Writers::start(&app.address, 4, 8, usize::MAX);
    writers.wait_for_acked(300).await;

    // What an operator's `rabbitmqctl close_connection` or a broker's health policy does.
    let closed = close_connections_of(&app.queue);
    let at = writers.acked();
    writers.wait_for_acked(at + 300).await;
    let read = wait_until_answered(&app, "check").await;
    let attempts = writers.stop().await;

    assert_eq!(closed, 2, "one connection per server");
    assert_eq!(read, 1.0);
    for attempt in attempts.iter().filter(|attempt| !attempt.acked()) {
        assert_eq!(attempt.outcome, Ok(503), "{attempt:?}");
    }
    assert_none_slower_than(&attempts, Duration::from_secs(5 + 2));
    audit(&app, &attempts).await;
}

// Multi-threaded: on one thread shared by the test, the proxy and both servers, this test hung
// before the servers had connected. Not pinned down further; the servers themselves always run
// on multi-threaded runtimes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_silently_cut_by_the_network_is_found_by_heartbeats_and_healed() {
    let proxy = Proxy::start(broker_address()).await;
    // A 1 s heartbeat: a link silent for 2 s is dead (RabbitMQ's 60 s would take two minutes).
    let url = format!("amqp://guest:guest@{}/%2f?heartbeat=1", proxy.address);
    let app = spawn_app_with(Options {
        amqp_url: url,
        ..Options::default()
    })
    .await;
    app.put("check", 1.0).await;
    let writers = Writers::start(&app.address, 4, 8, usize::MAX);
    writers.wait_for_acked(200).await;

    proxy.freeze(true);
    let during = app.post_json(r#"{"during": 1}"#).await.status().as_u16();
    proxy.freeze(false);
    let back_at = tokio::time::Instant::now();
    let read = wait_until_answered(&app, "check").await;
    let healed_in = back_at.elapsed();
    let at = writers.acked();
    writers.wait_for_acked(at + 200).await;
    let attempts = writers.stop().await;

    // The write in the blip: confirmed by nobody, so not acknowledged; it may still be stored.
    assert_eq!(during, 503);
    assert_eq!(read, 1.0);
    assert!(
        healed_in < Duration::from_secs(10),
        "healed in {healed_in:?}"
    );
    for attempt in attempts.iter().filter(|attempt| !attempt.acked()) {
        assert_eq!(attempt.outcome, Ok(503), "{attempt:?}");
    }
    assert_none_slower_than(&attempts, Duration::from_secs(5 + 2));
    audit(&app, &attempts).await;
}

/// Where `AMQP_URL` points, as a socket address.
fn broker_address() -> std::net::SocketAddr {
    let uri: lapin::uri::AMQPUri = kv_e2e::app::amqp_url().parse().unwrap();
    let host = match uri.authority.host.as_str() {
        "localhost" => "127.0.0.1",
        host => host,
    };
    format!("{host}:{}", uri.authority.port).parse().unwrap()
}

/// Reads `key` until the back-server answers (it may be reconnecting); returns the value.
async fn wait_until_answered(app: &TestApp, key: &str) -> f64 {
    eventually(&format!("a read of {key} is answered"), || async {
        match json(app.get_key(key).await).await {
            (200, body) => Ok(body["data"].as_f64().unwrap()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await
}

#[tokio::test]
async fn sigterm_stops_the_front_then_the_back_under_load_and_loses_nothing() {
    let mut app = spawn_app_with(Options::no_servers()).await;
    let mut back = app.start_back_process(&[]).await;
    back.wait_for_log("consuming").await;
    // At debug the front-server logs each read it has published: how the test knows a read is
    // in flight.
    let mut front = app
        .start_front_process(&[("RUST_LOG", "info,front_server=debug")])
        .await;
    for n in 0..8 {
        app.put(&format!("read-{n}"), f64::from(n)).await;
    }
    let writers = Writers::start(&app.address, 4, 8, usize::MAX);
    writers.wait_for_acked(500).await;

    // Reads that cannot be answered while the back-server is frozen: in flight for sure.
    back.signal("STOP");
    let reads: Vec<_> = (0..8)
        .map(|n| {
            let request = app
                .client
                .get(format!("{}/api?key=read-{n}", app.address))
                .header("x-request-id", format!("read-{n}"));
            tokio::spawn(async move { json(request.send().await.unwrap()).await })
        })
        .collect();
    for n in 0..8 {
        let published = format!("request_id=read-{n} ");
        let line = front.wait_for_log(&published).await;
        assert!(
            line.contains("waiting for the back-server's reply"),
            "{line}"
        );
    }
    front.signal("TERM");
    back.signal("CONT");
    let front_exit = front.exit_within(STOP_WITHIN).await;
    let attempts = writers.stop().await;
    // The queue still holds what piled up while the back-server was frozen: it stops mid-work.
    back.signal("TERM");
    let back_exit = back.exit_within(STOP_WITHIN).await;

    assert!(
        front_exit.success(),
        "front-server: {front_exit}\n{}",
        front.log()
    );
    assert!(
        back_exit.success(),
        "back-server: {back_exit}\n{}",
        back.log()
    );
    for (n, read) in reads.into_iter().enumerate() {
        let (status, body) = read.await.unwrap();
        assert_eq!(
            (status, &body["data"]),
            (200, &serde_json::json!(n as f64)),
            "{body}"
        );
    }
    // After the signal the server accepts no new connection, and closes idle kept-alive ones: a
    // request sent on one just then gets no answer (HTTP/1.1's known race). Never a 5xx.
    for attempt in &attempts {
        match &attempt.outcome {
            Ok(status) => assert_eq!(*status, 200, "{attempt:?}"),
            Err(error) => assert!(
                error.contains("ConnectError") || error.contains("IncompleteMessage"),
                "{attempt:?}"
            ),
        }
    }
    app.start_back().await;
    let acked = audit(&app, &attempts).await;
    assert!(acked >= 500, "{acked}");
}

#[tokio::test]
async fn a_database_that_refuses_writes_keeps_them_queued_until_it_accepts_them() {
    let app = spawn_app_with(Options::front_only()).await;
    let back = app.start_back_process(&[]).await;
    back.wait_for_log("consuming").await;
    app.put("before", 1.0).await;
    app.wait_for_db_value("before", 1.0).await;

    // The disk is full, as far as the back-server can tell: every write to a file fails.
    set_file_size_limit(&back, "0");
    for n in 0..20 {
        app.put(&format!("while-full-{n}"), f64::from(n)).await;
    }
    back.wait_for_log("the database refused").await;
    // Reads queue behind the writes they must see, so this one waits for the disk too.
    let read = tokio::spawn(reqwest::get(format!("{}/api?key=before", app.address)));
    for n in 0..20 {
        assert_eq!(app.db_value(&format!("while-full-{n}")), None);
    }
    set_file_size_limit(&back, "unlimited");

    let (status, body) = json(read.await.unwrap().unwrap()).await;
    assert_eq!(
        (status, &body["data"]),
        (200, &serde_json::json!(1.0)),
        "{body}"
    );
    for n in 0..20 {
        assert_eq!(app.db_value(&format!("while-full-{n}")), Some(f64::from(n)));
    }
    assert!(back.log().contains("disk I/O error"), "{}", back.log());
    back.wait_for_log("the database accepts writes again").await;
}

/// Changes the file size limit (`ulimit -f`) of a running process.
pub fn set_file_size_limit(process: &kv_e2e::server::ServerProcess, limit: &str) {
    let status = std::process::Command::new("prlimit")
        // The soft limit only: lowering the hard one could not be undone without privileges.
        .args([
            "--pid",
            &process.pid().to_string(),
            &format!("--fsize={limit}:"),
        ])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success());
}

#[tokio::test]
async fn a_batch_redelivered_after_a_crash_between_commit_and_ack_ends_the_same() {
    let app = spawn_app_with(Options::front_only()).await;
    app.put("a", 1.0).await;
    app.put("b", 2.0).await;
    app.put("a", 3.0).await;

    let mut crashing = app
        .start_back_process(&[("FAILPOINTS", "after-commit=return")])
        .await;
    let exit = crashing.exit_within(PATIENCE).await;
    assert!(
        !exit.success(),
        "it should have crashed:\n{}",
        crashing.log()
    );
    // Its first batch (one message or more, as they arrived) was committed, never acked.
    assert!(app.db_value("a").is_some());
    app.put("a", 4.0).await;
    let back = app.start_back_process(&[]).await;
    back.wait_for_log("consuming").await;

    app.wait_for_db_value("a", 4.0).await;
    let (status, body) = json(app.get_key("b").await).await;
    assert_eq!((status, &body["data"]), (200, &serde_json::json!(2.0)));
    assert_eq!(app.messages_in(&app.queue).await, 0);
    assert_eq!(app.messages_in(&dead_letter_queue(&app.queue)).await, 0);
    assert_eq!(app.redelivery_counts(), 0, "redelivery counts left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_redelivered_after_a_dropped_link_leave_no_redelivery_counts_behind() {
    // Arrange: a backlog, and a back-server frozen with part of it in hand, unacked.
    let app = spawn_app_with(Options::front_only()).await;
    for n in 0..200 {
        app.put(&format!("k{n}"), f64::from(n)).await;
    }
    let back = app.start_back_process(&[("PREFETCH", "100")]).await;
    back.wait_for_log("consuming").await;
    back.signal("STOP");

    // Act: RabbitMQ drops its link (the front-server's too), and hands back what it held,
    // marked redelivered.
    assert!(close_connections_of(&app.queue) >= 1);
    back.signal("CONT");

    // Assert: everything applied, and every redelivered message's count dropped with it.
    app.wait_for_row_count(200).await;
    eventually("no redelivery count is left", || async {
        match app.redelivery_counts() {
            0 => Ok(()),
            rows => Err(format!("{rows} rows")),
        }
    })
    .await;
    assert!(
        back.log().contains("lost the RabbitMQ link"),
        "the link never dropped, so this test proved nothing:\n{}",
        back.log()
    );
}

#[tokio::test]
async fn duplicate_deliveries_of_a_write_leave_the_last_value() {
    let mut app = spawn_app_with(Options::front_only()).await;
    let (_connection, channel) = app.publisher().await;
    let write = |value| {
        Request::Put {
            key: Key::parse("dup").unwrap(),
            value,
        }
        .to_vec()
    };
    // At-least-once delivery: a publisher retrying after a lost confirm sends the same write twice.
    for body in [write(1.0), write(1.0), write(2.0), write(2.0)] {
        app.publish_raw(&channel, &body).await;
    }

    app.start_back().await;

    app.wait_for_db_value("dup", 2.0).await;
    let (status, body) = json(app.get_key("dup").await).await;
    assert_eq!((status, &body["data"]), (200, &serde_json::json!(2.0)));
    assert_eq!(app.db_row_count(), 1);
}

#[tokio::test]
async fn a_message_that_keeps_crashing_the_back_server_is_dead_lettered() {
    let app = spawn_app_with(Options::front_only()).await;
    app.put("poison", 1.0).await;
    let crash = [
        ("FAILPOINTS", "before-apply=return"),
        ("MAX_REDELIVERIES", "2"),
    ];

    // The first delivery and two redeliveries each crash the back-server…
    for _ in 0..3 {
        let mut back = app.start_back_process(&crash).await;
        let exit = back.exit_within(PATIENCE).await;
        assert!(!exit.success(), "it should have crashed:\n{}", back.log());
    }
    // …so the third redelivery is set aside, and the back-server stays up.
    let mut back = app.start_back_process(&crash).await;
    back.wait_for_log("dead-lettering a message").await;
    let dead = dead_letter_queue(&app.queue);
    wait_for_messages(&app, &dead, 1).await;
    assert!(back.is_running(), "{}", back.log());
    assert_eq!(app.messages_in(&app.queue).await, 0);
    assert_eq!(app.db_value("poison"), None);

    let (connection, channel) = app.broker().await;
    let message = channel
        .basic_get(dead.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the dead-lettered message");
    let reason = message.properties.headers().as_ref().unwrap().inner()[DEAD_REASON_HEADER].clone();
    let AMQPValue::LongString(reason) = reason else {
        panic!("{reason:?}")
    };
    assert!(
        reason.to_string().contains("redelivered 3 times"),
        "{reason}"
    );
    let format = Format::of(message.properties.kind().as_ref()).unwrap();
    assert_eq!(
        format.requests(&message.data).unwrap(),
        [Request::Put {
            key: Key::parse("poison").unwrap(),
            value: 1.0
        }]
    );
    let _ = connection.close(200, "done".into()).await;
}

async fn wait_for_messages(app: &TestApp, queue: &str, count: u32) {
    eventually(&format!("{queue} holds {count}"), || async {
        match app.messages_in(queue).await {
            held if held == count => Ok(()),
            held => Err(format!("{held} messages")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_routed_nowhere_gets_200_when_the_queue_is_deleted_under_load() {
    // Arrange: 32 writers, each write under a key of its own, then a pause: with nothing in
    // flight and no back-server, every write acknowledged so far is in SQLite or in the queue.
    let mut app = spawn_app().await;
    let before = Writers::start_named("before", &app.address, 32, usize::MAX, usize::MAX);
    before.wait_for_acked(300).await;
    app.stop_back().await;
    let before = before.stop().await;

    // Act: an operator deletes the request queue, and 32 writers write at once: the first
    // writes are routed nowhere (returned), until the front-server declares the queue again.
    let (connection, channel) = app.broker().await;
    // Taken off the queue unacked, to count the writes they carry; deleted with it.
    let mut deleted = 0;
    while let Some(message) = channel
        .basic_get(app.queue.as_str().into(), BasicGetOptions::default())
        .await
        .expect("take a message")
    {
        let format = Format::of(message.properties.kind().as_ref()).unwrap();
        deleted += format.requests(&message.data).unwrap().len();
    }
    channel
        .queue_delete(
            app.queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the request queue");
    let _ = connection.close(200, "done".into()).await;
    let after = Writers::start_named("after", &app.address, 32, usize::MAX, usize::MAX);
    after.wait_for_acked(300).await;
    let after = after.stop().await;
    app.start_back().await;

    // Assert: every write acknowledged after the deletion is in SQLite: one that was returned
    // and still got 200 would be missing. Of those before it, only the deleted queue's may be.
    let missing = |attempts: &[kv_e2e::writers::Attempt]| {
        let values = app.db_values();
        attempts
            .iter()
            .filter(|attempt| attempt.acked() && !values.contains_key(&attempt.key))
            .count()
    };
    audit(&app, &after).await;
    assert!(
        missing(&before) <= deleted,
        "{} acknowledged writes missing, the deleted queue held {deleted}",
        missing(&before)
    );
    let returned = after
        .iter()
        .filter(|attempt| {
            attempt
                .message
                .as_deref()
                .is_some_and(|message| message.contains("no queue named"))
        })
        .count();
    assert!(
        returned > 0,
        "no write was routed nowhere: this test proved nothing"
    );
    for attempt in before
        .iter()
        .chain(&after)
        .filter(|attempt| !attempt.acked())
    {
        assert_eq!(attempt.outcome, Ok(503), "{attempt:?}");
    }
    app.shutdown().await;
}
