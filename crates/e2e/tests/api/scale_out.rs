//! Partitions, standbys and lists of nodes, on the local RabbitMQ: every key lives in exactly
//! one partition's database, a partition whose back-server is away delays only its own keys, a
//! standby takes over from a killed back-server, servers refuse queues made for another layout,
//! and `back-server reshard` moves the rows to a new one. (A real cluster: `tests/cluster.rs`.)

use kv_e2e::app::{amqp_url, eventually, publish_raw_to};
use kv_e2e::queues::ready_messages;
use kv_e2e::system::{System, get, keys_in, post};
use kv_e2e::writers::{Load, Writers, assert_reads_saw_their_writes, audit_values};
use kv_protocol::{QueueType, partition_of};
use serde_json::json;
use std::time::{Duration, Instant};

const FAST_TIMEOUT: &[(&str, &str)] = &[("RPC_TIMEOUT_MS", "1000")];

#[tokio::test]
async fn with_four_partitions_every_key_lives_in_its_own_partitions_database_only() {
    let system = System::new(&amqp_url(), 4, QueueType::Quorum);
    let mut backs = Vec::new();
    for partition in 0..4 {
        backs.push(system.start_back(partition, &[]).await);
    }
    let fronts = [system.start_front(&[]).await, system.start_front(&[]).await];
    let client = reqwest::Client::new();
    for i in 0..80 {
        let key = format!("spread-{i}");
        let (writer, reader) = (&fronts[i % 2], &fronts[(i + 1) % 2]);
        let (status, body) = post(&client, &writer.address, &key, i as f64).await;
        assert_eq!(status, 200, "{body}");
        // Read-your-writes through the other front-server.
        let (status, body) = get(&client, &reader.address, &key).await;
        assert_eq!(
            (status, body),
            (200, json!({"success": true, "data": i as f64}))
        );
    }
    let all = system.all_values();
    assert_eq!(all.len(), 80);
    for partition in 0..4 {
        let held = system.db_values(partition).len();
        assert!(
            held > 5,
            "partition {partition} holds only {held} of 80 keys"
        );
    }
}

#[tokio::test]
async fn a_partition_without_its_back_server_delays_only_its_own_keys() {
    let system = System::new(&amqp_url(), 4, QueueType::Quorum);
    let mut backs = Vec::new();
    for partition in 0..4 {
        backs.push(system.start_back(partition, &[]).await);
    }
    let fronts = [
        system.start_front(FAST_TIMEOUT).await,
        system.start_front(FAST_TIMEOUT).await,
    ];
    let client = reqwest::Client::new();
    backs[2].stop(Duration::from_secs(10)).await.unwrap();

    let away = &keys_in("away-", 2, 4, 1)[0];
    let (status, body) = post(&client, &fronts[0].address, away, 1.5).await;
    assert_eq!(
        status, 200,
        "a write to the away partition waits in its queue: {body}"
    );
    let (status, body) = get(&client, &fronts[1].address, away).await;
    assert_eq!(status, 504, "{body}");

    for partition in [0, 1, 3] {
        let key = &keys_in("here-", partition, 4, 1)[0];
        for front in &fronts {
            let started = Instant::now();
            let (status, body) = post(&client, &front.address, key, 2.5).await;
            assert_eq!(status, 200, "{body}");
            let (status, body) = get(&client, &front.address, key).await;
            assert_eq!((status, body), (200, json!({"success": true, "data": 2.5})));
            assert!(
                started.elapsed() < Duration::from_millis(900),
                "partition {partition} was slowed down: {:?}",
                started.elapsed()
            );
        }
    }

    backs[2] = system.start_back(2, &[]).await;
    system.wait_for_db_value(away, 1.5).await;
    let (status, body) = get(&client, &fronts[1].address, away).await;
    assert_eq!((status, body), (200, json!({"success": true, "data": 1.5})));
}

#[tokio::test]
async fn a_standby_back_server_takes_over_when_the_active_one_is_killed_and_nothing_is_lost() {
    let system = System::new(&amqp_url(), 4, QueueType::Quorum);
    let mut active = system.start_back(0, &[]).await;
    // The same partition and database: RabbitMQ gives the queue to one consumer at a time.
    let _standby = system.start_back(0, &[]).await;
    let mut others = Vec::new();
    for partition in 1..4 {
        others.push(system.start_back(partition, &[]).await);
    }
    let fronts = [system.start_front(&[]).await, system.start_front(&[]).await];
    let writers = Writers::start_load(Load {
        prefix: "standby",
        fronts: fronts.iter().map(|front| front.address.clone()).collect(),
        clients: 4,
        keys: 10,
        writes: usize::MAX,
        read_back: true,
        partition: Some((0, 4)),
    });
    writers.wait_for_acked(200).await;
    active.kill().await;
    let killed = Instant::now();
    let acked = writers.acked();
    writers.wait_for_acked(acked + 300).await;
    let attempts = writers.stop().await;
    // Writes acknowledged after the kill are in SQLite, and reads after it were answered: only
    // the standby can have done either.
    let acked = audit_values(|| system.all_values(), &attempts).await;
    let reads = assert_reads_saw_their_writes(&attempts);
    let answered_after_kill = attempts
        .iter()
        .filter_map(|attempt| attempt.read_back.as_ref())
        .filter(|read| read.outcome == Ok(200) && read.finished > killed)
        .count();
    assert!(
        acked >= 500 && reads >= 400,
        "{acked} writes, {reads} reads"
    );
    assert!(
        answered_after_kill >= 100,
        "only {answered_after_kill} reads answered after the kill"
    );
    assert!(
        attempts
            .iter()
            .all(|attempt| partition_of(&attempt.key, 2) == 0),
        "the load stays in partition 0"
    );
}

#[tokio::test]
async fn servers_refuse_queues_made_for_another_number_of_partitions() {
    let system = System::new(&amqp_url(), 4, QueueType::Quorum);
    let _back = system.start_back(0, &[]).await;
    let unused_db = system.db_path(3);
    for binary in ["front-server", "back-server"] {
        let settings = [
            ("KV_PARTITIONS", "2"),
            ("DB_PATH", unused_db.to_str().unwrap()),
        ];
        let mut server = system.start_process(binary, &settings).await;
        let status = server.exit_within(Duration::from_secs(15)).await;
        assert!(!status.success(), "{binary} exited with {status}");
        let log = server.log();
        assert!(
            log.contains("were created for 4 partition(s), but KV_PARTITIONS is 2"),
            "{binary}: {log}"
        );
    }
}

#[tokio::test]
async fn a_queue_of_the_other_type_stops_the_server_and_says_what_to_do() {
    let system = System::new(&amqp_url(), 1, QueueType::Quorum);
    let _back = system.start_back(0, &[]).await;
    let mut front = system
        .start_process("front-server", &[("KV_QUEUE_TYPE", "classic")])
        .await;
    let status = front.exit_within(Duration::from_secs(15)).await;
    assert!(!status.success(), "exited with {status}");
    let log = front.log();
    for needle in [
        "KV_QUEUE_TYPE=classic",
        "inequivalent arg 'x-queue-type'",
        "Set KV_QUEUE_TYPE to the type the queue has",
    ] {
        assert!(log.contains(needle), "no {needle:?} in: {log}");
    }
    assert_eq!(
        log.matches("cannot connect").count(),
        0,
        "no reconnect loop: {log}"
    );
}

#[tokio::test]
async fn reshard_moves_every_row_to_its_new_partition_and_replaces_the_queues() {
    let mut system = System::new(&amqp_url(), 1, QueueType::Quorum);
    let mut back = system.start_back(0, &[]).await;
    let mut front = system.start_front(&[]).await;
    let client = reqwest::Client::new();
    for i in 0..60 {
        let (status, body) = post(&client, &front.address, &format!("move-{i}"), i as f64).await;
        assert_eq!(status, 200, "{body}");
    }
    // A write that waits in the queue stops the reshard, which says why.
    back.stop(Duration::from_secs(10)).await.unwrap();
    let (status, body) = post(&client, &front.address, "move-late", 60.0).await;
    assert_eq!(status, 200, "{body}");
    front.process.stop(Duration::from_secs(10)).await.unwrap();
    let refused = system.reshard(3).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("message(s) wait in queue"), "{stderr}");

    let mut back = system.start_back(0, &[]).await;
    system.wait_for_db_value("move-late", 60.0).await;
    back.stop(Duration::from_secs(10)).await.unwrap();
    let old_queue = system.layout.base().to_owned();
    // As an operator would: the queue shows no message (a quorum queue counts acks a moment late).
    eventually("the queue is drained", || async {
        match ready_messages(&system.amqp_url, &old_queue).await {
            Ok(0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let done = system.reshard(3).await;
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(stdout.contains("from 1 to 3 partition(s)"), "{stdout}");

    let values = system.all_values();
    assert_eq!(
        values.len(),
        61,
        "every row moved, each to its own partition"
    );
    assert!(
        ready_messages(&system.amqp_url, &old_queue).await.is_err(),
        "the old queue is gone"
    );
    let mut backs = Vec::new();
    for partition in 0..3 {
        backs.push(system.start_back(partition, &[]).await);
    }
    let front = system.start_front(&[]).await;
    for i in 0..60 {
        let (status, body) = get(&client, &front.address, &format!("move-{i}")).await;
        assert_eq!(
            (status, body),
            (200, json!({"success": true, "data": i as f64}))
        );
    }
}

#[tokio::test]
async fn a_server_moves_on_to_the_next_node_when_one_does_not_answer() {
    let mut system = System::new(&amqp_url(), 1, QueueType::Quorum);
    // Port 1 refuses at once; whichever node a server tries first, it ends up on the real one.
    let nowhere = "amqp://guest:guest@127.0.0.1:1/%2f";
    system.amqp_url = format!("{nowhere},{},{nowhere}", amqp_url());
    let _back = system.start_back(0, &[]).await;
    let front = system.start_front(&[]).await;
    let client = reqwest::Client::new();
    let (status, body) = post(&client, &front.address, "anywhere", 7.0).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&client, &front.address, "anywhere").await;
    assert_eq!((status, body), (200, json!({"success": true, "data": 7.0})));
}

#[tokio::test]
async fn each_partition_dead_letters_into_its_own_queue_and_refuses_keys_of_another() {
    let system = System::new(&amqp_url(), 2, QueueType::Quorum);
    let _backs = [
        system.start_back(0, &[]).await,
        system.start_back(1, &[]).await,
    ];
    let connection =
        lapin::Connection::connect(&system.amqp_url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let stranger = &keys_in("stranger-", 0, 2, 1)[0];
    let misrouted = json!({"op": "put", "key": stranger, "value": 1.0}).to_string();
    // Into partition 1's queue: one message that is no request, one with a key of partition 0.
    for body in [&b"not json"[..], misrouted.as_bytes()] {
        publish_raw_to(&channel, &system.layout.queue(1), body).await;
    }
    let dead = kv_protocol::dead_letter_queue(&system.layout.queue(1));
    let mut reasons = Vec::new();
    let started = Instant::now();
    while reasons.len() < 2 {
        assert!(started.elapsed() < kv_e2e::PATIENCE, "only {reasons:?}");
        let got = channel
            .basic_get(
                dead.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        match got {
            Some(message) => {
                let headers = message.delivery.properties.headers().clone().unwrap();
                match headers.inner().get(kv_protocol::DEAD_REASON_HEADER) {
                    Some(lapin::types::AMQPValue::LongString(reason)) => {
                        reasons.push(reason.to_string())
                    }
                    other => panic!("no reason: {other:?}"),
                }
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(reasons[0].contains("unparseable"), "{reasons:?}");
    assert!(
        reasons[1].contains(&format!("key '{stranger}' belongs to partition 0, not 1")),
        "{reasons:?}"
    );
    let dead_of_0 = kv_protocol::dead_letter_queue(&system.layout.queue(0));
    assert_eq!(
        ready_messages(&system.amqp_url, &dead_of_0).await.unwrap(),
        0
    );
    assert!(
        system.all_values().is_empty(),
        "no database took the stranger"
    );
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn the_back_servers_of_a_new_layout_may_all_start_at_once() {
    // Each starts beside others still declaring the queues: none may take a half-declared
    // layout for one made with fewer partitions.
    for _ in 0..5 {
        let system = System::new(&amqp_url(), 4, QueueType::Quorum);
        let mut backs = Vec::new();
        for partition in 0..4 {
            let partition = partition.to_string();
            let db_path = system.db_path(partition.parse().unwrap());
            let settings = [
                ("KV_PARTITION", partition.as_str()),
                ("DB_PATH", db_path.to_str().unwrap()),
            ];
            backs.push(system.start_process("back-server", &settings).await);
        }
        for back in &backs {
            back.wait_for_log("consuming").await;
        }
    }
}
