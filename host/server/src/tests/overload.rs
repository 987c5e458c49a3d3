//! Under more work than the machine can finish in time, requests that
//! could not finish before the request timeout are refused at once (503 +
//! `Retry-After`) rather than run and failed late; the engine's memory
//! budget shows in `/health`.

use std::time::Duration;

use axum::http::{StatusCode, header};
use kiln_engine::Backend;
use serde_json::json;

use super::{CONTEXT, TestApp, get, post};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_could_not_finish_before_the_timeout_is_refused_at_once_with_retry_after() {
    let config = crate::ServerConfig { request_timeout: Duration::from_secs(1), ..Default::default() };
    let app = TestApp::real().config(config).build();
    // The engine refuses nothing until it has timed a decode step. (The
    // native pipeline: no sampler plugin, which could stop a request early.)
    let warm = json!({"prompt": "Count.", "max_tokens": 16, "ignore_eos": true, "pipeline": "native"});
    let warm = post(&app, "/v1/generate", warm).await;
    assert_eq!(warm.status, StatusCode::OK, "{}", String::from_utf8_lossy(&warm.body));
    // A thousand decode steps take seconds on any CPU: past the 1 s timeout.
    let long = json!({"prompt": "Count to a thousand.", "max_tokens": CONTEXT - 128, "ignore_eos": true, "pipeline": "native"});
    let refused = post(&app, "/v1/generate", long.clone()).await;
    let error = refused.error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error["code"], "overloaded");
    assert!(error["message"].as_str().unwrap().contains("deadline"), "{error}");
    let retry: u64 = refused.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    // Not a 504 after the timeout: it never reached the engine's queue.
    assert_eq!(app.engine().stats().generated_tokens(), 16);
    // A stream is refused the same way, before its first byte.
    post(&app, "/v1/generate/stream", long).await.error(StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn health_reports_the_kv_budget_and_what_is_set_aside() {
    let app = TestApp::real().build();
    let health = get(&app, "/health").await.json();
    let budget = health["kv_cache_budget_bytes"].as_u64().unwrap();
    assert_eq!(budget, kiln_engine::EngineConfig::default().kv_cache_bytes as u64);
    assert_eq!(health["kv_cache_reserved_bytes"], 0, "{health}");
}
