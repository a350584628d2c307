//! Connecting to RabbitMQ: the one place where both servers wait for the broker, with capped
//! exponential backoff, so a server started before RabbitMQ (or outliving it) never gives up.

use crate::AmqpSettings;
use futures_util::StreamExt;
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, Event};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A TCP connect to an unreachable host can hang for minutes; a try must end sooner.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat interval unless the URL sets one (`?heartbeat=N`). lapin drops a connection that
/// stays silent for two intervals; RabbitMQ's default of 60 s would leave a link cut by the network
/// (no FIN, no RST) looking alive for two minutes.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// How long setting up a link (channels, declarations, consumer) may take on a new connection.
/// RabbitMQ answers in milliseconds; a setup that gets no answer is retried like a failed
/// connect, since without this bound a server could wait forever, unable to serve.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a polite goodbye to RabbitMQ may take: the broker may already be gone.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl AmqpSettings {
    /// Checks the URL once at start-up, so a typo fails fast instead of being retried forever.
    pub fn uri(&self) -> anyhow::Result<AMQPUri> {
        let mut uri: AMQPUri = self
            .amqp_url
            .parse()
            .map_err(|err| anyhow::anyhow!("invalid AMQP_URL {}: {err}", redact(&self.amqp_url)))?;
        uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
        Ok(uri)
    }
}

/// The URL without its password, for logs and error messages.
pub fn redact(url: &str) -> String {
    match url.parse::<AMQPUri>() {
        Ok(uri) => redact_uri(&uri),
        Err(_) => "<unparseable AMQP URL>".to_owned(),
    }
}

/// Connects to RabbitMQ, retrying with capped exponential backoff and logging each failed try.
/// Returns `None` only if `shutdown` fires first.
pub async fn connect_with_backoff(
    uri: &AMQPUri,
    connection_name: &str,
    shutdown: &CancellationToken,
) -> Option<Connection> {
    let shown = redact_uri(uri);
    let mut delay = FIRST_RETRY;
    loop {
        let properties =
            ConnectionProperties::default().with_connection_name(connection_name.into());
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect_uri(uri.clone(), properties),
        );
        let error = tokio::select! {
            _ = shutdown.cancelled() => return None,
            result = attempt => match result {
                Ok(Ok(connection)) => {
                    tracing::info!(broker = %shown, "connected to RabbitMQ");
                    return Some(connection);
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
            },
        };
        tracing::warn!(broker = %shown, %error, retry_in = ?delay, "cannot connect to RabbitMQ");
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
}

/// Completes when `connection` fails (I/O error, missed heartbeats, closed by RabbitMQ) and
/// returns why. Call it right after connecting: it hears only what happens after the call.
///
/// A server must not learn of a dead connection only from the next operation on it: a consumer
/// waiting for deliveries, or a confirm or ack already sent, may never hear back.
pub fn connection_failure(
    connection: &Connection,
) -> impl Future<Output = String> + Send + 'static {
    let mut events = connection.events_listener();
    async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Error(err) => return err.to_string(),
                Event::ConnectionBlocked(reason) => {
                    tracing::warn!(%reason, "RabbitMQ blocks publishing (a resource alarm); writes wait")
                }
                Event::ConnectionUnblocked => tracing::info!("RabbitMQ unblocked publishing"),
                _ => {}
            }
        }
        "the connection ended".to_owned()
    }
}

/// Closes `connection` politely (its channels' unacked messages go back to their queues at
/// once), giving up after a moment if RabbitMQ does not answer.
pub async fn close_connection(connection: &Connection, reason: &str) {
    let closed = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await;
    match closed {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(%err, "the RabbitMQ connection was already closed"),
        Err(_) => tracing::warn!("RabbitMQ did not acknowledge closing the connection in time"),
    }
}

fn redact_uri(uri: &AMQPUri) -> String {
    format!(
        "amqp://{}@{}:{}/{}",
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
        let settings = |url: &str| AmqpSettings {
            amqp_url: url.into(),
            queue: "q".into(),
        };
        let default = settings("amqp://h/%2f").uri().unwrap();
        let chosen = settings("amqp://h/%2f?heartbeat=30").uri().unwrap();
        assert_eq!(default.query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        assert_eq!(chosen.query.heartbeat, Some(30));
    }

    #[test]
    fn redacted_urls_keep_everything_but_the_password() {
        let shown = redact("amqp://alice:s3cret@rabbit.example:5673/%2fprod");
        assert_eq!(shown, "amqp://alice@rabbit.example:5673/%2fprod");
        assert!(!redact("amqp://u:hunter2@h/v").contains("hunter2"));
        assert!(!redact("not a url with hunter2").contains("hunter2"));
    }
}
