//! The front-server's side of RabbitMQ: one long-lived connection with two channels, kept alive
//! by a supervisor task, and the bookkeeping that turns AMQP's fire-and-forget messages into
//! request/response calls.
//!
//! - Writes go out on a channel in publisher-confirm mode, published by one task per link in the
//!   order they come (see [`publish_writes`] for why one). Each request awaits the confirm of its
//!   own message, so confirms of concurrent requests overlap instead of queueing.
//! - Reads go out on a second channel, without confirms, which also consumes direct reply-to
//!   (RabbitMQ requires both on the same channel). Replies are matched to waiting requests by
//!   correlation id through a map; see [`PendingReplies`].
//!
//! The supervisor publishes the current channels through a `watch`; while there are none (broker
//! down, reconnecting) every request is answered `503` at once instead of hanging.

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use kv_protocol::{DIRECT_REPLY_TO, Key, REQUEST_ID_HEADER, Reply, Request, declare_topology};
use kv_runtime::{End, Supervisor};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PERSISTENT: u8 = 2;

const CONFIRMS: &str = "kv_amqp_publish_confirms_total";
const READS_TIMED_OUT: &str = "kv_reads_timed_out_total";

/// Names and explains the broker's series (the `# HELP` lines of `/metrics`).
pub fn describe_metrics() {
    metrics::describe_counter!(
        CONFIRMS,
        "Writes published, by how RabbitMQ answered: ack, nack, returned (no queue), timeout \
         (no answer within RPC_TIMEOUT_MS) or error (the link broke first)"
    );
    metrics::describe_counter!(
        READS_TIMED_OUT,
        "Reads that got no reply within RPC_TIMEOUT_MS (answered 504)"
    );
    // Present from the start at 0, so that `rate()` and `increase()` see the first event too.
    for outcome in ["ack", "nack", "returned", "timeout", "error"] {
        metrics::counter!(CONFIRMS, "outcome" => outcome).increment(0);
    }
    metrics::counter!(READS_TIMED_OUT).increment(0);
}

/// Counts one write's confirm by its outcome.
fn count_confirm(outcome: &'static str) {
    metrics::counter!(CONFIRMS, "outcome" => outcome).increment(1);
}

/// Why a call through the broker did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// 503: no working connection to RabbitMQ right now, or it dropped mid-request.
    #[error("RabbitMQ is unavailable, the request was not processed: {0}")]
    Unavailable(String),
    /// 503: RabbitMQ refused (nacked) or could not route the write.
    #[error("RabbitMQ refused the write, it was not stored: {0}")]
    Refused(String),
    /// 503: RabbitMQ did not confirm the write within the deadline.
    #[error("RabbitMQ did not confirm the write within {0} ms; retry it")]
    Unconfirmed(u64),
    /// 504: the back-server did not answer a read within the deadline.
    #[error("No reply from the back-server within {0} ms")]
    NoReply(u64),
}

impl BrokerError {
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::NoReply(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The channels of the current connection. Requests share it through an `Arc`: cloning a lapin
/// `Channel` is far dearer than bumping one counter.
struct Link {
    /// Counts links since start, so a failure report about an old link is not taken for the new.
    generation: u64,
    /// Hands writes to [`publish_writes`], the only task that publishes on `writes`.
    publisher: mpsc::Sender<Write>,
    writes: Channel,
    reads: Channel,
}

/// A write for [`publish_writes`] and where to send RabbitMQ's confirm of it.
struct Write {
    body: Vec<u8>,
    id: ShortString,
    headers: FieldTable,
    done: oneshot::Sender<lapin::Result<Confirmation>>,
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

/// Handle used by request handlers; cheap to share behind an `Arc`.
pub struct Broker {
    link: watch::Receiver<Option<Arc<Link>>>,
    replies: Arc<PendingReplies>,
    /// The generation of a link a request found broken; the supervisor then rebuilds it.
    broken: watch::Sender<u64>,
    queue: ShortString,
    deadline: Duration,
    /// The read deadline as an AMQP `expiration`, formatted once.
    expiration: ShortString,
    _stop_supervisor: tokio_util::sync::DropGuard,
}

impl Broker {
    /// Starts the supervisor that connects (and reconnects) to RabbitMQ. It runs until `shutdown`
    /// is cancelled, then closes the connection; await the returned task to know it has.
    pub fn start(
        uri: AMQPUri,
        queue: &str,
        deadline: Duration,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (link_sender, link) = watch::channel(None);
        let replies = Arc::new(PendingReplies::default());
        let broken = watch::Sender::new(0);
        // The supervisor also stops if this handle is dropped without a shutdown (a test that
        // aborts the server): nobody could use its link any more.
        let shutdown = shutdown.child_token();
        let stop_supervisor = shutdown.clone().drop_guard();
        let session = Session {
            queue: queue.to_owned(),
            link: link_sender,
            replies: replies.clone(),
            broken: broken.subscribe(),
            generation: 0,
        };
        let supervisor = Supervisor::new(uri, "front", queue, shutdown);
        let task = tokio::spawn(async move {
            let Ok(()) = supervisor.run(session).await;
        });
        let broker = Self {
            link,
            replies,
            broken,
            _stop_supervisor: stop_supervisor,
            queue: queue.into(),
            deadline,
            expiration: deadline.as_millis().to_string().into(),
        };
        (broker, task)
    }

    /// Completes once a link to RabbitMQ is up (immediately if it already is).
    pub fn ready(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut link = self.link.clone();
        async move {
            let _ = link.wait_for(Option::is_some).await;
        }
    }

    /// Whether a link to RabbitMQ is up right now, i.e. requests would not get `503` for lack of it.
    pub fn is_connected(&self) -> bool {
        self.link.borrow().is_some()
    }

    fn current(&self) -> Result<Arc<Link>, BrokerError> {
        self.link
            .borrow()
            .clone()
            .ok_or_else(|| BrokerError::Unavailable("not connected".into()))
    }

    /// Publishes a durable write and returns once RabbitMQ has confirmed it.
    /// `request_id` travels in the message's headers, for the back-server's logs.
    pub async fn write(&self, key: Key, value: f64, request_id: &str) -> Result<(), BrokerError> {
        let link = self.current()?;
        let generation = link.generation;
        let (done, confirmed) = oneshot::channel();
        let write = Write {
            body: Request::Put { key, value }.to_vec(),
            id: message_id(),
            headers: request_headers(request_id),
            done,
        };
        let call = async {
            link.publisher
                .send(write)
                .await
                .map_err(|_| BrokerError::Unavailable("the write publisher has stopped".into()))?;
            confirmed
                .await
                .map_err(|_| BrokerError::Unavailable("the write publisher has stopped".into()))?
                .map_err(|err| {
                    count_confirm("error");
                    self.link_failed(generation, err)
                })
        };
        let confirmation = tokio::time::timeout(self.deadline, call)
            .await
            .map_err(|_| {
                count_confirm("timeout");
                BrokerError::Unconfirmed(self.deadline.as_millis() as u64)
            })??;
        match confirmation {
            Confirmation::Ack(None) => {
                count_confirm("ack");
                Ok(())
            }
            Confirmation::Ack(Some(_)) => {
                count_confirm("returned");
                // Someone deleted the queue: rebuilding the link declares it again.
                self.broken.send_replace(generation);
                Err(BrokerError::Refused(format!(
                    "no queue named '{}' to route it to",
                    self.queue
                )))
            }
            Confirmation::Nack(_) => {
                count_confirm("nack");
                Err(BrokerError::Refused("nacked".into()))
            }
            Confirmation::NotRequested => Err(BrokerError::Unavailable(
                "the write channel is not in confirm mode".into(),
            )),
        }
    }

    /// Asks the back-server for the value under `key` and waits for its reply until the deadline.
    pub async fn read(&self, key: &Key, request_id: &str) -> Result<Option<f64>, BrokerError> {
        let link = self.current()?;
        let mut waiting = self.replies.register();
        let properties = json_properties()
            .with_message_id(message_id())
            .with_headers(request_headers(request_id))
            .with_correlation_id(waiting.id.to_string().into())
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_expiration(self.expiration.clone());
        let body = Request::Get { key }.to_vec();
        let call = async {
            link.reads
                .basic_publish(
                    "".into(),
                    self.queue.clone(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .map_err(|err| self.link_failed(link.generation, err))?;
            tracing::debug!("read published; waiting for the back-server's reply");
            waiting.reply().await
        };
        let reply = tokio::time::timeout(self.deadline, call)
            .await
            .map_err(|_| {
                metrics::counter!(READS_TIMED_OUT).increment(1);
                BrokerError::NoReply(self.deadline.as_millis() as u64)
            })??;
        Ok(match reply {
            Reply::Found { value } => Some(value),
            Reply::NotFound => None,
        })
    }

    fn link_failed(&self, generation: u64, err: lapin::Error) -> BrokerError {
        self.broken.send_replace(generation);
        BrokerError::Unavailable(err.to_string())
    }
}

fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

fn request_headers(request_id: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        REQUEST_ID_HEADER.into(),
        AMQPValue::LongString(request_id.into()),
    );
    headers
}

/// A unique id for each message: the back-server counts redeliveries by it (see its consumer).
fn message_id() -> ShortString {
    uuid::Uuid::new_v4().hyphenated().to_string().into()
}

/// Reads waiting for their reply, by correlation id.
///
/// A plain mutex is right here: it is held for one map operation, never across an await.
/// Correlation ids are a counter, unique for the life of the process.
#[derive(Default)]
struct PendingReplies {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
}

impl PendingReplies {
    fn register(&self) -> Waiting<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(id, sender);
        Waiting {
            replies: self,
            id,
            receiver,
        }
    }

    /// Hands a reply to its waiting request; a reply nobody waits for any more (its request
    /// timed out or was abandoned) is dropped.
    fn complete(&self, correlation_id: &str, reply: Reply) {
        let sender = correlation_id
            .parse()
            .ok()
            .and_then(|id| self.lock().remove(&id));
        match sender {
            Some(sender) => {
                let _ = sender.send(reply);
            }
            None => tracing::debug!(correlation_id, "dropping a reply nobody waits for"),
        }
    }

    /// Ends every waiting read with "unavailable": their replies can no longer arrive.
    fn abandon_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One registered read; deregisters itself when dropped, whether it got its reply or not.
struct Waiting<'a> {
    replies: &'a PendingReplies,
    id: u64,
    receiver: oneshot::Receiver<Reply>,
}

impl Waiting<'_> {
    async fn reply(&mut self) -> Result<Reply, BrokerError> {
        (&mut self.receiver).await.map_err(|_| {
            BrokerError::Unavailable("the RabbitMQ link dropped before the reply".into())
        })
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.replies.lock().remove(&self.id);
    }
}

/// The front-server's side of the connection lifecycle ([`kv_runtime::Session`]): opens the two
/// channels, offers them to requests, routes replies, and notices when a request found the link
/// broken.
struct Session {
    queue: String,
    link: watch::Sender<Option<Arc<Link>>>,
    replies: Arc<PendingReplies>,
    broken: watch::Receiver<u64>,
    /// Counts links since start, so a failure report about an old link is not taken for the new.
    generation: u64,
}

/// What [`Session::open`] sets up on a connection: the link requests use, and the reply consumer.
struct Opened {
    link: Arc<Link>,
    replies: Consumer,
}

impl kv_runtime::Session for Session {
    type Link = Opened;
    type Fatal = std::convert::Infallible;

    async fn open(&mut self, connection: &Connection) -> lapin::Result<Opened> {
        self.generation += 1;
        let writes = connection.create_channel().await?;
        declare_topology(&writes, &self.queue).await?;
        writes
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let (publisher, requests) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(publish_writes(
            writes.clone(),
            self.queue.as_str().into(),
            requests,
        ));
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
        let link = Link {
            generation: self.generation,
            publisher,
            writes,
            reads,
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
        tracing::info!(queue = %self.queue, "ready: publishing to RabbitMQ");
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
            match (correlation_id, Reply::from_slice(&delivery.data)) {
                (Some(id), Ok(reply)) => self.replies.complete(id.as_str(), reply),
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
