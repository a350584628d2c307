//! The write publisher: the one task per link that publishes writes on the confirm channel, and
//! tells each write what RabbitMQ made of it.

use super::coalesce::{Coalescer, Partitioned};
use super::{PERSISTENT, json_properties, message_id};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use kv_protocol::{BATCH_TYPE, Key, Request, RequestId, batch_body, request_ids_header};
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{Channel, Confirmation};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// A write for the publisher task, and where to send what became of it.
pub(super) struct Write {
    /// The partition of the key, whose queue the write goes to.
    pub(super) partition: usize,
    pub(super) key: Key,
    pub(super) value: f64,
    pub(super) request_id: RequestId,
    pub(super) done: oneshot::Sender<Result<Verdict, Unpublished>>,
}

impl Partitioned for Write {
    fn partition(&self) -> usize {
        self.partition
    }
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
#[derive(Debug, Clone)]
pub(super) enum Unpublished {
    /// RabbitMQ blocks publishing (a resource alarm, the reason given): the write was never sent.
    Blocked(String),
    /// The link broke before RabbitMQ answered; the write may or may not have reached it.
    Link(lapin::Error),
}

/// Starts the publisher of a link's writes on `writes`, a channel in confirm mode, to the
/// partitions' `queues`, with at most `messages_in_flight` messages awaiting their confirm per
/// partition; it takes at most `capacity` writes at once, and ends when the returned sender (the
/// link) is dropped, once every confirm it awaits has come. `blocked` says whether RabbitMQ blocks
/// the link's connection.
pub(super) fn spawn(
    writes: Channel,
    queues: Arc<[ShortString]>,
    capacity: usize,
    messages_in_flight: usize,
    blocked: watch::Receiver<Option<String>>,
) -> mpsc::Sender<Write> {
    let (publisher, requests) = mpsc::channel(capacity);
    tokio::spawn(publish_writes(
        writes,
        queues,
        requests,
        messages_in_flight,
        blocked,
    ));
    publisher
}

/// Publishes every write of one link, the writes it finds ready together in one message per
/// partition (see [`coalesce`](super::coalesce)), and tells each write the verdict on its message.
///
/// One task, because lapin numbers a publish for its confirm in one step and queues its frames
/// in another: two tasks publishing at once on a multi-threaded runtime can send their frames in
/// the opposite order of their numbers, and then the broker's confirm of one message resolves the
/// other's. A write would get its `200` before RabbitMQ has it, and a read sent right after could
/// overtake it (kv-bench's mixed run caught exactly that). The task awaits each publish until
/// lapin has taken its frames, and awaits the confirms together, so that the messages of several
/// partitions (and, with `messages_in_flight` above 1, of one) overlap on their way to the disk;
/// it awaits every confirm, even those whose requests have given up, since lapin keeps unawaited
/// confirms forever. Writes that arrive while their partition's messages are out go out together
/// in its next message, once one of them is confirmed.
///
/// A write is published only if its request still waits for it (a client that hung up or ran
/// out of time must not have its write applied later) and RabbitMQ does not block the connection
/// (lapin would hold the write and send it whenever the alarm clears, long after its `503`).
///
/// Returns are matched to messages by message id, not by the confirm lapin hands them with: lapin
/// attaches a `basic.return` to whichever confirm it completes next, and completes the tags of a
/// `multiple` ack in no set order, so a returned message's return can arrive with another's
/// confirm. RabbitMQ sends a message's return before its ack, and lapin completes the confirm that
/// carries it no later than the returned message's own; so every confirm that is ready is looked
/// at before any verdict is given.
async fn publish_writes(
    writes: Channel,
    queues: Arc<[ShortString]>,
    mut requests: mpsc::Receiver<Write>,
    messages_in_flight: usize,
    blocked: watch::Receiver<Option<String>>,
) {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let properties = json_properties()
        .with_delivery_mode(PERSISTENT)
        .with_type(BATCH_TYPE.into());
    let mut coalescer: Coalescer<Write> = Coalescer::new(queues.len(), messages_in_flight);
    let mut in_flight = FuturesUnordered::new();
    let mut returned = HashSet::new();
    loop {
        while let Some((out, mut batch)) = coalescer.next_message() {
            batch.retain(|write| {
                let waiting = !write.done.is_closed();
                if !waiting {
                    tracing::debug!(
                        request_id = %write.request_id,
                        "dropping a write whose request has ended"
                    );
                }
                waiting
            });
            if batch.is_empty() {
                continue;
            }
            if let Some(reason) = blocked.borrow().clone() {
                for write in batch {
                    let _ = write.done.send(Err(Unpublished::Blocked(reason.clone())));
                }
                continue;
            }
            super::count_batch("put", batch.len());
            let puts: Vec<_> = batch
                .iter()
                .map(|write| Request::Put {
                    key: &write.key,
                    value: write.value,
                })
                .collect();
            let body = batch_body(&puts);
            let id = message_id();
            let properties =
                properties
                    .clone()
                    .with_message_id(id.clone())
                    .with_headers(request_ids_header(
                        batch.iter().map(|write| &write.request_id),
                    ));
            let queue = queues[out.partition()].clone();
            let published = writes
                .basic_publish("".into(), queue, mandatory, &body, properties)
                .await;
            let done: Vec<_> = batch.into_iter().map(|write| write.done).collect();
            match published {
                Ok(confirm) => {
                    in_flight.push(confirm.map(move |confirmed| (id, confirmed, done, out)))
                }
                Err(err) => tell(done, Err(Unpublished::Link(err))),
            }
        }
        tokio::select! {
            request = requests.recv() => match request {
                Some(first) => coalescer.take(first, &mut requests),
                None => break,
            },
            () = coalescer.place_freed() => {}
            Some(first) = in_flight.next(), if !in_flight.is_empty() => {
                let mut ready = vec![first];
                while let Some(Some(next)) = in_flight.next().now_or_never() {
                    ready.push(next);
                }
                for (_, confirmed, _, _) in &ready {
                    if let Ok(Confirmation::Ack(Some(message)) | Confirmation::Nack(Some(message))) =
                        confirmed
                        && let Some(id) = message.properties.message_id()
                    {
                        returned.insert(id.clone());
                    }
                }
                for (id, confirmed, done, _out) in ready {
                    let verdict = match confirmed {
                        Ok(_) if returned.remove(&id) => Ok(Verdict::Returned),
                        Ok(Confirmation::Ack(_)) => Ok(Verdict::Acked),
                        // Not in confirm mode cannot happen on this channel: take it as a refusal.
                        Ok(Confirmation::Nack(_) | Confirmation::NotRequested) => Ok(Verdict::Nacked),
                        Err(err) => Err(Unpublished::Link(err)),
                    };
                    tell(done, verdict);
                }
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Tells every write of a message what became of it.
fn tell(
    done: Vec<oneshot::Sender<Result<Verdict, Unpublished>>>,
    verdict: Result<Verdict, Unpublished>,
) {
    for write in done {
        let _ = write.send(verdict.clone());
    }
}
