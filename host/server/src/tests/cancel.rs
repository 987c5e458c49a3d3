//! A client that goes away, or stops reading its stream, cancels its
//! sequence in the engine: over a real socket, watching the engine's
//! active-sequence count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_engine::{Backend, Engine};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{CONTEXT, TestApp};

/// Serves the real app on a loopback port.
async fn serve() -> (std::net::SocketAddr, Arc<Engine>) {
    let app = TestApp::real().build();
    let engine = app.engine();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = crate::ServerConfig { drain_timeout: Duration::from_secs(1), ..app.state.config().clone() };
    tokio::spawn(async move { crate::serve(listener, app.router, std::future::pending(), &config).await });
    (address, engine)
}

/// Opens a connection and sends a POST; the caller reads and drops it.
async fn send(address: std::net::SocketAddr, path: &str, body: serde_json::Value) -> TcpStream {
    let mut socket = TcpStream::connect(address).await.unwrap();
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body.as_bytes()).await.unwrap();
    socket
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A request long enough that only a cancellation ends it early.
fn long_request(stream: bool) -> serde_json::Value {
    json!({"prompt": "Tell me a long story.", "max_tokens": CONTEXT - 64, "ignore_eos": true, "stream": stream})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_cancels_its_sequence() {
    let (address, engine) = serve().await;
    let mut socket = send(address, "/v1/generate/stream", long_request(true)).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(6).filter(|w| w == b"data: ").count() < 5 {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed the stream early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(engine.stats().active(), 1);
    assert!(engine.stats().kv_cache_bytes() > 0, "a running sequence holds keys and values");
    drop(socket);
    wait_until("the sequence to be cancelled", || engine.stats().active() == 0).await;
    wait_until("its keys and values to be let go", || engine.stats().kv_cache_bytes() == 0).await;
    assert!(engine.stats().generated_tokens() < (CONTEXT - 64) as u64, "it was cancelled, not finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_before_a_non_streamed_answer_cancels_its_sequence() {
    let (address, engine) = serve().await;
    let socket = send(address, "/v1/generate", long_request(false)).await;
    wait_until("the sequence to start", || engine.stats().active() == 1 && engine.stats().generated_tokens() > 3).await;
    drop(socket);
    wait_until("the sequence to be cancelled", || engine.stats().active() == 0).await;
    assert!(engine.stats().generated_tokens() < (CONTEXT - 64) as u64, "it was cancelled, not finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_stream_has_it_cancelled() {
    use tower::ServiceExt as _;
    let config = crate::ServerConfig { stream_stall: Duration::from_millis(300), ..crate::ServerConfig::default() };
    let app = TestApp::real().config(config).build();
    let engine = app.engine();
    let body =
        json!({"prompt": "Tell me a long story.", "max_tokens": CONTEXT - 64, "ignore_eos": true, "stream": true});
    let request = axum::http::Request::post("/v1/generate/stream")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    // The response is held and its body never read: as a client that stopped
    // reading looks once the socket's buffers are full.
    let response = app.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    wait_until("the sequence to start", || engine.stats().active() == 1).await;
    wait_until("the stalled stream to be cancelled", || engine.stats().active() == 0).await;
    assert!(engine.stats().generated_tokens() < (CONTEXT - 64) as u64, "it was cancelled, not finished");
    drop(response);
}
