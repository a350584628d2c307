//! A reply that arrives after its read's deadline is dropped quietly: it is never handed to a
//! later read, and the front-server goes on serving.

use futures_util::StreamExt;
use kv_e2e::app::{Options, json, spawn_app_with};
use kv_protocol::{Format, Reply, Request};
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use tokio::sync::oneshot;

#[tokio::test]
async fn a_reply_after_the_deadline_is_not_taken_for_a_later_read() {
    // A stand-in back-server on the real queue, slow on purpose for the first read.
    let options = Options {
        front_env: &[("RPC_TIMEOUT_MS", "300")],
        ..Options::front_only()
    };
    let app = spawn_app_with(options).await;
    let (connection, channel) = app.broker().await;
    let mut requests = channel
        .basic_consume(
            app.queue.as_str().into(),
            "slow-responder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (first_timed_out, timed_out) = oneshot::channel::<()>();
    let responder = tokio::spawn(async move {
        let mut timed_out = Some(timed_out);
        for value in [1.0, 2.0] {
            let delivery = requests
                .next()
                .await
                .expect("a request")
                .expect("a delivery");
            let format = Format::of(delivery.properties.kind().as_ref()).unwrap();
            assert!(matches!(
                format.requests(&delivery.data).as_deref(),
                Ok([Request::Get { .. }])
            ));
            if let Some(timed_out) = timed_out.take() {
                timed_out.await.unwrap();
            }
            let mut properties = BasicProperties::default()
                .with_correlation_id(delivery.properties.correlation_id().clone().unwrap());
            if let Some(kind) = format.message_type() {
                properties = properties.with_type(kind.into());
            }
            let reply_to = delivery.properties.reply_to().clone().unwrap();
            let reply = format.reply_body(&[Reply::Found { value }]);
            channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &reply,
                    properties,
                )
                .await
                .unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    });

    let (status, _) = json(app.get_key("k").await).await;
    assert_eq!(status, 504);
    first_timed_out.send(()).unwrap();

    // The late reply (1.0) reaches the front-server before this read's own (2.0).
    let (status, body) = json(app.get_key("k").await).await;
    assert_eq!((status, body["data"].as_f64()), (200, Some(2.0)));
    responder.await.unwrap();
    let _ = connection.close(200, "done".into()).await;
    app.shutdown().await;
}
