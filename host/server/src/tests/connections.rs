//! The HTTP server's own limits, over real sockets: connections past the
//! limit are answered 503 and closed, a request head must arrive in time, an
//! idle connection is closed while a long request is not.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Fake, TestApp};
use crate::{ConnectionLimits, ServerConfig};

/// Serves a fake backend under `limits` on a loopback port.
async fn serve(fake: Fake, limits: ConnectionLimits) -> std::net::SocketAddr {
    let config = ServerConfig { connections: limits, drain_timeout: Duration::from_secs(1), ..ServerConfig::default() };
    let app = TestApp::fake(fake).config(config.clone()).build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { crate::serve(listener, app.router.clone(), std::future::pending(), &config).await });
    address
}

fn limits(max_connections: usize, header_read_timeout_ms: u64, idle_timeout_ms: u64) -> ConnectionLimits {
    ConnectionLimits {
        max_connections,
        header_read_timeout: Duration::from_millis(header_read_timeout_ms),
        idle_timeout: Duration::from_millis(idle_timeout_ms),
    }
}

/// Sends `request` and reads one answer (the server closes or the answer's
/// body is complete, as `Content-Length` says).
async fn exchange(socket: &mut TcpStream, request: &str) -> String {
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut buf)).await.expect("an answer").unwrap();
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).into_owned();
        if n == 0 || complete(&text) {
            return text;
        }
    }
}

fn complete(answer: &str) -> bool {
    let Some((head, body)) = answer.split_once("\r\n\r\n") else { return false };
    let length = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string));
    length.and_then(|l| l.trim().parse::<usize>().ok()).is_some_and(|l| body.len() >= l)
}

const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Whether the server closes `socket` within `within` (reads end).
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    matches!(tokio::time::timeout(within, socket.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test]
async fn past_max_connections_a_new_connection_is_answered_503_and_closed() {
    let address = serve(Fake::Say(vec!["x"]), limits(2, 10_000, 60_000)).await;
    let mut first = TcpStream::connect(address).await.unwrap();
    assert!(exchange(&mut first, HEALTH).await.starts_with("HTTP/1.1 200"));
    let _second = TcpStream::connect(address).await.unwrap();
    // Accepted in order: the second holds the last slot before the third arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(address).await.unwrap();
    let refused = exchange(&mut third, HEALTH).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("too_many_connections") && refused.to_ascii_lowercase().contains("retry-after"));
    assert!(closed_within(&mut third, Duration::from_secs(10)).await, "a refused connection is closed");
    // A slot freed is taken again.
    drop(first);
    let started = Instant::now();
    loop {
        let mut next = TcpStream::connect(address).await.unwrap();
        if exchange(&mut next, HEALTH).await.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_request_head_that_does_not_arrive_in_time_closes_the_connection() {
    let address = serve(Fake::Say(vec!["x"]), limits(16, 300, 60_000)).await;
    let mut slow = TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: local").await.unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(10)).await, "a trickled head holds the connection");
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_a_long_request_is_not() {
    let address = serve(Fake::Slow(Duration::from_millis(1500)), limits(16, 10_000, 300)).await;
    let mut idle = TcpStream::connect(address).await.unwrap();
    assert!(exchange(&mut idle, HEALTH).await.starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle, Duration::from_secs(10)).await, "an idle keep-alive connection stays open");
    // Generating for five times the idle timeout, without a byte on the wire.
    let mut long = TcpStream::connect(address).await.unwrap();
    let body = r#"{"prompt": "Hi", "max_tokens": 2}"#;
    let request = format!(
        "POST /v1/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(&mut long, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
