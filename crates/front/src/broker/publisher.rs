//! The write publisher: the one task per link that publishes writes on the confirm channel, and
//! tells each write what RabbitMQ made of it.

use super::{PERSISTENT, json_properties};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation};
use std::collections::HashSet;
use tokio::sync::{mpsc, oneshot, watch};

/// A write for the publisher task, and where to send what became of it.
pub(super) struct Write {
    /// The request queue of the key's partition.
    pub(super) queue: ShortString,
    pub(super) body: Vec<u8>,
    pub(super) id: ShortString,
    pub(super) headers: FieldTable,
    pub(super) done: oneshot::Sender<Result<Verdict, Unpublished>>,
}

/// What RabbitMQ made of a published write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// In the queue, durably.
    Acked,
    /// Routed to no queue (someone deleted it): acked by RabbitMQ, but held by nobody.
    Returned,
    /// Refused.
    Nacked,
}

/// Why a write got no verdict.
#[derive(Debug)]
pub(super) enum Unpublished {
    /// RabbitMQ blocks publishing (a resource alarm, the reason given): the write was never sent.
    Blocked(String),
    /// The link broke before RabbitMQ answered; the write may or may not have reached it.
    Link(lapin::Error),
}

/// Starts the publisher of a link's writes on `writes`, a channel in confirm mode, which takes
/// at most `capacity` writes at once; it ends when the returned sender (the link) is dropped,
/// once every confirm it awaits has come. `blocked` says whether RabbitMQ blocks the link's
/// connection.
pub(super) fn spawn(
    writes: Channel,
    capacity: usize,
    blocked: watch::Receiver<Option<String>>,
) -> mpsc::Sender<Write> {
    let (publisher, requests) = mpsc::channel(capacity);
    tokio::spawn(publish_writes(writes, requests, blocked));
    publisher
}

/// Publishes every write of one link and tells each its verdict.
///
/// One task, because lapin numbers a publish for its confirm in one step and queues its frames
/// in another: two tasks publishing at once on a multi-threaded runtime can send their frames in
/// the opposite order of their numbers, and then the broker's confirm of one message resolves the
/// other's. A write would get its `200` before RabbitMQ has it, and a read sent right after could
/// overtake it (kv-bench's mixed run caught exactly that). Inside this task both steps happen in
/// the first poll of `basic_publish`, which nothing can interleave with, so the publishes can
/// still overlap. The task also awaits every confirm, even those whose request has given up,
/// since lapin keeps unawaited confirms forever.
///
/// A write is published only if its request still waits for it (a client that hung up or ran
/// out of time must not have its write applied later) and RabbitMQ does not block the connection
/// (lapin would hold the write and send it whenever the alarm clears, long after its `503`).
///
/// Returns are matched to writes by message id, not by the confirm lapin hands them with: lapin
/// attaches a `basic.return` to whichever confirm it completes next, and completes the tags of a
/// `multiple` ack in no set order, so a returned write's return can arrive with another write's
/// confirm. RabbitMQ sends a write's return before its ack, and lapin completes the confirm that
/// carries it no later than the returned write's own; so every confirm that is ready is looked
/// at before any verdict is given.
async fn publish_writes(
    writes: Channel,
    mut requests: mpsc::Receiver<Write>,
    blocked: watch::Receiver<Option<String>>,
) {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let properties = json_properties().with_delivery_mode(PERSISTENT);
    let writes = &writes;
    let mut in_flight = FuturesUnordered::new();
    let mut returned = HashSet::new();
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(Write { queue, body, id, headers, done }) = request else { break };
                if done.is_closed() {
                    tracing::debug!(message_id = %id, "dropping a write whose request has ended");
                    continue;
                }
                if let Some(reason) = blocked.borrow().clone() {
                    let _ = done.send(Err(Unpublished::Blocked(reason)));
                    continue;
                }
                let properties = properties.clone().with_message_id(id.clone()).with_headers(headers);
                in_flight.push(async move {
                    let confirmed = async {
                        writes
                            .basic_publish("".into(), queue, mandatory, &body, properties)
                            .await?
                            .await
                    };
                    (id, confirmed.await, done)
                });
            }
            Some(first) = in_flight.next(), if !in_flight.is_empty() => {
                let mut ready = vec![first];
                while let Some(Some(next)) = in_flight.next().now_or_never() {
                    ready.push(next);
                }
                for (_, confirmed, _) in &ready {
                    if let Ok(Confirmation::Ack(Some(message)) | Confirmation::Nack(Some(message))) =
                        confirmed
                        && let Some(id) = message.properties.message_id()
                    {
                        returned.insert(id.clone());
                    }
                }
                for (id, confirmed, done) in ready {
                    let verdict = match confirmed {
                        Ok(_) if returned.remove(&id) => Ok(Verdict::Returned),
                        Ok(Confirmation::Ack(_)) => Ok(Verdict::Acked),
                        // Not in confirm mode cannot happen on this channel: take it as a refusal.
                        Ok(Confirmation::Nack(_) | Confirmation::NotRequested) => Ok(Verdict::Nacked),
                        Err(err) => Err(Unpublished::Link(err)),
                    };
                    let _ = done.send(verdict);
                }
            }
        }
    }
    while in_flight.next().await.is_some() {}
}
