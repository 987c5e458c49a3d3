//! The response cache through the API, on the real model.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use super::*;

fn chat(temperature: f64, seed: Option<u64>) -> serde_json::Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": "Name a fruit."}],
        "max_tokens": 6,
        "temperature": temperature,
    });
    if let Some(seed) = seed {
        body["seed"] = json!(seed);
    }
    body
}

#[tokio::test]
async fn a_repeated_greedy_request_is_replayed_without_the_engine() {
    let app = TestApp::real().build();
    let engine = app.engine();
    let first = post(&app, "/v1/chat/completions", chat(0.0, None)).await;
    assert_eq!(first.headers["x-kiln-cache"], "miss");
    let generated = engine.stats().generated_tokens();
    let second = post(&app, "/v1/chat/completions", chat(0.0, None)).await;
    assert_eq!(second.headers["x-kiln-cache"], "hit");
    assert_eq!(engine.stats().generated_tokens(), generated, "a hit never reaches the engine");
    assert_eq!(first.json()["choices"], second.json()["choices"]);
    assert_eq!(first.json()["usage"], second.json()["usage"]);
    assert_ne!(first.json()["id"], second.json()["id"], "each answer has its own id");

    // The same answer, asked for as a stream, is replayed as one.
    let mut streamed = chat(0.0, None);
    streamed["stream"] = json!(true);
    let replay = post(&app, "/v1/chat/completions", streamed).await;
    assert_eq!(replay.headers["x-kiln-cache"], "hit");
    let text: String =
        replay.json_events().iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, first.json()["choices"][0]["message"]["content"].as_str().unwrap());
}

#[tokio::test]
async fn sampled_requests_without_a_seed_are_never_cached() {
    let app = TestApp::real().build();
    let engine = app.engine();
    for _ in 0..2 {
        let answer = post(&app, "/v1/chat/completions", chat(0.9, None)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(!answer.headers.contains_key("x-kiln-cache"));
    }
    let generated = engine.stats().generated_tokens();
    let seeded = post(&app, "/v1/chat/completions", chat(0.9, Some(7))).await;
    assert_eq!(seeded.headers["x-kiln-cache"], "miss");
    let again = post(&app, "/v1/chat/completions", chat(0.9, Some(7))).await;
    assert_eq!(again.headers["x-kiln-cache"], "hit");
    assert_eq!(seeded.json()["choices"], again.json()["choices"]);
    assert!(engine.stats().generated_tokens() > generated);
}

#[tokio::test]
async fn cache_control_no_cache_generates_anew() {
    let app = TestApp::real().build();
    let engine = app.engine();
    let body = json!({"prompt": "Say yes.", "max_tokens": 4, "temperature": 0});
    post(&app, "/v1/generate", body.clone()).await;
    let generated = engine.stats().generated_tokens();
    let request =
        Request::post("/v1/generate").header("cache-control", "no-cache").body(Body::from(body.to_string())).unwrap();
    let fresh = send(&app, request).await;
    assert_eq!(fresh.headers["x-kiln-cache"], "bypass");
    assert!(engine.stats().generated_tokens() > generated, "the engine ran");
    assert_eq!(post(&app, "/v1/generate", body).await.headers["x-kiln-cache"], "hit");
    let health = get(&app, "/health").await.json();
    assert!(health["cache_size"].as_u64().unwrap() >= 1, "{health}");
}
