//! Wiring and lifecycle: bind, start the broker supervisor, serve until shutdown, then close the
//! AMQP connection. `main` and the tests both run exactly this.

use crate::auth::{ApiTokens, reload_on_hangup};
use crate::broker::Broker;
use crate::config::Config;
use crate::https;
use crate::routes::{AppState, router};
use crate::serve::{Limits, serve};
use anyhow::Context;
use axum::Router;
use kv_protocol::TopologyError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub struct Application {
    listener: TcpListener,
    router: Router,
    limits: Limits,
    broker: Arc<Broker>,
    broker_task: JoinHandle<Result<(), TopologyError>>,
    broker_shutdown: CancellationToken,
    /// Re-reads `API_TOKENS_FILE` on SIGHUP; only when it is set.
    token_reloader: Option<JoinHandle<()>>,
    /// The TLS side of HTTPS, with `TLS_CERT_FILE` and `TLS_KEY_FILE`.
    tls: Option<TlsAcceptor>,
}

impl Application {
    /// Binds the listener and starts connecting to RabbitMQ in the background: requests that
    /// arrive before the broker is reachable get `503` rather than waiting.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let nodes = config.amqp.nodes()?;
        let tls = https::acceptor(
            config.tls_cert_file.as_deref(),
            config.tls_key_file.as_deref(),
        )?;
        crate::routes::install_metrics();
        // Before anything starts: a malformed file stops the server here.
        let api_tokens = match &config.api_tokens_file {
            Some(path) => Some(Arc::new(ApiTokens::load(path.clone())?)),
            None => {
                tracing::warn!(
                    "API_TOKENS_FILE is not set: /api is open to anyone who can reach this server"
                );
                None
            }
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let token_reloader = match &api_tokens {
            Some(tokens) => {
                let hangups = signal(SignalKind::hangup()).context("install the SIGHUP handler")?;
                Some(tokio::spawn(reload_on_hangup(tokens.clone(), hangups)))
            }
            None => None,
        };
        let broker_shutdown = CancellationToken::new();
        let (broker, broker_task) = Broker::start(
            nodes,
            config.amqp.layout(),
            config.rpc_timeout(),
            config.max_in_flight as usize,
            config.messages_in_flight as usize,
            broker_shutdown.clone(),
        );
        let broker = Arc::new(broker);
        let state = AppState {
            broker: broker.clone(),
            body_limit: config.body_limit_bytes,
            body_read_timeout: std::time::Duration::from_millis(config.body_read_timeout_ms),
            api_tokens,
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
            token_reloader,
            tls,
        };
        let scheme = if application.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(address = %application.local_addr(), scheme, "listening");
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
    /// connection. Stops the same way, and returns the error, if RabbitMQ's queues turn out not
    /// to match the settings (another number of partitions, another queue type).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut broker_task = self.broker_task;
        let mut broker_ended = None;
        let stop = async {
            tokio::select! {
                () = shutdown => {}
                ended = &mut broker_task => broker_ended = Some(ended),
            }
        };
        serve(self.listener, self.router, self.limits, self.tls, stop).await;
        if let Some(reloader) = self.token_reloader {
            reloader.abort();
        }
        self.broker_shutdown.cancel();
        let ended = match broker_ended {
            Some(ended) => ended,
            None => broker_task.await,
        };
        ended
            .context("the RabbitMQ link task panicked")?
            .context("cannot use RabbitMQ's queues")?;
        tracing::info!("front-server stopped");
        Ok(())
    }
}
