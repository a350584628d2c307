//! The limits probe: what this machine's RabbitMQ can do on its own, with no HTTP and no SQLite,
//! measured the way our servers use it. The benchmark reports the system's rates as fractions of
//! these, so a figure means the same on a fast machine and on a slow or busy one.
//!
//! Both probes declare their queue with the type the system under test uses (classic or quorum),
//! since a quorum queue's Raft log costs the broker far more per message than a classic queue.
//!
//! - **Durable writes**: persistent messages to a durable queue, publisher confirms pipelined
//!   (a window of unconfirmed messages, as many concurrent POSTs make), consumed by one consumer
//!   with a prefetch window and `multiple` acks. The rate is messages consumed per second.
//! - **Request/reply**: requests to a durable queue, answered by a responder through direct
//!   reply-to, with a fixed number of round trips in flight, as concurrent GETs make.

use anyhow::Context;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use kv_protocol::QueueType;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Unconfirmed publishes allowed at once in the durable-write probe.
const CONFIRM_WINDOW: usize = 4096;
const CONSUMER_PREFETCH: u16 = 500;
/// A body the size of a typical write request.
const BODY: &[u8] = br#"{"op":"put","key":"probe-key-0000001","value":12345.678}"#;

/// The broker's limits on this machine, as measured by [`measure`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Persistent messages published with confirms and consumed with acks, per second.
    pub durable_writes_per_sec: f64,
    /// Request/reply round trips per second, with `in_flight` outstanding.
    pub round_trips_per_sec: f64,
    pub in_flight: usize,
    pub round_trip_p50: Duration,
    pub round_trip_p99: Duration,
}

/// Runs both probes, each for `duration`, on queues of `queue_type` of its own that it deletes
/// afterwards. `amqp_url` may be a cluster's comma-separated node list, as the servers take it:
/// the probe connects to the first node, where its queues' leaders then live.
pub async fn measure(
    amqp_url: &str,
    duration: Duration,
    in_flight: usize,
    queue_type: QueueType,
) -> anyhow::Result<Limits> {
    let amqp_url = first_node(amqp_url);
    let durable_writes_per_sec = durable_writes(amqp_url, duration, queue_type).await?;
    let (round_trips_per_sec, round_trip_p50, round_trip_p99) =
        request_reply(amqp_url, duration, in_flight, queue_type).await?;
    Ok(Limits {
        durable_writes_per_sec,
        round_trips_per_sec,
        in_flight,
        round_trip_p50,
        round_trip_p99,
    })
}

/// The first URL of a comma-separated node list (the whole of a single URL).
pub fn first_node(amqp_url: &str) -> &str {
    amqp_url.split(',').next().unwrap_or(amqp_url).trim()
}

async fn connect(amqp_url: &str, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(amqp_url, properties)
        .await
        .with_context(|| format!("connect to RabbitMQ for the {name}"))
}

fn probe_queue(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("kv.probe.{kind}.{}.{nanos}", std::process::id())
}

async fn declare_durable(
    channel: &Channel,
    queue: &str,
    queue_type: QueueType,
) -> anyhow::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.as_str().into()),
    );
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await?;
    Ok(())
}

async fn durable_writes(
    amqp_url: &str,
    duration: Duration,
    queue_type: QueueType,
) -> anyhow::Result<f64> {
    let queue = probe_queue("writes");
    let publisher = connect(amqp_url, "limits-probe publisher").await?;
    let consumer = connect(amqp_url, "limits-probe consumer").await?;
    let publish_channel = publisher.create_channel().await?;
    declare_durable(&publish_channel, &queue, queue_type).await?;
    publish_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consume_channel = consumer.create_channel().await?;
    consume_channel
        .basic_qos(CONSUMER_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut deliveries = consume_channel
        .basic_consume(
            queue.as_str().into(),
            "limits-probe".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // Both halves run in this one task (`try_join!`), so a plain cell tells the publisher to stop.
    let stop = std::cell::Cell::new(false);
    let publishing = async {
        let persistent = BasicProperties::default().with_delivery_mode(2);
        let target: ShortString = queue.as_str().into();
        let mut confirms = FuturesUnordered::new();
        while !stop.get() {
            while confirms.len() < CONFIRM_WINDOW {
                let confirm = publish_channel
                    .basic_publish(
                        "".into(),
                        target.clone(),
                        BasicPublishOptions::default(),
                        BODY,
                        persistent.clone(),
                    )
                    .await?;
                confirms.push(confirm);
            }
            if let Some(confirm) = confirms.next().await {
                anyhow::ensure!(confirm?.is_ack(), "RabbitMQ nacked a probe message");
            }
        }
        while let Some(confirm) = confirms.next().await {
            confirm?;
        }
        anyhow::Ok(())
    };
    // Counts what the consumer gets within `duration`: the rate at which messages go all the way
    // through, whichever side is slower.
    let consuming = async {
        let deadline = tokio::time::Instant::now() + duration;
        let mut consumed = 0u64;
        while let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, deliveries.next()).await {
            let mut delivery = delivery?;
            consumed += 1;
            while let Some(Some(next)) = deliveries.next().now_or_never() {
                delivery = next?;
                consumed += 1;
            }
            delivery.ack(BasicAckOptions { multiple: true }).await?;
        }
        stop.set(true);
        anyhow::Ok(consumed)
    };
    let ((), consumed) = tokio::try_join!(publishing, consuming)?;

    publish_channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = consumer.close(200, "probe done".into()).await;
    let _ = publisher.close(200, "probe done".into()).await;
    Ok(consumed as f64 / duration.as_secs_f64())
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

async fn request_reply(
    amqp_url: &str,
    duration: Duration,
    in_flight: usize,
    queue_type: QueueType,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let queue = probe_queue("rpc");
    let responder = connect(amqp_url, "limits-probe responder").await?;
    let requester = connect(amqp_url, "limits-probe requester").await?;
    let respond_channel = responder.create_channel().await?;
    declare_durable(&respond_channel, &queue, queue_type).await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut requests = respond_channel
        .basic_consume(
            queue.as_str().into(),
            "limits-probe responder".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    let request_channel = requester.create_channel().await?;
    let mut replies = request_channel
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "limits-probe requester".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;

    let responding = tokio::spawn({
        let channel = respond_channel.clone();
        async move {
            while let Some(Ok(request)) = requests.next().await {
                let (Some(reply_to), Some(id)) = (
                    request.properties.reply_to().clone(),
                    request.properties.correlation_id().clone(),
                ) else {
                    continue;
                };
                let properties = BasicProperties::default().with_correlation_id(id);
                let published = channel
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        br#"{"status":"found","value":1.5}"#,
                        properties,
                    )
                    .await;
                if published.is_err() {
                    break;
                }
            }
        }
    });
    let waiting = Waiting::default();
    let routing = tokio::spawn({
        let waiting = waiting.clone();
        async move {
            while let Some(Ok(reply)) = replies.next().await {
                let id = reply.properties.correlation_id().as_ref();
                let id = id.and_then(|id| id.as_str().parse::<u64>().ok());
                let sender = id.and_then(|id| waiting.lock().unwrap().remove(&id));
                if let Some(sender) = sender {
                    let _ = sender.send(());
                }
            }
        }
    });

    let deadline = Instant::now() + duration;
    let next_id = std::sync::atomic::AtomicU64::new(0);
    let target: ShortString = queue.as_str().into();
    let callers = (0..in_flight).map(|_| async {
        let mut latencies = Vec::new();
        while Instant::now() < deadline {
            let id = next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (sender, reply) = oneshot::channel();
            waiting.lock().unwrap().insert(id, sender);
            let properties = BasicProperties::default()
                .with_correlation_id(id.to_string().into())
                .with_reply_to("amq.rabbitmq.reply-to".into());
            let started = Instant::now();
            request_channel
                .basic_publish(
                    "".into(),
                    target.clone(),
                    BasicPublishOptions::default(),
                    br#"{"op":"get","key":"probe-key-0000001"}"#,
                    properties,
                )
                .await?;
            tokio::time::timeout(Duration::from_secs(5), reply)
                .await
                .context("a probe reply within 5 s")?
                .context("the reply router stopped")?;
            latencies.push(started.elapsed());
        }
        anyhow::Ok(latencies)
    });
    let mut latencies: Vec<Duration> = futures_util::future::try_join_all(callers)
        .await?
        .into_iter()
        .flatten()
        .collect();

    respond_channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = requester.close(200, "probe done".into()).await;
    let _ = responder.close(200, "probe done".into()).await;
    routing.abort();
    responding.abort();

    latencies.sort_unstable();
    let rate = latencies.len() as f64 / duration.as_secs_f64();
    Ok((
        rate,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
    ))
}

/// The `p`th percentile of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
