//! Serving the router on a socket, with a graceful shutdown that lets open
//! requests finish for a bounded time.

use std::future::Future;
use std::time::Duration;

use axum::Router;

/// Serves `app` on `listener` until `shutdown` resolves, then lets open
/// requests finish for up to `drain_timeout`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Streamed tokens are small writes: without TCP_NODELAY, Nagle's algorithm
    // would hold each one back waiting for the client's ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let (signalled, mut on_signal) = tokio::sync::watch::channel(false);
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = signalled.send(true);
    });
    // A stream may run for minutes; past the drain timeout its connection is
    // closed (which cancels its sequence) rather than holding the exit.
    let deadline = async move {
        if on_signal.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(?drain_timeout, "requests still open after the drain timeout; closing them");
            Ok(())
        }
    }
}
