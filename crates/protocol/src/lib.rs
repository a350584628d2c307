//! The wire between `front-server` and `back-server`: what travels through RabbitMQ and on which
//! queues. Both servers depend on this crate, so a change here is a change of protocol for both at
//! once. It is only the wire: how a server connects, its settings and its telemetry live in
//! `kv-runtime`.
//!
//! # Topology
//!
//! - **Partitions** (`KV_PARTITIONS`, default 1): the keyspace is split over N request queues, each
//!   served by its own back-server with its own database. With one partition the queue is
//!   `<KV_QUEUE>` (default `kv.requests`); with N > 1, partition i's queue is `<KV_QUEUE>.<i>`. A
//!   key's partition is a stable hash of its UTF-8 bytes modulo N ([`partition_of`]), so every
//!   front-server sends a key to the same queue, and each key lives in exactly one database.
//! - **Each request queue** is durable and carries writes *and* reads of its partition's keys.
//!   Because RabbitMQ delivers a queue in FIFO order and the back-server applies it in order, a
//!   read published after a write's confirm is answered after that write was applied: this is what
//!   gives read-your-writes across any number of front-servers. The queue is declared with
//!   `x-single-active-consumer`, so a second back-server for the same partition waits as a hot
//!   standby instead of interleaving the queue with the first, and takes over when it dies.
//! - **Queue type** (`KV_QUEUE_TYPE`): `quorum` queues are replicated over a cluster's nodes
//!   (Raft) and survive the loss of a minority of them; `classic` queues live on one node.
//! - **`<queue>.dead`**, beside each request queue: a durable queue of the same type for messages
//!   the back-server cannot parse. The back-server republishes them there itself (persistent,
//!   confirmed, with an `x-kv-dead-reason` header) before acking the original. We deliberately do
//!   *not* give the request queue a dead-letter exchange: RabbitMQ would then also dead-letter
//!   every read that expired unanswered, and the dead queue must hold only what needs a person's
//!   attention.
//!
//! Every server declares every partition's queues at every (re)connect, with identical
//! arguments, so any may start first. Before that it checks that the queues that exist were made
//! for its number of partitions, and stops with an error naming both numbers if not: a server
//! that hashed keys modulo another N would look for them in the wrong databases. Changing N is
//! `back-server reshard`'s job. Likewise a queue that exists with another type stops the server
//! with RabbitMQ's explanation, since no retry can cure it.
//!
//! # Messages
//!
//! Bodies are JSON ([`Request`], [`Reply`]), `content_type` `application/json`. A front-server
//! puts the requests it has ready for one partition into one message, a batch (protocol version
//! 2, see [`Format`]); back-servers also read version 1's one request per message. Writes
//! and reads travel in separate batches:
//!
//! - **Writes**: `[{"op":"put","key":"k","value":1.5}, …]`, published persistent (delivery mode
//!   2), `mandatory`, on a channel in publisher-confirm mode. The front answers each write `200`
//!   only after the broker's ack of the message that carries it, which RabbitMQ sends once the
//!   message is fsynced to the durable queue. A nack, a return (no queue) or a lost connection is
//!   a `503` for every write in the message.
//! - **Reads**: `[{"op":"get","key":"k"}, …]`, transient, with `correlation_id`, `reply_to` and an
//!   `expiration` equal to the front's read deadline (`RPC_TIMEOUT_MS`): reads whose clients have
//!   given up are discarded by the broker instead of being worked on. Each read keeps its own
//!   deadline at the front-server.
//! - **Reply**: one message per batch of reads, published by the back-server to the default
//!   exchange with the batch's `reply_to` as routing key and its `correlation_id`, holding a
//!   [`Reply`] for each read in order.
//!
//! # Replies: direct reply-to
//!
//! Reads are answered through RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`) rather than an
//! exclusive reply queue per front-server. Replies then never touch a queue: no queue to declare,
//! name, or clean up after a crash, and the broker routes each reply straight to the requesting
//! channel. Its rules shape the front's design: the reply consumer runs in no-ack mode on the same
//! channel that publishes reads, and a reply is dropped if that channel is gone (the read then
//! ends in `504`/`503` and the client retries). The front matches replies to waiting requests by
//! correlation id in a map, so a reply that arrives after its deadline finds nobody and is
//! dropped quietly.
//!
//! # Acks
//!
//! The back-server consumes with manual acks and a prefetch window, and acks a write only after
//! the SQLite transaction that applied it has committed: a crash anywhere before the ack makes
//! RabbitMQ redeliver, and re-applying an upsert is harmless.

mod batch;
mod layout;
mod message;
mod request_id;
mod topology;

pub use batch::{BATCH_TYPE, Format, MAX_BATCH, WireError, batch_body};
pub use layout::{Layout, QueueType, partition_of};
pub use message::{Key, KeyError, MAX_KEY_BYTES, Reply, Request};
pub use request_id::{RequestId, request_ids, request_ids_header};
pub use topology::{
    DEAD_REASON_HEADER, DIRECT_REPLY_TO, REQUEST_ID_HEADER, TopologyError, dead_letter_queue,
    declare_topology, existing_partitions,
};
