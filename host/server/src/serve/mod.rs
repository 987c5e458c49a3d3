//! Serving the router on a socket: each connection on hyper, watched
//! ([`connection`]) for a request head that does not arrive and for idling,
//! at most `max_connections` at once (the next is answered 503 and closed),
//! and a graceful shutdown that lets open requests finish for a bounded time.

mod connection;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::sync::{Semaphore, watch};

use crate::config::ServerConfig;

/// Serves `app` on `listener` under `config`'s connection limits until
/// `shutdown` resolves, then lets open requests finish for up to its
/// drain timeout.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    config: &ServerConfig,
) -> std::io::Result<()> {
    let limits = config.connections;
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS) as u32;
    let permits = Arc::new(Semaphore::new(max as usize));
    let (signalled, on_signal) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: give the
                    // connections open a moment to close.
                    if !is_connection_error(&e) {
                        tracing::error!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streamed tokens are small writes: without TCP_NODELAY, Nagle's
        // algorithm would hold each one back waiting for the client's ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let (app, on_signal) = (app.clone(), on_signal.clone());
                tokio::spawn(async move {
                    metrics::gauge!("kiln_connections_open").increment(1.0);
                    connection::serve(tcp, peer, app, limits, on_signal).await;
                    metrics::gauge!("kiln_connections_open").decrement(1.0);
                    drop(permit);
                });
            }
            Err(_) => {
                metrics::counter!("kiln_connections_refused_total").increment(1);
                tokio::spawn(connection::refuse(tcp, limits));
            }
        }
    }
    let _ = signalled.send(true);
    // A stream may run for minutes; past the drain timeout its connection is
    // closed (which cancels its sequence) rather than holding the exit.
    if tokio::time::timeout(config.drain_timeout, permits.acquire_many(max)).await.is_err() {
        tracing::warn!(drain_timeout = ?config.drain_timeout, "requests still open after the drain timeout; closing them");
    }
    Ok(())
}

/// Errors that end one connection, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}
