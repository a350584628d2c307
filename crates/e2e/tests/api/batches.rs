//! Protocol version 2: requests that arrive together travel together, each still answered on
//! its own; the back-server also reads version 1 (one request per message), so that a rolling
//! upgrade can replace the back-servers first and the front-servers after them; and a batch that
//! cannot be read whole is dead-lettered whole.

use futures_util::StreamExt;
use kv_e2e::app::{
    Options, PATIENCE, TestApp, json, publish_persistent_to, spawn_app, spawn_app_with,
    take_messages,
};
use kv_protocol::{BATCH_TYPE, DEAD_REASON_HEADER, DIRECT_REPLY_TO, Format, Reply};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Consumer};

/// The properties every request message has, with the AMQP `type` `kind` if given (a version 1
/// message has none).
fn properties_of(kind: Option<&str>) -> BasicProperties {
    let properties = BasicProperties::default().with_content_type("application/json".into());
    match kind {
        Some(kind) => properties.with_type(kind.into()),
        None => properties,
    }
}

/// Publishes `body` on the request queue with the AMQP `type` `kind`, persistent and confirmed,
/// as a front-server of that protocol version would publish a write.
async fn publish_write(app: &TestApp, channel: &Channel, kind: Option<&str>, body: &[u8]) {
    publish_persistent_to(channel, &app.queue, properties_of(kind), body).await
}

/// A channel that sends reads and takes their replies through direct reply-to, as a
/// front-server does.
async fn reader(app: &TestApp) -> (lapin::Connection, Channel, Consumer) {
    let (connection, channel) = app.broker().await;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let replies = channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "test-replies".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .unwrap();
    (connection, channel, replies)
}

/// Sends a message of reads of the given protocol version and returns the reply's `type` and
/// body.
async fn ask(
    app: &TestApp,
    channel: &Channel,
    replies: &mut Consumer,
    kind: Option<&str>,
    body: &[u8],
) -> (Option<ShortString>, Vec<u8>) {
    let properties = properties_of(kind)
        .with_correlation_id("42".into())
        .with_reply_to(DIRECT_REPLY_TO.into());
    channel
        .basic_publish(
            "".into(),
            app.queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap();
    let reply = tokio::time::timeout(PATIENCE, replies.next())
        .await
        .expect("a reply in time")
        .expect("the reply consumer runs")
        .unwrap();
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some("42")
    );
    (reply.properties.kind().clone(), reply.data)
}

#[tokio::test]
async fn a_back_server_reads_version_1_messages_beside_batches_so_fronts_upgrade_after_it() {
    // Mid-upgrade: the back-server and one front-server are new; an old front-server (this test)
    // still sends one request per message, without a type.
    let app = spawn_app().await;
    let (connection, channel) = app.publisher().await;

    publish_write(&app, &channel, None, br#"{"op":"put","key":"k","value":1}"#).await;
    app.put("k", 2.0).await;
    publish_write(&app, &channel, None, br#"{"op":"put","key":"k","value":3}"#).await;

    // The old front's read gets a version 1 reply, after every write published before it.
    let (_reads, read_channel, mut replies) = reader(&app).await;
    let (kind, body) = ask(
        &app,
        &read_channel,
        &mut replies,
        None,
        br#"{"op":"get","key":"k"}"#,
    )
    .await;
    assert_eq!(kind, None);
    assert_eq!(
        Reply::from_slice(&body).unwrap(),
        Reply::Found { value: 3.0 }
    );
    // A new front's read of the same key sees the same.
    let (status, body) = json(app.get_key("k").await).await;
    assert_eq!((status, body["data"].as_f64()), (200, Some(3.0)));

    // A batch of reads gets one reply with an answer per read, in order, as a batch.
    let (kind, body) = ask(
        &app,
        &read_channel,
        &mut replies,
        Some(BATCH_TYPE),
        br#"[{"op":"get","key":"k"},{"op":"get","key":"nobody"}]"#,
    )
    .await;
    assert_eq!(kind.as_ref().map(|kind| kind.as_str()), Some(BATCH_TYPE));
    assert_eq!(
        Format::Batch.replies(&body).unwrap(),
        [Reply::Found { value: 3.0 }, Reply::NotFound]
    );

    // A batch of writes is applied in its order: the last write of a key wins.
    publish_write(
        &app,
        &channel,
        Some(BATCH_TYPE),
        br#"[{"op":"put","key":"k","value":4},{"op":"put","key":"j","value":1},{"op":"put","key":"k","value":5}]"#,
    )
    .await;
    app.wait_for_db_value("j", 1.0).await;
    assert_eq!(app.db_value("k"), Some(5.0));
    assert_eq!(app.messages_in(&app.queue).await, 0);
    let _ = connection.close(200, "done".into()).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_batch_that_cannot_be_read_whole_is_dead_lettered_whole() {
    let app = spawn_app().await;
    let (connection, channel) = app.publisher().await;
    let one_bad_entry = br#"[{"op":"put","key":"fine","value":1},{"op":"put","key":"","value":2}]"#;
    let future_version = br#"[{"op":"put","key":"fine","value":3}]"#;
    publish_write(&app, &channel, Some(BATCH_TYPE), one_bad_entry).await;
    publish_write(&app, &channel, Some("kv.batch.v9"), future_version).await;
    app.put("after", 5.0).await;
    app.wait_for_db_value("after", 5.0).await;

    let dead = kv_protocol::dead_letter_queue(&app.queue);
    let kept = take_messages(&channel, &dead, 2).await;
    let reason = |delivery: &lapin::message::Delivery| {
        let headers = delivery.properties.headers().clone().expect("headers");
        match headers.inner().get(DEAD_REASON_HEADER) {
            Some(AMQPValue::LongString(reason)) => reason.to_string(),
            other => panic!("no reason: {other:?}"),
        }
    };
    // Kept whole, as sent, with its type, so that it can be looked at and sent again.
    assert_eq!(kept[0].data, one_bad_entry);
    assert_eq!(
        kept[0].properties.kind().as_ref().map(|kind| kind.as_str()),
        Some(BATCH_TYPE)
    );
    assert!(
        reason(&kept[0]).contains("key is empty"),
        "{}",
        reason(&kept[0])
    );
    assert_eq!(kept[1].data, future_version);
    assert!(
        reason(&kept[1]).contains("unknown message type 'kv.batch.v9'"),
        "{}",
        reason(&kept[1])
    );
    // Nothing of either was applied: not even the valid entry beside the bad one.
    assert_eq!(app.db_value("fine"), None);
    let _ = connection.close(200, "done".into()).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_arrive_together_share_messages_and_each_gets_its_own_answer() {
    // No back-server yet: what the front-server publishes stays in the queue to be counted.
    let mut app = spawn_app_with(Options::front_only()).await;
    const CLIENTS: usize = 64;
    const WRITES: usize = 4;
    let writes: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (client_http, address) = (app.client.clone(), app.address.clone());
            tokio::spawn(async move {
                for n in 0..WRITES {
                    let body = format!(r#"{{"c{client}-{n}": {n}}}"#);
                    let response = client_http
                        .post(format!("{address}/api"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();
    for write in writes {
        write.await.unwrap();
    }
    let messages = app.messages_in(&app.queue).await as usize;
    assert!(
        messages < CLIENTS * WRITES,
        "{} acknowledged writes in {messages} messages: none shared one",
        CLIENTS * WRITES
    );

    // Reads likewise, each with its own answer, once a back-server serves them.
    let reads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (client_http, address) = (app.client.clone(), app.address.clone());
            tokio::spawn(async move {
                let url = format!("{address}/api?key=c{client}-3");
                json(client_http.get(url).send().await.unwrap()).await
            })
        })
        .collect();
    let written = CLIENTS * WRITES;
    kv_e2e::app::eventually("the reads are queued", || async {
        match app.messages_in(&app.queue).await as usize {
            held if held > messages => Ok(held),
            held => Err(format!("{held} messages")),
        }
    })
    .await;
    app.start_back().await;
    for (client, read) in reads.into_iter().enumerate() {
        let (status, body) = read.await.unwrap();
        assert_eq!(
            (status, body["data"].as_f64()),
            (200, Some(3.0)),
            "c{client}"
        );
    }
    for client in 0..CLIENTS {
        for n in 0..WRITES {
            assert_eq!(app.db_value(&format!("c{client}-{n}")), Some(n as f64));
        }
    }
    assert_eq!(app.db_row_count() as usize, written);
    app.shutdown().await;
}
