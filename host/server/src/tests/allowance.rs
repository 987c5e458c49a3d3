//! A key's token allowance: what a generation reserves before it runs comes
//! back whole on every path that ends it without generating (what a finished
//! one keeps is in `access.rs`).

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kiln_access::Limits;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::access::{APP_KEY, keyed_config};
use super::*;

/// A minute's allowance; large enough that one refused request's
/// reservation shows in what is left.
const PER_MINUTE: u32 = 1000;

fn config() -> ServerConfig {
    keyed_config(Limits { requests_per_minute: None, tokens_per_minute: Some(PER_MINUTE) })
}

fn call(path: &str, body: Value) -> Request<Body> {
    Request::post(path).header("x-api-key", APP_KEY).body(Body::from(body.to_string())).unwrap()
}

/// The key's tokens left, as the next request is told (allowance refills
/// with time, so a full allowance means nothing was kept).
async fn tokens_left(app: &Router) -> u32 {
    let request = Request::get("/v1/models").header("x-api-key", APP_KEY).body(Body::empty()).unwrap();
    let answer = send(app, request).await;
    answer.headers["x-ratelimit-remaining-tokens"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_request_refused_for_its_token_limit_gives_its_reservation_back() {
    let app = TestApp::fake(Fake::Say(vec!["x"])).config(config()).build();
    // Over the context: refused by the engine's checks after the reservation.
    let answer = send(&app, call("/v1/generate", json!({"prompt": "Hi", "raw": true, "max_tokens": 100_000}))).await;
    assert_eq!(answer.error(StatusCode::BAD_REQUEST)["param"], "max_tokens");
    let answer = send(
        &app,
        call("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100_000})),
    )
    .await;
    assert_eq!(answer.error(StatusCode::BAD_REQUEST)["param"], "max_tokens");
    assert_eq!(tokens_left(&app).await, PER_MINUTE);
    // And the next request may spend almost all of it.
    let next = send(&app, call("/v1/generate", json!({"prompt": "Hi", "raw": true, "max_tokens": 990}))).await;
    assert_eq!(next.status, StatusCode::OK, "{}", String::from_utf8_lossy(&next.body));
}

#[tokio::test]
async fn a_prompt_over_the_context_gives_its_reservation_back() {
    let app = TestApp::fake(Fake::Say(vec!["x"])).config(config()).build();
    let long = "word ".repeat(CONTEXT + 10);
    let answer = send(&app, call("/v1/generate", json!({"prompt": long, "raw": true}))).await;
    assert_eq!(answer.error(StatusCode::BAD_REQUEST)["code"], "context_length_exceeded");
    assert_eq!(tokens_left(&app).await, PER_MINUTE);
}

#[tokio::test]
async fn a_full_queue_gives_the_reservation_back() {
    let app = TestApp::fake(Fake::Overloaded).config(config()).build();
    let answer = send(&app, call("/v1/generate", json!({"prompt": "Hi", "raw": true, "max_tokens": 500}))).await;
    assert_eq!(answer.error(StatusCode::SERVICE_UNAVAILABLE)["code"], "overloaded");
    assert_eq!(tokens_left(&app).await, PER_MINUTE);
}

#[tokio::test]
async fn a_plugin_failing_before_the_first_token_gives_the_reservation_back() {
    let app = TestApp::real().config(config()).build();
    for pipeline in ["hostile-refuse", "hostile-trap"] {
        let body = json!({"prompt": "Hi", "max_tokens": 500, "pipeline": pipeline});
        let answer = send(&app, call("/v1/generate", body)).await;
        assert_eq!(answer.error(StatusCode::INTERNAL_SERVER_ERROR)["code"], "plugin_error", "{pipeline}");
        assert_eq!(tokens_left(&app).await, PER_MINUTE, "{pipeline}");
    }
}

#[tokio::test]
async fn a_client_gone_before_the_first_token_gives_the_reservation_back() {
    let app = TestApp::fake(Fake::Slow(Duration::from_secs(30))).config(config()).build();
    // A long prompt: charging it (as if prefilled) would show in what is left.
    let body = json!({"prompt": "word ".repeat(400), "raw": true, "max_tokens": 100});
    // The stream's headers come at once; the client reads nothing and leaves.
    let response = app.router.clone().oneshot(call("/v1/generate/stream", body)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    // The stream's task hears the client has gone, then drops the generation.
    let started = std::time::Instant::now();
    while tokens_left(&app).await != PER_MINUTE {
        assert!(started.elapsed() < Duration::from_secs(10), "the reservation was never given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_generation_timed_out_before_the_first_token_gives_the_reservation_back() {
    let config = ServerConfig { request_timeout: Duration::from_millis(50), ..config() };
    let app = TestApp::fake(Fake::Slow(Duration::from_secs(30))).config(config).build();
    let body = json!({"prompt": "word ".repeat(400), "raw": true, "max_tokens": 100});
    let answer = send(&app, call("/v1/generate", body)).await;
    assert_eq!(answer.error(StatusCode::GATEWAY_TIMEOUT)["code"], "timeout");
    assert_eq!(tokens_left(&app).await, PER_MINUTE);
}

#[tokio::test]
async fn a_cache_hit_spends_no_tokens() {
    let app = TestApp::fake(Fake::Say(vec!["x"])).config(config()).build();
    let body = json!({"prompt": "Hi", "raw": true, "max_tokens": 500, "temperature": 0});
    let first = send(&app, call("/v1/generate", body.clone())).await;
    assert_eq!(first.headers["x-kiln-cache"], "miss");
    let left = tokens_left(&app).await;
    let hit = send(&app, call("/v1/generate", body)).await;
    assert_eq!(hit.headers["x-kiln-cache"], "hit");
    assert!(tokens_left(&app).await >= left, "a hit is not charged");
}
