//! The front-server's broker client: the [`Broker`] handle request handlers call, which turns
//! AMQP's fire-and-forget messages into request/response calls over one long-lived connection.
//!
//! - `link`: the connection's two channels, kept by `kv_runtime`'s supervisor. While there are
//!   none (broker down, reconnecting) every request is answered `503` at once instead of hanging.
//! - `publisher`: writes go out on the confirm channel, published by one task per link in the
//!   order they come. Each request awaits the confirm of its own message, so confirms of
//!   concurrent requests overlap instead of queueing.
//! - `replies`: reads go out on the second channel, without confirms, and their replies come
//!   back through direct reply-to, matched to waiting requests by correlation id.
//! - `error`: what can go wrong, said so that a client knows whether its request was processed.

mod error;
mod link;
mod publisher;
mod replies;

pub use error::BrokerError;

use kv_protocol::{DIRECT_REPLY_TO, Key, REQUEST_ID_HEADER, Reply, Request};
use kv_runtime::Supervisor;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Confirmation};
use link::{Link, Session};
use publisher::Write;
use replies::PendingReplies;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
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
            .ok_or(BrokerError::Unavailable("not connected"))
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
                .map_err(|_| BrokerError::Unavailable("the write publisher has stopped"))?;
            confirmed
                .await
                .map_err(|_| BrokerError::Unavailable("the write publisher has stopped"))?
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
                Err(BrokerError::Returned {
                    queue: self.queue.to_string(),
                })
            }
            Confirmation::Nack(_) => {
                count_confirm("nack");
                Err(BrokerError::Nacked)
            }
            Confirmation::NotRequested => Err(BrokerError::Unavailable(
                "the write channel is not in confirm mode",
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
        BrokerError::LinkFailed(err)
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
