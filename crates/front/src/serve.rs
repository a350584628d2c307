//! The HTTP/1 accept loop, in place of `axum::serve`, which offers neither a header read timeout
//! nor a connection limit: without them a client that opens connections and sends its headers a
//! byte at a time (slow-loris) holds sockets, tasks and buffers for as long as it likes.
//!
//! - Each connection must deliver a request's headers within the header read timeout. hyper
//!   starts that clock whenever it waits for a request, so the same timeout also ends idle
//!   keep-alive connections.
//! - At most `max_connections` are served at once. At the limit the loop stops accepting: new
//!   clients wait in the kernel's accept queue (the listen backlog) instead of being refused, and
//!   are served as soon as a slot frees. Slow clients give theirs up within the header read
//!   timeout, so the wait is bounded by it. Answering `503` at the limit instead would cost an
//!   accept, a task and a socket per refused client at exactly the moment the server has none to
//!   spare.
//! - On shutdown the loop stops accepting, idle connections close, and requests in flight finish.
//! - With HTTPS (`TLS_CERT_FILE`), each accepted stream goes through the TLS handshake in its own
//!   task, within the header read timeout too, so that a client stalling the handshake holds its
//!   slot no longer than one stalling its headers. A failed handshake (a plain HTTP request
//!   among them) ends only that connection, logged at debug.

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// Largest read buffer per connection, which also caps the size of a request's headers (larger
/// ones get hyper's `431`). hyper's own default, about 400 KiB, would let each slow client pin
/// that much memory; 64 KiB bounds the worst case to `max_connections` × 64 KiB.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Pause after an accept error that is not about one client, such as running out of file
/// descriptors: retrying at once would only spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` completes, then waits for open connections to
/// finish the requests they are in. With `tls`, every connection is HTTPS.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_READ_BUFFER)
        // A client may send its request and then close its sending half (as `nc -N` does) and
        // still expects the answer; without this hyper takes the EOF for an abort and drops the
        // request mid-way.
        .half_close(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Take the slot before accepting, so that at the limit clients queue in the backlog.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) if is_about_one_client(&err) => continue,
                Err(err) => {
                    tracing::error!(%err, "cannot accept connections");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            },
        };
        let http = http.clone();
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            match tls {
                None => serve_connection(&http, stream, service, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(&http, stream, service, watcher).await,
                        Ok(Err(err)) => tracing::debug!(%err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(
                            timeout = ?handshake_timeout,
                            "TLS handshake not done within the header read timeout"
                        ),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves HTTP/1 on one accepted (and, with HTTPS, decrypted) stream until it closes.
async fn serve_connection<S>(
    http: &http1::Builder,
    stream: S,
    service: TowerToHyperService<axum::Router>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
    // Timeouts and malformed requests end here; hyper has already answered what it could.
    if let Err(err) = connection.await {
        tracing::debug!(%err, "connection closed");
    }
}

/// Errors of one connection that died before it was accepted; the listener itself is fine.
fn is_about_one_client(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
    )
}
