//! Link supervision, the front-server's side of the connection lifecycle that `kv_runtime`
//! runs: on each connection, a confirm channel for writes and a channel for reads that also
//! consumes direct reply-to (RabbitMQ requires both on the same channel), offered to requests
//! through a `watch` while they work.

use super::publisher::{self, Write};
use super::reads::{self, Read};
use super::replies::PendingReplies;
use futures_util::StreamExt;
use kv_protocol::{DIRECT_REPLY_TO, Format, Layout, TopologyError, declare_topology};
use kv_runtime::{Connections, End, OpenError};
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The channels of the current connection. Requests share it through an `Arc`: cloning a lapin
/// `Channel` is far dearer than bumping one counter.
pub(super) struct Link {
    /// Counts links since start, so a failure report about an old link is not taken for the new.
    pub(super) generation: u64,
    /// Hands writes to the publisher task, the only task that publishes on `writes`.
    pub(super) publisher: mpsc::Sender<Write>,
    /// Hands reads to the read publisher task, the only task that publishes on `reads`.
    pub(super) reader: mpsc::Sender<Read>,
    pub(super) writes: Channel,
    pub(super) reads: Channel,
    /// Why RabbitMQ blocks this link's connection from publishing (a resource alarm), if it does.
    pub(super) blocked: watch::Receiver<Option<String>>,
}

/// The front-server's side of the connection lifecycle ([`kv_runtime::Session`]): opens the two
/// channels, offers them to requests, routes replies, and notices when a request found the link
/// broken.
pub(super) struct Session {
    pub(super) layout: Layout,
    /// Each partition's request queue, by partition.
    pub(super) queues: Arc<[ShortString]>,
    /// Where requests find the current link; `None` while there is none.
    pub(super) link: watch::Sender<Option<Arc<Link>>>,
    pub(super) replies: Arc<PendingReplies>,
    /// The generation of a link a request found broken.
    pub(super) broken: watch::Receiver<u64>,
    /// Counts links since start, so a failure report about an old link is not taken for the new.
    pub(super) generation: u64,
    /// Most writes and reads in flight at once (`MAX_IN_FLIGHT`).
    pub(super) max_in_flight: usize,
    /// Most messages of writes, and of reads, out per partition (`MESSAGES_IN_FLIGHT`).
    pub(super) messages_in_flight: usize,
    /// How long a read waits for its reply (`RPC_TIMEOUT_MS`).
    pub(super) deadline: Duration,
}

/// What [`open`](kv_runtime::Session::open) sets up on a connection: the link requests use, and the reply consumer.
pub(super) struct Opened {
    link: Arc<Link>,
    replies: Consumer,
}

impl kv_runtime::Session for Session {
    type Link = Opened;
    /// Queues that do not match the settings: the front-server cannot route keys.
    type Fatal = TopologyError;

    async fn open(
        &mut self,
        connections: &Connections,
    ) -> Result<Opened, OpenError<TopologyError>> {
        self.generation += 1;
        // One connection: the front-server has nothing to ack, and direct reply-to needs the
        // replies consumed on the channel that publishes the reads.
        let connection = &connections.consume;
        declare_topology(connection, &self.layout).await?;
        let writes = connection.create_channel().await?;
        writes
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let publisher = publisher::spawn(
            writes.clone(),
            self.queues.clone(),
            self.max_in_flight,
            self.messages_in_flight,
            connections.blocked(),
        );
        let reads = connection.create_channel().await?;
        // Direct reply-to must be consumed in no-ack mode, before the first read is published.
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let replies = reads
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "replies".into(),
                no_ack,
                FieldTable::default(),
            )
            .await?;
        let reader = reads::spawn(
            reads.clone(),
            self.queues.clone(),
            self.max_in_flight,
            self.messages_in_flight,
            self.deadline,
            self.replies.clone(),
        );
        let link = Link {
            generation: self.generation,
            publisher,
            reader,
            writes,
            reads,
            blocked: connections.blocked(),
        };
        Ok(Opened {
            link: Arc::new(link),
            replies,
        })
    }

    /// Offers the link to requests, then delivers replies to waiting reads until shutdown or
    /// until the link breaks.
    async fn run(&mut self, opened: &mut Opened, shutdown: &CancellationToken) -> End<Self::Fatal> {
        self.link.send_replace(Some(opened.link.clone()));
        tracing::info!(
            queue = self.layout.base(),
            partitions = self.layout.partitions(),
            "ready: publishing to RabbitMQ"
        );
        let generation = self.generation;
        let mut broken = self.broken.clone();
        loop {
            let delivery = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Shutdown,
                _ = broken.wait_for(|broken| *broken == generation) => {
                    return End::Lost("a request found the link broken".into());
                }
                next = opened.replies.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(err)) => return End::Lost(err.to_string()),
                    None => return End::Lost("the reply consumer was cancelled".into()),
                },
            };
            let correlation_id = delivery.properties.correlation_id().as_ref();
            let replies = Format::of(delivery.properties.kind().as_ref())
                .map_err(|err| err.to_string())
                .and_then(|format| {
                    format
                        .replies(&delivery.data)
                        .map_err(|err| err.to_string())
                });
            match (correlation_id, replies) {
                (Some(id), Ok(replies)) => self.replies.complete(id.as_str(), replies),
                (_, Err(err)) => tracing::warn!(%err, "ignoring a malformed reply"),
                (None, Ok(_)) => tracing::warn!("ignoring a reply without correlation id"),
            }
        }
    }

    async fn close(&mut self, opened: Opened) -> lapin::Result<()> {
        let reason = "front-server shutting down";
        opened.link.writes.close(200, reason.into()).await?;
        opened.link.reads.close(200, reason.into()).await
    }

    /// Requests that arrive from now on get `503` at once; reads still waiting end the same way,
    /// since their replies can no longer arrive.
    fn detach(&mut self) {
        self.link.send_replace(None);
        self.replies.abandon_all();
    }
}
