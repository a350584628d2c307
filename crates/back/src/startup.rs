//! Wiring: open the store and bind the admin listener, then run the consumer's session under
//! `kv_runtime`'s supervisor (which connects, and reconnects whenever the link drops) until
//! shutdown. `main` and the tests both run exactly this.

use crate::admin::{self, Status};
use crate::config::Config;
use crate::consumer::Consumer;
use crate::store::Store;
use anyhow::Context;
use kv_runtime::{Nodes, Supervisor};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Application {
    config: Config,
    nodes: Nodes,
    store: Store,
    admin: TcpListener,
    status: Arc<Status>,
}

impl Application {
    /// Checks the settings, opens the database and binds the admin listener; does not need
    /// RabbitMQ to be up.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let nodes = config.amqp.nodes()?;
        admin::install_metrics();
        survive_file_size_limit()?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("listen on {} (ADMIN_LISTEN)", config.admin_listen))?;
        let store = Store::open(&config.db_path)
            .await
            .with_context(|| format!("open the database {}", config.db_path.display()))?;
        tracing::info!(db = %config.db_path.display(), "database ready");
        let application = Self {
            config,
            nodes,
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
        let queue = self.config.queue();
        let supervisor = Supervisor::new(self.nodes, "back", &queue, token.clone());
        let consumer = Consumer {
            store: &self.store,
            config: &self.config,
            status: &self.status,
        };
        let result = {
            let serve = supervisor.run(consumer);
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

/// A write past the process's file size limit (`ulimit -f`) raises SIGXFSZ, whose default action
/// kills the process. Like PostgreSQL, ignore it: the write then fails with EFBIG, SQLite reports
/// it, and the batch is retried like any other refused write, which is what a full disk gets too.
/// tokio keeps its handler installed for the life of the process once registered.
fn survive_file_size_limit() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _handled = signal(SignalKind::from_raw(libc::SIGXFSZ)).context("handle SIGXFSZ")?;
    Ok(())
}
