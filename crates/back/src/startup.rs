//! Wiring and lifecycle: open the store and bind the admin listener, then connect, consume, and
//! reconnect whenever the broker link drops, until shutdown. `main` and the tests both run
//! exactly this.

use crate::admin::{self, RECONNECTS, Status};
use crate::config::Config;
use crate::consumer::consume;
use crate::store::{Store, StoreError};
use anyhow::Context;
use lapin::uri::AMQPUri;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long to wait before reconnecting after a connection that did work has dropped.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

pub struct Application {
    config: Config,
    uri: AMQPUri,
    /// Shown in RabbitMQ's connection list, so operators (and tests) can tell whose it is.
    connection_name: String,
    store: Store,
    admin: TcpListener,
    status: Arc<Status>,
}

impl Application {
    /// Checks the settings, opens the database and binds the admin listener; does not need
    /// RabbitMQ to be up.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let uri = config.amqp.uri()?;
        admin::install_metrics();
        survive_file_size_limit()?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("listen on {} (ADMIN_LISTEN)", config.admin_listen))?;
        let store = Store::open(&config.db_path)
            .await
            .with_context(|| format!("open the database {}", config.db_path.display()))?;
        tracing::info!(db = %config.db_path.display(), "database ready");
        let connection_name = format!("back-server ({})", config.amqp.queue);
        let application = Self {
            config,
            uri,
            connection_name,
            store,
            admin,
            status: Arc::default(),
        };
        tracing::info!(address = %application.admin_addr(), "admin listening");
        Ok(application)
    }

    /// The admin listener's bound address; with port 0 in the settings this is where to find it.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes: finishes the message in hand, cancels the consumer,
    /// closes the AMQP connection and the database, then the admin listener.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        // The admin listener outlives the consumer, so probes and scrapes are answered (not
        // ready) until the very end; it is the last thing to stop.
        let admin_stop = CancellationToken::new();
        let admin_router = admin::router(self.status.clone());
        let admin = axum::serve(self.admin, admin_router)
            .with_graceful_shutdown(admin_stop.clone().cancelled_owned());
        let admin = tokio::spawn(async move {
            if let Err(err) = admin.await {
                tracing::error!(%err, "the admin listener failed");
            }
        });
        let result = {
            let serve = serve(
                &self.uri,
                &self.connection_name,
                &self.store,
                &self.config,
                &self.status,
                &token,
            );
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
        admin_stop.cancel();
        let _ = admin.await;
        result?;
        tracing::info!("back-server stopped");
        Ok(())
    }
}

async fn serve(
    uri: &AMQPUri,
    connection_name: &str,
    store: &Store,
    config: &Config,
    status: &Status,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut connections = 0u64;
    while let Some(connection) =
        kv_runtime::connect_with_backoff(uri, connection_name, shutdown).await
    {
        connections += 1;
        if connections > 1 {
            metrics::counter!(RECONNECTS, "server" => "back").increment(1);
        }
        status.set_connected(true);
        let result = consume(&connection, store, config, status, shutdown).await;
        status.set_connected(false);
        match result {
            Ok(()) => {
                kv_runtime::close_connection(&connection, "back-server shutting down").await;
                return Ok(());
            }
            Err(err) if err.is::<StoreError>() => {
                kv_runtime::close_connection(&connection, "back-server failed").await;
                return Err(err.context("the SQLite store failed"));
            }
            Err(err) => {
                tracing::warn!(error = %err, "lost the RabbitMQ link; reconnecting");
                kv_runtime::close_connection(&connection, "back-server reconnecting").await;
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                }
            }
        }
    }
    Ok(())
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
