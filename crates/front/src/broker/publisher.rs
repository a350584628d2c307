//! The write publisher: the one task per link that publishes writes on the confirm channel, and
//! hands each write the broker's confirm of it.

use super::{PERSISTENT, json_properties};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation};
use tokio::sync::{mpsc, oneshot};

/// A write for [`publish_writes`] and where to send RabbitMQ's confirm of it.
pub(super) struct Write {
    pub(super) body: Vec<u8>,
    pub(super) id: ShortString,
    pub(super) headers: FieldTable,
    pub(super) done: oneshot::Sender<lapin::Result<Confirmation>>,
}

/// Writes waiting for the publisher task; a full queue makes requests wait (within their
/// deadline) instead of piling up.
const WRITE_QUEUE: usize = 1024;

/// Publishes every write of one link and hands each its confirm.
///
/// One task, because lapin numbers a publish for its confirm in one step and queues its frames
/// in another: two tasks publishing at once on a multi-threaded runtime can send their frames in
/// the opposite order of their numbers, and then the broker's confirm of one message resolves the
/// other's. A write would get its `200` before RabbitMQ has it, and a read sent right after could
/// overtake it (kv-bench's mixed run caught exactly that). Inside this task both steps happen in
/// the first poll of `basic_publish`, which nothing can interleave with, so the publishes can
/// still overlap. The task also awaits every confirm, even those whose request has given up,
/// since lapin keeps unawaited confirms forever.
async fn publish_writes(writes: Channel, queue: ShortString, mut requests: mpsc::Receiver<Write>) {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let properties = json_properties().with_delivery_mode(PERSISTENT);
    let writes = &writes;
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(Write { body, id, headers, done }) = request else { break };
                let queue = queue.clone();
                let properties = properties.clone().with_message_id(id).with_headers(headers);
                in_flight.push(async move {
                    let confirmed = async {
                        writes
                            .basic_publish("".into(), queue, mandatory, &body, properties)
                            .await?
                            .await
                    };
                    let _ = done.send(confirmed.await);
                });
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Starts the publisher of a link's writes on `writes`, a channel in confirm mode; it ends when
/// the returned sender (the link) is dropped, once every confirm it awaits has come.
pub(super) fn spawn(writes: Channel, queue: &str) -> mpsc::Sender<Write> {
    let (publisher, requests) = mpsc::channel(WRITE_QUEUE);
    tokio::spawn(publish_writes(writes, queue.into(), requests));
    publisher
}
