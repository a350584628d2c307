//! The consume loop for one AMQP connection: deliveries in queue order become store batches, then
//! replies, then acks. The order of those three steps is the back-server's durability contract:
//! nothing is acked before the transaction that applied it has committed.
//!
//! Group commit: each turn takes the first delivery as soon as it arrives, plus every delivery
//! RabbitMQ has already handed over (up to the batch size), and applies them all in one
//! transaction. It never waits to fill a batch, so a lone request is served at once, and under
//! load one `fsync` and one `multiple` ack serve a whole batch.

use crate::config::Config;
use crate::store::{Outcome, Store, StoreError};
use futures_util::future::try_join_all;
use futures_util::{FutureExt, StreamExt};
use kv_protocol::{DEAD_REASON_HEADER, Reply, Request, dead_letter_queue, declare_topology};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const CONSUMER_TAG: &str = "back-server";
const FIRST_STORE_RETRY: Duration = Duration::from_millis(50);
const MAX_STORE_RETRY: Duration = Duration::from_secs(5);

/// Consumes the request queue on `connection` until shutdown (`Ok`, once the batch in hand is
/// done) or until the connection or channel fails (`Err`, and the caller reconnects, unless the
/// error is a [`StoreError`], which is fatal). Messages received but not yet acked when either
/// happens are redelivered by RabbitMQ.
pub async fn consume(
    connection: &Connection,
    store: &Store,
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let queue = config.amqp.queue.as_str();
    let channel = connection.create_channel().await?;
    declare_topology(&channel, queue).await?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
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
    let batch_size = usize::from(config.batch_size);
    tracing::info!(queue, prefetch = config.prefetch, batch_size, "consuming");

    let worker = Worker {
        channel: &channel,
        dead_channel: &dead_channel,
        store,
        queue,
        shutdown,
    };
    let mut batch = Vec::with_capacity(batch_size);
    let mut cancelled = false;
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = deliveries.next() => next,
        };
        let Some(first) = first else {
            anyhow::bail!("RabbitMQ cancelled the consumer");
        };
        batch.push(first?);
        // Only what is already here: polling once never waits, so a lone request goes at once.
        while batch.len() < batch_size {
            match deliveries.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery?),
                Some(None) => {
                    cancelled = true;
                    break;
                }
                None => break,
            }
        }
        if worker.handle(&mut batch).await? == Handled::Interrupted {
            break;
        }
        if cancelled {
            anyhow::bail!("RabbitMQ cancelled the consumer");
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
    /// Shutdown came while the store was failing; the batch stays unacked for redelivery.
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
    /// Handles a batch of deliveries, in order, and empties it.
    async fn handle(&self, batch: &mut Vec<Delivery>) -> anyhow::Result<Handled> {
        let mut requests = Vec::with_capacity(batch.len());
        let mut applied = Vec::with_capacity(batch.len());
        for delivery in batch.drain(..) {
            match Request::from_slice(&delivery.data) {
                Ok(request) => {
                    requests.push(request);
                    applied.push(delivery);
                }
                Err(err) => {
                    let reason = format!("unparseable request: {err}");
                    tracing::warn!(delivery_tag = delivery.delivery_tag, %reason, "dead-lettering a message");
                    self.dead_letter(&delivery, &reason).await?;
                    // On its own (not `multiple`): the requests before it are not committed yet.
                    delivery.ack(BasicAckOptions::default()).await?;
                }
            }
        }
        let Some(last) = applied.last() else {
            return Ok(Handled::Acked);
        };
        let Some(outcomes) = self.apply(requests.into()).await? else {
            return Ok(Handled::Interrupted);
        };
        // Replies go to different requesters, so they need no order among themselves.
        let replies = applied
            .iter()
            .zip(&outcomes)
            .filter_map(|(delivery, outcome)| match *outcome {
                Outcome::Value(Some(value)) => Some((delivery, Reply::Found { value })),
                Outcome::Value(None) => Some((delivery, Reply::NotFound)),
                Outcome::Stored => None,
            })
            .map(|(delivery, reply)| self.reply(&delivery.properties, reply));
        try_join_all(replies).await?;
        last.ack(BasicAckOptions { multiple: true }).await?;
        Ok(Handled::Acked)
    }

    /// Applies a batch, retrying while the database refuses (disk full, file made read-only…):
    /// the messages stay unacked in the meantime, so nothing is lost and order is kept.
    /// `None` if shutdown interrupted the retries; an error only if the store thread is gone.
    async fn apply(&self, requests: Arc<[Request]>) -> Result<Option<Vec<Outcome>>, StoreError> {
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

    async fn reply(&self, request: &BasicProperties, reply: Reply) -> anyhow::Result<()> {
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
