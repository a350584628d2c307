//! The consume loop for one AMQP connection: deliveries in queue order become store batches, then
//! replies, then acks. The order of those three steps is the back-server's durability contract:
//! nothing is acked before the transaction that applied it has committed.
//!
//! Group commit: each turn takes the first delivery as soon as it arrives, plus every delivery
//! RabbitMQ has already handed over (up to the batch size), and applies them all in one
//! transaction. It never waits to fill a batch, so a lone request is served at once, and under
//! load one `fsync` and one `multiple` ack serve a whole batch.
//!
//! Poison messages: an unparseable message is dead-lettered at once. A message that RabbitMQ
//! redelivers (the back-server stopped or crashed while holding it) is tried alone, and only up to
//! `MAX_REDELIVERIES` times, so one that crashes the back-server cannot block the queue forever.
//!
//! The consumer consumes and acks on one connection; replies and dead letters go out on another
//! ([`outbox`](crate::outbox)), so that a resource alarm, which blocks the connections that
//! publish, never stops the queue from draining.

use crate::admin::Status;
use crate::config::Config;
use crate::outbox::{DeadLettered, Outbox};
use crate::store::{Outcome, Store, StoreError};
use futures_util::{FutureExt, StreamExt};
use kv_protocol::{
    Format, Layout, Reply, Request, TopologyError, dead_letter_queue, declare_topology, request_ids,
};
use kv_runtime::{Connections, End, OpenError};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const CONSUMER_TAG: &str = "back-server";
const FIRST_STORE_RETRY: Duration = Duration::from_millis(50);
const MAX_STORE_RETRY: Duration = Duration::from_secs(5);

/// The back-server's side of the connection lifecycle ([`kv_runtime::Session`]): consumes the
/// request queue on each connection the supervisor opens. Messages received but not yet acked
/// when a connection ends are redelivered by RabbitMQ. Reports to `status` whether it consumes
/// and whether the database takes writes.
pub struct Consumer<'a> {
    pub store: &'a Store,
    pub config: &'a Config,
    pub status: &'a Status,
}

/// The channels and the consumer [`Consumer`] sets up on one link.
pub struct Subscription {
    /// Consumes and acks, on the consuming connection.
    channel: Channel,
    deliveries: lapin::Consumer,
    /// Replies and dead letters, on the publishing connection.
    outbox: Outbox,
    dead_letters: mpsc::UnboundedReceiver<DeadLettered>,
}

/// What stops the back-server for good.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// The store thread is gone: nothing more can be applied.
    #[error("the SQLite store failed: {0}")]
    Store(#[from] StoreError),
    /// RabbitMQ's queues do not match the settings.
    #[error("cannot use RabbitMQ's queues: {0}")]
    Topology(#[from] TopologyError),
}

/// Why handling a batch stopped short.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The link broke: reconnect, and RabbitMQ redelivers what was not acked.
    #[error(transparent)]
    Link(#[from] lapin::Error),
    /// The store thread is gone: nothing more can be applied.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Failure> for End<Fatal> {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Store(err) => End::Fatal(err.into()),
            other => End::Lost(other.to_string()),
        }
    }
}

impl kv_runtime::Session for Consumer<'_> {
    type Link = Subscription;
    type Fatal = Fatal;

    /// Acks must go on while RabbitMQ blocks publishing (see the module docs).
    const SEPARATE_PUBLISHER: bool = true;

    /// Opens the consumer's channel, declares the queues, starts consuming, and opens the outbox
    /// on the publishing connection.
    async fn open(&mut self, connections: &Connections) -> Result<Subscription, OpenError<Fatal>> {
        self.status.set_connected(true);
        let queue = &self.config.queue();
        declare_topology(&connections.consume, &self.config.layout()).await?;
        let channel = connections.consume.create_channel().await?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let (outbox, dead_letters) =
            Outbox::open(connections.publish(), dead_letter_queue(queue)).await?;
        let deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                CONSUMER_TAG.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Subscription {
            channel,
            deliveries,
            outbox,
            dead_letters,
        })
    }

    /// Takes batches off the queue until shutdown (once the batch in hand is done), until the
    /// channel fails, or until the store does.
    async fn run(
        &mut self,
        subscription: &mut Subscription,
        shutdown: &CancellationToken,
    ) -> End<Fatal> {
        let config = self.config;
        let batch_size = usize::from(config.batch_size);
        let queue = config.queue();
        let queue = queue.as_str();
        // Before the log line, which tests take for "ready".
        self.status.set_consuming(true);
        tracing::info!(queue, prefetch = config.prefetch, batch_size, "consuming");
        let worker = Worker {
            layout: config.layout(),
            partition: config.partition,
            outbox: &subscription.outbox,
            store: self.store,
            max_redeliveries: config.max_redeliveries,
            status: self.status,
            shutdown,
        };
        let deliveries = &mut subscription.deliveries;
        let dead_letters = &mut subscription.dead_letters;
        let mut batch = Vec::with_capacity(batch_size);
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Shutdown,
                Some(report) = dead_letters.recv() => {
                    match worker.dead_lettered(report).await {
                        Ok(Handled::Acked) => continue,
                        Ok(Handled::Interrupted) => return End::Shutdown,
                        Err(end) => return end,
                    }
                }
                next = deliveries.next() => next,
            };
            match first {
                Some(Ok(delivery)) => batch.push(delivery),
                Some(Err(err)) => return End::Lost(err.to_string()),
                None => return End::Lost("RabbitMQ cancelled the consumer".into()),
            }
            // Only what is already here: polling once never waits, so a lone request goes at once.
            let mut cancelled = false;
            while batch.len() < batch_size {
                match deliveries.next().now_or_never() {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(Some(Err(err))) => return End::Lost(err.to_string()),
                    Some(None) => {
                        cancelled = true;
                        break;
                    }
                    None => break,
                }
            }
            // Abandoning a batch midway (the supervisor does when the connection fails) is safe:
            // whatever it did not ack, RabbitMQ delivers again.
            match worker.handle(&mut batch).await {
                Ok(Handled::Acked) => {}
                Ok(Handled::Interrupted) => return End::Shutdown,
                Err(failure) => return failure.into(),
            }
            if cancelled {
                return End::Lost("RabbitMQ cancelled the consumer".into());
            }
        }
    }

    async fn close(&mut self, subscription: Subscription) -> lapin::Result<()> {
        let reason = "back-server shutting down";
        subscription
            .channel
            .basic_cancel(CONSUMER_TAG.into(), BasicCancelOptions::default())
            .await?;
        subscription.outbox.close(reason).await?;
        subscription.channel.close(200, reason.into()).await
    }

    fn detach(&mut self) {
        self.status.set_consuming(false);
        self.status.set_connected(false);
    }
}

/// A delivery whose requests are applied in a group, and how to answer it.
struct Applied {
    delivery: Delivery,
    format: Format,
    /// How many of the group's requests, in order, are this delivery's.
    requests: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum Handled {
    /// Done with (applied or dead-lettered) and acked.
    Acked,
    /// Shutdown came while the store was failing; the batch stays unacked for redelivery.
    Interrupted,
}

struct Worker<'a> {
    layout: Layout,
    /// The partition whose keys this back-server holds.
    partition: u32,
    outbox: &'a Outbox,
    store: &'a Store,
    max_redeliveries: u32,
    status: &'a Status,
    shutdown: &'a CancellationToken,
}

impl Worker<'_> {
    /// Handles a batch of deliveries, in order, and empties it. First deliveries are applied
    /// together; a redelivered one alone (see [`Self::handle_redelivered`]).
    async fn handle(&self, batch: &mut Vec<Delivery>) -> Result<Handled, Failure> {
        let mut group = Vec::with_capacity(batch.len());
        for delivery in batch.drain(..) {
            if !delivery.redelivered {
                group.push(delivery);
                continue;
            }
            if self.handle_group(&mut group, None).await? == Handled::Interrupted
                || self.handle_redelivered(delivery).await? == Handled::Interrupted
            {
                return Ok(Handled::Interrupted);
            }
        }
        self.handle_group(&mut group, None).await
    }

    /// A redelivered message was in hand when the back-server crashed, stopped or lost its link.
    /// If it is what crashes the back-server, it would come back forever and block the queue:
    /// so each try is counted in SQLite before it starts (a crash cannot lose the count), and past
    /// the limit the message is dead-lettered. Alone, so that its neighbours are not counted for it.
    async fn handle_redelivered(&self, delivery: Delivery) -> Result<Handled, Failure> {
        let message: Arc<[u8]> = match delivery.properties.message_id() {
            Some(id) => id.as_str().as_bytes().into(),
            None => delivery.data.as_slice().into(),
        };
        let Some(attempts) = self
            .retrying(|| self.store.count_attempt(message.clone()))
            .await?
        else {
            return Ok(Handled::Interrupted);
        };
        if attempts > self.max_redeliveries {
            let reason = format!(
                "redelivered {attempts} times: each try ended with the back-server stopping \
                 or crashing before it could acknowledge the message"
            );
            let request_ids = request_ids(delivery.properties.headers().as_ref()).join(",");
            tracing::error!(%request_ids, %reason, "dead-lettering a message");
            // Its count is dropped once the copy is safe and the original acked.
            self.outbox
                .dead_letter(delivery, "redelivered", &reason, Some(message));
            return Ok(Handled::Acked);
        }
        self.handle_group(&mut vec![delivery], Some(message)).await
    }

    /// Notes how a dead letter ended: a redelivered message's count is dropped once it is safe
    /// in the dead-letter queue; one that RabbitMQ did not take ends the link, so that the
    /// original is redelivered.
    async fn dead_lettered(&self, report: DeadLettered) -> Result<Handled, End<Fatal>> {
        match report {
            DeadLettered::Done { message: None } => Ok(Handled::Acked),
            DeadLettered::Done {
                message: Some(message),
            } => match self
                .retrying(|| self.store.forget_attempts(message.clone()))
                .await
            {
                Ok(Some(())) => Ok(Handled::Acked),
                Ok(None) => Ok(Handled::Interrupted),
                Err(err) => Err(End::Fatal(err.into())),
            },
            DeadLettered::Failed(reason) => Err(End::Lost(reason)),
        }
    }

    /// Applies deliveries in one transaction, replies to the reads among them, then acks them
    /// all with one `multiple` ack (one by one while a dead letter is pending); empties `group`.
    /// `redelivered` is the count key of a redelivered message handled alone, dropped in the
    /// same transaction.
    async fn handle_group(
        &self,
        group: &mut Vec<Delivery>,
        redelivered: Option<Arc<[u8]>>,
    ) -> Result<Handled, Failure> {
        let mut requests = Vec::with_capacity(group.len());
        let mut applied = Vec::with_capacity(group.len());
        for delivery in group.drain(..) {
            let (label, reason) = match self.requests_of(&delivery) {
                Ok((format, parsed)) => {
                    applied.push(Applied {
                        delivery,
                        format,
                        requests: parsed.len(),
                    });
                    requests.extend(parsed);
                    continue;
                }
                Err(refused) => refused,
            };
            let request_ids = request_ids(delivery.properties.headers().as_ref()).join(",");
            tracing::warn!(%request_ids, %reason, "dead-lettering a message");
            // Acked on its own once its copy is safe, never by a `multiple` ack.
            self.outbox.dead_letter(delivery, label, &reason, None);
        }
        let Some(last) = applied.last() else {
            return Ok(Handled::Acked);
        };
        let last = &last.delivery;
        // A crash before the transaction: the fault tests' stand-in for a message that kills us.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("before-apply", |_| std::process::abort());
        let requests: Arc<[Request]> = requests.into();
        let applied_in_store = self.retrying(|| match &redelivered {
            None => self.store.apply(requests.clone()).left_future(),
            Some(message) => self
                .store
                .apply_redelivered(requests.clone(), message.clone())
                .right_future(),
        });
        let Some(outcomes) = applied_in_store.await? else {
            return Ok(Handled::Interrupted);
        };
        // A crash after the commit, before the ack: RabbitMQ redelivers what SQLite already has.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("after-commit", |_| std::process::abort());
        let mut outcomes = outcomes.as_slice();
        for message in &applied {
            let (own, rest) = outcomes.split_at(message.requests);
            outcomes = rest;
            if tracing::enabled!(tracing::Level::DEBUG) {
                let request_ids = request_ids(message.delivery.properties.headers().as_ref());
                for (index, outcome) in own.iter().enumerate() {
                    let request_id = request_ids.get(index).map_or("-", String::as_str);
                    tracing::debug!(%request_id, ?outcome, "applied");
                }
            }
            let replies: Vec<Reply> = own
                .iter()
                .filter_map(|outcome| match *outcome {
                    Outcome::Value(Some(value)) => Some(Reply::Found { value }),
                    Outcome::Value(None) => Some(Reply::NotFound),
                    Outcome::Stored => None,
                })
                .collect();
            if !replies.is_empty() {
                self.outbox
                    .reply(&message.delivery.properties, message.format, &replies);
            }
        }
        if self.outbox.dead_letters_pending() {
            for message in &applied {
                message.delivery.ack(BasicAckOptions::default()).await?;
            }
        } else {
            last.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(Handled::Acked)
    }

    /// The requests a delivery carries, in order, and the format to answer it in; or, if they
    /// cannot be applied, why not: the label and the reason it is dead-lettered with. A message
    /// is taken whole or not at all, whatever its number of requests.
    fn requests_of(
        &self,
        delivery: &Delivery,
    ) -> Result<(Format, Vec<Request>), (&'static str, String)> {
        let parsed = Format::of(delivery.properties.kind().as_ref())
            .and_then(|format| Ok((format, format.requests(&delivery.data)?)));
        let (format, requests) = parsed.map_err(|err| ("unparseable", err.to_string()))?;
        // Only a hand-made message gets past the parsing with a key of another partition: the
        // servers check, before they start, that they agree on the partitions. Applied, it
        // would hide the key from the partition that serves it.
        let misrouted = requests.iter().find_map(|request| {
            let partition = self.layout.partition_of(request.key());
            (partition != self.partition).then(|| (request.key(), partition))
        });
        if let Some((key, partition)) = misrouted {
            return Err((
                "misrouted",
                format!(
                    "key '{key}' belongs to partition {partition}, not {}",
                    self.partition
                ),
            ));
        }
        Ok((format, requests))
    }

    /// Runs a store operation, retrying while the database refuses (disk full, file made
    /// read-only…): the messages stay unacked in the meantime, so nothing is lost and order is
    /// kept. `None` if shutdown interrupted the retries; an error only if the store thread is gone.
    async fn retrying<T, F>(
        &self,
        mut operation: impl FnMut() -> F,
    ) -> Result<Option<T>, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let mut delay = FIRST_STORE_RETRY;
        let mut failing = false;
        loop {
            match operation().await {
                Ok(done) => {
                    if failing {
                        tracing::info!("the database accepts writes again");
                        self.status.set_refused(None);
                    }
                    return Ok(Some(done));
                }
                Err(err @ StoreError::Stopped) => return Err(err),
                Err(err) => {
                    tracing::error!(%err, retry_in = ?delay, "the database refused; the messages stay queued");
                    self.status.set_refused(Some(err.to_string()));
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
}
