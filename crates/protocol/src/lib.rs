//! The wire between `front-server` and `back-server`: what travels through RabbitMQ and on which
//! queues. Both servers depend on this crate, so a change here is a change of protocol for both at
//! once. It is only the wire: how a server connects, its settings and its telemetry live in
//! `kv-runtime`.
//!
//! # Topology
//!
//! - **`<KV_QUEUE>`** (default `kv.requests`): one durable classic queue that carries writes *and*
//!   reads. Because RabbitMQ delivers a queue in FIFO order and the back-server applies it in
//!   order, a read published after a write's confirm is answered after that write was applied:
//!   this is what gives read-your-writes across any number of front-servers. The queue is declared
//!   with `x-single-active-consumer`, so a second back-server started by mistake waits as a hot
//!   standby instead of interleaving the queue with the first.
//! - **`<KV_QUEUE>.dead`**: a durable queue for messages the back-server cannot parse. The
//!   back-server republishes them there itself (persistent, confirmed, with an
//!   `x-kv-dead-reason` header) before acking the original. We deliberately do *not* give the
//!   request queue a dead-letter exchange: RabbitMQ would then also dead-letter every read that
//!   expired unanswered, and the dead queue must hold only what needs a person's attention.
//!
//! Both servers declare both queues at every (re)connect, with identical arguments, so either
//! may start first.
//!
//! # Messages
//!
//! Bodies are JSON ([`Request`], [`Reply`]), `content_type` `application/json`.
//!
//! - **Write**: `{"op":"put","key":"k","value":1.5}`, published persistent (delivery mode 2),
//!   `mandatory`, on a channel in publisher-confirm mode. The front answers `200` only after the
//!   broker's ack, which RabbitMQ sends once the message is fsynced to the durable queue. A nack,
//!   a return (no queue) or a lost connection is a `503`.
//! - **Read**: `{"op":"get","key":"k"}`, transient, with `correlation_id`, `reply_to` and an
//!   `expiration` equal to the front's read deadline (`RPC_TIMEOUT_MS`): a read whose client has
//!   given up is discarded by the broker instead of being worked on.
//! - **Reply**: a [`Reply`] published by the back-server to the default exchange with the read's
//!   `reply_to` as routing key and its `correlation_id`.
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

mod message;
mod topology;

pub use message::{Key, KeyError, MAX_KEY_BYTES, Reply, Request};
pub use topology::{
    DEAD_REASON_HEADER, DIRECT_REPLY_TO, REQUEST_ID_HEADER, dead_letter_queue, declare_topology,
};
