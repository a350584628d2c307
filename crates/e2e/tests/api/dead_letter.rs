//! Guarantee 6 of docs/CONTRACT.md: a message the back-server cannot parse is kept in `<KV_QUEUE>.dead`
//! with the reason, and the queue goes on.

use kv_e2e::app::{json, spawn_app, take_messages};
use lapin::types::AMQPValue;

#[tokio::test]
async fn a_malformed_message_is_dead_lettered_and_the_next_write_is_applied() {
    let app = spawn_app().await;
    let (connection, channel) = app.publisher().await;
    for body in [
        &b"not json at all"[..],
        br#"{"op":"put","key":"","value":1}"#,
    ] {
        app.publish_raw(&channel, body).await;
    }

    app.put("after", 5.0).await;
    app.wait_for_db_value("after", 5.0).await;

    let dead = kv_protocol::dead_letter_queue(&app.queue);
    let kept = take_messages(&channel, &dead, 2).await;
    assert_eq!(kept[0].data, b"not json at all");
    assert_eq!(kept[1].data, br#"{"op":"put","key":"","value":1}"#);
    let headers = kept[0].properties.headers().clone().expect("headers");
    let reason = headers
        .inner()
        .get(kv_protocol::DEAD_REASON_HEADER)
        .expect("a reason");
    assert!(
        matches!(reason, AMQPValue::LongString(text) if text.to_string().contains("unparseable"))
    );
    assert_eq!(app.messages_in(&app.queue).await, 0);
    let (status, _) = json(app.get_key("after").await).await;
    assert_eq!(status, 200);
    let _ = connection.close(200, "done".into()).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_dead_letter_loses_its_expiration_and_stays_until_someone_takes_it() {
    // Arrange: an unparseable read-like message, which would carry the read deadline.
    let app = spawn_app().await;
    let (connection, channel) = app.publisher().await;
    let confirm = channel
        .basic_publish(
            "".into(),
            app.queue.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            b"{\"op\":\"get\"}",
            lapin::BasicProperties::default()
                .with_message_id("expiring".into())
                .with_expiration("60000".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());

    // Act: the back-server dead-letters it.
    let dead = kv_protocol::dead_letter_queue(&app.queue);
    let kept = take_messages(&channel, &dead, 1).await.remove(0);

    // Assert: a dead letter waits for a person, not for the read's deadline.
    assert_eq!(kept.properties.expiration(), &None);
    assert_eq!(
        kept.properties.message_id().as_ref().map(|id| id.as_str()),
        Some("expiring")
    );
    let _ = connection.close(200, "done".into()).await;
    app.shutdown().await;
}
