//! One client connection on hyper, and the watch kept on it: a request's
//! head must arrive within `header_read_timeout` of its first byte (a
//! client trickling headers holds nothing for long), and a connection with
//! no request in flight and nothing arriving is closed after
//! `idle_timeout`. Time spent generating is neither: a request is in
//! flight from its head's arrival until its response body is dropped.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, header};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::Service;

use crate::ApiError;
use crate::config::ConnectionLimits;

/// Serves requests on `tcp` until the client closes it, a limit closes
/// it, or a shutdown has let its last request finish.
pub(super) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    mut on_signal: watch::Receiver<bool>,
) {
    let watch = Arc::new(Activity::new());
    let io = TokioIo::new(Watched { inner: tcp, activity: watch.clone() });
    let activity = watch.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let in_flight = InFlight::start(&activity);
        let mut app = app.clone();
        async move {
            let response = app.call(request.map(Body::new)).await;
            response.map(|r| r.map(|body| Body::new(Tracked { body, _in_flight: in_flight })))
        }
    });
    let mut conn =
        std::pin::pin!(hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades());
    let check_every = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut draining = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            _ = on_signal.wait_for(|s| *s), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = tokio::time::sleep(check_every) => {
                if let Some(reason) = watch.expired(&limits) {
                    tracing::debug!(%peer, reason, "closing a connection");
                    metrics::counter!("kiln_connections_closed_total", "reason" => reason).increment(1);
                    return;
                }
            }
        }
    }
}

/// Answers a connection over the limit with 503 and closes it (reading the
/// request first, so the client sees the answer rather than a reset).
pub(super) async fn refuse(tcp: TcpStream, limits: ConnectionLimits) {
    let service = hyper::service::service_fn(move |_: Request<Incoming>| async move {
        let mut response = ApiError::TooManyConnections { limit: limits.max_connections }.into_response();
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, std::convert::Infallible>(response)
    });
    let conn =
        hyper::server::conn::http1::Builder::new().keep_alive(false).serve_connection(TokioIo::new(tcp), service);
    let _ = tokio::time::timeout(limits.header_read_timeout, conn).await;
}

/// What the watch looks at, in milliseconds since the connection opened.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection opened).
    idle_since: AtomicU64,
    /// When the first byte of a request head not yet complete arrived.
    head_since: AtomicU64,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
        }
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Bytes arrived: the start of a request head, unless one is in flight.
    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_since.compare_exchange(NONE, self.now(), Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, limits: &ConnectionLimits) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = self.now();
        let past = |since: u64, limit: Duration| now.saturating_sub(since) > limit.as_millis() as u64;
        match self.head_since.load(Ordering::Acquire) {
            NONE => past(self.idle_since.load(Ordering::Acquire), limits.idle_timeout).then_some("idle"),
            since => past(since, limits.header_read_timeout).then_some("header_read_timeout"),
        }
    }
}

/// A request in flight, from its head's arrival until its response body
/// is dropped (sent, or the client gone).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_since.store(NONE, Ordering::Release);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(self.0.now(), Ordering::Release);
        }
    }
}

/// A response body that keeps its request in flight while it lives.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
