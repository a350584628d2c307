//! The one connection lifecycle both servers run: connect to RabbitMQ with capped backoff, set up
//! a session on the connection within a bound, run it until shutdown, loss or a fatal error,
//! close within a bound, and start over. Every reconnect either server makes happens in
//! [`Supervisor::run`], and is logged and counted there, once.
//!
//! What differs between the servers is their [`Session`]: the channels they open and the work
//! they do on them. The front-server publishes requests and routes replies; the back-server
//! consumes, applies and acks.
//!
//! With several RabbitMQ nodes (a cluster), a server connects to one of them, starting at a node
//! picked at random so that servers spread over the nodes, and moves on to the next whenever a
//! connection fails or is refused: a node that dropped its clients is often about to go away.
//!
//! During a resource alarm (memory or disk), RabbitMQ stops reading from every connection that
//! publishes, and lapin then holds all of that connection's outgoing frames, acks included. A
//! session that must keep acking while it cannot publish (the back-server, which drains the queue
//! even when the alarm is caused by the queue's own backlog) asks for a second connection that
//! does the publishing ([`Session::SEPARATE_PUBLISHER`]). Every session is told whether its
//! publishing connection is blocked, and why ([`Connections::blocked`]).

use crate::AmqpSettings;
use crate::amqp_tls::{Nodes, is_certificate_error};
use futures_util::StreamExt;
use kv_protocol::TopologyError;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties, Event};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Pause before reconnecting after a connection that did work dropped; the connect loop backs off
/// further if the broker stays away.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A TCP connect to an unreachable host can hang for minutes; a try must end sooner.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat interval unless the URL sets one (`?heartbeat=N`). lapin drops a connection that
/// stays silent for two intervals; RabbitMQ's default of 60 s would leave a link cut by the network
/// (no FIN, no RST) looking alive for two minutes.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// Largest AMQP frame unless the URL sets one (`?frame_max=N`). lapin keeps two buffers of 32
/// frames per connection, zero-filled: at RabbitMQ's default of 128 KiB that is 8 MiB per
/// connection, most of a server's memory. Our messages are small (a full batch of writes is a
/// few frames of 32 KiB), and RabbitMQ splits and joins frames for any size.
const DEFAULT_FRAME_MAX: u32 = 32 * 1024;
/// How long setting up a link (channels, declarations, consumer) may take on a new connection.
/// RabbitMQ answers in milliseconds; a setup that gets no answer is retried like a failed
/// connect, since without this bound a server could wait forever, unable to serve.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a polite goodbye to RabbitMQ may take: the broker may already be gone.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl AmqpSettings {
    /// The URLs of the nodes to connect to, checked once at start-up, so that a typo fails fast
    /// instead of being retried forever. With `AMQP_PASSWORD_FILE`, the file's password replaces
    /// every URL's; a file that cannot be read or is empty is an error naming it.
    pub fn uris(&self) -> anyhow::Result<Vec<AMQPUri>> {
        let password = self
            .amqp_password_file
            .as_deref()
            .map(read_password_file)
            .transpose()?;
        let mut overridden = false;
        let uris = self
            .amqp_url
            .split(',')
            .map(|url| {
                let url = url.trim();
                let mut uri: AMQPUri = url
                    .parse()
                    .map_err(|err| anyhow::anyhow!("invalid AMQP_URL {}: {err}", redact(url)))?;
                uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
                uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
                if let Some(password) = &password {
                    overridden |= has_password(url);
                    uri.authority.userinfo.password.clone_from(password);
                }
                Ok(uri)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if overridden && let Some(path) = &self.amqp_password_file {
            tracing::info!(
                file = %path.display(),
                "AMQP_URL carries a password; the one of AMQP_PASSWORD_FILE is used instead"
            );
        }
        Ok(uris)
    }
}

/// The password in the file at `path`, less one trailing newline (`\n` or `\r\n`), as editors
/// and `echo` leave one.
fn read_password_file(path: &std::path::Path) -> anyhow::Result<String> {
    let mut password = std::fs::read_to_string(path).map_err(|err| {
        anyhow::anyhow!("cannot read AMQP_PASSWORD_FILE {}: {err}", path.display())
    })?;
    if password.ends_with('\n') {
        password.pop();
        if password.ends_with('\r') {
            password.pop();
        }
    }
    if password.is_empty() {
        anyhow::bail!(
            "AMQP_PASSWORD_FILE {} is empty: it must hold the RabbitMQ password",
            path.display()
        );
    }
    Ok(password)
}

/// Whether `url` writes a password (`user:password@`) in its authority.
fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// The URL without its password, for logs and error messages.
pub fn redact(url: &str) -> String {
    match url.parse::<AMQPUri>() {
        Ok(uri) => redact_uri(&uri),
        Err(_) => "<unparseable AMQP URL>".to_owned(),
    }
}

/// The counter of reconnects, labelled by server.
const RECONNECTS: &str = "kv_amqp_reconnects_total";

/// How a session's run ended.
#[derive(Debug)]
pub enum End<F> {
    /// The server is shutting down: the supervisor closes the session and the connection, and
    /// stops.
    Shutdown,
    /// The link broke (a channel closed, a consumer was cancelled, a publish failed): the
    /// supervisor reconnects. Says why, for the log.
    Lost(String),
    /// Something reconnecting cannot cure: the supervisor closes the connection and returns it.
    Fatal(F),
}

/// The connections a session works on, which the supervisor opened and will close.
pub struct Connections {
    /// The connection that consumes and acks (and publishes, unless there is a second one).
    pub consume: Connection,
    separate_publisher: Option<Connection>,
    /// Set by the supervisor from the publishing connection's events.
    blocked: watch::Sender<Option<String>>,
}

impl Connections {
    /// The connection that publishes: a connection of its own if the session asked for one.
    pub fn publish(&self) -> &Connection {
        self.separate_publisher.as_ref().unwrap_or(&self.consume)
    }

    /// Why RabbitMQ blocks the publishing connection (a resource alarm), or `None`, kept up to
    /// date. RabbitMQ says so only when the connection next publishes after the alarm began.
    pub fn blocked(&self) -> watch::Receiver<Option<String>> {
        self.blocked.subscribe()
    }

    /// Every connection, the publishing one too if it is a second one.
    fn all(&self) -> impl Iterator<Item = &Connection> {
        std::iter::once(&self.consume).chain(&self.separate_publisher)
    }
}

/// Why a session could not be set up on a connection.
#[derive(Debug)]
pub enum OpenError<F> {
    /// The link failed (or RabbitMQ refused something a retry may cure): the supervisor tries
    /// again on a new connection. Says why, for the log.
    Link(String),
    /// Something reconnecting cannot cure: the supervisor returns it, as with [`End::Fatal`].
    Fatal(F),
}

impl<F> From<lapin::Error> for OpenError<F> {
    fn from(err: lapin::Error) -> Self {
        Self::Link(err.to_string())
    }
}

/// Queues that do not match the server's settings end the server; a failed link is retried.
impl<F: From<TopologyError>> From<TopologyError> for OpenError<F> {
    fn from(err: TopologyError) -> Self {
        if err.is_link() {
            Self::Link(err.to_string())
        } else {
            Self::Fatal(err.into())
        }
    }
}

/// What a server does with a connection: the only part of the lifecycle that differs between
/// the servers.
///
/// The supervisor calls [`open`](Self::open) on each new connection, then [`run`](Self::run),
/// then [`close`](Self::close) if the run ended in [`End::Shutdown`], and
/// [`detach`](Self::detach) whenever it is done with a connection, however that went.
pub trait Session: Send {
    /// What `open` sets up on a connection: its channels, consumers and tasks.
    type Link: Send;
    /// The error that ends the server, carried by [`End::Fatal`].
    type Fatal: Send;
    /// Whether to publish on a connection of its own (see the module docs).
    const SEPARATE_PUBLISHER: bool = false;

    /// Opens channels, declares the topology, starts consumers. The supervisor gives it
    /// [`SETUP_TIMEOUT`]; a timeout or an [`OpenError::Link`] is retried on new connections.
    fn open(
        &mut self,
        connections: &Connections,
    ) -> impl Future<Output = Result<Self::Link, OpenError<Self::Fatal>>> + Send;

    /// Does the server's work on `link` until `shutdown` is cancelled, the link breaks or a fatal
    /// error. When the connection itself fails, the supervisor drops this future: whatever it
    /// leaves unfinished must be safe to abandon (unacked messages are redelivered, unconfirmed
    /// writes fail).
    fn run(
        &mut self,
        link: &mut Self::Link,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = End<Self::Fatal>> + Send;

    /// Says goodbye on the link's channels before the connection closes, so that closing the
    /// connection does not race them. Called at shutdown only, within [`CLOSE_TIMEOUT`].
    fn close(&mut self, link: Self::Link) -> impl Future<Output = lapin::Result<()>> + Send;

    /// The connection is done with: stop offering it (requests get `503`, probes say not ready).
    fn detach(&mut self);
}

/// Keeps a server connected to RabbitMQ for as long as it runs; see the module docs.
pub struct Supervisor {
    /// The nodes, tried in turn.
    nodes: Nodes,
    /// The node to try first.
    first: usize,
    /// The reconnect counter's label: `front` or `back`.
    server: &'static str,
    /// Shown in RabbitMQ's connection list, so operators (and tests) can tell whose it is.
    connection_name: String,
    shutdown: CancellationToken,
}

impl Supervisor {
    /// A supervisor for `server` (`front` or `back`) on `queue`, connecting to one of `nodes` (see
    /// the module docs), which stops when `shutdown` is cancelled. Names and zeroes its counter,
    /// so call it after the metrics recorder is installed.
    ///
    /// # Panics
    /// If `nodes` is empty.
    pub fn new(
        nodes: Nodes,
        server: &'static str,
        queue: &str,
        shutdown: CancellationToken,
    ) -> Self {
        metrics::describe_counter!(
            RECONNECTS,
            "Connections to RabbitMQ opened after the first, by server"
        );
        // Present from the start at 0, so that `rate()` and `increase()` see the first event too.
        metrics::counter!(RECONNECTS, "server" => server).increment(0);
        assert!(
            !nodes.uris.is_empty(),
            "a supervisor needs a node to connect to"
        );
        // Any start spreads servers over nodes as long as it differs between them: a random one
        // does, in containers too, where every server may have the same process id.
        let first = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish() as usize
                % nodes.uris.len()
        };
        Self {
            nodes,
            first,
            server,
            connection_name: format!("{server}-server ({queue})"),
            shutdown,
        }
    }

    /// Runs `session` on one connection after another until shutdown (`Ok`) or a fatal error.
    pub async fn run<S: Session>(self, mut session: S) -> Result<(), S::Fatal> {
        let mut opened = 0u64;
        let mut next = self.first;
        loop {
            let Some((connections, node)) = self.connect::<S>(next).await else {
                return Ok(());
            };
            // Whatever ends this connection, the next one starts at the next node.
            next = node + 1;
            opened += 1;
            if opened > 1 {
                metrics::counter!(RECONNECTS, "server" => self.server).increment(1);
            }
            let end = self.serve(&mut session, &connections).await;
            let goodbye = match end {
                End::Shutdown => self.goodbye("shutting down"),
                End::Fatal(_) => self.goodbye("failed"),
                End::Lost(ref reason) => {
                    tracing::warn!(%reason, "lost the RabbitMQ link; reconnecting");
                    self.goodbye("reconnecting")
                }
            };
            // At once, not one after the other: each may take its whole bound.
            let closes = connections
                .all()
                .map(|connection| close_connection(connection, &goodbye));
            futures_util::future::join_all(closes).await;
            match end {
                End::Shutdown => {
                    tracing::info!("closed the RabbitMQ connection");
                    return Ok(());
                }
                End::Fatal(err) => return Err(err),
                End::Lost(_) => {}
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
            }
        }
    }

    /// Connects the session's connection, trying the nodes from `first` on, and its publishing
    /// one if it asks for a second (to the same node if it can); `None` if shutdown came first.
    /// Also returns the node of the first connection.
    async fn connect<S: Session>(&self, first: usize) -> Option<(Connections, usize)> {
        let (consume, node) =
            connect_with_backoff(&self.nodes, first, &self.connection_name, &self.shutdown).await?;
        let separate_publisher = if S::SEPARATE_PUBLISHER {
            let name = format!("{} publisher", self.connection_name);
            match connect_with_backoff(&self.nodes, node, &name, &self.shutdown).await {
                Some((publisher, _)) => Some(publisher),
                None => {
                    close_connection(&consume, &self.goodbye("shutting down")).await;
                    return None;
                }
            }
        } else {
            None
        };
        let connections = Connections {
            consume,
            separate_publisher,
            blocked: watch::Sender::new(None),
        };
        Some((connections, node))
    }

    /// Sets up the session on `connections` and runs it until it ends, or until a connection
    /// fails; closes the session's channels at shutdown.
    async fn serve<S: Session>(&self, session: &mut S, connections: &Connections) -> End<S::Fatal> {
        // Listening starts before the setup, so no failure during it goes unheard.
        let blocked = &connections.blocked;
        let publisher = connections.separate_publisher.as_ref();
        let consume_failure =
            watch_connection(&connections.consume, publisher.is_none().then_some(blocked));
        let publish_failure = publisher.map(|publisher| watch_connection(publisher, Some(blocked)));
        let failure = async {
            match publish_failure {
                None => consume_failure.await,
                Some(publish_failure) => tokio::select! {
                    reason = consume_failure => reason,
                    reason = publish_failure => format!("the publishing connection: {reason}"),
                },
            }
        };
        let (end, link) = match tokio::time::timeout(SETUP_TIMEOUT, session.open(connections)).await
        {
            Ok(Ok(mut link)) => {
                let end = tokio::select! {
                    biased;
                    reason = failure => End::Lost(format!("the connection failed: {reason}")),
                    end = session.run(&mut link, &self.shutdown) => end,
                };
                (end, Some(link))
            }
            Ok(Err(OpenError::Link(err))) => {
                (End::Lost(format!("cannot set up the link: {err}")), None)
            }
            Ok(Err(OpenError::Fatal(err))) => (End::Fatal(err), None),
            Err(_) => (
                End::Lost(format!(
                    "RabbitMQ did not finish setting up the link within {SETUP_TIMEOUT:?}"
                )),
                None,
            ),
        };
        session.detach();
        if let (End::Shutdown, Some(link)) = (&end, link) {
            match tokio::time::timeout(CLOSE_TIMEOUT, session.close(link)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(%err, "closing the channels failed"),
                Err(_) => {
                    tracing::warn!("RabbitMQ did not acknowledge closing the channels in time")
                }
            }
        }
        end
    }

    /// The reason given to RabbitMQ when closing, shown in its log: `front-server shutting down`.
    fn goodbye(&self, why: &str) -> String {
        format!("{}-server {why}", self.server)
    }
}

/// Connects to one of `nodes`, trying them in turn from `first` on, and again after
/// a pause that grows (capped) with each round in which none answered; logs each failed try.
/// Returns the connection and the index of its node, or `None` only if `shutdown` fires first.
async fn connect_with_backoff(
    nodes: &Nodes,
    first: usize,
    connection_name: &str,
    shutdown: &CancellationToken,
) -> Option<(Connection, usize)> {
    let mut delay = FIRST_RETRY;
    loop {
        let count = nodes.uris.len();
        for node in (first..first + count).map(|i| i % count) {
            let shown = redact_uri(&nodes.uris[node]);
            let properties =
                ConnectionProperties::default().with_connection_name(connection_name.into());
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, nodes.connect(node, properties));
            let error = tokio::select! {
                _ = shutdown.cancelled() => return None,
                result = attempt => match result {
                    Ok(Ok(connection)) => {
                        tracing::info!(broker = %shown, "connected to RabbitMQ");
                        return Some((connection, node));
                    }
                    Ok(Err(err)) => err.to_string(),
                    Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
                },
            };
            if nodes.is_tls(node) && is_certificate_error(&error) {
                // Never a fallback to clear text: the try failed, and is retried as it is.
                tracing::error!(
                    broker = %shown,
                    %error,
                    "cannot connect to RabbitMQ: TLS handshake failed, a certificate problem \
                     (check AMQP_CA_FILE, that the URL's host is in the broker's certificate, \
                     and AMQP_CERT_FILE if the broker asks for one)"
                );
                continue;
            }
            tracing::warn!(broker = %shown, %error, "cannot connect to RabbitMQ");
        }
        tracing::warn!(retry_in = ?delay, "no RabbitMQ node answered; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
}

/// Completes when `connection` fails (I/O error, missed heartbeats, closed by RabbitMQ) and
/// returns why; meanwhile reports in `blocked` whether RabbitMQ blocks it from publishing. Hears
/// only what happens after the call, so call it before using the connection.
///
/// A server must not learn of a dead connection only from the next operation on it: a consumer
/// waiting for deliveries, or a confirm or ack already sent, may never hear back.
fn watch_connection(
    connection: &Connection,
    blocked: Option<&watch::Sender<Option<String>>>,
) -> impl Future<Output = String> + Send {
    // lapin hands each event to one listener only: this is the connection's one listener.
    let mut events = connection.events_listener();
    async move {
        while let Some(event) = events.next().await {
            match event {
                // A channel's error (a passive declare that found no queue, say) leaves the
                // connection working; the session hears of its own channels' ends.
                Event::Error(err) if err.is_amqp_soft_error() => {}
                Event::Error(err) => return err.to_string(),
                Event::ConnectionBlocked(reason) => {
                    tracing::warn!(%reason, "RabbitMQ blocks publishing (a resource alarm)");
                    if let Some(blocked) = blocked {
                        blocked.send_replace(Some(reason));
                    }
                }
                Event::ConnectionUnblocked => {
                    tracing::info!("RabbitMQ unblocked publishing");
                    if let Some(blocked) = blocked {
                        blocked.send_replace(None);
                    }
                }
                _ => {}
            }
        }
        "the connection ended".to_owned()
    }
}

/// Closes `connection` politely (its channels' unacked messages go back to their queues at
/// once), giving up after a moment if RabbitMQ does not answer.
async fn close_connection(connection: &Connection, reason: &str) {
    let closed = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await;
    match closed {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(%err, "the RabbitMQ connection was already closed"),
        Err(_) => tracing::warn!("RabbitMQ did not acknowledge closing the connection in time"),
    }
}

fn redact_uri(uri: &AMQPUri) -> String {
    format!(
        "{}://{}@{}:{}/{}",
        match uri.scheme {
            AMQPScheme::AMQP => "amqp",
            AMQPScheme::AMQPS => "amqps",
        },
        uri.authority.userinfo.username,
        uri.authority.host,
        uri.authority.port,
        uri.vhost.replace('/', "%2f"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_set_unless_the_url_sets_one() {
        let uris = settings("amqp://h/%2f, amqp://h2/%2f?heartbeat=30")
            .uris()
            .unwrap();
        assert_eq!(uris[0].query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        assert_eq!(uris[1].query.heartbeat, Some(30));
    }

    #[test]
    fn a_frame_size_is_set_unless_the_url_sets_one() {
        let uris = settings("amqp://h/%2f, amqp://h2/%2f?frame_max=131072")
            .uris()
            .unwrap();
        assert_eq!(uris[0].query.frame_max, Some(DEFAULT_FRAME_MAX));
        assert_eq!(uris[1].query.frame_max, Some(131_072));
    }

    #[test]
    fn a_list_of_urls_names_every_node_in_order() {
        let uris = settings("amqp://u:p@h1:5701/%2f,amqp://u:p@h2:5702/%2f,amqp://u:p@h3/v")
            .uris()
            .unwrap();
        let nodes: Vec<_> = uris.iter().map(redact_uri).collect();
        assert_eq!(
            nodes,
            [
                "amqp://u@h1:5701/%2f",
                "amqp://u@h2:5702/%2f",
                "amqp://u@h3:5672/v"
            ]
        );
    }

    #[test]
    fn a_bad_url_in_a_list_is_named_without_its_password() {
        let err = settings("amqp://u:hunter2@h1/%2f,http://u:hunter2@h2/")
            .uris()
            .unwrap_err();
        let shown = format!("{err:#}");
        assert!(shown.contains("invalid AMQP_URL"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(settings("amqp://h/%2f,").uris().is_err());
    }

    fn password_file(content: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), content).unwrap();
        file
    }

    fn with_password_file(url: &str, file: &std::path::Path) -> AmqpSettings {
        AmqpSettings {
            amqp_password_file: Some(file.to_owned()),
            ..settings(url)
        }
    }

    #[test]
    fn the_password_file_gives_every_url_its_password_and_wins_over_the_urls() {
        let file = password_file("s3cr:t@/%20\n");
        let uris = with_password_file(
            "amqp://kv-front@h1/kv, amqp://kv-front:old@h2/kv",
            file.path(),
        )
        .uris()
        .unwrap();
        for uri in &uris {
            assert_eq!(uri.authority.userinfo.username, "kv-front");
            // Taken as is: not percent-decoded, and only the one trailing newline goes.
            assert_eq!(uri.authority.userinfo.password, "s3cr:t@/%20");
        }
        let nodes: Vec<_> = uris.iter().map(redact_uri).collect();
        assert_eq!(
            nodes,
            ["amqp://kv-front@h1:5672/kv", "amqp://kv-front@h2:5672/kv"]
        );
    }

    #[test]
    fn only_one_trailing_newline_is_stripped() {
        for (content, expected) in [
            ("pw\r\n", "pw"),
            ("pw\n\n", "pw\n"),
            ("pw", "pw"),
            (" pw ", " pw "),
        ] {
            let file = password_file(content);
            let uris = with_password_file("amqp://u@h/v", file.path())
                .uris()
                .unwrap();
            assert_eq!(uris[0].authority.userinfo.password, expected, "{content:?}");
        }
    }

    #[test]
    fn without_the_file_the_urls_keep_their_passwords() {
        let uris = settings("amqp://u:p@h/v").uris().unwrap();
        assert_eq!(uris[0].authority.userinfo.password, "p");
    }

    #[test]
    fn a_missing_or_empty_password_file_is_an_error_that_names_it() {
        let err = with_password_file("amqp://u@h/v", "/nonexistent/amqp-password".as_ref())
            .uris()
            .unwrap_err();
        let shown = format!("{err:#}");
        assert!(
            shown.contains("AMQP_PASSWORD_FILE /nonexistent/amqp-password"),
            "{shown}"
        );
        for content in ["", "\n"] {
            let file = password_file(content);
            let err = with_password_file("amqp://u@h/v", file.path())
                .uris()
                .unwrap_err();
            let shown = format!("{err:#}");
            assert!(
                shown.contains(&file.path().display().to_string()),
                "{shown}"
            );
            assert!(shown.contains("is empty"), "{shown}");
        }
    }

    #[test]
    fn a_bad_url_is_named_without_the_files_password() {
        let file = password_file("hunter2\n");
        let err = with_password_file("amqp://u:p@h/v,http://u:p@h2/", file.path())
            .uris()
            .unwrap_err();
        assert!(!format!("{err:#}").contains("hunter2"));
    }

    #[test]
    fn a_password_in_a_url_is_found_only_in_its_authority() {
        assert!(has_password("amqp://u:p@h/v"));
        assert!(has_password("amqps://u:@h:5671"));
        assert!(!has_password("amqp://u@h/v"));
        assert!(!has_password("amqp://h:5672/v"));
        assert!(!has_password("amqp://h/v?x=a:b@c"));
        assert!(!has_password("amqp://u@h/a:b@c"));
    }

    fn settings(url: &str) -> AmqpSettings {
        AmqpSettings::for_url(url)
    }

    #[test]
    fn redacted_urls_keep_everything_but_the_password() {
        let shown = redact("amqp://alice:s3cret@rabbit.example:5673/%2fprod");
        assert_eq!(shown, "amqp://alice@rabbit.example:5673/%2fprod");
        assert!(!redact("amqp://u:hunter2@h/v").contains("hunter2"));
        assert!(!redact("not a url with hunter2").contains("hunter2"));
        assert_eq!(redact("amqps://u:hunter2@h/v"), "amqps://u@h:5671/v");
    }
}
