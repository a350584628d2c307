//! `/metrics` on both servers and the back-server's admin probes, against the real binaries:
//! each runs in a process of its own, so each `/metrics` holds that server's series alone (in
//! this process every in-process server would share one recorder).

use crate::faults::set_file_size_limit;
use kv_e2e::app::{Options, PATIENCE, TestApp, eventually, json, spawn_app_with};
use kv_e2e::broker_faults::close_connections_of;
use kv_e2e::metrics::Scrape;
use kv_e2e::server::ServerProcess;
use serde_json::json;
use std::time::Duration;

/// Starts the back-server binary and returns it with its admin listener's base URL.
async fn start_back(app: &TestApp) -> (ServerProcess, String) {
    let back = app.start_back_process(&[]).await;
    let admin = format!("http://{}", back.wait_for_address("admin listening").await);
    (back, admin)
}

/// `GET {admin}{path}` on the back-server's admin listener: the status and the JSON body.
async fn admin_get(app: &TestApp, admin: &str, path: &str) -> (u16, serde_json::Value) {
    let response = app.client.get(format!("{admin}{path}")).send().await;
    json(response.expect("the admin listener answers")).await
}

/// Polls `GET {admin}/ready` until it answers `status`; returns the body.
async fn wait_for_ready_status(app: &TestApp, admin: &str, status: u16) -> serde_json::Value {
    eventually(&format!("/ready answers {status}"), || async {
        match admin_get(app, admin, "/ready").await {
            (actual, body) if actual == status => Ok(body),
            (actual, body) => Err(format!("{actual} {body}")),
        }
    })
    .await
}

#[tokio::test]
async fn both_servers_metrics_move_by_exactly_the_traffic_they_served() {
    // Arrange: a back-server and a front-server as processes, and one key already stored.
    let mut app = spawn_app_with(Options::no_servers()).await;
    let (back, admin) = start_back(&app).await;
    back.wait_for_log("consuming").await;
    let front = app.start_front_process(&[("RPC_TIMEOUT_MS", "2000")]).await;
    app.put("old", 1.0).await;
    // Its read comes after its write in the queue: once answered, the back has applied both.
    assert_eq!(app.get_key("old").await.status(), 200);
    let front_before = Scrape::of(&app.client, &app.address).await;
    let back_before = Scrape::of(&app.client, &admin).await;

    // Act: 10 writes (7 new keys, 3 rewrites), 7 reads (5 found, 2 not), 1 bad write, 1 stray
    // path, 1 invented method.
    for n in 0..7 {
        app.put(&format!("new-{n}"), f64::from(n)).await;
    }
    for n in 0..3 {
        app.put("old", f64::from(n)).await;
    }
    for key in ["old", "new-0", "new-1", "new-2", "new-3"] {
        assert_eq!(app.get_key(key).await.status(), 200);
    }
    for key in ["missing-0", "missing-1"] {
        assert_eq!(app.get_key(key).await.status(), 404);
    }
    assert_eq!(app.post_json("{}").await.status(), 400);
    assert_eq!(app.get_raw("/no/such/path").await.status(), 404);
    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();
    let url = format!("{}/api", app.address);
    assert_eq!(
        app.client.request(brew, url).send().await.unwrap().status(),
        405
    );
    let front_after = Scrape::of(&app.client, &app.address).await;
    let back_after = Scrape::of(&app.client, &admin).await;

    // Assert, front: requests by matched route, method and status; their latencies; confirms.
    let front_delta = |name: &str, labels: &[(&str, &str)]| {
        front_after.value(name, labels) - front_before.value(name, labels)
    };
    let requests = "kv_http_requests_total";
    let api = ("route", "/api");
    let (post, get) = (("method", "POST"), ("method", "GET"));
    assert_eq!(front_delta(requests, &[api, post, ("status", "200")]), 10.0);
    assert_eq!(front_delta(requests, &[api, post, ("status", "400")]), 1.0);
    assert_eq!(front_delta(requests, &[api, get, ("status", "200")]), 5.0);
    assert_eq!(front_delta(requests, &[api, get, ("status", "404")]), 2.0);
    let unmatched = [("route", "unmatched"), get, ("status", "404")];
    assert_eq!(front_delta(requests, &unmatched), 1.0);
    assert_eq!(
        front_after.value(requests, &[("route", "/no/such/path")]),
        0.0,
        "raw paths must not become labels"
    );
    let invented = [api, ("method", "other"), ("status", "405")];
    assert_eq!(
        front_delta(requests, &invented),
        1.0,
        "nor invented methods"
    );
    let latency = "kv_http_request_duration_seconds";
    let posted = [api, post, ("status", "200")];
    assert_eq!(front_delta(&format!("{latency}_count"), &posted), 10.0);
    let spent = front_delta(&format!("{latency}_sum"), &posted);
    assert!(spent > 0.0 && spent < 10.0 * 2.0, "{spent}");
    // Real buckets, not a summary: the slowest bucket holds every one of them.
    assert_eq!(
        front_delta(
            &format!("{latency}_bucket"),
            &[posted[0], post, posted[2], ("le", "+Inf")]
        ),
        10.0
    );
    assert!(
        front_after
            .text
            .contains(&format!("# TYPE {latency} histogram"))
    );
    let confirms = "kv_amqp_publish_confirms_total";
    assert_eq!(front_delta(confirms, &[("outcome", "ack")]), 10.0);
    assert_eq!(front_delta(confirms, &[("outcome", "nack")]), 0.0);
    // The only request in flight during a scrape is the scrape itself.
    assert_eq!(front_after.value("kv_http_requests_in_flight", &[]), 1.0);
    assert_eq!(front_delta("kv_reads_timed_out_total", &[]), 0.0);
    // How many requests each message carried: every write and read in some message.
    let per_message = "kv_requests_per_message";
    for (op, requests) in [("put", 10.0), ("get", 7.0)] {
        let op = [("op", op)];
        assert_eq!(front_delta(&format!("{per_message}_sum"), &op), requests);
        let messages = front_delta(&format!("{per_message}_count"), &op);
        assert!((1.0..=requests).contains(&messages), "{messages}");
    }

    // Assert, back: what it applied, in how many batches, and the rows it now holds.
    let back_delta = |name: &str, labels: &[(&str, &str)]| {
        back_after.value(name, labels) - back_before.value(name, labels)
    };
    let applied = "kv_messages_applied_total";
    assert_eq!(back_delta(applied, &[("kind", "put")]), 10.0);
    assert_eq!(back_delta(applied, &[("kind", "get")]), 7.0);
    let batches = back_delta("kv_batch_size_count", &[]);
    assert!((1.0..=17.0).contains(&batches), "{batches}");
    assert_eq!(back_delta("kv_batch_size_sum", &[]), 17.0);
    assert_eq!(back_delta("kv_commit_duration_seconds_count", &[]), batches);
    assert!(back_delta("kv_commit_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(back_delta("kv_rows", &[]), 7.0);
    assert_eq!(back_after.value("kv_rows", &[]), app.db_row_count() as f64);
    assert_eq!(back_delta("kv_messages_dead_lettered_total", &[]), 0.0);

    // A read the stopped back-server cannot answer times out, and is counted.
    back.signal("STOP");
    let timed_out = app.get_key("old").await.status();
    back.signal("CONT");
    assert_eq!(timed_out, 504);
    let front_last = Scrape::of(&app.client, &app.address).await;
    assert_eq!(
        front_last.value("kv_reads_timed_out_total", &[])
            - front_before.value("kv_reads_timed_out_total", &[]),
        1.0
    );
    drop(front);
}

#[tokio::test]
async fn the_back_server_counts_rows_at_start_and_both_count_reconnects() {
    let mut app = spawn_app_with(Options::no_servers()).await;
    let (mut back, _) = start_back(&app).await;
    back.wait_for_log("consuming").await;
    let _front = app.start_front_process(&[]).await;
    for n in 0..5 {
        app.put(&format!("k{n}"), f64::from(n)).await;
    }
    app.wait_for_db_value("k4", 4.0).await;
    back.signal("TERM");
    assert!(back.exit_within(PATIENCE).await.success());

    // A new back-server on the same database counts the rows it finds.
    let (back, admin) = start_back(&app).await;
    back.wait_for_log("consuming").await;
    let front_before = Scrape::of(&app.client, &app.address).await;
    let back_before = Scrape::of(&app.client, &admin).await;
    assert_eq!(back_before.value("kv_rows", &[]), 5.0);

    // RabbitMQ closes both links; each server opens a new one and counts it.
    assert_eq!(close_connections_of(&app.queue), 2);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let reconnects = "kv_amqp_reconnects_total";
    loop {
        let front_now = Scrape::of(&app.client, &app.address).await;
        let back_now = Scrape::of(&app.client, &admin).await;
        let front_rose = front_now.value(reconnects, &[("server", "front")])
            - front_before.value(reconnects, &[("server", "front")]);
        let back_rose = back_now.value(reconnects, &[("server", "back")])
            - back_before.value(reconnects, &[("server", "back")]);
        if front_rose == 1.0 && back_rose == 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reconnects rose by {front_rose} (front) and {back_rose} (back), not 1 and 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_back_server_is_ready_only_while_consuming_with_a_database_that_takes_writes() {
    let app = spawn_app_with(Options::front_only()).await;
    let (back, admin) = start_back(&app).await;

    let health = admin_get(&app, &admin, "/health").await;
    assert_eq!(health, (200, json!({ "status": "ok" })));
    let ready = wait_for_ready_status(&app, &admin, 200).await;
    assert_eq!(ready, json!({ "status": "ready" }));

    // The disk is full, as far as the back-server can tell: it retries, and is not ready.
    app.put("before", 1.0).await;
    app.wait_for_db_value("before", 1.0).await;
    set_file_size_limit(&back, "0");
    for n in 0..5 {
        app.put(&format!("while-full-{n}"), f64::from(n)).await;
    }
    let refused = wait_for_ready_status(&app, &admin, 503).await;
    assert_eq!(refused["status"], "not ready", "{refused}");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the database refuses writes"),
        "{reason}"
    );
    let health = admin_get(&app, &admin, "/health").await;
    assert_eq!(health.0, 200, "still alive");

    // The disk has room again: the retry goes through and the back-server is ready again.
    set_file_size_limit(&back, "unlimited");
    let ready = wait_for_ready_status(&app, &admin, 200).await;
    assert_eq!(ready, json!({ "status": "ready" }));
    app.wait_for_db_value("while-full-4", 4.0).await;
}

#[tokio::test]
async fn without_the_broker_the_back_server_is_healthy_but_not_ready() {
    let app = spawn_app_with(Options::no_servers()).await;
    // Nothing listens on port 1: the back-server keeps retrying in the background.
    let back = app
        .start_back_process(&[("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")])
        .await;
    let admin = format!("http://{}", back.wait_for_address("admin listening").await);
    back.wait_for_log("cannot connect to RabbitMQ").await;

    let health = admin_get(&app, &admin, "/health").await;
    let ready = admin_get(&app, &admin, "/ready").await;

    assert_eq!(health, (200, json!({ "status": "ok" })));
    assert_eq!(
        ready,
        (
            503,
            json!({ "status": "not ready", "reason": "no working connection to RabbitMQ" })
        )
    );
}
