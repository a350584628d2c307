//! Wiring and lifecycle: bind, start the broker supervisor, serve until shutdown, then close the
//! AMQP connection. `main` and the tests both run exactly this.

use crate::broker::Broker;
use crate::config::Config;
use crate::routes::{AppState, router};
use crate::serve::{Limits, serve};
use anyhow::Context;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Application {
    listener: TcpListener,
    router: Router,
    limits: Limits,
    broker: Arc<Broker>,
    broker_task: JoinHandle<()>,
    broker_shutdown: CancellationToken,
}

impl Application {
    /// Binds the listener and starts connecting to RabbitMQ in the background: requests that
    /// arrive before the broker is reachable get `503` rather than waiting.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let uri = config.amqp.uri()?;
        crate::routes::install_metrics();
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let broker_shutdown = CancellationToken::new();
        let (broker, broker_task) = Broker::start(
            uri,
            &config.amqp.queue,
            config.rpc_timeout(),
            config.max_in_flight as usize,
            broker_shutdown.clone(),
        );
        let broker = Arc::new(broker);
        let state = AppState {
            broker: broker.clone(),
            body_limit: config.body_limit_bytes,
            body_read_timeout: std::time::Duration::from_millis(config.body_read_timeout_ms),
        };
        let application = Self {
            listener,
            router: router(state),
            limits: Limits {
                header_read_timeout: config.header_read_timeout(),
                max_connections: config.max_connections as usize,
            },
            broker,
            broker_task,
            broker_shutdown,
        };
        tracing::info!(address = %application.local_addr(), "listening");
        Ok(application)
    }

    /// The bound address; with port 0 in the settings this is where to find the server.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Completes once the broker link is up.
    pub fn ready(&self) -> impl Future<Output = ()> + Send + 'static {
        self.broker.ready()
    }

    /// Serves until `shutdown` completes, lets requests in flight finish, then closes the AMQP
    /// connection.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        serve(self.listener, self.router, self.limits, shutdown).await;
        self.broker_shutdown.cancel();
        let _ = self.broker_task.await;
        tracing::info!("front-server stopped");
        Ok(())
    }
}
