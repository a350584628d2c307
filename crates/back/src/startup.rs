//! Wiring and lifecycle: open the store, then connect, consume, and reconnect whenever the broker
//! link drops, until shutdown. `main` and the tests both run exactly this.

use crate::config::Config;
use crate::consumer::consume;
use crate::store::{Store, StoreError};
use anyhow::Context;
use lapin::uri::AMQPUri;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long to wait before reconnecting after a connection that did work has dropped.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

pub struct Application {
    config: Config,
    uri: AMQPUri,
    /// Shown in RabbitMQ's connection list, so operators (and tests) can tell whose it is.
    connection_name: String,
    store: Store,
}

impl Application {
    /// Checks the settings and opens the database; does not need RabbitMQ to be up.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let uri = config.amqp.uri()?;
        survive_file_size_limit()?;
        let store = Store::open(&config.db_path)
            .await
            .with_context(|| format!("open the database {}", config.db_path.display()))?;
        tracing::info!(db = %config.db_path.display(), "database ready");
        let connection_name = format!("back-server ({})", config.amqp.queue);
        Ok(Self {
            config,
            uri,
            connection_name,
            store,
        })
    }

    /// Serves until `shutdown` completes: finishes the message in hand, cancels the consumer,
    /// closes the AMQP connection and the database.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        let result = {
            let serve = self.serve(&token);
            tokio::pin!(serve);
            tokio::select! {
                result = &mut serve => result,
                _ = shutdown => {
                    token.cancel();
                    serve.await
                }
            }
        };
        self.store.close().await;
        result?;
        tracing::info!("back-server stopped");
        Ok(())
    }

    async fn serve(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        while let Some(connection) =
            kv_protocol::connect_with_backoff(&self.uri, &self.connection_name, shutdown).await
        {
            let result = consume(&connection, &self.store, &self.config, shutdown).await;
            match result {
                Ok(()) => {
                    kv_protocol::close_connection(&connection, "back-server shutting down").await;
                    return Ok(());
                }
                Err(err) if err.is::<StoreError>() => {
                    kv_protocol::close_connection(&connection, "back-server failed").await;
                    return Err(err.context("the SQLite store failed"));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "lost the RabbitMQ link; reconnecting");
                    kv_protocol::close_connection(&connection, "back-server reconnecting").await;
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    }
                }
            }
        }
        Ok(())
    }
}

/// A write past the process's file size limit (`ulimit -f`) raises SIGXFSZ, whose default action
/// kills the process. Like PostgreSQL, ignore it: the write then fails with EFBIG, SQLite reports
/// it, and the batch is retried like any other refused write, which is what a full disk gets too.
/// tokio keeps its handler installed for the life of the process once registered.
fn survive_file_size_limit() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _handled = signal(SignalKind::from_raw(libc::SIGXFSZ)).context("handle SIGXFSZ")?;
    Ok(())
}
