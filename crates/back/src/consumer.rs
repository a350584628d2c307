//! The consume loop for one AMQP connection: deliveries in queue order become store batches, then
//! replies, then acks. The order of those three steps is the back-server's durability contract:
//! nothing is acked before the transaction that applied it has committed.

use crate::store::{Outcome, Store, StoreError};
use futures_util::StreamExt;
use kv_protocol::{DEAD_REASON_HEADER, Reply, Request, dead_letter_queue, declare_topology};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const CONSUMER_TAG: &str = "back-server";
const FIRST_STORE_RETRY: Duration = Duration::from_millis(50);
const MAX_STORE_RETRY: Duration = Duration::from_secs(5);

/// Consumes `queue` on `connection` until shutdown (`Ok`, once the message in hand is done) or
/// until the connection or channel fails (`Err`, and the caller reconnects, unless the error is a
/// [`StoreError`], which is fatal). Messages received but not yet acked when either happens are
/// redelivered by RabbitMQ.
pub async fn consume(
    connection: &Connection,
    store: &Store,
    queue: &str,
    prefetch: u16,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    declare_topology(&channel, queue).await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    // Dead-lettering needs its own confirm-mode channel: replies go out on `channel` without
    // confirms, and lapin keeps every unawaited confirm until someone waits for it.
    let dead_channel = connection.create_channel().await?;
    dead_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            CONSUMER_TAG.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue, prefetch, "consuming");

    let worker = Worker {
        channel: &channel,
        dead_channel: &dead_channel,
        store,
        queue,
        shutdown,
    };
    loop {
        let delivery = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = deliveries.next() => match next {
                Some(delivery) => delivery?,
                None => anyhow::bail!("RabbitMQ cancelled the consumer"),
            },
        };
        if worker.handle(delivery).await? == Handled::Interrupted {
            break;
        }
    }
    channel
        .basic_cancel(CONSUMER_TAG.into(), BasicCancelOptions::default())
        .await?;
    // Closed here rather than on drop, so that closing the connection does not race them.
    dead_channel
        .close(200, "back-server shutting down".into())
        .await?;
    channel
        .close(200, "back-server shutting down".into())
        .await?;
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Handled {
    Acked,
    /// Shutdown came while the store was failing; the message stays unacked for redelivery.
    Interrupted,
}

struct Worker<'a> {
    channel: &'a Channel,
    dead_channel: &'a Channel,
    store: &'a Store,
    queue: &'a str,
    shutdown: &'a CancellationToken,
}

impl Worker<'_> {
    async fn handle(&self, delivery: Delivery) -> anyhow::Result<Handled> {
        let request = match Request::from_slice(&delivery.data) {
            Ok(request) => request,
            Err(err) => {
                let reason = format!("unparseable request: {err}");
                tracing::warn!(delivery_tag = delivery.delivery_tag, %reason, "dead-lettering a message");
                self.dead_letter(&delivery, &reason).await?;
                delivery.ack(BasicAckOptions::default()).await?;
                return Ok(Handled::Acked);
            }
        };
        let Some(outcomes) = self.apply(vec![request]).await? else {
            return Ok(Handled::Interrupted);
        };
        if let [Outcome::Value(value)] = outcomes[..] {
            let reply = match value {
                Some(value) => Reply::Found { value },
                None => Reply::NotFound,
            };
            self.reply(&delivery.properties, &reply).await?;
        }
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(Handled::Acked)
    }

    /// Applies a batch, retrying while the database refuses (disk full, file made read-only…):
    /// the messages stay unacked in the meantime, so nothing is lost and order is kept.
    /// `None` if shutdown interrupted the retries; an error only if the store thread is gone.
    async fn apply(&self, requests: Vec<Request>) -> Result<Option<Vec<Outcome>>, StoreError> {
        let mut delay = FIRST_STORE_RETRY;
        let mut failing = false;
        loop {
            match self.store.apply(requests.clone()).await {
                Ok(outcomes) => {
                    if failing {
                        tracing::info!("the database accepts writes again");
                    }
                    return Ok(Some(outcomes));
                }
                Err(err @ StoreError::Stopped) => return Err(err),
                Err(err) => {
                    tracing::error!(%err, retry_in = ?delay, "cannot apply requests; they stay queued");
                    failing = true;
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_STORE_RETRY);
        }
    }

    async fn reply(&self, request: &BasicProperties, reply: &Reply) -> anyhow::Result<()> {
        let Some(reply_to) = request.reply_to() else {
            tracing::warn!("a read without reply_to; nobody to answer");
            return Ok(());
        };
        let mut properties =
            BasicProperties::default().with_content_type("application/json".into());
        if let Some(id) = request.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        // Not `mandatory`: RabbitMQ 3.10 both delivers and returns direct reply-to messages
        // published that way.
        self.channel
            .basic_publish(
                "".into(),
                reply_to.clone(),
                BasicPublishOptions::default(),
                &reply.to_vec(),
                properties,
            )
            .await?;
        Ok(())
    }

    /// Moves a message the back-server cannot process to `<queue>.dead`, with the reason in a
    /// header, and returns only once RabbitMQ has confirmed the copy.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> anyhow::Result<()> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            DEAD_REASON_HEADER.into(),
            AMQPValue::LongString(reason.into()),
        );
        let properties = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        let confirmation = self
            .dead_channel
            .basic_publish(
                "".into(),
                dead_letter_queue(self.queue).into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
            .await?
            .await?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            other => anyhow::bail!("RabbitMQ did not take the dead-lettered copy: {other:?}"),
        }
    }
}
