//! The read publisher: the one task per link that publishes reads on the read channel, the reads
//! that wait together in one message per partition (see [`coalesce`](super::coalesce)), each
//! message registered with the replies it waits for.

use super::coalesce::{Coalescer, Partitioned};
use super::replies::{Answer, PendingReplies};
use super::{json_properties, message_id};
use kv_protocol::{
    BATCH_TYPE, DIRECT_REPLY_TO, Key, Request, RequestId, batch_body, request_ids_header,
};
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A read for the read publisher, and where its answer goes.
pub(super) struct Read {
    /// The partition of the key, whose queue the read goes to.
    pub(super) partition: usize,
    pub(super) key: Key,
    pub(super) request_id: RequestId,
    pub(super) answer: oneshot::Sender<Answer>,
}

impl Partitioned for Read {
    fn partition(&self) -> usize {
        self.partition
    }
}

/// Starts the read publisher of a link on `reads`, the channel that also consumes the replies
/// (direct reply-to wants both on one channel), to the partitions' `queues`, with at most
/// `messages_in_flight` messages awaiting their reply per partition. It takes at most `capacity`
/// reads at once and ends when the returned sender (the link) is dropped. A message's replies are
/// awaited for `deadline`, the reads' own deadline, which is also its `expiration`.
pub(super) fn spawn(
    reads: Channel,
    queues: Arc<[ShortString]>,
    capacity: usize,
    messages_in_flight: usize,
    deadline: Duration,
    replies: Arc<PendingReplies>,
) -> mpsc::Sender<Read> {
    let (publisher, requests) = mpsc::channel(capacity);
    let properties = json_properties()
        .with_type(BATCH_TYPE.into())
        .with_reply_to(DIRECT_REPLY_TO.into())
        .with_expiration(deadline.as_millis().to_string().into());
    tokio::spawn(publish_reads(
        reads,
        queues,
        requests,
        messages_in_flight,
        properties,
        deadline,
        replies,
    ));
    publisher
}

/// Publishes every read of one link. Each publish is awaited until lapin has taken its frames.
/// Reads that arrive while their partition's messages are out go out together in its next
/// message, once one of them is answered (or has been out for [`HOLD`](super::coalesce::HOLD)).
/// Reads are transient and unconfirmed: one that is lost ends in its own `504`.
async fn publish_reads(
    reads: Channel,
    queues: Arc<[ShortString]>,
    mut requests: mpsc::Receiver<Read>,
    messages_in_flight: usize,
    properties: BasicProperties,
    deadline: Duration,
    replies: Arc<PendingReplies>,
) {
    let mut coalescer: Coalescer<Read> = Coalescer::new(queues.len(), messages_in_flight);
    loop {
        while let Some((out, mut batch)) = coalescer.next_message() {
            // A read whose request has ended (deadline, client gone) needs no answer.
            batch.retain(|read| !read.answer.is_closed());
            if batch.is_empty() {
                continue;
            }
            super::count_batch("get", batch.len());
            let gets: Vec<_> = batch
                .iter()
                .map(|read| Request::Get { key: &read.key })
                .collect();
            let body = batch_body(&gets);
            let headers = request_ids_header(batch.iter().map(|read| &read.request_id));
            let (request_ids, answers): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|read| (read.request_id, read.answer))
                .unzip();
            let queue = queues[out.partition()].clone();
            let correlation_id = replies.register(answers, deadline, out);
            let properties = properties
                .clone()
                .with_message_id(message_id())
                .with_headers(headers)
                .with_correlation_id(correlation_id.to_string().into());
            let published = reads
                .basic_publish(
                    "".into(),
                    queue,
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await;
            match published {
                Ok(_) if tracing::enabled!(tracing::Level::DEBUG) => {
                    for request_id in request_ids {
                        tracing::debug!(
                            %request_id,
                            correlation_id,
                            "read published; waiting for the back-server's reply"
                        );
                    }
                }
                Ok(_) => {}
                Err(err) => replies.fail(correlation_id, err),
            }
        }
        tokio::select! {
            request = requests.recv() => match request {
                Some(first) => coalescer.take(first, &mut requests),
                None => break,
            },
            () = coalescer.place_freed() => {}
        }
    }
}
